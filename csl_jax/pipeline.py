"""The whole finding for one config: pretrain -> linear eval -> attacks -> geometry -> corruptions.

Each stage writes its result into the run directory and is skipped when that result is already
there, so re-running the same command after a preemption (or after adding a stage) only does the
missing work. Output files follow the contract in README.md ("What a run writes").
"""
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from csl_jax import config as config_lib
from csl_jax import data, models
from csl_jax.data import augment
from csl_jax.eval import features as features_lib
from csl_jax.eval import knn, linear
from csl_jax.train import loop, sharding


def load_datasets(config, workdir):
  kwargs = dict(data_dir=config.dataset.data_dir or None, cache_dir=config.dataset.data_dir or str(workdir / "cache"),
                image_size=config.dataset.image_size or None)
  train = data.load(config.dataset.source, config.dataset.train_split, **kwargs)
  test = data.load(config.dataset.source, config.dataset.test_split, **kwargs)
  return train, test


def config_for_run(config, run_name: str):
  """A copy of `config` restricted to one run."""
  run_config = ml_collections.ConfigDict(config.to_dict())
  run_config.runs = run_name
  run_config.lock()
  return run_config


def _write_json(path, obj):
  if jax.process_index() == 0:
    pathlib.Path(path).write_text(json.dumps(obj, indent=2))


def classifier(config, method, model, variables, head, num_classes):
  """(ImageClassifier, its variables): the pretrained encoder with the linear head (or the CE model)."""
  if method == "ce":
    return model, variables
  clf = models.ImageClassifier(encoder=model.encoder, num_classes=num_classes, mean=model.mean, std=model.std)
  clf_vars = {"params": {"encoder": variables["params"]["encoder"],
                         "head": {"kernel": jnp.asarray(head["kernel"]), "bias": jnp.asarray(head["bias"])}},
              "batch_stats": {"encoder": variables["batch_stats"]["encoder"]}}
  return clf, clf_vars


def encoder_features_fn(method, model, variables):
  if method == "ce":
    return jax.jit(lambda x: model.apply(variables, x, train=False, method=models.ImageClassifier.features))
  return jax.jit(lambda x: model.apply(variables, x, train=False)[0])


def linear_evaluation(config, method, run_dir, model, variables, features_fn, train_ds, test_ds, mesh):
  """Writes linear_eval.json and linear_head.npz; returns (head, test_features)."""
  batch = config.eval_batch_size
  test_features = features_lib.apply_in_batches(features_fn, test_ds.images, batch_size=batch, mesh=mesh,
                                                desc="test features")
  head_path, result_path = run_dir / "linear_head.npz", run_dir / "linear_eval.json"
  if result_path.exists() and (head_path.exists() or method == "ce"):
    head = dict(np.load(head_path)) if method != "ce" else None
    return head, test_features
  train_features = features_lib.apply_in_batches(features_fn, train_ds.images, batch_size=batch, mesh=mesh,
                                                 desc="train features")
  knn_top1 = knn.knn_accuracy(train_features, train_ds.labels, test_features, test_ds.labels,
                              num_classes=train_ds.num_classes, k=config.pretrain.knn_k,
                              temperature=config.pretrain.knn_temperature)
  if method == "ce":
    head, protocol = None, "end_to_end"
    logits = features_lib.apply_in_batches(jax.jit(lambda x: model.apply(variables, x, train=False)),
                                           test_ds.images, batch_size=batch, mesh=mesh)
    top1 = float(np.mean(np.argmax(logits, -1) == test_ds.labels))
  else:
    head, protocol = linear.train_linear_head(
        train_features, train_ds.labels, train_ds.num_classes, epochs=config.linear_eval.epochs,
        batch_size=config.linear_eval.batch_size, lr=config.linear_eval.lr,
        weight_decay=config.linear_eval.weight_decay, seed=config.seed), "linear"
    top1 = linear.head_accuracy(head, test_features, test_ds.labels)
    if jax.process_index() == 0:
      np.savez(head_path, **head)
  _write_json(result_path, {"top1": top1, "knn_top1": knn_top1, "protocol": protocol, "num_test": len(test_ds.labels)})
  logging.info("%s: linear top-1 %.2f%%, kNN top-1 %.2f%%", run_dir.name, 100 * top1, 100 * knn_top1)
  return head, test_features


def _first(n, *arrays):
  return [a[:n] if n else a for a in arrays]


def run_one(config, run_name, run_dir, train_ds, test_ds, mesh):
  method = config_lib.method_of(run_name)
  run_dir.mkdir(parents=True, exist_ok=True)
  _write_json(run_dir / "run.json", {
      "name": run_name, "method": method, "dataset": config.dataset.source, "encoder": config.model.encoder,
      "num_classes": train_ds.num_classes, "class_names": list(train_ds.class_names), "config": config.to_dict()})
  model, variables = loop.pretrain(config, method, run_dir, train_ds, mesh=mesh)
  features_fn = encoder_features_fn(method, model, variables)
  head, test_features = linear_evaluation(config, method, run_dir, model, variables, features_fn, train_ds,
                                          test_ds, mesh)
  clf, clf_vars = classifier(config, method, model, variables, head, train_ds.num_classes)
  logits_fn = jax.jit(lambda x: clf.apply(clf_vars, x, train=False))

  if config.robustness.enabled and not (run_dir / "robustness.json").exists():
    from csl_jax.eval import robustness  # pylint: disable=g-import-not-at-top
    images, labels = _first(config.robustness.num_examples, test_ds.images, test_ds.labels)
    robustness.run_robustness_stage(logits_fn, images, labels, run_dir, attacks_spec=config.robustness.attacks,
                                    batch_size=config.robustness.batch_size, seed=config.seed, mesh=mesh)

  if config.geometry.enabled and not (run_dir / "geometry.json").exists():
    from csl_jax.analysis import geometry_stage  # pylint: disable=g-import-not-at-top
    view_key = jax.random.PRNGKey(config.seed + 1)
    augment_fn = jax.jit(lambda x: augment.simclr(view_key, x, out_size=test_ds.image_shape[0],
                                                  crop_scale=(config.augment.crop_scale_min, 1.0),
                                                  jitter_strength=config.augment.jitter_strength))
    augmented = np.concatenate([np.asarray(augment_fn(test_ds.images[i:i + 1024]))
                                for i in range(0, len(test_ds.images), 1024)])
    view2 = features_lib.apply_in_batches(features_fn, augmented, batch_size=config.eval_batch_size, mesh=mesh)
    if jax.process_index() == 0:
      geometry_stage.run_geometry_stage(test_features, test_ds.labels, list(test_ds.class_names), run_dir,
                                        features_view2=view2, tsne_max_points=config.geometry.tsne_max_points,
                                        seed=config.seed)

  if config.corruptions.enabled and not (run_dir / "corruptions.json").exists():
    from csl_jax.eval import corruption_stage, corruptions  # pylint: disable=g-import-not-at-top
    names = corruptions.CORRUPTIONS if config.corruptions.names == "all" else tuple(
        n.strip() for n in config.corruptions.names.split(",") if n.strip())
    severities = tuple(int(s) for s in config.corruptions.severities.split(","))
    images, labels = _first(config.corruptions.num_examples, test_ds.images, test_ds.labels)
    if jax.process_index() == 0:
      corruption_stage.run_corruption_stage(logits_fn, images, labels, run_dir, corruptions=names,
                                            severities=severities, batch_size=config.eval_batch_size,
                                            seed=config.seed)
  return json.loads((run_dir / "linear_eval.json").read_text())


def run(config, workdir) -> dict:
  """Runs every run of `config` under `workdir`; returns {run name: linear_eval result}."""
  config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh()
  names = config_lib.run_names(config)
  t0 = time.time()
  train_ds, test_ds = load_datasets(config, workdir)
  results = {}
  for name in names:
    run_dir = workdir / name if len(names) > 1 else workdir
    results[name] = run_one(config_for_run(config, name), name, run_dir, train_ds, test_ds, mesh)
  logging.info("All runs done in %.0fs.", time.time() - t0)
  for name, result in results.items():
    logging.info("  %-12s linear top-1 %6.2f%%   kNN top-1 %6.2f%%", name, 100 * result["top1"],
                 100 * result["knn_top1"])
  return results

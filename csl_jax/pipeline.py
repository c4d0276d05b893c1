"""The whole finding for one config: for every run, pretrain -> (linear probe) -> the configured evaluators.

A run of method "pretrained" (`--config.init_from`, `csl_jax.pretrained`) loads a converted published checkpoint
instead of pretraining; from there on it is evaluated like any other run.

Methods come from the registry (`csl_jax.methods`), evaluators from `csl_jax.eval.registry`; this module only
wires them. Every evaluator's result records its provenance (the weights it was computed from and its own
settings), so re-running the same command after a preemption, after adding an evaluator or after training
longer does exactly the missing or stale work. Output files follow README.md ("What a run writes").
"""
import pathlib
import time

from absl import logging

from csl_jax import config as config_lib
from csl_jax import data, methods
from csl_jax import pretrained as pretrained_lib
from csl_jax.eval import linear
from csl_jax.eval import registry as evaluators
from csl_jax.train import checkpoint, loop, sharding, workdir_lock


def load_datasets(config, workdir):
  """(train, test) splits of `config.dataset` (in-memory or streamed); train is None for train_split=""."""
  workdir = pathlib.Path(workdir)
  d = config.dataset
  kwargs = dict(data_dir=d.data_dir or None, cache_dir=d.data_dir or str(workdir / "cache"),
                image_size=d.image_size or None, resize_size=d.resize_size if d.preprocess == "resize_crop" else None,
                clip_frames=d.clip_frames)
  train = data.load(d.source, d.train_split, **kwargs) if d.train_split else None
  test = data.load(d.source, d.test_split, **kwargs)
  return train, test


def _write_run_info(run_dir, name, method, config, train_ds, labelled):
  info = {"name": name, "method": method.name, "title": method.title, "dataset": config.dataset.source,
          "encoder": config.model.encoder}
  if config.init_from:  # A published checkpoint: nothing is trained here.
    release = pretrained_lib.describe(config)
    info.update(title=pretrained_lib.title(config), encoder=release["encoder"], total_steps=0, init_from=release)
  else:
    info["total_steps"] = loop.training_length(config, train_ds.num_examples)[1]
  evaluators.write_json(run_dir / "run.json", {**info, "num_classes": labelled.num_classes,
                                               "class_names": list(labelled.class_names), "config": config.to_dict()})


def trained_classifier(config, method, pretrained, run_dir, train_ds, mesh, *, labelled) -> tuple:
  """(Classifier for the evaluators, train-features thunk (`linear.train_features`)) of a pretrained model.

  A model without a trained classifier of its own gets the linear probe (fitted once per encoder and linear_eval
  settings). labelled: the split that names the classes (train_ds; the test split without a train split).
  """
  features = method.family.features(pretrained.model, pretrained.variables)
  fingerprint = {"checkpoint_step": pretrained.step, "params_sha256": evaluators.digest(pretrained.variables)}
  if pretrained.source is not None:
    fingerprint["init_from"] = pretrained.source
  train_features = linear.train_features(config, features, train_ds, mesh)

  head = None
  if not pretrained.has_classifier:
    head = linear.fit_or_load_head(config, train_features, run_dir, num_classes=labelled.num_classes,
                                   model_fingerprint=fingerprint, features_fn=features, train_ds=train_ds, mesh=mesh)
    fingerprint = {**fingerprint, "head": "linear_probe", "head_sha256": evaluators.digest(head)}
  else:
    fingerprint = {**fingerprint, "head": "end_to_end"}
  logits = methods.classifier_logits(method, pretrained.model, pretrained.variables, head, labelled.num_classes)
  classifier = evaluators.Classifier(features=features, logits=logits, num_classes=labelled.num_classes,
                                     class_names=tuple(labelled.class_names), mesh=mesh, fingerprint=fingerprint)
  return classifier, train_features


def run_one(config, name, method, run_dir, train_ds, test_ds, mesh, *, mean, std, on_step=None) -> dict:
  """Trains (or, with config.init_from, loads) and evaluates one run in `run_dir`; returns {evaluator: result}.

  mean, std: the inputs' channel statistics for a model trained here (None for converted checkpoints, which
  normalise as their release did)."""
  run_dir = pathlib.Path(run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  stored_config = checkpoint.read_stored_config(run_dir)  # before run.json is rewritten with this config
  labelled = train_ds if train_ds is not None else test_ds
  _write_run_info(run_dir, name, method, config, train_ds, labelled)
  if config.init_from:  # A published checkpoint (method "pretrained"): loaded instead of trained.
    pretrained = pretrained_lib.load(config, num_classes=labelled.num_classes, image_shape=test_ds.image_shape,
                                     mean=mean, std=std)
  else:
    pretrained = loop.pretrain(config, method, run_dir, train_ds, mean=mean, std=std, mesh=mesh, on_step=on_step,
                               stored_config=stored_config)
  classifier, train_features = trained_classifier(config, method, pretrained, run_dir, train_ds, mesh,
                                                  labelled=labelled)
  results = {}
  for evaluator in evaluators.build(config, train_ds=train_ds, train_features=train_features, mesh=mesh):
    results[evaluator.name] = evaluators.run_and_record(evaluator, classifier, test_ds, run_dir)
  return results


def run(config, workdir, *, on_step=None) -> dict:
  """Runs every run of `config` under `workdir`; returns {run name: {evaluator name: result}}."""
  mesh = sharding.make_mesh()
  runs = config_lib.validate(config, num_devices=mesh.size)  # every run's config, before any work
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  results = {}
  with workdir_lock.WorkdirLock(workdir):
    train_ds, test_ds = load_datasets(config, workdir)
    # Models trained here (and untrained "random" ones) normalise with the data's statistics; converted checkpoints
    # with their release's, so streamed splits without stored statistics need none.
    needs_stats = any(c.init_from in ("", pretrained_lib.RANDOM) for _, _, c in runs)
    mean, std = data.channel_stats(config.dataset.source, train_dataset=train_ds) if needs_stats else (None, None)
    for name, method_name, run_config in runs:
      # A study (several runs, or named runs) keeps one directory per run; a single plain run uses the workdir.
      run_dir = workdir / name if len(runs) > 1 or config.run_overrides else workdir
      results[name] = run_one(run_config, name, methods.get(method_name), run_dir, train_ds, test_ds, mesh,
                              mean=mean, std=std, on_step=on_step)
  logging.info("All runs done in %.0fs.", time.time() - t0)
  for name, result in results.items():
    linear_result = result.get("linear_eval") or {}
    if linear_result:
      knn_top1 = linear_result.get("knn_top1")
      logging.info("  %-16s linear top-1 %6.2f%%   kNN top-1 %s", name, 100 * linear_result["top1"],
                   "—" if knn_top1 is None else f"{100 * knn_top1:6.2f}%")
  logging.info("Compare the runs: python -m csl_jax.report %s", workdir)
  return results

"""The whole finding for one config: for every run, pretrain -> (linear probe) -> the configured evaluators.

Methods come from the registry (`csl_jax.methods`), evaluators from `csl_jax.eval.registry`; this module only
wires them. Every evaluator's result records its provenance (the weights it was computed from and its own
settings), so re-running the same command after a preemption, after adding an evaluator or after training
longer does exactly the missing or stale work. Output files follow README.md ("What a run writes").
"""
import functools
import pathlib
import time

from absl import logging

from csl_jax import config as config_lib
from csl_jax import data, methods
from csl_jax.eval import batches, linear
from csl_jax.eval import registry as evaluators
from csl_jax.train import checkpoint, loop, sharding, workdir_lock


def load_datasets(config, workdir):
  """(train, test) splits of `config.dataset` (in-memory or streamed)."""
  workdir = pathlib.Path(workdir)
  kwargs = dict(data_dir=config.dataset.data_dir or None, cache_dir=config.dataset.data_dir or str(workdir / "cache"),
                image_size=config.dataset.image_size or None)
  train = data.load(config.dataset.source, config.dataset.train_split, **kwargs)
  test = data.load(config.dataset.source, config.dataset.test_split, **kwargs)
  return train, test


def _write_run_info(run_dir, name, method, config, train_ds):
  _, total_steps = loop.training_length(config, train_ds.num_examples)
  evaluators.write_json(run_dir / "run.json", {
      "name": name, "method": method.name, "title": method.title, "dataset": config.dataset.source,
      "encoder": config.model.encoder, "total_steps": total_steps, "num_classes": train_ds.num_classes,
      "class_names": list(train_ds.class_names), "config": config.to_dict()})


def trained_classifier(config, method, pretrained, run_dir, train_ds, mesh) -> tuple:
  """(Classifier for the evaluators, memoised train-features thunk) of a pretrained model.

  Methods that train no classifier get the linear probe (fitted once per encoder and linear_eval settings).
  """
  features = method.family.features(pretrained.model, pretrained.variables)
  fingerprint = {"checkpoint_step": pretrained.step, "params_sha256": evaluators.digest(pretrained.variables)}

  @functools.cache
  def train_features():
    return batches.map_batches(lambda b: batches.apply_to_uint8(features, b.images), train_ds,
                               config.eval_batch_size, mesh=mesh, desc="train features")

  head = None
  if not method.trains_classifier:
    head = linear.fit_or_load_head(config, train_features, run_dir, num_classes=train_ds.num_classes,
                                   model_fingerprint=fingerprint, features_fn=features, train_ds=train_ds, mesh=mesh)
    fingerprint = {**fingerprint, "head": "linear_probe", "head_sha256": evaluators.digest(head)}
  else:
    fingerprint = {**fingerprint, "head": "end_to_end"}
  logits = methods.classifier_logits(method, pretrained.model, pretrained.variables, head, train_ds.num_classes)
  classifier = evaluators.Classifier(features=features, logits=logits, num_classes=train_ds.num_classes,
                                     class_names=tuple(train_ds.class_names), mesh=mesh, fingerprint=fingerprint)
  return classifier, train_features


def run_one(config, name, method, run_dir, train_ds, test_ds, mesh, *, mean, std, on_step=None) -> dict:
  """Trains and evaluates one run in `run_dir`; returns {evaluator name: result}."""
  run_dir = pathlib.Path(run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  stored_config = checkpoint.read_stored_config(run_dir)  # before run.json is rewritten with this config
  _write_run_info(run_dir, name, method, config, train_ds)
  pretrained = loop.pretrain(config, method, run_dir, train_ds, mean=mean, std=std, mesh=mesh, on_step=on_step,
                             stored_config=stored_config)
  classifier, train_features = trained_classifier(config, method, pretrained, run_dir, train_ds, mesh)
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
    mean, std = data.channel_stats(config.dataset.source, train_dataset=train_ds)
    for name, method_name, run_config in runs:
      # A study (several runs, or named runs) keeps one directory per run; a single plain run uses the workdir.
      run_dir = workdir / name if len(runs) > 1 or config.run_overrides else workdir
      results[name] = run_one(run_config, name, methods.get(method_name), run_dir, train_ds, test_ds, mesh,
                              mean=mean, std=std, on_step=on_step)
  logging.info("All runs done in %.0fs.", time.time() - t0)
  for name, result in results.items():
    linear_result = result.get("linear_eval") or {}
    if linear_result:
      logging.info("  %-16s linear top-1 %6.2f%%   kNN top-1 %6.2f%%", name, 100 * linear_result["top1"],
                   100 * linear_result["knn_top1"])
  logging.info("Compare the runs: python -m csl_jax.report %s", workdir)
  return results

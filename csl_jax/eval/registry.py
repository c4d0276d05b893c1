"""The evaluator protocol, the registry of evaluators by name, and how their results are kept fresh.

An evaluator is a small object built from the config (big_vision style):

    class Evaluator(Protocol):
      name: str                      # its config section and result file stem ("robustness" -> robustness.json)
      def spec(self) -> dict         # everything besides the model its numbers depend on
      def run(self, classifier, dataset, run_dir) -> dict   # metrics; may also write plots / tables

`run` reads the split only through `eval.batches` (in-memory and streamed splits alike). The pipeline is a loop
over `build(config, ...)`; `run_and_record` writes `<run_dir>/<name>.json` with a `provenance` record (the
model's checkpoint step and parameter digest, the evaluator's spec, the split) and skips an evaluator only
when the stored provenance equals the current one — a result computed from other weights or settings is
recomputed, and the log says what changed.
"""
import dataclasses
import hashlib
import json
import os
import pathlib
import time
from typing import Callable, Dict, List, Protocol

import jax
import numpy as np
from absl import logging


@dataclasses.dataclass(frozen=True)
class Classifier:
  """What evaluators see of a trained model (all functions jitted, inputs f32[B, H, W, C] in [0, 1]).

  features -> f32[B, D] encoder features; logits -> f32[B, K] (linear probe or end-to-end head);
  fingerprint: {"checkpoint_step", "params_sha256"[, "head_sha256"]} for provenance.
  """
  features: Callable
  logits: Callable
  num_classes: int
  class_names: tuple
  mesh: jax.sharding.Mesh
  fingerprint: dict


class Evaluator(Protocol):
  name: str

  def spec(self) -> dict:
    ...

  def run(self, classifier: Classifier, dataset, run_dir: pathlib.Path) -> dict:
    ...


def digest(tree) -> str:
  """sha256 of every array leaf's bytes (shape and dtype included), in tree order."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(tree)):
    leaf = np.asarray(leaf)
    h.update(f"{leaf.dtype}{leaf.shape}".encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()[:16]


def _evaluators() -> Dict[str, Callable]:
  # Lazy: each evaluator module imports what it measures with (attacks, t-SNE, corruptions).
  from csl_jax.analysis import geometry_stage
  from csl_jax.eval import corruption_stage, linear, robustness
  return {"linear_eval": linear.LinearEvaluator, "robustness": robustness.RobustnessEvaluator,
          "geometry": geometry_stage.GeometryEvaluator, "corruptions": corruption_stage.CorruptionEvaluator}


def names(config) -> List[str]:
  """The configured evaluator names, in order, without those whose section says enabled=False."""
  known = _evaluators()
  listed = [n.strip() for n in config.evaluators.split(",") if n.strip()]
  unknown = [n for n in listed if n not in known]
  if unknown:
    raise ValueError(f"config.evaluators: unknown evaluator(s) {unknown}; valid: {sorted(known)}.")
  return [n for n in listed if config[n].get("enabled", True)]


def check(config) -> None:
  """Validates the evaluators' settings before any work (bad attack specs, corruption names, ...)."""
  known = _evaluators()
  for name in names(config):
    check_fn = getattr(known[name], "check", None)
    if check_fn is not None:
      check_fn(config)


def build(config, **context) -> List[Evaluator]:
  """The configured evaluators; context (train_ds, train_features, mesh, ...) goes to those that take it."""
  known = _evaluators()
  return [known[name](config, **context) for name in names(config)]


def write_json(path, obj) -> None:
  """Atomic JSON write on process 0 (a crash never leaves half a result file)."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2) + "\n")
  os.replace(tmp, path)


def _differences(old: dict, new: dict, prefix: str = "") -> List[str]:
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}: {a!r} -> {b!r}")
  return out


def provenance(evaluator: Evaluator, classifier: Classifier, dataset) -> dict:
  return json.loads(json.dumps({"model": classifier.fingerprint, "evaluator": evaluator.spec(),
                                "dataset": {"name": getattr(dataset, "name", ""), "num_examples": len(dataset)}}))


def stale_reason(path: pathlib.Path, expected: dict):
  """None when `path` holds a result with provenance `expected`, else why it must be (re)computed."""
  if not path.exists():
    return "no result yet"
  try:
    stored = json.loads(path.read_text()).get("provenance")
  except ValueError:
    return f"{path.name} is unreadable"
  if stored is None:
    return "it has no provenance record (written by an older csl_jax)"
  changes = _differences(stored, expected)
  return None if not changes else "inputs changed: " + "; ".join(changes[:6])


def run_and_record(evaluator: Evaluator, classifier: Classifier, dataset, run_dir) -> dict:
  """Runs `evaluator` unless its stored result is current; writes <run_dir>/<name>.json with provenance."""
  run_dir = pathlib.Path(run_dir)
  path = run_dir / f"{evaluator.name}.json"
  expected = provenance(evaluator, classifier, dataset)
  reason = stale_reason(path, expected)
  if reason is None:
    logging.info("%s: %s is up to date; skipped.", run_dir.name, path.name)
    return json.loads(path.read_text())
  if path.exists():
    logging.warning("%s: recomputing %s (%s).", run_dir.name, path.name, reason)
  start = time.perf_counter()
  result = dict(evaluator.run(classifier, dataset, run_dir))
  result["wall_seconds"] = time.perf_counter() - start
  logging.info("%s: %s done in %.1fs.", run_dir.name, evaluator.name, result["wall_seconds"])
  result["provenance"] = expected
  write_json(path, result)
  return result

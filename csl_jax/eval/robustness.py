"""Robustness-evaluation stage: clean and robust accuracy under a list of attacks (paper Tables 1–5).

The attack list is one string so it can be overridden from the command line, e.g. the CIFAR default
    "fgsm:linf:8/255,fgsm:linf:16/255,pgd:l2:0.1,pgd:l2:0.25,pgd:l1:8.0,autoattack:linf:1/255,..."
Each entry is `name:norm:eps[:key=value...]` (eps may be a fraction "a/b"; options are keyword
arguments of the attack, e.g. `pgd:linf:8/255:steps=10`). Outputs, in `out_dir` (see the runs contract):
robustness.json, robustness.md (table with ↓P_drop, paper Eq. 3) and robustness_vs_eps.png.
`RobustnessEvaluator` is the pipeline's evaluator (any split, streamed too); `run_robustness_stage` the
same on in-memory arrays.
"""
import dataclasses
import functools
import inspect
import json
import pathlib
import time
from typing import Any, Callable, Dict, List, Optional

import jax
import numpy as np
from absl import logging

from csl_jax import attacks
from csl_jax.analysis import plots
from csl_jax.attacks import checks
from csl_jax.attacks import evaluate as evaluate_lib
from csl_jax.analysis.report_tables import attack_family, p_drop
from csl_jax.data.dataset import ArrayDataset
from csl_jax.eval import batches as eval_batches
from csl_jax.eval import robustness_progress
from csl_jax.train import sharding

NORMS = ("linf", "l2", "l1")
# name -> norms the attack supports.
ATTACK_NORMS = {
    "fgsm": NORMS, "pgd": NORMS, "apgd": NORMS, "autoattack": NORMS, "fab": ("linf", "l2"),
    "square": ("linf", "l2"),
}
NORM_LABELS = {"linf": "ℓ∞", "l2": "ℓ2", "l1": "ℓ1"}
# Keyword arguments set by the stage itself, never by a spec option.
_RESERVED = ("eps", "norm", "key", "batch_size", "mesh", "progress")


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """One parsed entry of the attack list."""
  name: str
  norm: str
  eps: float
  eps_label: str
  options: Dict[str, Any]
  text: str


def _attack_function(name: str):
  return getattr(attacks, name)


def parse_eps(text: str) -> float:
  """Parses an eps written as "8/255" or "0.5"; raises a ValueError naming the text otherwise."""
  try:
    if "/" in text:
      numerator, denominator = text.split("/", 1)
      return float(numerator) / float(denominator)
    return float(text)
  except (ValueError, ZeroDivisionError):
    raise ValueError(f"eps {text!r} is not a number or a fraction like '8/255'.") from None


def _parse_value(text: str):
  lowered = text.lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  if "/" in text:
    try:
      return parse_eps(text)
    except ValueError:
      pass
  return text


def _option_names(name: str) -> List[str]:
  parameters = inspect.signature(_attack_function(name)).parameters.values()
  return sorted(p.name for p in parameters if p.kind == p.KEYWORD_ONLY and p.name not in _RESERVED)


def parse_attacks(spec: str) -> List[AttackSpec]:
  """Parses "name:norm:eps[:key=value...],..." into AttackSpecs; raises ValueError with the valid choices."""
  parsed = []
  for text in (part.strip() for part in spec.split(",")):
    if not text:
      continue
    fields = text.split(":")
    if len(fields) < 3:
      raise ValueError(f"Attack spec {text!r}: expected 'name:norm:eps[:key=value...]', e.g. 'pgd:linf:8/255'.")
    name, norm, eps_text = (f.strip() for f in fields[:3])
    if name not in ATTACK_NORMS:
      raise ValueError(f"Attack spec {text!r}: unknown attack {name!r}; choose one of {sorted(ATTACK_NORMS)}.")
    if norm not in ATTACK_NORMS[name]:
      raise ValueError(f"Attack spec {text!r}: {name} supports norms {ATTACK_NORMS[name]}, got {norm!r}.")
    eps = parse_eps(eps_text)
    if not eps > 0:
      raise ValueError(f"Attack spec {text!r}: eps must be > 0.")
    options = {}
    valid = _option_names(name)
    for option in fields[3:]:
      if "=" not in option:
        raise ValueError(f"Attack spec {text!r}: option {option!r} is not key=value.")
      key, value = (s.strip() for s in option.split("=", 1))
      if key not in valid:
        raise ValueError(f"Attack spec {text!r}: {name} has no option {key!r}; valid options: {valid}.")
      options[key] = _parse_value(value)
    parsed.append(AttackSpec(name, norm, eps, eps_text, options, text))
  if not parsed:
    raise ValueError("The attack list is empty; give at least one 'name:norm:eps' entry.")
  return parsed


def run_attack(spec: AttackSpec, logits_fn, images, labels, *, batch_size, key, mesh=None) -> tuple:
  """(robust bool[N], broken_by int16[N], stage accuracies) of attack `spec` on one chunk.

  broken_by: -1 where the point stays robust, else the index of the AutoAttack stage that fooled it (0 for
  single attacks). Stage accuracies: AutoAttack's robust accuracy after the clean pass and each stage ({} else).
  """
  if spec.name == "autoattack":
    result = attacks.run_autoattack(logits_fn, images, labels, eps=spec.eps, norm=spec.norm, key=key,
                                    batch_size=batch_size, mesh=mesh, progress=True, **spec.options)
    robust = np.asarray(result.robust)
    broken_by = getattr(result, "broken_by", None)
    broken_by = np.where(robust, -1, 0) if broken_by is None else np.asarray(broken_by)
    return robust, broken_by.astype(np.int16), dict(result.robust_accuracy)
  attack_fn = functools.partial(_attack_function(spec.name), logits_fn, eps=spec.eps, norm=spec.norm,
                                **spec.options)
  _, robust = attacks.robust_accuracy(attack_fn, logits_fn, images, labels, batch_size=batch_size, mesh=mesh,
                                      desc=spec.text, key=key)
  robust = np.asarray(robust)
  return robust, np.where(robust, -1, 0).astype(np.int16), {}


def write_markdown(path, result: Dict[str, Any]) -> None:
  """robustness.md: clean accuracy, then robust accuracy and ↓P_drop per attack, in percent."""
  lines = [f"Clean accuracy: {100 * result['clean_accuracy']:.2f}% on {result['num_examples']} examples.", "",
           "| Attack | Norm | ε | Robust acc. (%) | ↓P_drop (%) | Time (s) |", "|---|---|---|---|---|---|",
           f"| clean | – | 0 | {100 * result['clean_accuracy']:.2f} | 0.00 | – |"]
  for row in result["attacks"]:
    drop = "n/a" if row["p_drop"] is None else f"{100 * row['p_drop']:.2f}"
    spread = f" ± {50 * row['spread']:.2f}" if row.get("spread") else ""
    lines.append(f"| {row['spec']} | {NORM_LABELS[row['norm']]} | {row['eps_label']} | "
                 f"{100 * row['robust_accuracy']:.2f}{spread} | {drop} | {row['seconds']:.1f} |")
  if result.get("num_seeds", 1) > 1:
    lines += ["", f"Mean over {result['num_seeds']} attack seeds ± half the range between seeds."]
  for row in result["attacks"]:
    if row.get("broken_by_stage"):
      shares = ", ".join(f"{name} {100 * share:.1f}%" for name, share in row["broken_by_stage"].items())
      lines += ["", f"{row['spec']}: points fooled per stage (share of all evaluated points): {shares}."]
  for flag in result.get("checks", []):
    lines += ["", f"**Warning ({flag['check']})**: {flag['message']}"]
  pathlib.Path(path).write_text("\n".join(lines) + "\n")


def summarise(specs, clean: np.ndarray, robust: np.ndarray, seconds, *, broken_by=None, stage_names=None,
              flags=()) -> Dict[str, Any]:
  """The robustness.json dict from per-point flags.

  clean bool[N]; robust bool[S, A, N] for S seeds and A attack specs; seconds [A] (summed over seeds and chunks);
  broken_by int[S, A, N] and stage_names {attack index: [stage names]} give AutoAttack's per-stage shares;
  flags: `attacks.checks.Flag`s raised during the evaluation.
  """
  clean_accuracy = float(np.mean(clean))
  robust = np.asarray(robust, bool) & clean  # a point misclassified without attack never counts as robust
  rows = []
  for i, spec in enumerate(specs):
    per_seed = [float(np.mean(r)) for r in robust[:, i]]
    accuracy = float(np.mean(per_seed))
    row = {"attack": spec.name, "norm": spec.norm, "eps": spec.eps, "eps_label": spec.eps_label,
           "robust_accuracy": accuracy, "p_drop": p_drop(clean_accuracy, accuracy) if clean_accuracy > 0 else None,
           "seconds": float(seconds[i]), "spec": spec.text}
    if len(per_seed) > 1:
      row.update(robust_accuracy_seeds=per_seed, spread=max(per_seed) - min(per_seed))
    names = (stage_names or {}).get(i)
    if names and broken_by is not None:
      fooled = np.where(clean, np.asarray(broken_by)[:, i], -2)  # only clean-correct points can be fooled
      row["broken_by_stage"] = {name: float(np.mean(fooled == k)) for k, name in enumerate(names)}
    rows.append(row)
  return {"clean_accuracy": clean_accuracy, "num_examples": int(len(clean)), "num_seeds": int(robust.shape[0]),
          "attacks": rows, "checks": [f.to_json() for f in checks.unique(list(flags))]}


def write_outputs(out_dir, result: Dict[str, Any]) -> None:
  """robustness.md and robustness_vs_eps.png beside robustness.json (process 0 only)."""
  if jax.process_index() != 0:
    return
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  write_markdown(out_dir / "robustness.md", result)
  families = {}
  for row in result["attacks"]:
    family = attack_family(row["attack"], row["norm"], ":".join(row["spec"].split(":")[3:]))
    scale = 255.0 if row["norm"] == "linf" else 1.0
    points = families.setdefault(family, {}).setdefault("robust accuracy", [(0.0, result["clean_accuracy"])])
    points.append((row["eps"] * scale, row["robust_accuracy"]))
  plots.robustness_curves(out_dir / "robustness_vs_eps.png", families,
                          {f: "ε × 255" if "ℓ∞" in f else "ε" for f in families})


def _stage_names(stage_accuracy: dict) -> list:
  return [name for name in stage_accuracy if name != "clean"]


def _model_checks(logits_fn, images, labels, mesh, specs) -> list:
  """fra31's per-model checks on (up to) one batch of the first chunk, placed like the attacks place batches."""
  devices = mesh.shape[sharding.DATA_AXIS]
  n = min(len(images), 256) // devices * devices
  if n == 0:
    return []
  x = evaluate_lib.place(evaluate_lib.as_unit_float(images[:n]), mesh)
  y = evaluate_lib.place(np.asarray(labels[:n], np.int32), mesh)
  return checks.run_model_checks(logits_fn, x, y, num_autoattack=sum(s.name == "autoattack" for s in specs))


def evaluate(logits_fn, dataset, *, attacks_spec: str, batch_size: int, seed: int, mesh, num_examples: int = 0,
             chunk_size: int = 0, num_seeds: int = 1, progress_dir=None, provenance: Optional[dict] = None,
             run_checks: bool = True, on_unit: Optional[Callable] = None) -> Dict[str, Any]:
  """Clean and robust accuracy of `logits_fn` on the first `num_examples` of `dataset` (in-memory or streamed).

  The set is read in chunks of `chunk_size` examples (default 4 batches) through `eval.batches`; attack i of seed
  s runs on chunk c with key fold_in(fold_in(fold_in(PRNGKey(seed), s), i), c), so results do not depend on
  interruptions. With `progress_dir` (the run directory) each finished unit is saved there
  (`robustness_progress`) under `provenance`, and a re-run resumes after the last one. on_unit(seed, attack,
  chunk) is called after each unit (tests interrupt there). run_checks: fra31's evaluation checks.
  """
  specs = parse_attacks(attacks_spec)
  if num_seeds < 1:
    raise ValueError(f"num_seeds must be >= 1, got {num_seeds}.")
  chunk_size = chunk_size or 4 * batch_size
  base_key = jax.random.PRNGKey(seed)
  store = None if progress_dir is None else robustness_progress.Progress(
      progress_dir, {"provenance": provenance or {}, "chunk_size": chunk_size, "num_seeds": num_seeds})
  clean, flags, stage_names = [], [], {}
  robust = [[[] for _ in specs] for _ in range(num_seeds)]
  broken_by = [[[] for _ in specs] for _ in range(num_seeds)]
  seconds = np.zeros(len(specs))
  for chunk in eval_batches.eval_batches(dataset, chunk_size, mesh=mesh, num_examples=num_examples):
    images, labels = eval_batches.gather(chunk.images, chunk.mask), eval_batches.gather(chunk.labels, chunk.mask)
    _, ok = attacks.clean_accuracy(logits_fn, images, labels, batch_size=batch_size, mesh=mesh)
    clean.append(np.asarray(ok))
    if run_checks and chunk.index == 0:
      flags += _model_checks(logits_fn, images, labels, mesh, specs)
    for s in range(num_seeds):
      for i, spec in enumerate(specs):
        unit = store.load(s, i, chunk.index) if store else None
        if unit is None:
          start = time.perf_counter()
          key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base_key, s), i), chunk.index)
          flags_i, broken_i, stages = run_attack(spec, logits_fn, images, labels, batch_size=batch_size, key=key,
                                                 mesh=mesh)
          unit = {"robust": flags_i, "broken_by": broken_i, "seconds": time.perf_counter() - start, "stages": stages}
          if store:
            store.save(s, i, chunk.index, **unit)
        robust[s][i].append(unit["robust"])
        broken_by[s][i].append(unit["broken_by"])
        seconds[i] += unit["seconds"]
        if unit["stages"]:  # a chunk whose points all fall early runs fewer stages: keep the longest list
          stage_names[i] = max(stage_names.get(i, []), _stage_names(unit["stages"]), key=len)
          if run_checks:
            flags += checks.check_square_success(unit["stages"])
        if on_unit is not None:
          on_unit(s, i, chunk.index)
  for flag in checks.unique(flags):
    logging.warning("Robustness evaluation check (%s): %s", flag.check, flag.message)
  clean = np.concatenate(clean)
  robust = np.asarray([[np.concatenate(r) for r in per_seed] for per_seed in robust])
  broken_by = np.asarray([[np.concatenate(b) for b in per_seed] for per_seed in broken_by])
  result = summarise(specs, clean, robust, seconds, broken_by=broken_by, stage_names=stage_names, flags=flags)
  if progress_dir is not None and jax.process_index() == 0:
    np.savez(pathlib.Path(progress_dir) / "robustness_points.npz", clean=clean, robust=robust, broken_by=broken_by,
             specs=np.asarray([s.text for s in specs]))
  if store:
    store.finish()
  return result


def run_robustness_stage(logits_fn, images, labels, out_dir, *, attacks_spec: str, batch_size: int, seed: int,
                         mesh=None, max_examples=None) -> Dict[str, Any]:
  """`evaluate` on in-memory arrays; writes robustness.json / .md / _vs_eps.png into `out_dir`.

  Args:
    logits_fn: jittable f32[B, H, W, C] in [0, 1] -> f32[B, K] (the model normalises inside).
    images: uint8[N, H, W, C]; labels: int[N].
    attacks_spec: comma-separated "name:norm:eps[:key=value...]" list (see module docstring).
    batch_size: examples per attack call; seed: PRNG seed. mesh: Mesh with a data axis (default: all devices).
    max_examples: evaluate the first N only.
  """
  images, labels = np.asarray(images), np.asarray(labels)
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels; pass one label per image.")
  dataset = ArrayDataset(images=images, labels=labels, class_names=[str(i) for i in range(int(labels.max()) + 1)],
                         name="arrays")
  result = evaluate(logits_fn, dataset, attacks_spec=attacks_spec, batch_size=batch_size, seed=seed,
                    mesh=mesh or sharding.make_mesh(), num_examples=int(max_examples or 0))
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "robustness.json").write_text(json.dumps(result, indent=2))
  write_outputs(out_dir, result)
  return result


class RobustnessEvaluator:
  """robustness.json (+ .md, robustness_vs_eps.png): clean and robust accuracy per attack (Tables 1, 4, 5)."""
  name = "robustness"

  def __init__(self, config, *, mesh, **unused):
    del unused
    self.config, self.mesh = config, mesh

  @staticmethod
  def check(config) -> None:
    parse_attacks(config.robustness.attacks)

  def spec(self) -> dict:
    c = self.config.robustness
    return {"attacks": [s.text for s in parse_attacks(c.attacks)], "num_examples": c.num_examples,
            "batch_size": c.batch_size, "seed": self.config.seed, "num_seeds": c.num_seeds, "checks": c.checks}

  def run(self, classifier, dataset, run_dir) -> dict:
    c = self.config.robustness
    from csl_jax.eval import registry  # pylint: disable=g-import-not-at-top (registry imports this module)
    result = evaluate(classifier.logits, dataset, attacks_spec=c.attacks, batch_size=c.batch_size,
                      seed=self.config.seed, mesh=self.mesh, num_examples=c.num_examples, num_seeds=c.num_seeds,
                      progress_dir=run_dir, provenance=registry.provenance(self, classifier, dataset),
                      run_checks=c.checks)
    write_outputs(run_dir, result)
    return result

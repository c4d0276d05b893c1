"""Robustness-evaluation stage: clean and robust accuracy under a list of attacks (paper Tables 1–5).

The attack list is one string so it can be overridden from the command line, e.g. the CIFAR default
    "fgsm:linf:8/255,fgsm:linf:16/255,pgd:l2:0.1,pgd:l2:0.25,pgd:l1:8.0,autoattack:linf:1/255,..."
Each entry is `name:norm:eps[:key=value...]` (eps may be a fraction "a/b"; options are keyword
arguments of the attack, e.g. `pgd:linf:8/255:steps=10`). Outputs, in `out_dir` (see the runs contract):
robustness.json, robustness.md (table with ↓P_drop, paper Eq. 3) and robustness_vs_eps.png.
"""
import dataclasses
import functools
import inspect
import json
import pathlib
import time
from typing import Any, Dict, List

import jax
import numpy as np

from csl_jax import attacks
from csl_jax.analysis.report_tables import p_drop

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


def run_attack(spec: AttackSpec, logits_fn, images, labels, *, batch_size, key, mesh=None) -> float:
  """Robust accuracy of one attack over the set (per-example worst case for AutoAttack)."""
  if spec.name == "autoattack":
    result = attacks.run_autoattack(logits_fn, images, labels, eps=spec.eps, norm=spec.norm, key=key,
                                    batch_size=batch_size, mesh=mesh, progress=True, **spec.options)
    return float(np.mean(result.robust))
  attack_fn = functools.partial(_attack_function(spec.name), logits_fn, eps=spec.eps, norm=spec.norm,
                                **spec.options)
  accuracy, _ = attacks.robust_accuracy(attack_fn, logits_fn, images, labels, batch_size=batch_size, mesh=mesh,
                                        desc=spec.text, key=key)
  return accuracy


def write_markdown(path, result: Dict[str, Any]) -> None:
  """robustness.md: clean accuracy, then robust accuracy and ↓P_drop per attack, in percent."""
  lines = [f"Clean accuracy: {100 * result['clean_accuracy']:.2f}% on {result['num_examples']} examples.", "",
           "| Attack | Norm | ε | Robust acc. (%) | ↓P_drop (%) | Time (s) |", "|---|---|---|---|---|---|",
           f"| clean | – | 0 | {100 * result['clean_accuracy']:.2f} | 0.00 | – |"]
  for row in result["attacks"]:
    drop = "n/a" if row["p_drop"] is None else f"{100 * row['p_drop']:.2f}"
    lines.append(f"| {row['spec']} | {NORM_LABELS[row['norm']]} | {row['eps_label']} | "
                 f"{100 * row['robust_accuracy']:.2f} | {drop} | {row['seconds']:.1f} |")
  pathlib.Path(path).write_text("\n".join(lines) + "\n")


def plot_vs_eps(path, result: Dict[str, Any]) -> None:
  """robustness_vs_eps.png: one panel per norm (ε scales differ), one line per attack, clean at ε = 0."""
  import matplotlib  # noqa: PLC0415 (plotting is optional for library users)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  norms = [n for n in NORMS if any(row["norm"] == n for row in result["attacks"])]
  fig, axes = plt.subplots(1, len(norms), figsize=(4.5 * len(norms), 3.6), squeeze=False)
  for ax, norm in zip(axes[0], norms):
    families = sorted({row["attack"] for row in result["attacks"] if row["norm"] == norm})
    for attack in families:
      rows = sorted((r for r in result["attacks"] if r["norm"] == norm and r["attack"] == attack),
                    key=lambda r: r["eps"])
      eps = [0.0] + [r["eps"] for r in rows]
      acc = [100 * result["clean_accuracy"]] + [100 * r["robust_accuracy"] for r in rows]
      ax.plot(eps, acc, marker="o", label=attack)
    ax.set_xlabel(f"ε ({NORM_LABELS[norm]})")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_robustness_stage(logits_fn, images, labels, out_dir, *, attacks_spec: str, batch_size: int, seed: int,
                         mesh=None, max_examples=None) -> Dict[str, Any]:
  """Evaluates clean and robust accuracy for every attack in `attacks_spec`; writes the stage's files.

  Args:
    logits_fn: jittable f32[B, H, W, C] in [0, 1] -> f32[B, K] (the model normalises inside).
    images: uint8[N, H, W, C] or f32 in [0, 1]; labels: int[N].
    out_dir: run directory; robustness.json / .md / _vs_eps.png are written there.
    attacks_spec: comma-separated "name:norm:eps[:key=value...]" list (see module docstring).
    batch_size: examples per attack call; seed: PRNG seed (attack i uses fold_in(PRNGKey(seed), i)).
    mesh: optional Mesh with a "data" axis to shard batches over. max_examples: evaluate the first N only.
  Returns:
    The robustness.json dict.
  """
  specs = parse_attacks(attacks_spec)  # fail on a bad spec before any work
  images, labels = np.asarray(images), np.asarray(labels)
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels; pass one label per image.")
  if max_examples is not None:
    images, labels = images[:int(max_examples)], labels[:int(max_examples)]
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  clean, _ = attacks.clean_accuracy(logits_fn, images, labels, batch_size=batch_size, mesh=mesh)
  rows = []
  base_key = jax.random.PRNGKey(seed)
  for i, spec in enumerate(specs):
    start = time.perf_counter()
    robust = run_attack(spec, logits_fn, images, labels, batch_size=batch_size, key=jax.random.fold_in(base_key, i),
                        mesh=mesh)
    rows.append({"attack": spec.name, "norm": spec.norm, "eps": spec.eps, "eps_label": spec.eps_label,
                 "robust_accuracy": robust, "p_drop": p_drop(clean, robust) if clean > 0 else None,
                 "seconds": time.perf_counter() - start, "spec": spec.text})
  result = {"clean_accuracy": clean, "num_examples": int(images.shape[0]), "attacks": rows}
  (out_dir / "robustness.json").write_text(json.dumps(result, indent=2))
  write_markdown(out_dir / "robustness.md", result)
  plot_vs_eps(out_dir / "robustness_vs_eps.png", result)
  return result

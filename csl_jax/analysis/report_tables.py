"""The report's numbers: P_drop (paper Eq. 3), gap closed (Table 4's ↑x%), the Table 1/4-style tables and the
improvement of each Adaptive-FNC run over its base method (Table 5: A-RoCL vs RoCL, A-ACL vs ACL)."""
import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from csl_jax.analysis.runs import Run

_NORM_SYMBOL = {"linf": "ℓ∞", "l2": "ℓ2", "l1": "ℓ1"}
_ATTACK_ORDER = ("fgsm", "pgd", "apgd", "fab", "square", "autoattack")
CANCELLATION_METRICS = ("cancel_precision", "cancel_recall", "rho", "cancelled_per_anchor")


@dataclasses.dataclass
class Table:
  header: list
  rows: list


def p_drop(clean_accuracy: float, robust_accuracy: float) -> float:
  """Relative accuracy drop (paper Eq. 3): (P(y|x) − P(y|x+Δx)) / P(y|x); nan when clean accuracy is 0."""
  return (clean_accuracy - robust_accuracy) / clean_accuracy if clean_accuracy > 0 else float("nan")


def gap_closed(drop_method: float, drop_baseline: float, drop_reference: float) -> float:
  """Fraction of the robustness gap closed (paper Table 4, ↑x%), computed on P_drop values.

  (drop_baseline − drop_method) / (drop_baseline − drop_reference): 0 = as fragile as the baseline
  (SimCLR), 1 = as robust as the reference (SupCon); nan when the reference is not more robust than the
  baseline (drop_reference >= drop_baseline): then there is no gap to close.
  """
  denominator = drop_baseline - drop_reference
  return (drop_baseline - drop_method) / denominator if denominator > 1e-12 else float("nan")


def _attack_key(entry: dict) -> tuple:
  """(attack, norm, eps, options): entries with equal keys across runs share a table column.

  options are the `key=value` fields of the stage's spec string "name:norm:eps[:key=value...]", so
  e.g. PGD with 10 and with 40 steps stay in separate columns.
  """
  options = ":".join(str(entry.get("spec") or "").split(":")[3:])
  return (str(entry["attack"]).lower(), str(entry.get("norm", "linf")).lower(), round(float(entry["eps"]), 8),
          options)


def _column_order(key: tuple):
  attack, norm, eps, options = key
  attack_rank = _ATTACK_ORDER.index(attack) if attack in _ATTACK_ORDER else len(_ATTACK_ORDER)
  norm_rank = list(_NORM_SYMBOL).index(norm) if norm in _NORM_SYMBOL else len(_NORM_SYMBOL)
  return attack_rank, attack, norm_rank, norm, options, eps


def attack_family(attack: str, norm: str, options: str = "") -> str:
  """'FGSM-ℓ∞' style label of an (attack, norm) pair, with spec options appended as ' (steps=10)'."""
  name = {"autoattack": "AutoAttack", "square": "Square"}.get(attack, attack.upper())
  return f"{name}-{_NORM_SYMBOL.get(norm, norm)}" + (f" ({options})" if options else "")


def _eps_label(norm: str, eps: float) -> str:
  """Fallback when robustness.json has no eps_label: ℓ∞ budgets as k/255, others as plain numbers."""
  return f"{round(eps * 255, 3):g}/255" if norm == "linf" else f"{eps:g}"


def attacks_by_key(run: Run) -> dict:
  """{(attack, norm, eps, options): robustness.json entry} of one run."""
  entries = (run.robustness or {}).get("attacks") or []
  return {_attack_key(entry): entry for entry in entries}


def clean_accuracy(run: Run) -> Optional[float]:
  """Clean accuracy from robustness.json, falling back to linear_eval.json's top1."""
  for source, key in ((run.robustness, "clean_accuracy"), (run.linear_eval, "top1")):
    if source and source.get(key) is not None:
      return float(source[key])
  return None


def _entry_drop(entry: dict, clean: Optional[float]) -> float:
  if entry.get("p_drop") is not None:
    return float(entry["p_drop"])
  return p_drop(clean, float(entry["robust_accuracy"])) if clean is not None else float("nan")


def format_percent(value, digits: int = 1) -> str:
  return "—" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}"


def robustness_table(runs: Sequence[Run], labels: dict, baseline: Optional[Run],
                     reference: Optional[Run]) -> Table:
  """Table 1/4-style rows: method, clean accuracy, "robust ↓P_drop% ↑gap-closed%" per attack and ε."""
  per_run = {run.path: attacks_by_key(run) for run in runs}
  keys = sorted({key for attacks in per_run.values() for key in attacks}, key=_column_order)
  header = ["Method", "Clean"]
  for key in keys:
    entry = next(attacks[key] for attacks in per_run.values() if key in attacks)
    attack, norm, eps, options = key
    header.append(f"{attack_family(attack, norm, options)} ε={entry.get('eps_label') or _eps_label(norm, eps)}")
  anchors = None
  if baseline is not None and reference is not None:
    anchors = [{key: _entry_drop(e, clean_accuracy(r)) for key, e in attacks_by_key(r).items()}
               for r in (baseline, reference)]
  rows = []
  for run in runs:
    clean = clean_accuracy(run)
    row = [labels[run.path], format_percent(clean)]
    for key in keys:
      entry = per_run[run.path].get(key)
      if entry is None:
        row.append("—")
        continue
      drop = _entry_drop(entry, clean)
      spread = f" ± {format_percent(entry['spread'] / 2)}" if entry.get("spread") else ""
      cell = f"{format_percent(float(entry['robust_accuracy']))}{spread} ↓{format_percent(drop, 0)}%"
      if anchors and run.path not in (baseline.path, reference.path) and all(key in a for a in anchors):
        closed = gap_closed(drop, anchors[0][key], anchors[1][key])
        if math.isfinite(closed):
          cell += f" ↑{round(100 * closed):d}%"
      row.append(cell)
    rows.append(row)
  return Table(header, rows)


def _signed_points(value) -> str:
  return "—" if value is None or not math.isfinite(value) else f"{100 * value:+.1f}"


def improvement_table(pairs: Sequence[tuple], labels: dict) -> Table:
  """One row per (run, base run) pair (`runs.base_pairs`): clean accuracy difference, then per attack and ε
  "Δ robust / Δ P_drop", both in points (run − base): > 0 robust accuracy and < 0 P_drop mean the run is the more
  robust. Columns: the attacks both runs of some pair were evaluated with."""
  per_run = {run.path: attacks_by_key(run) for pair in pairs for run in pair}
  keys = sorted({key for run, base in pairs for key in per_run[run.path] if key in per_run[base.path]},
                key=_column_order)
  header = ["Run", "Base", "Clean Δ"]
  for key in keys:
    entry = next(per_run[run.path][key] for run, _ in pairs if key in per_run[run.path])
    attack, norm, eps, options = key
    header.append(f"{attack_family(attack, norm, options)} ε={entry.get('eps_label') or _eps_label(norm, eps)}")
  rows = []
  for run, base in pairs:
    clean = {r.path: clean_accuracy(r) for r in (run, base)}
    both = None not in clean.values()
    row = [labels[run.path], labels[base.path], _signed_points(clean[run.path] - clean[base.path] if both else None)]
    for key in keys:
      entries = per_run[run.path].get(key), per_run[base.path].get(key)
      if None in entries:
        row.append("—")
        continue
      robust = [float(e["robust_accuracy"]) for e in entries]
      drop = [_entry_drop(e, clean[r.path]) for e, r in zip(entries, (run, base))]
      row.append(f"{_signed_points(robust[0] - robust[1])} / {_signed_points(drop[0] - drop[1])}")
    rows.append(row)
  return Table(header, rows)


def robustness_families(runs: Sequence[Run], labels: dict) -> tuple:
  """({family: {run label: [(eps, robust accuracy), ...]}}, {family: x label}).

  (0, clean accuracy) starts each line; ℓ∞ budgets are given in units of 1/255, as the paper writes them.
  """
  families, xlabels = {}, {}
  for run in runs:
    clean = clean_accuracy(run)
    for (attack, norm, eps, options), entry in sorted(attacks_by_key(run).items(),
                                                      key=lambda kv: _column_order(kv[0])):
      family = attack_family(attack, norm, options)
      scale = 255.0 if norm == "linf" else 1.0
      xlabels[family] = "ε × 255" if norm == "linf" else "ε"
      points = families.setdefault(family, {}).setdefault(labels[run.path], [])
      if not points and clean is not None:
        points.append((0.0, clean))
      points.append((eps * scale, float(entry["robust_accuracy"])))
  return families, xlabels


def format_number(value, digits: int = 3) -> str:
  return "—" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"


def geometry_table(runs: Sequence[Run], labels: dict) -> Table:
  """Inter/intra-class distance, their ratio (paper Fig. 2), alignment and uniformity per run."""
  header = ["Method", "Inter-class", "Intra-class", "Ratio", "Alignment", "Uniformity", "N"]
  rows = []
  for run in runs:
    g = run.geometry
    ratio = format_number(g.get("ratio"), 2)
    rows.append([labels[run.path], format_number(g.get("inter_class")), format_number(g.get("intra_class")),
                 ratio if ratio == "—" else f"{ratio}×", format_number(g.get("alignment")), format_number(g.get("uniformity")),
                 str(g.get("num_examples", "—"))])
  return Table(header, rows)


def corruption_drops(corruptions: dict) -> tuple:
  """({corruption: drop at severity 1}, {corruption: drop averaged over severities}) from corruptions.json."""
  clean = corruptions.get("clean_accuracy")
  relative = dict(corruptions.get("relative_drop") or {})
  for name, by_severity in (corruptions.get("results") or {}).items():
    if name not in relative and clean:
      relative[name] = {str(s): p_drop(clean, acc) for s, acc in by_severity.items()}
  # Drops are null in the JSON when the clean accuracy was 0; those bars are left out.
  first = {name: float(drops["1"]) for name, drops in relative.items() if drops.get("1") is not None}
  mean = {name: float(v) for name, v in (corruptions.get("mean_relative_drop_by_corruption") or {}).items()
          if v is not None}
  for name, drops in relative.items():
    values = [float(v) for v in drops.values() if v is not None]
    if name not in mean and values:
      mean[name] = float(np.mean(values))
  return first, mean


def corruption_table(runs: Sequence[Run], labels: dict) -> tuple:
  """(Table of mean relative drops per run, {panel: {label: {corruption: drop}}} for `plots.corruption_bars`)."""
  panels = {"severity 1": {}, "mean over severities": {}}
  rows = []
  for run in runs:
    first, mean = corruption_drops(run.corruptions)
    panels["severity 1"][labels[run.path]] = first
    panels["mean over severities"][labels[run.path]] = mean
    rows.append([labels[run.path], format_percent(run.corruptions.get("clean_accuracy")),
                 format_percent(np.mean(list(first.values())) if first else None),
                 format_percent(np.mean(list(mean.values())) if mean else None), str(len(mean))])
  header = ["Method", "Clean", "Mean drop @ severity 1 (%)", "Mean drop, all severities (%)", "Corruptions"]
  return Table(header, rows), panels


def cancellation_series(records: Sequence[dict]) -> dict:
  """{metric: (steps, values)} of the non-null FNC statistics in pretrain_metrics.jsonl records."""
  series = {}
  for metric in CANCELLATION_METRICS:
    points = [(r["step"], r[metric]) for r in records if r.get(metric) is not None and r.get("step") is not None]
    if points:
      series[metric] = tuple(np.asarray(v, np.float64) for v in zip(*points))
  return series

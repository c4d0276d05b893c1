"""The report's numbers: P_drop (paper Eq. 3), gap closed (Table 4's ↑x%), the Table 1/4-style tables, the
improvement of each Adaptive-FNC run over its base method (Table 5: A-RoCL vs RoCL, A-ACL vs ACL), and the
mean ± sample standard deviation over the seeds of one experiment with the paper's key comparisons."""
import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from csl_jax.analysis.runs import Run, SeedGroup

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


def attack_label(key: tuple, entry: dict) -> str:
  """Column title of an attack key: 'FGSM-ℓ∞ ε=8/255'."""
  attack, norm, eps, options = key
  return f"{attack_family(attack, norm, options)} ε={entry.get('eps_label') or _eps_label(norm, eps)}"


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
  header += [attack_label(key, next(attacks[key] for attacks in per_run.values() if key in attacks)) for key in keys]
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
  header += [attack_label(key, next(per_run[run.path][key] for run, _ in pairs if key in per_run[run.path]))
             for key in keys]
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


# ----------------------------------------------------------------------------------------------------
# Seeds of one experiment (`runs.seed_groups`): mean ± sample standard deviation, and the paper's key comparisons.

# (method, compared with), by the method recorded in run.json: Table 1's SupCon and cross-entropy and Table 4's
# Adaptive FNC (any ρ schedule), each against SimCLR.
KEY_COMPARISONS = (("supcon", "simclr"), ("afnc", "simclr"), ("ce", "simclr"))


@dataclasses.dataclass(frozen=True)
class Spread:
  """Mean and sample standard deviation s = sqrt(Σ(x − mean)² / (n − 1)) of n values; s is nan when n < 2."""
  mean: float
  s: float
  n: int


def mean_and_spread(values) -> Spread:
  """Spread of the finite values among `values` (None and nan are left out)."""
  finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  return Spread(float(np.mean(finite)) if finite else float("nan"),
                float(np.std(finite, ddof=1)) if len(finite) >= 2 else float("nan"), len(finite))


def _run_values(run: Run) -> dict:
  """{metric: value} of one run: "linear", "knn", "ratio", "corruption" (mean over corruptions of the drop averaged
  over severities), ("robust", attack key), ("drop", attack key)."""
  linear = run.linear_eval or {}
  values = {"linear": linear.get("top1"), "knn": linear.get("knn_top1"), "ratio": (run.geometry or {}).get("ratio")}
  if run.corruptions:
    mean_drops = corruption_drops(run.corruptions)[1]
    values["corruption"] = float(np.mean(list(mean_drops.values()))) if mean_drops else None
  clean = clean_accuracy(run)
  for key, entry in attacks_by_key(run).items():
    values[("robust", key)] = float(entry["robust_accuracy"])
    values[("drop", key)] = _entry_drop(entry, clean)
  return values


def group_statistics(group: SeedGroup) -> dict:
  """{metric of `_run_values`: Spread over the group's runs that have it}. P_drop is averaged over the seeds' own
  P_drop values (not recomputed from mean accuracies)."""
  per_run = [_run_values(run) for run in group.runs]
  return {metric: mean_and_spread(values.get(metric) for values in per_run)
          for metric in {metric for values in per_run for metric in values}}


def format_spread(spread: Optional[Spread], group_size: int = 0, scale: float = 100.0, digits: int = 1) -> str:
  """"mean ± s" ("mean" alone from one value; "[k of n]" appended when only k of the group's n runs have it)."""
  if spread is None or spread.n == 0:
    return "—"
  text = f"{scale * spread.mean:.{digits}f}" + (f" ± {scale * spread.s:.{digits}f}" if spread.n >= 2 else "")
  return text + (f" [{spread.n} of {group_size}]" if spread.n < group_size else "")


def _attack_entries(groups: Sequence[SeedGroup]) -> dict:
  """{attack key: one robustness.json entry with that key} over every run of the groups (for column titles)."""
  entries = {}
  for group in groups:
    for run in group.runs:
      for key, entry in attacks_by_key(run).items():
        entries.setdefault(key, entry)
  return entries


def seed_table(groups: Sequence[SeedGroup], labels: dict) -> Table:
  """One row per seed group: its runs and seeds, then "mean ± s" of linear / kNN top-1, per attack "robust ±
  s ↓P_drop ± s%", the inter/intra ratio and the mean corruption drop (percent, ratio as is)."""
  entries = _attack_entries(groups)
  keys = sorted(entries, key=_column_order)
  header = (["Group", "Runs (seed)", "n seeds", "Linear top-1", "kNN top-1"]
            + [attack_label(key, entries[key]) for key in keys] + ["Inter/intra (×)", "Mean corruption drop (%)"])
  rows = []
  for group in groups:
    stats, size = group_statistics(group), len(group.runs)
    row = [group.label, ", ".join(f"{labels[run.path]} ({seed})" for run, seed in zip(group.runs, group.seeds)),
           str(size), format_spread(stats.get("linear"), size), format_spread(stats.get("knn"), size)]
    for key in keys:
      robust, drop = stats.get(("robust", key)), stats.get(("drop", key))
      if robust is None or robust.n == 0:
        row.append("—")
        continue
      count = f" [{robust.n} of {size}]" if robust.n < size else ""
      row.append(f"{format_spread(robust)} ↓{format_spread(drop)}%{count}")
    row += [format_spread(stats.get("ratio"), size, scale=1.0, digits=2), format_spread(stats.get("corruption"), size)]
    rows.append(row)
  return Table(header, rows)


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Group a vs group b for one attack: their mean P_drop over seeds (fractions, not percent).

  delta = mean_a − mean_b (< 0: a is the more robust); spread = s_a + s_b, a group with one seed counting s = 0
  (its spread is unknown: `spread_unknown`); exceeds_spread: |delta| > spread."""
  a: SeedGroup
  b: SeedGroup
  attack: str
  drop_a: Spread
  drop_b: Spread

  @property
  def delta(self) -> float:
    return self.drop_a.mean - self.drop_b.mean

  @property
  def spread(self) -> float:
    return sum(d.s if d.n >= 2 else 0.0 for d in (self.drop_a, self.drop_b))

  @property
  def spread_unknown(self) -> bool:
    return min(self.drop_a.n, self.drop_b.n) < 2

  @property
  def exceeds_spread(self) -> bool:
    return abs(self.delta) > self.spread


def _same_data(a: SeedGroup, b: SeedGroup) -> bool:
  info_a, info_b = a.runs[0].info, b.runs[0].info
  return all(info_a.get(field) == info_b.get(field) for field in ("dataset", "encoder"))


def key_comparisons(groups: Sequence[SeedGroup]) -> list:
  """[Comparison] for every pair of KEY_COMPARISONS among the groups trained on the same dataset with the same
  encoder (run.json), one per attack both groups have a P_drop for; ordered by KEY_COMPARISONS, groups, columns."""
  stats = [group_statistics(group) for group in groups]
  entries = _attack_entries(groups)
  comparisons, by_method = [], {}
  for group, group_stats in zip(groups, stats):
    by_method.setdefault(group.method, []).append((group, group_stats))
  for method, other in KEY_COMPARISONS:
    for a, stats_a in by_method.get(method, []):
      for b, stats_b in ((g, s) for g, s in by_method.get(other, []) if _same_data(a, g)):
        keys = {m[1] for m, spread in stats_a.items() if isinstance(m, tuple) and m[0] == "drop" and spread.n
                and stats_b.get(m) is not None and stats_b[m].n}
        comparisons += [Comparison(a, b, attack_label(key, entries[key]), stats_a[("drop", key)],
                                   stats_b[("drop", key)]) for key in sorted(keys, key=_column_order)]
  return comparisons


def comparison_table(comparisons: Sequence[Comparison]) -> Table:
  """One row per Comparison: both groups' mean P_drop ± s, Δ mean and s_a + s_b in points, and the verdict."""
  header = ["Method", "vs", "Attack", "Seeds", "P_drop method (%)", "P_drop vs (%)", "Δ mean (pts)",
            "s_a + s_b (pts)", "|Δ| > s_a + s_b"]
  rows = [[c.a.label, c.b.label, c.attack, f"{c.drop_a.n} / {c.drop_b.n}", format_spread(c.drop_a),
           format_spread(c.drop_b), _signed_points(c.delta), format_percent(c.spread),
           ("yes" if c.exceeds_spread else "no") + (" (a 1-seed spread is unknown)" if c.spread_unknown else "")]
          for c in comparisons]
  return Table(header, rows)

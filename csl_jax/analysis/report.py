"""Comparison report across runs: gather each run's stage outputs -> tables and figures -> Markdown and HTML.

gather:  `discover_runs`, `load_run`, `resolve_baseline_and_reference`
tables:  `p_drop` (paper Eq. 3), `gap_closed` (Table 4's ↑x%), `robustness_table`, `geometry_table`, ...
render:  `build_sections` (also writes the PNGs), `render_markdown`, `render_html`; `write_report` runs all.

Every section tolerates missing inputs: a run without e.g. robustness.json is left out of that section
with a one-line note, and a section without any input is replaced by a note, never an exception.
"""
import base64
import dataclasses
import html
import json
import math
import os
import pathlib
from typing import Optional, Sequence, Union

import numpy as np

from csl_jax.analysis import plots
from csl_jax.analysis import tsne

_NORM_SYMBOL = {"linf": "ℓ∞", "l2": "ℓ2", "l1": "ℓ1"}
_ATTACK_ORDER = ("fgsm", "pgd", "apgd", "apgd_ce", "apgd_t", "fab", "square", "autoattack")
# Paper's row order (Tables 1 and 4): supervised rows first, then SimCLR and the FNC family.
_METHOD_ORDER = ("ce", "supcon", "simclr", "fnc", "ifnd", "afnc")
_CANCELLATION_METRICS = ("cancel_precision", "cancel_recall", "rho", "cancelled_per_anchor")


@dataclasses.dataclass
class Run:
  """One run directory's outputs; a field is None when its file is missing or unreadable."""
  path: pathlib.Path
  name: str
  method: str
  info: dict
  linear_eval: Optional[dict] = None
  robustness: Optional[dict] = None
  geometry: Optional[dict] = None
  corruptions: Optional[dict] = None
  pretrain_metrics: Optional[list] = None
  problems: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Table:
  header: list
  rows: list


@dataclasses.dataclass
class Image:
  filename: str
  caption: str = ""


@dataclasses.dataclass
class Section:
  title: str
  blocks: list  # of str (a paragraph), Table or Image


# ----------------------------------------------------------------------------------------------- gather


def discover_runs(workdirs: Sequence[Union[str, pathlib.Path]]) -> list:
  """Every directory at or below the workdirs that contains run.json, resolved and de-duplicated."""
  found = []
  for workdir in workdirs:
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
      raise FileNotFoundError(f"{workdir}: not a directory; pass the workdir the pipeline wrote its runs to.")
    found.extend(path.parent.resolve() for path in workdir.rglob("run.json"))
  return sorted(set(found))


def _read_json(path: pathlib.Path, problems: list):
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as error:
    problems.append(f"{path.name} unreadable ({error})")
    return None


def _read_jsonl(path: pathlib.Path, problems: list):
  if not path.exists():
    return None
  records = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if line.strip():
      try:
        records.append(json.loads(line))
      except ValueError:
        problems.append(f"{path.name}: line {number} is not JSON (skipped)")
  return records


def load_run(path) -> Run:
  """Reads run.json and every stage output present in one run directory."""
  path = pathlib.Path(path).resolve()
  problems = []
  info = _read_json(path / "run.json", problems) or {}
  name = str(info.get("name") or path.name)
  return Run(path=path, name=name, method=str(info.get("method") or name).lower(), info=info,
             linear_eval=_read_json(path / "linear_eval.json", problems),
             robustness=_read_json(path / "robustness.json", problems),
             geometry=_read_json(path / "geometry.json", problems),
             corruptions=_read_json(path / "corruptions.json", problems),
             pretrain_metrics=_read_jsonl(path / "pretrain_metrics.jsonl", problems), problems=problems)


def _sort_key(run: Run):
  rank = _METHOD_ORDER.index(run.method) if run.method in _METHOD_ORDER else len(_METHOD_ORDER)
  return rank, run.name, str(run.path)


def label_runs(runs: Sequence[Run]) -> dict:
  """{run path: display label}: the run name, or its path relative to the common parent when names clash."""
  names = [run.name for run in runs]
  parent = pathlib.Path(os.path.commonpath([r.path for r in runs])) if runs else None
  labels = {}
  for run in runs:
    clash = names.count(run.name) > 1
    labels[run.path] = str(run.path.relative_to(parent)) if clash and run.path != parent else run.name
  return labels


def _find_run(spec: str, runs: list, role: str) -> Run:
  path = pathlib.Path(spec)
  if (path / "run.json").exists():
    path = path.resolve()
    for run in runs:
      if run.path == path:
        return run
    run = load_run(path)
    runs.append(run)
    return run
  matches = [run for run in runs if run.name == spec]
  if len(matches) == 1:
    return matches[0]
  raise ValueError(f"--{role} {spec!r}: expected a run directory containing run.json or the name of exactly one "
                   f"discovered run; found {len(matches)} runs named so among {sorted(r.name for r in runs)}.")


def resolve_baseline_and_reference(runs: list, baseline: Optional[str] = None,
                                   reference: Optional[str] = None) -> tuple:
  """(baseline Run | None, reference Run | None, notes). Defaults: the run with method "simclr" / "supcon".

  Explicit specs (a run directory or run name) that match nothing raise ValueError; a missing default
  only adds a note. A directory outside the workdirs is loaded and appended to `runs`.
  """
  notes = []
  chosen = []
  for spec, role, method in ((baseline, "baseline", "simclr"), (reference, "reference", "supcon")):
    if spec is not None:
      chosen.append(_find_run(spec, runs, role))
      continue
    candidates = sorted((r for r in runs if r.method == method), key=lambda r: (r.name != method, str(r.path)))
    if len(candidates) > 1:
      notes.append(f"Several {method} runs found; using {candidates[0].path} as the {role} "
                   f"(pass --{role} to choose).")
    chosen.append(candidates[0] if candidates else None)
  return chosen[0], chosen[1], notes


# ----------------------------------------------------------------------------------------------- tables


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


def _attacks_by_key(run: Run) -> dict:
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


def _percent(value, digits: int = 1) -> str:
  return "—" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}"


def robustness_table(runs: Sequence[Run], labels: dict, baseline: Optional[Run],
                     reference: Optional[Run]) -> Table:
  """Table 1/4-style rows: method, clean accuracy, "robust ↓P_drop% ↑gap-closed%" per attack and ε."""
  per_run = {run.path: _attacks_by_key(run) for run in runs}
  keys = sorted({key for attacks in per_run.values() for key in attacks}, key=_column_order)
  header = ["Method", "Clean"]
  for key in keys:
    entry = next(attacks[key] for attacks in per_run.values() if key in attacks)
    attack, norm, eps, options = key
    header.append(f"{attack_family(attack, norm, options)} ε={entry.get('eps_label') or _eps_label(norm, eps)}")
  anchors = None
  if baseline is not None and reference is not None:
    anchors = [{key: _entry_drop(e, clean_accuracy(r)) for key, e in _attacks_by_key(r).items()}
               for r in (baseline, reference)]
  rows = []
  for run in runs:
    clean = clean_accuracy(run)
    row = [labels[run.path], _percent(clean)]
    for key in keys:
      entry = per_run[run.path].get(key)
      if entry is None:
        row.append("—")
        continue
      drop = _entry_drop(entry, clean)
      cell = f"{_percent(float(entry['robust_accuracy']))} ↓{_percent(drop, 0)}%"
      if anchors and run.path not in (baseline.path, reference.path) and all(key in a for a in anchors):
        closed = gap_closed(drop, anchors[0][key], anchors[1][key])
        if math.isfinite(closed):
          cell += f" ↑{round(100 * closed):d}%"
      row.append(cell)
    rows.append(row)
  return Table(header, rows)


def robustness_families(runs: Sequence[Run], labels: dict) -> tuple:
  """({family: {run label: [(eps, robust accuracy), ...]}}, {family: x label}).

  (0, clean accuracy) starts each line; ℓ∞ budgets are given in units of 1/255, as the paper writes them.
  """
  families, xlabels = {}, {}
  for run in runs:
    clean = clean_accuracy(run)
    for (attack, norm, eps, options), entry in sorted(_attacks_by_key(run).items(),
                                                      key=lambda kv: _column_order(kv[0])):
      family = attack_family(attack, norm, options)
      scale = 255.0 if norm == "linf" else 1.0
      xlabels[family] = "ε × 255" if norm == "linf" else "ε"
      points = families.setdefault(family, {}).setdefault(labels[run.path], [])
      if not points and clean is not None:
        points.append((0.0, clean))
      points.append((eps * scale, float(entry["robust_accuracy"])))
  return families, xlabels


def _number(value, digits: int = 3) -> str:
  return "—" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"


def geometry_table(runs: Sequence[Run], labels: dict) -> Table:
  """Inter/intra-class distance, their ratio (paper Fig. 2), alignment and uniformity per run."""
  header = ["Method", "Inter-class", "Intra-class", "Ratio", "Alignment", "Uniformity", "N"]
  rows = []
  for run in runs:
    g = run.geometry
    ratio = _number(g.get("ratio"), 2)
    rows.append([labels[run.path], _number(g.get("inter_class")), _number(g.get("intra_class")),
                 ratio if ratio == "—" else f"{ratio}×", _number(g.get("alignment")), _number(g.get("uniformity")),
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
    rows.append([labels[run.path], _percent(run.corruptions.get("clean_accuracy")),
                 _percent(np.mean(list(first.values())) if first else None),
                 _percent(np.mean(list(mean.values())) if mean else None), str(len(mean))])
  header = ["Method", "Clean", "Mean drop @ severity 1 (%)", "Mean drop, all severities (%)", "Corruptions"]
  return Table(header, rows), panels


def cancellation_series(records: Sequence[dict]) -> dict:
  """{metric: (steps, values)} of the non-null FNC statistics in pretrain_metrics.jsonl records."""
  series = {}
  for metric in _CANCELLATION_METRICS:
    points = [(r["step"], r[metric]) for r in records if r.get(metric) is not None and r.get("step") is not None]
    if points:
      series[metric] = tuple(np.asarray(v, np.float64) for v in zip(*points))
  return series


# ----------------------------------------------------------------------------------------------- render


def _missing_note(runs: Sequence[Run], labels: dict, filename: str) -> list:
  names = [labels[run.path] for run in runs]
  return [f"No {filename} for: {', '.join(names)}."] if names else []


def _runs_section(runs, labels) -> Section:
  rows = []
  for run in runs:
    linear = run.linear_eval or {}
    rows.append([labels[run.path], run.method, str(run.info.get("dataset", "—")), str(run.info.get("encoder", "—")),
                 _percent(linear.get("top1")), _percent(linear.get("knn_top1")), str(run.path)])
  blocks = [Table(["Run", "Method", "Dataset", "Encoder", "Linear top-1", "kNN top-1", "Directory"], rows)]
  blocks += [f"{labels[run.path]}: {problem}." for run in runs for problem in run.problems]
  return Section("Runs", blocks)


def _robustness_section(runs, labels, out_dir, baseline, reference, notes) -> Section:
  have = [run for run in runs if _attacks_by_key(run)]
  if not have:
    return Section("Adversarial robustness", ["Skipped: no run has robustness.json with attack results."])
  blocks = ["Cells read “robust accuracy ↓P_drop”, P_drop = (clean − robust) / clean (paper Eq. 3)."]
  for role, run in (("baseline", baseline), ("reference", reference)):
    if run is not None and run not in have:
      blocks.append(f"Gap-closed column skipped: the {role} run {labels.get(run.path, run.name)} has no "
                    "robustness.json.")
  baseline, reference = (run if run in have else None for run in (baseline, reference))
  if baseline is not None and reference is not None:
    blocks.append(f"↑x% = share of the robustness gap closed, (P_drop[{labels[baseline.path]}] − P_drop) / "
                  f"(P_drop[{labels[baseline.path]}] − P_drop[{labels[reference.path]}]), as in paper Table 4 "
                  "(shown for rows other than the baseline and reference, and only in columns where the reference is "
                  "more robust than the baseline — elsewhere there is no gap to close).")
  elif not any("skipped" in str(block) for block in blocks):
    missing = " and ".join(role for role, run in (("baseline (simclr)", baseline), ("reference (supcon)", reference))
                           if run is None)
    blocks.append(f"Gap-closed column skipped: no {missing} run found (pass --baseline / --reference).")
  blocks += notes
  blocks.append(robustness_table(have, labels, baseline, reference))
  plots.robustness_curves(out_dir / "robustness_vs_eps.png", *robustness_families(have, labels))
  blocks.append(Image("robustness_vs_eps.png", "Robust accuracy vs ε (ε = 0 is clean accuracy)"))
  return Section("Adversarial robustness", blocks + _missing_note([r for r in runs if r not in have], labels,
                                                                   "robustness.json"))


def _geometry_section(runs, labels, out_dir) -> Section:
  have = [run for run in runs if run.geometry]
  with_tsne = [run for run in runs if (run.path / "tsne.npz").exists()]
  if not have and not with_tsne:
    return Section("Representation geometry", ["Skipped: no run has geometry.json or tsne.npz."])
  blocks = []
  if have:
    blocks.append("Inter / intra = mean distance between examples of different classes / of the same class "
                  "(paper Fig. 2: 1.98× SupCon vs 1.19× SimCLR on CIFAR-10). Alignment and uniformity as in "
                  "Wang & Isola (2020); lower is more aligned / more uniform.")
    blocks.append(geometry_table(have, labels))
  blocks += _missing_note([r for r in runs if r not in have], labels, "geometry.json")
  panels = []
  for run in with_tsne:
    try:
      embedding = tsne.load_tsne(run.path / "tsne.npz")
    except (OSError, KeyError, ValueError) as error:
      blocks.append(f"{labels[run.path]}: tsne.npz unreadable ({error}).")
      continue
    ratio = (run.geometry or {}).get("ratio")
    title = labels[run.path] + (f" (inter/intra {ratio:.2f}×)" if ratio is not None else "")
    panels.append((title, embedding["points"], embedding["labels"], embedding["class_names"]))
  if panels:
    plots.tsne_panels(out_dir / "tsne_panels.png", panels)
    blocks.append(Image("tsne_panels.png", "t-SNE of test-set encoder features"))
  return Section("Representation geometry", blocks)


def _corruption_section(runs, labels, out_dir) -> Section:
  have = [run for run in runs if run.corruptions]
  if not have:
    return Section("Common corruptions", ["Skipped: no run has corruptions.json."])
  table, panels = corruption_table(have, labels)
  blocks = ["Relative accuracy drop per corruption (P_drop of Eq. 3 with corrupted inputs), as in paper Fig. 3.",
            table]
  if any(panel for models in panels.values() for panel in models.values()):
    plots.corruption_bars(out_dir / "corruption_drops.png", panels)
    blocks.append(Image("corruption_drops.png", "Relative drop per corruption: severity 1 and mean over severities"))
  return Section("Common corruptions", blocks + _missing_note([r for r in runs if r not in have], labels,
                                                              "corruptions.json"))


def _cancellation_section(runs, labels, out_dir) -> Section:
  series = {labels[run.path]: cancellation_series(run.pretrain_metrics or []) for run in runs}
  series = {label: s for label, s in series.items() if "cancel_precision" in s}
  if not series:
    return Section("False-negative cancellation", ["Skipped: no run logged cancel_precision in "
                                                   "pretrain_metrics.jsonl (only FNC-family runs do)."])
  rows = [[label] + [_number(s[m][1][-1]) if m in s else "—" for m in _CANCELLATION_METRICS]
          for label, s in series.items()]
  plots.training_curves(out_dir / "cancellation.png", _CANCELLATION_METRICS, series)
  return Section("False-negative cancellation", [
      "Precision / recall of the cancelled negatives against the true labels, threshold ρ and cancelled "
      "negatives per anchor over pretraining; the table shows the last logged values.",
      Table(["Run", "Precision", "Recall", "ρ", "Cancelled / anchor"], rows),
      Image("cancellation.png", "Cancellation statistics over training")])


def _guarded(title: str, build) -> Section:
  # A malformed file from one stage must not take the whole report down; the note says what broke.
  try:
    return build()
  except (KeyError, TypeError, ValueError, IndexError, OSError) as error:
    return Section(title, [f"Skipped: could not build this section ({type(error).__name__}: {error})."])


def build_sections(runs: Sequence[Run], out_dir, *, baseline: Optional[Run] = None,
                   reference: Optional[Run] = None, notes: Sequence[str] = ()) -> list:
  """All report sections for `runs` (already sorted); writes their PNGs into out_dir."""
  out_dir = pathlib.Path(out_dir)
  if not runs:
    return [Section("Runs", ["No runs found (no directory with run.json under the given workdirs)."])]
  labels = label_runs(runs)
  return [
      _guarded("Runs", lambda: _runs_section(runs, labels)),
      _guarded("Adversarial robustness",
               lambda: _robustness_section(runs, labels, out_dir, baseline, reference, list(notes))),
      _guarded("Representation geometry", lambda: _geometry_section(runs, labels, out_dir)),
      _guarded("Common corruptions", lambda: _corruption_section(runs, labels, out_dir)),
      _guarded("False-negative cancellation", lambda: _cancellation_section(runs, labels, out_dir)),
  ]


def _markdown_cell(text: str) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(sections: Sequence[Section], title: str) -> str:
  """GitHub-flavoured Markdown; images are referenced by file name (they sit beside report.md)."""
  lines = [f"# {title}", ""]
  for section in sections:
    lines += [f"## {section.title}", ""]
    for block in section.blocks:
      if isinstance(block, Table):
        lines.append("| " + " | ".join(_markdown_cell(h) for h in block.header) + " |")
        lines.append("|" + "---|" * len(block.header))
        lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in block.rows]
      elif isinstance(block, Image):
        lines.append(f"![{block.caption}]({block.filename})")
      else:
        lines.append(str(block))
      lines.append("")
  return "\n".join(lines)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;white-space:nowrap}th{background:#f3f3f3}img{max-width:100%}figcaption{color:#555}")


def render_html(sections: Sequence[Section], title: str, image_dir) -> str:
  """Self-contained HTML page: the PNGs from image_dir are embedded as base64 data URIs."""
  esc = html.escape
  parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>"]
  for section in sections:
    parts.append(f"<h2>{esc(section.title)}</h2>")
    for block in section.blocks:
      if isinstance(block, Table):
        head = "".join(f"<th>{esc(str(h))}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in block.rows)
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
      elif isinstance(block, Image):
        data = base64.b64encode((pathlib.Path(image_dir) / block.filename).read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{esc(block.caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{esc(block.caption)}</figcaption></figure>")
      else:
        parts.append(f"<p>{esc(str(block))}</p>")
  parts.append("</body></html>")
  return "\n".join(parts)


def write_report(workdirs: Sequence, out_dir, *, baseline: Optional[str] = None, reference: Optional[str] = None,
                 title: str = "csl_jax comparison report") -> dict:
  """gather -> tables/figures -> report.md + report.html in out_dir. Returns {"markdown", "html", "runs"}."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  runs = [load_run(path) for path in discover_runs(workdirs)]
  base_run, ref_run, notes = resolve_baseline_and_reference(runs, baseline, reference)
  runs = sorted(runs, key=_sort_key)
  sections = build_sections(runs, out_dir, baseline=base_run, reference=ref_run, notes=notes)
  markdown_path = out_dir / "report.md"
  html_path = out_dir / "report.html"
  markdown_path.write_text(render_markdown(sections, title))
  html_path.write_text(render_html(sections, title, out_dir))
  return {"markdown": markdown_path, "html": html_path, "runs": [run.path for run in runs]}

"""Comparison report across runs: gather each run's stage outputs -> tables and figures -> Markdown and HTML.

gather:  `analysis.runs` (`discover_runs`, `load_run`, `resolve_baseline_and_reference`)
tables:  `analysis.report_tables` (`p_drop` (paper Eq. 3), `gap_closed` (Table 4's ↑x%), `robustness_table`,
         `improvement_table` (each Adaptive-FNC run minus its base method's run, paired by `runs.base_pairs`),
         `seed_table` and `key_comparisons` (mean ± s over the seeds grouped by `runs.seed_groups`), ...)
render:  this module: `build_sections` (also writes the PNGs), `render_markdown`, `render_html`;
         `write_report` runs all three steps.

Every section tolerates missing inputs: a run without e.g. robustness.json is left out of that section
with a one-line note, and a section without any input is replaced by a note, never an exception.
"""
import base64
import dataclasses
import html
import pathlib
from typing import Optional, Sequence

from csl_jax.analysis import plots
from csl_jax.analysis import tsne
# p_drop and gap_closed are re-exported: they are the report's public arithmetic.
from csl_jax.analysis.report_tables import (CANCELLATION_METRICS, KEY_COMPARISONS, Table, attacks_by_key,  # noqa: F401  (p_drop, gap_closed re-exported)
                                            cancellation_series, comparison_table, corruption_table, format_number,
                                            format_percent, gap_closed, geometry_table, improvement_table,
                                            key_comparisons, p_drop, robustness_families, robustness_table,
                                            seed_table)
from csl_jax.analysis.runs import (SEED_INDEPENDENT_KEYS, Run, base_pairs, discover_runs, label_runs, load_run,
                                   resolve_baseline_and_reference, seed_groups, sort_key)


@dataclasses.dataclass
class Image:
  filename: str
  caption: str = ""


@dataclasses.dataclass
class Section:
  title: str
  blocks: list  # of str (a paragraph), Table or Image


def _missing_note(runs: Sequence[Run], labels: dict, filename: str) -> list:
  names = [labels[run.path] for run in runs]
  return [f"No {filename} for: {', '.join(names)}."] if names else []


def _runs_section(runs, labels) -> Section:
  rows = []
  for run in runs:
    linear = run.linear_eval or {}
    rows.append([labels[run.path], run.title, run.settings, str(run.info.get("dataset", "—")),
                 str(run.info.get("encoder", "—")), format_percent(linear.get("top1")),
                 format_percent(linear.get("knn_top1")), run.status])
  blocks = [Table(["Run", "Method", "Settings", "Dataset", "Encoder", "Linear top-1", "kNN top-1", "Status"], rows)]
  unfinished = [labels[run.path] for run in runs if run.status != "finished"]
  if unfinished:
    blocks.append(f"Not finished or stale — their numbers below are partial: {', '.join(unfinished)}.")
  blocks += [f"{labels[run.path]}: {problem}." for run in runs for problem in run.problems]
  return Section("Runs", blocks)


def _robustness_section(runs, labels, out_dir, baseline, reference, notes) -> Section:
  have = [run for run in runs if attacks_by_key(run)]
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
  # (Published checkpoints alone, Tables 2 and 3, have no SimCLR / SupCon pair to measure a gap between.)
  elif not any("skipped" in str(block) for block in blocks) and not all(r.info.get("init_from") for r in have):
    missing = " and ".join(role for role, run in (("baseline (simclr)", baseline), ("reference (supcon)", reference))
                           if run is None)
    blocks.append(f"Gap-closed column skipped: no {missing} run found (pass --baseline / --reference).")
  blocks += notes
  blocks.append(robustness_table(have, labels, baseline, reference))
  if any(entry.get("spread") for run in have for entry in attacks_by_key(run).values()):
    blocks.append("“a ± b”: mean over attack seeds ± half the range between seeds (robustness.num_seeds).")
  for run in have:
    for flag in (run.robustness or {}).get("checks") or []:
      blocks.append(f"⚠ {labels[run.path]} — evaluation check “{flag['check']}”: {flag['message']}")
    for entry in attacks_by_key(run).values():
      if entry.get("broken_by_stage"):
        shares = ", ".join(f"{name} {100 * share:.1f}%" for name, share in entry["broken_by_stage"].items() if share)
        blocks.append(f"{labels[run.path]}, {entry.get('spec')}: points fooled per AutoAttack stage: {shares or 'none'}.")
  plots.robustness_curves(out_dir / "robustness_vs_eps.png", *robustness_families(have, labels))
  blocks.append(Image("robustness_vs_eps.png", "Robust accuracy vs ε (ε = 0 is clean accuracy)"))
  return Section("Adversarial robustness", blocks + _missing_note([r for r in runs if r not in have], labels,
                                                                   "robustness.json"))


def _improvement_section(runs, labels) -> Optional[Section]:
  """Table 5's comparison: each Adaptive-FNC run minus its base method's run; None when no run has a base."""
  pairs, notes = base_pairs(runs)
  if not pairs and not notes:
    return None
  blocks = ["Each run with Adaptive FNC minus the run of the method it adds it to (the registry's base: "
            "A-RoCL − RoCL, A-ACL − ACL(DS), Adaptive FNC − SimCLR), in points: clean accuracy, then per attack "
            "“Δ robust accuracy / Δ P_drop” (> 0 / < 0: the Adaptive-FNC run is the more robust)."] + notes
  have = [(run, base) for run, base in pairs if attacks_by_key(run) and attacks_by_key(base)]
  blocks += [f"{labels[run.path]} vs {labels[base.path]}: no robustness.json with attack results for both."
             for run, base in pairs if (run, base) not in have]
  if have:
    blocks.append(improvement_table(have, labels))
  return Section("Adaptive FNC vs its base method", blocks)


def _comparison_summary(comparisons) -> list:
  """One sentence per compared pair of groups: the attacks whose Δ mean P_drop is beyond / within the spread."""
  sentences = []
  for pair in dict.fromkeys((c.a.label, c.b.label) for c in comparisons):
    rows = [c for c in comparisons if (c.a.label, c.b.label) == pair]
    parts = []
    for verdict, rows_with in (("beyond", [c for c in rows if c.exceeds_spread]),
                               ("within", [c for c in rows if not c.exceeds_spread])):
      if rows_with:
        parts.append(f"{verdict} the spread for {len(rows_with)} of {len(rows)} attacks ("
                     + ", ".join(f"{c.attack}: {100 * c.delta:+.1f} pts" for c in rows_with) + ")")
    sentences.append(f"{pair[0]} − {pair[1]}, mean P_drop: " + "; ".join(parts) + ".")
  return sentences


def _seeds_section(runs, labels) -> Optional[Section]:
  """Mean ± s over the seeds of each experiment and the paper's key comparisons; None when no experiment has two
  seeds."""
  groups = seed_groups(runs)
  if not any(len(group.runs) >= 2 for group in groups):
    return None
  ignored = ", ".join(f"config.{key}" for key in SEED_INDEPENDENT_KEYS)
  blocks = [f"Runs are grouped when run.json records the same method and the same config apart from {ignored} and "
            "the settings of other methods (config.methods.<other>); run names play no part. Cells read “mean ± s” "
            "over a group's seeds, s = sample standard deviation √(Σ(x − mean)² / (n − 1)) (with n = 2 this is "
            "|x₁ − x₂| / √2); a group with one seed shows its value alone. Attack cells read “robust accuracy ± s "
            "↓P_drop ± s%”, P_drop averaged over the seeds' own P_drop (Eq. 3); “[k of n]”: only k runs have it.",
            seed_table(groups, labels)]
  for group in groups:
    repeated = sorted({str(seed) for seed in group.seeds if group.seeds.count(seed) > 1})
    if repeated:
      blocks.append(f"⚠ {group.label}: seed {', '.join(repeated)} appears more than once "
                    f"({', '.join(labels[run.path] for run in group.runs)}); its spread is not a seed spread.")
  unfinished = [labels[run.path] for group in groups if len(group.runs) > 1 for run in group.runs
                if run.status != "finished"]
  if unfinished:
    blocks.append(f"Not finished or stale — their groups' numbers are partial: {', '.join(unfinished)}.")
  comparisons = key_comparisons(groups)
  pairs = ", ".join(f"{a} vs {b}" for a, b in KEY_COMPARISONS)
  if not comparisons:
    return Section("Seeds: mean ± spread", blocks + [
        f"Key comparisons ({pairs}): no pair of groups with P_drop results on the same dataset and encoder."])
  blocks.append(f"Key comparisons ({pairs}; method as recorded in run.json, groups on the same dataset and encoder): "
                "Δ = mean P_drop of the method − mean P_drop of the compared group, in points (< 0: the method is "
                "the more robust). Rule: the difference exceeds the seed spread when |Δ| > s_a + s_b. This is a "
                "rough screen, not a significance test; with 2 seeds s itself is very uncertain.")
  one_seed = sorted({g.label for c in comparisons for g, d in ((c.a, c.drop_a), (c.b, c.drop_b)) if d.n < 2})
  if one_seed:
    blocks.append("Spread unknown (one seed; counted as s = 0, so its verdicts are optimistic): "
                  + "; ".join(one_seed) + ".")
  blocks += [comparison_table(comparisons)] + _comparison_summary(comparisons)
  return Section("Seeds: mean ± spread", blocks)


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
  status = {labels[run.path]: run.status for run in runs}
  rows = [[label + ("" if status[label] == "finished" else f" ({status[label]})")]
          + [format_number(s[m][1][-1]) if m in s else "—" for m in CANCELLATION_METRICS]
          for label, s in series.items()]
  plots.training_curves(out_dir / "cancellation.png", CANCELLATION_METRICS, series)
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
  sections = [
      _guarded("Runs", lambda: _runs_section(runs, labels)),
      _guarded("Adversarial robustness",
               lambda: _robustness_section(runs, labels, out_dir, baseline, reference, list(notes))),
      _guarded("Adaptive FNC vs its base method", lambda: _improvement_section(runs, labels)),
      _guarded("Representation geometry", lambda: _geometry_section(runs, labels, out_dir)),
      _guarded("Common corruptions", lambda: _corruption_section(runs, labels, out_dir)),
      _guarded("Seeds: mean ± spread", lambda: _seeds_section(runs, labels)),
      _guarded("False-negative cancellation", lambda: _cancellation_section(runs, labels, out_dir)),
  ]
  return [section for section in sections if section is not None]


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
  runs = sorted(runs, key=sort_key)
  sections = build_sections(runs, out_dir, baseline=base_run, reference=ref_run, notes=notes)
  markdown_path = out_dir / "report.md"
  html_path = out_dir / "report.html"
  markdown_path.write_text(render_markdown(sections, title))
  html_path.write_text(render_html(sections, title, out_dir))
  return {"markdown": markdown_path, "html": html_path, "runs": [run.path for run in runs]}

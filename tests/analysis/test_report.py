"""The report CLI renders fake-but-schema-valid runs and survives missing or broken files."""
import base64
import io
import json
import re
import shutil

from PIL import Image
import pytest

from csl_jax import report as cli
from csl_jax.analysis import report
from tests.analysis.fake_runs import FAKE_RESULTS, FAKE_TABLE5, PGD8, PGD16, write_fake_run

FGSM8 = ("fgsm", "linf", 8 / 255, "8/255")


def _drop(method, key=FGSM8):
  clean, attacks, _ = FAKE_RESULTS[method]
  return (clean - attacks[key]) / clean


def _section(markdown, title):
  return markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _rows(markdown, title="Adversarial robustness"):
  """{first cell: [cells]} of the Markdown table rows in one section."""
  rows = {}
  for line in _section(markdown, title).splitlines():
    if line.startswith("| ") and not line.startswith("|---"):
      cells = [c.strip() for c in line.strip("|").split(" | ")]
      rows.setdefault(cells[0], cells)
  return rows


def _run_cli(*args):
  return cli.main([str(a) for a in args])


def test_full_report_tables_and_figures(fake_workdir, tmp_path):
  # A second PGD-ℓ2 ε=0.25 entry with other attack options must get its own column, not overwrite.
  path = fake_workdir / "afnc" / "robustness.json"
  data = json.loads(path.read_text())
  data["attacks"].append(dict(data["attacks"][-1], spec="pgd:l2:0.25:steps=3", robust_accuracy=0.5, p_drop=None))
  path.write_text(json.dumps(data))
  out = tmp_path / "out"
  assert _run_cli(fake_workdir, "--out", out) == 0
  markdown = (out / "report.md").read_text()
  rows = _rows(markdown)

  header = rows["Method"]
  assert header[:3] == ["Method", "Clean", "FGSM-ℓ∞ ε=8/255"]
  assert header[-2:] == ["PGD-ℓ2 ε=0.25", "PGD-ℓ2 (steps=3) ε=0.25"]
  # p_drop missing from the JSON: recomputed with Eq. 3 from the clean accuracy.
  assert rows["afnc"][-1].startswith(f"50.0 ↓{100 * (0.935 - 0.5) / 0.935:.0f}%") and rows["simclr"][-1] == "—"
  gap = (_drop("simclr") - _drop("afnc")) / (_drop("simclr") - _drop("supcon"))
  assert rows["afnc"][2] == f"33.6 ↓{100 * _drop('afnc'):.0f}% ↑{100 * gap:.0f}%"
  assert rows["simclr"][2] == f"26.8 ↓{100 * _drop('simclr'):.0f}%"  # baseline and reference: no ↑.
  assert "↑" not in "".join(rows["supcon"])
  # Paper row order: supervised first, then SimCLR, then the FNC family.
  assert markdown.index("| supcon |") < markdown.index("| simclr |") < markdown.index("| afnc |")

  assert _rows(markdown, "Representation geometry")["simclr"][1:4] == ["0.595", "0.500", "1.19×"]
  # Last logged precision 0.5 + 0.004 · 90 and recall 0.2 + 0.005 · 90.
  assert _rows(markdown, "False-negative cancellation")["afnc"][1:3] == ["0.860", "0.650"]
  corruption = _rows(markdown, "Common corruptions")
  # Fake drops are 0.05 · s · (i + 1) (× 1.5 for simclr): severity-1 mean 0.1, all-severity mean 0.3.
  assert corruption["afnc"][2:4] == ["10.0", "30.0"] and corruption["simclr"][2:4] == ["15.0", "45.0"]

  images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
  assert sorted(images) == ["cancellation.png", "corruption_drops.png", "robustness_vs_eps.png", "tsne_panels.png"]
  html = (out / "report.html").read_text()
  embedded = re.findall(r"src='data:image/png;base64,([^']+)'", html)
  assert len(embedded) == 4 and "src='" not in re.sub(r"src='data:[^']+'", "", html)
  for name, data in zip(images, embedded):
    assert base64.b64decode(data) == (out / name).read_bytes()
    width, height = Image.open(io.BytesIO(base64.b64decode(data))).size
    assert width > 200 and height > 100


def test_missing_and_broken_files_give_notes_not_crashes(fake_workdir, tmp_path):
  (fake_workdir / "supcon" / "robustness.json").unlink()
  for method in FAKE_RESULTS:
    (fake_workdir / method / "corruptions.json").unlink()
  (fake_workdir / "simclr" / "tsne.npz").unlink()
  (fake_workdir / "afnc" / "geometry.json").write_text("{not json")
  (fake_workdir / "afnc" / "pretrain_metrics.jsonl").unlink()
  out = tmp_path / "out"
  assert _run_cli(fake_workdir, "--out", out) == 0
  markdown = (out / "report.md").read_text()
  assert "Gap-closed column skipped: the reference run supcon has no robustness.json." in markdown
  assert "↑" not in markdown
  assert "No robustness.json for: supcon." in markdown
  assert "Skipped: no run has corruptions.json." in markdown
  assert "Skipped: no run logged cancel_precision" in markdown
  assert "afnc: geometry.json unreadable" in markdown
  assert (out / "tsne_panels.png").exists() and not (out / "corruption_drops.png").exists()
  assert (out / "report.html").stat().st_size > 0


def test_missing_default_baseline_skips_gap_column(fake_workdir, tmp_path):
  shutil.rmtree(fake_workdir / "simclr")
  out = tmp_path / "out"
  assert _run_cli(fake_workdir, "--out", out) == 0
  markdown = (out / "report.md").read_text()
  assert "Gap-closed column skipped: no baseline (simclr) run found" in markdown
  assert "↑" not in markdown


def test_explicit_baseline_outside_the_workdirs(fake_workdir, tmp_path):
  elsewhere = tmp_path / "elsewhere"
  shutil.move(fake_workdir / "simclr", elsewhere / "simclr")
  out = tmp_path / "out"
  assert _run_cli(fake_workdir, "--baseline", elsewhere / "simclr", "--reference", "supcon", "--out", out) == 0
  rows = _rows((out / "report.md").read_text())
  assert "↑" in rows["afnc"][2] and "simclr" in rows


def test_bad_baseline_argument_is_a_clear_error(fake_workdir, tmp_path, capsys):
  assert _run_cli(fake_workdir, "--baseline", "no_such_run", "--out", tmp_path / "out") == 2
  assert "--baseline 'no_such_run'" in capsys.readouterr().err


def test_malformed_robustness_entry_only_skips_its_section(fake_workdir, tmp_path):
  path = fake_workdir / "afnc" / "robustness.json"
  data = json.loads(path.read_text())
  del data["attacks"][0]["robust_accuracy"]
  path.write_text(json.dumps(data))
  sections = report.build_sections(sorted(map(report.load_run, report.discover_runs([fake_workdir])),
                                          key=report.sort_key), tmp_path)
  by_title = {s.title: s for s in sections}
  assert "could not build this section (KeyError" in by_title["Adversarial robustness"].blocks[0]
  assert any(isinstance(b, report.Table) for b in by_title["Representation geometry"].blocks)


def test_empty_workdir_and_default_out(tmp_path):
  assert _run_cli(tmp_path) == 0
  assert "No runs found" in (tmp_path / "report" / "report.md").read_text()
  with pytest.raises(SystemExit):
    cli.parse_args([])


def test_nested_runs_are_found_and_clashing_names_get_paths(tmp_path):
  write_fake_run(tmp_path / "a", "simclr")
  write_fake_run(tmp_path / "b" / "deeper", "simclr", seed=1)
  runs = [report.load_run(p) for p in report.discover_runs([tmp_path])]
  assert sorted(report.label_runs(runs).values()) == ["a/simclr", "b/deeper/simclr"]


def test_adaptive_runs_are_compared_with_their_registry_base_method(tmp_path):
  """Table 5: A-RoCL − RoCL and A-ACL − ACL(DS) per attack. Run names say nothing about the method (pairing
  reads run.json's method and the registry's Method.base), and a second RoCL run in another workdir is a decoy:
  every fake number differs, so any other pairing changes a cell."""
  work = tmp_path / "table5"
  names = {"simclr": "r1", "supcon": "r2", "rocl": "r3", "arocl": "r4", "acl": "r5", "aacl": "r6"}
  for seed, (method, name) in enumerate(names.items()):
    write_fake_run(work, method, seed, name=name)
  write_fake_run(tmp_path / "other", "rocl", name="rocl", results=(0.7, {PGD8: 0.3, PGD16: 0.1}, 1.0))
  out = tmp_path / "out"
  assert _run_cli(work, tmp_path / "other", "--out", out) == 0
  markdown = (out / "report.md").read_text()
  rows = _rows(markdown, "Adaptive FNC vs its base method")
  assert rows["Run"][:5] == ["Run", "Base", "Clean Δ", "PGD-ℓ∞ ε=8/255", "PGD-ℓ∞ ε=16/255"]
  assert set(rows) == {"Run", "r4", "r6"}

  def expected(method, base):
    (clean, attacks, _), (base_clean, base_attacks, _) = FAKE_TABLE5[method], FAKE_TABLE5[base]
    cells = [f"{100 * (clean - base_clean):+.1f}"]
    for key in (PGD8, PGD16):
      drop, base_drop = (clean - attacks[key]) / clean, (base_clean - base_attacks[key]) / base_clean
      cells.append(f"{100 * (attacks[key] - base_attacks[key]):+.1f} / {100 * (drop - base_drop):+.1f}")
    return cells

  assert rows["r4"][1:] == ["r3"] + expected("arocl", "rocl")  # e.g. "+5.2 / -7.1": more robust, smaller drop
  assert rows["r6"][1:] == ["r5"] + expected("aacl", "acl")
  assert "r4: several rocl runs; compared with r3." in markdown
  # Without its base run, a note instead of a row.
  shutil.rmtree(work / "r5")
  assert _run_cli(work, "--out", out) == 0
  markdown = (out / "report.md").read_text()
  assert set(_rows(markdown, "Adaptive FNC vs its base method")) == {"Run", "r4"}
  assert "r6 (aacl): no acl run to compare it with." in markdown

"""Seeds of one experiment: grouped by run.json's config (never by run name), mean ± sample standard deviation per
group, and whether the key comparisons' Δ mean P_drop exceeds the seeds' spread (|Δ| > s_a + s_b).

run.json configs are real run configs of a Table 4-style study with second seeds (`config.resolve_runs`, as the
pipeline writes them); run directories get neutral names. Expected numbers are written out by hand below, from the
inputs, with s of two values = |x₁ − x₂| / √2.
"""
import copy
import json
import math

import pytest

from configs import cifar10_afnc
from csl_jax import config as config_lib
from csl_jax import methods
from csl_jax import report as cli
from csl_jax.analysis import report, report_tables, runs as runs_lib
from tests.analysis.fake_runs import write_fake_run

FGSM8 = ("fgsm", "linf", 8 / 255, "8/255")
PGD_L2 = ("pgd", "l2", 0.25, "0.25")
SIMCLR = "SimCLR (temperature=0.5)"
SUPCON = "SupCon (temperature=0.1)"
AFNC_099 = "SimCLR + Adaptive FNC (rho_final=0.7, rho_initial=0.99, rho_schedule=cosine, temperature=0.5)"
AFNC_FIXED = "SimCLR + Adaptive FNC (rho_final=0.9, rho_initial=0.9, rho_schedule=constant, temperature=0.5)"

# study run -> (directory name, clean = linear top-1, FGSM-ℓ∞ 8/255 robust, PGD-ℓ2 0.25 robust, inter/intra ratio,
# mean drop per corruption or None for the fake's default of 0.30 each).
RESULTS = {
    "simclr": ("b", 0.80, 0.20, 0.08, 1.20, (0.30, 0.20, 0.10)),         # P_drop 0.75, 0.90
    "simclr_seed1": ("e", 0.84, 0.2184, 0.042, 1.24, (0.36, 0.24, 0.12)),  # P_drop 0.74, 0.95
    "supcon": ("a", 0.90, 0.36, 0.18, 2.00, None),                         # P_drop 0.60, 0.80
    "supcon_seed1": ("f", 0.90, 0.342, 0.09, 1.90, None),                  # P_drop 0.62, 0.90
    "afnc_099to07": ("c", 0.80, 0.22, 0.064, 1.50, None),                  # P_drop 0.725, 0.92
    "afnc_fixed": ("d", 0.82, 0.246, 0.082, 1.40, None),                   # P_drop 0.70, 0.90
}


def _s2(x, y):
  """Sample standard deviation of two values."""
  return abs(x - y) / math.sqrt(2)


def _study_configs() -> dict:
  """{run name: (method, run.json config)} of one study: Tables 1 and 4's methods, Adaptive FNC with three ρ
  schedules, and a second seed (a run_overrides entry setting seed=1) of simclr, supcon and afnc_099to07."""
  study = config_lib.base_config()
  config_lib.smoke(study)
  specs = {"ce": ("ce", {}), "supcon": ("supcon", {}), "simclr": ("simclr", {}), "fnc": ("fnc", {}),
           "ifnd": ("ifnd", {}), "afnc_fixed": ("afnc", cifar10_afnc.SCHEDULES["fixed"]),
           "afnc_09to05": ("afnc", cifar10_afnc.SCHEDULES["0.9to0.5"]),
           "afnc_099to07": ("afnc", cifar10_afnc.SCHEDULES["0.99to0.7"])}
  specs.update({f"{name}_seed1": (specs[name][0], {**specs[name][1], "seed": 1})
                for name in ("simclr", "supcon", "afnc_099to07")})
  study.run_overrides = {name: config_lib.run_spec(method, settings) for name, (method, settings) in specs.items()}
  study.runs = ",".join(specs)
  return {name: (method, c.to_dict()) for name, method, c in config_lib.resolve_runs(study)}


def _write(root, name, method, config, results=(0.9, {FGSM8: 0.3}, 1.5)):
  return write_fake_run(root, method, name=name, config=config, title=methods.REGISTRY[method].title,
                        results=results)


def _load(*workdirs):
  return sorted((report.load_run(p) for p in report.discover_runs(workdirs)), key=report.sort_key)


@pytest.fixture
def seeded_study(tmp_path):
  work = tmp_path / "study"
  configs = _study_configs()
  for run, (name, clean, fgsm, pgd, ratio, corruption_drops) in RESULTS.items():
    method, config = configs[run]
    path = _write(work, name, method, config, results=(clean, {FGSM8: fgsm, PGD_L2: pgd}, ratio))
    if corruption_drops:
      corruptions = json.loads((path / "corruptions.json").read_text())
      corruptions["mean_relative_drop_by_corruption"] = dict(zip(("gaussian_noise", "fog", "brightness"),
                                                                 corruption_drops))
      (path / "corruptions.json").write_text(json.dumps(corruptions))
  return work


def test_mean_and_spread_is_the_sample_standard_deviation():
  spread = report_tables.mean_and_spread([1.0, None, 2.0, float("nan"), 4.0])
  assert spread.n == 3 and spread.mean == pytest.approx(7 / 3)
  assert spread.s == pytest.approx(math.sqrt((16 + 1 + 25) / 9 / 2))  # Σ(x − 7/3)² / (n − 1)
  one = report_tables.mean_and_spread([0.5])
  assert one.n == 1 and one.mean == 0.5 and math.isnan(one.s)


def test_seeds_are_grouped_by_config_never_by_name(tmp_path):
  configs = _study_configs()
  assert {"simclr_seed1", "supcon_seed1", "afnc_099to07_seed1", "afnc_fixed", "afnc_09to05"} <= set(configs)
  where = {}  # run directory -> what it is
  for i, (run, (method, config)) in enumerate(sorted(configs.items())):
    where[_write(tmp_path / "study", f"run{i:02d}", method, config)] = run
  # SimCLR started on its own later: another invocation (config.runs, run_overrides), data_dir, logging and
  # checkpoint cadence, another method's settings — all irrelevant to it — and seed 7: a third seed of SimCLR.
  alone = copy.deepcopy(configs["simclr"][1])
  alone.update(seed=7, runs="simclr", run_overrides={})
  alone["dataset"]["data_dir"] = "/elsewhere"
  alone["pretrain"].update(log_every=3, checkpoint_every=5, keep_checkpoints=1)
  alone["methods"]["afnc"]["rho_final"] = 0.5
  where[_write(tmp_path / "rerun", "simclr", "simclr", alone)] = "rerun"
  # Another learning rate is another experiment, although it is SimCLR with seed 1 and named like a seed run.
  other_lr = copy.deepcopy(configs["simclr"][1])
  other_lr.update(seed=1, runs="simclr_seed1")
  other_lr["optim"]["lr"] = 0.01
  where[_write(tmp_path / "lr", "simclr_seed1", "simclr", other_lr)] = "lr"
  # Runs without a config in run.json cannot be told apart: never grouped.
  for name in ("old1", "old2"):
    where[write_fake_run(tmp_path / name, "supcon", config={}, results=(0.9, {FGSM8: 0.3}, 1.5))] = name

  groups = runs_lib.seed_groups(_load(tmp_path))
  partition = sorted(sorted(where[run.path] for run in group.runs) for group in groups)
  assert partition == sorted([["rerun", "simclr", "simclr_seed1"], ["supcon", "supcon_seed1"],
                              ["afnc_099to07", "afnc_099to07_seed1"], ["afnc_09to05"], ["afnc_fixed"], ["ce"],
                              ["fnc"], ["ifnd"], ["lr"], ["old1"], ["old2"]])
  by_members = {tuple(sorted(where[run.path] for run in group.runs)): group for group in groups}
  assert by_members[("rerun", "simclr", "simclr_seed1")].seeds == [0, 1, 7]
  # Same method and settings, other config: the label names what differs.
  assert by_members[("rerun", "simclr", "simclr_seed1")].label == SIMCLR + " [optim.lr=0.002]"
  assert by_members[("lr",)].label == SIMCLR + " [optim.lr=0.01]"
  assert by_members[("afnc_fixed",)].label == AFNC_FIXED
  assert [group.method for group in groups][:3] == ["ce", "supcon", "supcon"]  # paper order


def test_seed_table_means_and_spreads(seeded_study):
  loaded = _load(seeded_study)
  groups = runs_lib.seed_groups(loaded)
  table = report_tables.seed_table(groups, runs_lib.label_runs(loaded))
  assert table.header == ["Group", "Runs (seed)", "n seeds", "Linear top-1", "kNN top-1", "FGSM-ℓ∞ ε=8/255",
                          "PGD-ℓ2 ε=0.25", "Inter/intra (×)", "Mean corruption drop (%)"]
  rows = {row[0]: row[1:] for row in table.rows}
  assert list(rows) == [SUPCON, SIMCLR, AFNC_099, AFNC_FIXED]
  # SimCLR: linear 0.80 / 0.84 -> 82.0 ± 2.83; FGSM robust 0.20 / 0.2184 -> 20.92 ± 1.30, P_drop 0.75 / 0.74 ->
  # 74.5 ± 0.71; PGD robust 0.08 / 0.042 -> 6.1 ± 2.69, P_drop 0.90 / 0.95 -> 92.5 ± 3.54; ratio 1.20 / 1.24;
  # corruption means 0.20 / 0.24.
  assert rows[SIMCLR] == ["b (0), e (1)", "2", "82.0 ± 2.8", "81.0 ± 2.8", "20.9 ± 1.3 ↓74.5 ± 0.7%",
                          "6.1 ± 2.7 ↓92.5 ± 3.5%", "1.22 ± 0.03", "22.0 ± 2.8"]
  # SupCon: FGSM robust 0.36 / 0.342 -> 35.1 ± 1.27, P_drop 0.60 / 0.62 -> 61.0 ± 1.41; PGD 0.18 / 0.09 ->
  # 13.5 ± 6.36, P_drop 0.80 / 0.90 -> 85.0 ± 7.07; ratio 2.0 / 1.9.
  assert rows[SUPCON] == ["a (0), f (1)", "2", "90.0 ± 0.0", "89.0 ± 0.0", "35.1 ± 1.3 ↓61.0 ± 1.4%",
                          "13.5 ± 6.4 ↓85.0 ± 7.1%", "1.95 ± 0.07", "30.0 ± 0.0"]
  # One seed: the value alone.
  assert rows[AFNC_099] == ["c (0)", "1", "80.0", "79.0", "22.0 ↓72.5%", "6.4 ↓92.0%", "1.50", "30.0"]
  assert rows[AFNC_FIXED][:2] == ["d (0)", "1"] and rows[AFNC_FIXED][4] == "24.6 ↓70.0%"


def test_key_comparisons_exceed_or_stay_within_the_seed_spread(seeded_study):
  comparisons = report_tables.key_comparisons(runs_lib.seed_groups(_load(seeded_study)))
  got = {(c.a.label, c.attack): c for c in comparisons}
  fgsm, pgd = "FGSM-ℓ∞ ε=8/255", "PGD-ℓ2 ε=0.25"
  # (Δ mean P_drop, s_a + s_b, exceeds, spread unknown); a one-seed group counts s = 0.
  expected = {
      (SUPCON, fgsm): (0.61 - 0.745, _s2(0.60, 0.62) + _s2(0.75, 0.74), True, False),       # 13.5 > 2.1
      # 7.5 is above each s alone (7.1, 3.5) but not above their sum 10.6: within the spread.
      (SUPCON, pgd): (0.85 - 0.925, _s2(0.80, 0.90) + _s2(0.90, 0.95), False, False),
      (AFNC_099, fgsm): (0.725 - 0.745, _s2(0.75, 0.74), True, True),                        # 2.0 > 0.7
      (AFNC_099, pgd): (0.92 - 0.925, _s2(0.90, 0.95), False, True),                         # 0.5 < 3.5
      (AFNC_FIXED, fgsm): (0.70 - 0.745, _s2(0.75, 0.74), True, True),
      (AFNC_FIXED, pgd): (0.90 - 0.925, _s2(0.90, 0.95), False, True),
  }
  assert list(got) == list(expected)  # SupCon first, then Adaptive FNC; no CE group here
  for key, (delta, spread, exceeds, unknown) in expected.items():
    c = got[key]
    assert c.b.label == SIMCLR
    assert (c.delta, c.spread) == (pytest.approx(delta, abs=1e-9), pytest.approx(spread, abs=1e-9)), key
    assert (c.exceeds_spread, c.spread_unknown) == (exceeds, unknown), key


def test_report_section_renders_and_only_with_seeds(seeded_study, fake_workdir, tmp_path):
  out = tmp_path / "out"
  assert cli.main([str(seeded_study), "--out", str(out)]) == 0
  markdown = (out / "report.md").read_text()
  section = markdown.split("## Seeds: mean ± spread\n", 1)[1].split("\n## ", 1)[0]
  assert "sample standard deviation √(Σ(x − mean)² / (n − 1))" in section and "|Δ| > s_a + s_b" in section
  assert f"Spread unknown (one seed; counted as s = 0, so its verdicts are optimistic): {AFNC_099}; {AFNC_FIXED}." \
      in section
  assert f"| {SUPCON} | {SIMCLR} | FGSM-ℓ∞ ε=8/255 | 2 / 2 | 61.0 ± 1.4 | 74.5 ± 0.7 | -13.5 | 2.1 | yes |" in section
  assert f"| {SUPCON} | {SIMCLR} | PGD-ℓ2 ε=0.25 | 2 / 2 | 85.0 ± 7.1 | 92.5 ± 3.5 | -7.5 | 10.6 | no |" in section
  assert (f"| {AFNC_099} | {SIMCLR} | FGSM-ℓ∞ ε=8/255 | 1 / 2 | 72.5 | 74.5 ± 0.7 | -2.0 | 0.7 | "
          "yes (a 1-seed spread is unknown) |") in section
  assert (f"{SUPCON} − {SIMCLR}, mean P_drop: beyond the spread for 1 of 2 attacks (FGSM-ℓ∞ ε=8/255: -13.5 pts); "
          "within the spread for 1 of 2 attacks (PGD-ℓ2 ε=0.25: -7.5 pts).") in section
  # One run per experiment: no seeds section.
  assert cli.main([str(fake_workdir), "--out", str(tmp_path / "single")]) == 0
  assert "## Seeds" not in (tmp_path / "single" / "report.md").read_text()

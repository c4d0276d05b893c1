"""End to end: the quickstart pipeline (SimCLR, SupCon and cross-entropy, every evaluator) and its report."""
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from configs import quickstart
from csl_jax import config as config_lib
from csl_jax import data, methods, pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]

# Chance is 10%. A linear probe on a *randomly initialised* small CNN already reaches ~60-70% on
# digits, so the bar for a SimCLR encoder is set above that: pretraining must have taught it something.
SIMCLR_LINEAR_BAR = 0.80


@pytest.fixture(scope="module")
def quickstart_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("quickstart")
  config = quickstart.get_config()
  config.unlock()
  config.runs = "simclr,supcon,ce"
  config.pretrain.epochs = 20
  config.linear_eval.epochs = 60
  config.robustness.attacks = "fgsm:linf:8/255,pgd:linf:8/255:steps=5,pgd:l2:0.5:steps=5"
  config.robustness.num_examples = 120
  config.corruptions.names = "gaussian_noise,brightness"
  config.corruptions.severities = "1,5"
  config.lock()
  results = pipeline.run(config, workdir)
  return workdir, results


def test_simclr_on_digits_beats_the_bar(quickstart_workdir):
  _, results = quickstart_workdir
  for run in ("simclr", "supcon", "ce"):
    assert results[run]["linear_eval"]["top1"] >= SIMCLR_LINEAR_BAR, (run, results[run]["linear_eval"])
  assert results["ce"]["linear_eval"]["protocol"] == "end_to_end"
  assert results["simclr"]["linear_eval"]["protocol"] == "linear_probe"


def test_every_stage_wrote_consistent_results(quickstart_workdir):
  workdir, _ = quickstart_workdir
  for run in ("simclr", "supcon", "ce"):
    run_dir = workdir / run
    robustness = json.loads((run_dir / "robustness.json").read_text())
    for attack in robustness["attacks"]:
      assert attack["robust_accuracy"] <= robustness["clean_accuracy"] + 1e-9, attack
    geometry = json.loads((run_dir / "geometry.json").read_text())
    assert geometry["ratio"] > 1.0  # trained encoders separate digit classes at least a little
    corruptions = json.loads((run_dir / "corruptions.json").read_text())
    assert set(corruptions["results"]) == {"gaussian_noise", "brightness"}
    metrics = [json.loads(l) for l in (run_dir / "pretrain_metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss"] < metrics[0]["loss"], "the contrastive loss must decrease"


def test_rerun_skips_current_results_and_recomputes_stale_ones(quickstart_workdir, tmp_path):
  workdir, results = quickstart_workdir
  run_dir = tmp_path / "simclr"
  shutil.copytree(workdir / "simclr", run_dir)
  config = quickstart.get_config()
  config.runs = "simclr"
  config.pretrain.epochs = 20
  config.linear_eval.epochs = 60
  config.robustness.attacks = "fgsm:linf:8/255,pgd:linf:8/255:steps=5,pgd:l2:0.5:steps=5"
  config.robustness.num_examples = 120
  config.corruptions.names = "gaussian_noise,brightness"
  config.corruptions.severities = "1,5"
  (name, method, run_config), = config_lib.validate(config)
  train, test = pipeline.load_datasets(config, tmp_path)
  stats = data.channel_stats("digits", train_dataset=train)
  mesh = pipeline.sharding.make_mesh()
  before = {p: p.stat().st_mtime_ns for p in run_dir.glob("*.json") if p.name != "run.json"}
  rerun = pipeline.run_one(run_config, name, methods.get(method), run_dir, train, test, mesh, mean=stats[0],
                           std=stats[1])
  assert rerun == results["simclr"]
  assert all(p.stat().st_mtime_ns == t for p, t in before.items()), "current results must not be recomputed"
  # A changed attack list recomputes robustness.json only.
  config.robustness.attacks = "fgsm:linf:8/255"
  (name, method, run_config), = config_lib.validate(config)
  rerun = pipeline.run_one(run_config, name, methods.get(method), run_dir, train, test, mesh, mean=stats[0],
                           std=stats[1])
  assert [a["spec"] for a in rerun["robustness"]["attacks"]] == ["fgsm:linf:8/255"]
  changed = sorted(p.name for p, t in before.items() if p.stat().st_mtime_ns != t)
  assert changed == ["robustness.json"], changed


def test_report_renders_from_quickstart_runs(quickstart_workdir, tmp_path):
  workdir, _ = quickstart_workdir
  out = tmp_path / "report"
  subprocess.run([sys.executable, "-m", "csl_jax.report", str(workdir), "--out", str(out)], check=True, cwd=REPO)
  text = (out / "report.md").read_text()
  assert "simclr" in text and "supcon" in text and "Cross-entropy" in text
  assert (out / "report.html").stat().st_size > 1000
  assert list(out.glob("*.png"))


def test_cli_rejects_unknown_config_key(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "csl_jax.main", "--config", "configs/quickstart.py", "--workdir",
                         str(tmp_path), "--config.optim.lrr=0.1"], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode != 0
  assert "lrr" in proc.stderr and "lr" in proc.stderr

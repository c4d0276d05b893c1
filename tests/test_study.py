"""A whole-table study config: `cifar10_table4.py:smoke` trains every run into one workdir, the report shows one
row per run with that run's ρ, and a changed training length makes every stage of a run recompute."""
import json
import subprocess
import sys

import numpy as np
import pytest

from configs import cifar10_table4
from csl_jax import losses, pipeline
from tests.test_quickstart import REPO


def _study_config(**changes):
  c = cifar10_table4.get_config("smoke")
  c.robustness.attacks = "fgsm:linf:8/255"
  c.robustness.num_examples = 16
  c.robustness.batch_size = 16
  c.corruptions.enabled = False
  for key, value in changes.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("table4")
  return workdir, pipeline.run(_study_config(), workdir)


def test_every_run_trained_into_one_workdir_with_its_own_rho(study):
  workdir, results = study
  assert set(results) == set(c.strip() for c in cifar10_table4.get_config().runs.split(","))
  assert {"simclr", "supcon", "fnc", "afnc_fixed", "afnc_09to05", "afnc_099to07"} <= set(results)
  expected = {"afnc_fixed": (0.9, 0.9, "constant"), "afnc_09to05": (0.9, 0.5, "cosine"),
              "afnc_099to07": (0.99, 0.7, "cosine")}
  for run, (first, last, kind) in expected.items():
    metrics = [json.loads(line) for line in (workdir / run / "pretrain_metrics.jsonl").read_text().splitlines()]
    info = json.loads((workdir / run / "run.json").read_text())
    total, every = info["total_steps"], info["config"]["pretrain"]["log_every"]
    assert info["method"] == "afnc" and [m["step"] for m in metrics] == list(range(every, total + 1, every))
    # Each logged ρ is the mean over its interval of ρ(step) at the step's start (ρ(0) = first, ρ(total) = last).
    schedule = losses.rho_schedule(first, last, total_steps=total, kind=kind)
    for m in metrics:
      steps = range(m["step"] - every, m["step"])
      assert m["rho"] == pytest.approx(np.mean([float(schedule(s)) for s in steps]), abs=1e-5), (run, m)
  for run in ("simclr", "supcon", "fnc"):
    metrics = (workdir / run / "pretrain_metrics.jsonl").read_text()
    assert '"rho"' not in metrics, f"{run} has no ρ schedule and must not log one"
  assert '"cancel_precision"' in (workdir / "fnc" / "pretrain_metrics.jsonl").read_text()


def test_report_has_one_row_per_run_with_its_rho(study, tmp_path):
  workdir, _ = study
  subprocess.run([sys.executable, "-m", "csl_jax.report", str(workdir), "--out", str(tmp_path)], check=True,
                 cwd=REPO)
  text = (tmp_path / "report.md").read_text()
  runs_table = text.split("## Runs")[1].split("##")[0]
  rows = {line.split("|")[1].strip(): line for line in runs_table.splitlines()[3:] if line.startswith("| ")}
  assert "Run" not in rows and "ifnd" in rows
  assert set(rows) >= {"simclr", "supcon", "fnc", "afnc_fixed", "afnc_09to05", "afnc_099to07"}
  assert "rho_final=0.9" in rows["afnc_fixed"] and "rho_schedule=constant" in rows["afnc_fixed"]
  assert "rho_final=0.5" in rows["afnc_09to05"] and "rho_initial=0.9," in rows["afnc_09to05"]
  assert "rho_initial=0.99" in rows["afnc_099to07"] and "rho_final=0.7" in rows["afnc_099to07"]
  assert "top_k=10" in rows["fnc"] and "threshold=0.7" in rows["fnc"]
  assert all("finished" in row for row in rows.values()), rows
  robustness = text.split("## Adversarial robustness")[1].split("##")[0]
  assert all(f"| {run} |" in robustness for run in rows)


def test_longer_training_recomputes_every_stage(study):
  workdir, results = study
  # One run of the study, selected on the command line, still goes to <workdir>/<run>; trained longer, its
  # step-12 results are replaced, not kept.
  c = _study_config(**{"pretrain.num_steps": 14})
  c.runs = "afnc_fixed"
  again = pipeline.run(c, workdir)
  for stage in ("linear_eval", "robustness", "geometry"):
    assert again["afnc_fixed"][stage]["provenance"]["model"]["checkpoint_step"] == 14, stage
    assert results["afnc_fixed"][stage]["provenance"]["model"]["checkpoint_step"] == 12, stage

"""Bad inputs and changed workdirs through the whole pipeline: each ends in a clear message or the right result.

Unit-level cases live beside their modules (tests/test_configs.py: config ranges and arguments;
tests/losses/test_degenerate_inputs.py; tests/attacks/test_bad_inputs.py; test_checkpoint_recovery.py and
test_workdir_lock.py here); these need a real run directory.
"""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from configs import quickstart
from csl_jax import pipeline
from csl_jax.analysis import runs as runs_lib
from csl_jax.train import checkpoint, workdir_lock
from tests.test_quickstart import REPO


def _tiny(**changes):
  c = quickstart.get_config("smoke")
  c.runs = "simclr"
  c.pretrain.num_steps = 4
  c.pretrain.checkpoint_every = 2
  c.evaluators = "linear_eval"
  for key, value in changes.items():
    *sections, leaf = key.split(".")
    node = c
    for section in sections:
      node = node[section]
    node[leaf] = value
  return c


def test_changed_model_config_is_reported_as_a_mismatch_naming_the_field(tmp_path):
  pipeline.run(_tiny(), tmp_path)
  steps = checkpoint.manager(tmp_path / "checkpoints").all_steps()
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"model.projection_dim.*32.*48"):
    pipeline.run(_tiny(**{"model.projection_dim": 48}), tmp_path)
  assert checkpoint.manager(tmp_path / "checkpoints").all_steps() == steps, "good checkpoints must stay"


def test_second_run_on_a_locked_workdir_fails_fast(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
      import sys
      from csl_jax.train import workdir_lock
      with workdir_lock.WorkdirLock(sys.argv[1], process_index=0):
        print("locked", flush=True)
        sys.stdin.read()
      """), str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f"PID {holder.pid}"):
      pipeline.run(_tiny(), tmp_path)
    assert not (tmp_path / "checkpoints").exists(), "nothing may be written while another run holds the workdir"
  finally:
    holder.stdin.close()
    holder.wait(timeout=60)


def test_mixed_size_folder_with_image_size_trains_and_caches_under_data_dir(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  for split, count in (("train", 40), ("test", 16)):
    for label in ("a", "b"):
      (tmp_path / "images" / split / label).mkdir(parents=True)
      for i in range(count // 2):
        size = (12 + i % 5, 10 + i % 3)
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(
            tmp_path / "images" / split / label / f"{i}.png")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))  # a cache written to ~/.cache would land here
  config = _tiny(**{"dataset.source": f"folder:{tmp_path / 'images'}", "dataset.image_size": 8,
                    "dataset.data_dir": str(tmp_path / "data"), "pretrain.batch_size": 16,
                    "eval_batch_size": 16, "linear_eval.batch_size": 16})
  result = pipeline.run(config, tmp_path / "work")
  assert 0 <= result["simclr"]["linear_eval"]["top1"] <= 1
  assert list((tmp_path / "data").rglob("*")) and not (tmp_path / "home").exists()


def test_report_marks_unfinished_and_stale_runs(tmp_path):
  pipeline.run(_tiny(), tmp_path)
  info = json.loads((tmp_path / "run.json").read_text())
  assert runs_lib.load_run(tmp_path).status == "finished"
  info["total_steps"] = 8  # as if the run had been asked for 8 steps and stopped at 4
  (tmp_path / "run.json").write_text(json.dumps(info))
  assert runs_lib.load_run(tmp_path).status == "unfinished (trained 4/8 steps)"
  metrics = tmp_path / "pretrain_metrics.jsonl"
  metrics.write_text(metrics.read_text() + json.dumps({"step": 8, "loss": 1.0}) + "\n")
  assert runs_lib.load_run(tmp_path).status == "stale: linear_eval.json not from step 8"


def test_cli_names_the_valid_fields_of_a_misspelt_override(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "csl_jax.main", "--config", "configs/quickstart.py", "--workdir",
                         str(tmp_path), "--config.optim.learning_rate=0.1"], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode != 0
  assert "config.optim has no field 'learning_rate'" in proc.stderr and "lr, lr_scaling" in proc.stderr
  proc = subprocess.run([sys.executable, "-m", "csl_jax.main", "--config", "configs/cifar10_simclr.py:shrot",
                         "--workdir", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode != 0 and "Unknown config argument(s) ['shrot']" in proc.stderr
  assert not list(tmp_path.iterdir()), "nothing may be written for a rejected command line"

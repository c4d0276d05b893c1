"""The training loop's TensorBoard writer and progress line: readable event files, no TensorFlow import."""
import logging
import subprocess
import sys

import numpy as np
import pytest

from csl_jax.train import metric_writer, progress


def test_scalars_round_trip_through_tensorboard(tmp_path):
  event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
  writer = metric_writer.MetricWriter(str(tmp_path / "tb"))
  losses = [2.5, 1.25, 0.625]
  for step, loss in zip((10, 20, 30), losses):
    writer.write_scalars(step, {"loss": np.float32(loss), "rho": 1.0 - step / 100})
  writer.close()
  reader = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
  reader.Reload()
  assert sorted(reader.Tags()["scalars"]) == ["loss", "rho"]
  assert [(e.step, e.value) for e in reader.Scalars("loss")] == list(zip((10, 20, 30), losses))
  np.testing.assert_allclose([e.value for e in reader.Scalars("rho")], [0.9, 0.8, 0.7], rtol=1e-6)


def test_records_are_on_disk_before_close(tmp_path):
  """A run that dies after a log interval keeps that interval's scalars (each write is flushed)."""
  writer = metric_writer.MetricWriter(str(tmp_path))
  size = (tmp_path / writer.path.split("/")[-1]).stat().st_size
  writer.write_scalars(5, {"loss": 1.0})
  assert (tmp_path / writer.path.split("/")[-1]).stat().st_size > size


def test_logging_only_writer_writes_no_file(tmp_path):
  writer = metric_writer.MetricWriter(None)
  writer.write_scalars(1, {"loss": 1.0})
  writer.close()
  assert not list(tmp_path.iterdir())


def test_the_training_loop_does_not_import_tensorflow():
  code = "import sys; import csl_jax.pipeline, csl_jax.train.loop; print('tensorflow' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  assert out.strip() == "False"


class _Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


class _Recorder:
  def __init__(self):
    self.scalars = []

  def write_scalars(self, step, scalars):
    self.scalars.append((step, scalars))


def test_progress_rate_and_eta_exclude_the_first_step(caplog):
  caplog.set_level(logging.INFO)
  lines = lambda: [r.getMessage() for r in caplog.records if r.getMessage().startswith("run: step")]  # noqa: E731
  clock, recorder = _Clock(), _Recorder()
  report = progress.StepProgress("run", 100, every_secs=30.0, writer=recorder, clock=clock)
  clock.now += 50.0  # the first step compiles: 50 s
  report(1)
  for step in range(2, 42):  # then 0.5 s per step
    clock.now += 0.5
    report(step)
  assert not lines()  # 20 s since the first step: below every_secs
  for step in range(42, 101):
    clock.now += 0.5
    report(step)
  assert len(lines()) == 2  # at step 61 (30 s after step 1) and at the end
  assert lines()[0] == "run: step 61/100 (61.0%), 2 steps/s, ETA 20s"
  assert lines()[-1].startswith("run: step 100/100 (100.0%), 2 steps/s, ETA 0s")
  assert [step for step, _ in recorder.scalars] == [61, 100]
  np.testing.assert_allclose([s["steps_per_sec"] for _, s in recorder.scalars], 2.0)


@pytest.mark.parametrize("seconds,text", [(42, "42s"), (307, "5m07s"), (7380, "2h03m"), (-3, "0s")])
def test_format_duration(seconds, text):
  assert progress.format_duration(seconds) == text

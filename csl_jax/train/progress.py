"""A periodic progress line (step, %, steps/s, ETA) for the training loop.

Replaces clu's `periodic_actions.ReportProgress` (which imports TensorFlow through clu's metric writers; see
`metric_writer`) with the same information: every `every_secs` a line such as
"simclr: step 250/780 (32.1%), 0.16 steps/s, ETA 55m12s", and `steps_per_sec` written to the run's metrics.
The rate is measured from the first step this process ran, so the first step's compilation does not count.
"""
import time
from typing import Callable, Optional

from absl import logging


def format_duration(seconds: float) -> str:
  """2h03m, 5m07s or 42s."""
  seconds = int(round(max(seconds, 0.0)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class StepProgress:
  """Call with each finished step number; logs (and writes) progress at most every `every_secs`, and at the end.

  name: prefix of the line (the run's name). writer: optional `metric_writer.MetricWriter` for steps_per_sec.
  clock: seconds (injectable for tests).
  """

  def __init__(self, name: str, total_steps: int, *, every_secs: float = 30.0, writer=None,
               clock: Callable[[], float] = time.monotonic):
    self.name, self.total_steps, self.every_secs = name, int(total_steps), float(every_secs)
    self._writer, self._clock = writer, clock
    self._first: Optional[tuple] = None  # (step, time) when the first step of this process finished
    self._last_report = None

  def __call__(self, step: int):
    now = self._clock()
    if self._first is None:
      self._first = self._last_report = (step, now)
      return
    done = step >= self.total_steps
    if not done and now - self._last_report[1] < self.every_secs:
      return
    first_step, first_time = self._first
    rate = (step - first_step) / max(now - first_time, 1e-9)
    eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
    line = (f"{self.name}: step {step}/{self.total_steps} ({100.0 * step / self.total_steps:.1f}%), "
            f"{rate:.3g} steps/s, ETA {format_duration(eta) if eta != float('inf') else '?'}")
    logging.info(line)
    if self._writer is not None:
      self._writer.write_scalars(step, {"steps_per_sec": rate})
    self._last_report = (step, now)

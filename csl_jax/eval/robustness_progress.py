"""Resumable robustness evaluations: per (seed, attack, chunk) results kept on disk as they finish.

A full AutoAttack of an ImageNet model takes hours; on preemptible machines it must resume. The robustness
stage evaluates its set in chunks; after each (seed, attack, chunk) unit it writes that unit's per-point
results here (atomically: a temporary file, then a rename), and a re-run with the same inputs loads the
finished units instead of attacking again. Each unit's PRNG key depends only on (seed, attack, chunk), so the
final numbers equal an uninterrupted run's.

Layout: <run_dir>/robustness_progress/meta.json (what the units were computed from; a mismatch discards them)
and one unit-s<seed>-a<attack>-c<chunk>.npz per finished unit.
"""
import json
import os
import pathlib
import shutil
from typing import Optional

import jax
import numpy as np
from absl import logging

DIRNAME = "robustness_progress"


class Progress:
  """The finished units of one evaluation, identified by `meta` (its provenance)."""

  def __init__(self, run_dir, meta: dict):
    self.dir = pathlib.Path(run_dir) / DIRNAME
    self.meta = json.loads(json.dumps(meta))
    self.writer = jax.process_index() == 0
    meta_path = self.dir / "meta.json"
    if self.dir.exists():
      try:
        stored = json.loads(meta_path.read_text())
      except (OSError, ValueError):
        stored = None
      if stored != self.meta:
        logging.warning("%s: discarding partial robustness results of other inputs (model, attacks or data "
                        "changed).", self.dir)
        if self.writer:
          shutil.rmtree(self.dir)
      else:
        logging.info("%s: resuming; %d attack chunks already done.", self.dir, len(list(self.dir.glob("unit-*.npz"))))
    if self.writer and not self.dir.exists():
      self.dir.mkdir(parents=True)
      _atomic_write(meta_path, json.dumps(self.meta, indent=2).encode())

  def _path(self, seed: int, attack: int, chunk: int) -> pathlib.Path:
    return self.dir / f"unit-s{seed}-a{attack}-c{chunk}.npz"

  def load(self, seed: int, attack: int, chunk: int) -> Optional[dict]:
    """The stored unit as {"robust": bool[n], "broken_by": int16[n], "seconds": float, "stages": dict}, or None."""
    path = self._path(seed, attack, chunk)
    if not path.exists():
      return None
    try:
      with np.load(path) as stored:
        return {"robust": stored["robust"].astype(bool), "broken_by": stored["broken_by"],
                "seconds": float(stored["seconds"]), "stages": json.loads(str(stored["stages"]))}
    except (OSError, ValueError, KeyError) as error:  # a torn file from a crash: recompute the unit
      logging.warning("%s unreadable (%s); recomputing it.", path, error)
      return None

  def save(self, seed: int, attack: int, chunk: int, *, robust, broken_by, seconds: float, stages: dict) -> None:
    if not self.writer:
      return
    import io  # pylint: disable=g-import-not-at-top
    buffer = io.BytesIO()
    np.savez(buffer, robust=np.asarray(robust, bool), broken_by=np.asarray(broken_by, np.int16),
             seconds=np.float64(seconds), stages=np.str_(json.dumps(stages)))
    _atomic_write(self._path(seed, attack, chunk), buffer.getvalue())

  def finish(self) -> None:
    """Removes the unit files once the stage's result is written."""
    if self.writer and self.dir.exists():
      shutil.rmtree(self.dir)


def _atomic_write(path: pathlib.Path, payload: bytes) -> None:
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    f.write(payload)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)

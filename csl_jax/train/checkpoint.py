"""Checkpoints in the workdir (orbax): periodic saves, resume from the newest *readable* one.

Preemptible TPUs are the normal case, so a re-run of the same command resumes. A newest checkpoint
that cannot be read (a half-written or corrupted directory) is reported and the previous one is
used; nothing is deleted, so the user can inspect it.
"""
import pathlib
import time

import jax
import orbax.checkpoint as ocp
from absl import logging


class CheckpointCorruptError(RuntimeError):
  pass


def manager(directory, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  directory = pathlib.Path(directory).absolute()
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  mngr.save(int(step), args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, abstract_state):
  """Returns (state, step) from the newest readable checkpoint, or (None, 0) when there is none.

  abstract_state: a pytree of jax.ShapeDtypeStruct (with shardings) describing the state.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      state = mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # orbax raises many types for unreadable data; report all of them.
      failures.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
      logging.warning("Checkpoint at step %d in %s is unreadable (%s); trying an older one.",
                      step, mngr.directory, e)
      continue
    if failures:
      _set_aside(mngr, [s for s in steps if s > step])
      logging.warning("Resumed from step %d; unreadable newer checkpoints were renamed *.unreadable: %s",
                      step, failures)
    return state, step
  if failures:
    raise CheckpointCorruptError(
        f"No readable checkpoint in {mngr.directory}: " + "; ".join(failures) +
        ". Move the directory away to start from scratch.")
  return None, 0


def _set_aside(mngr, steps):
  """Renames unreadable step directories so new saves can reuse the step numbers; keeps the data."""
  if jax.process_index() == 0:
    for step in steps:
      path = pathlib.Path(mngr.directory) / str(step)
      if path.exists():
        path.rename(path.with_name(f"{step}.unreadable.{int(time.time())}"))
  mngr.reload()


def abstract_like(state):
  """ShapeDtypeStructs with the shardings of `state`, the restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)

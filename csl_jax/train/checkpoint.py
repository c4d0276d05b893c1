"""Checkpoints in the workdir (orbax): periodic saves, resume from the newest *readable* one.

Preemptible TPUs are the normal case, so a re-run of the same command resumes. `restore_latest` tells three
cases apart:

* incomplete step directories (empty, or without the saved item: a kill during a copy, a stray `mkdir`) and
  unreadable ones (corrupted files) are renamed `<step>.incomplete.<time>` / `<step>.unreadable.<time>` and
  the next older checkpoint is used. Nothing is deleted.
* a readable checkpoint whose tree structure or shapes differ from the state being trained (the model config
  changed) raises `CheckpointMismatchError` naming the differing leaves; nothing is renamed for it.
* no checkpoint: (None, 0).

orbax (0.12) writes a step to `<step>.orbax-checkpoint-tmp/` (the item inside as `default.orbax-checkpoint-tmp/`,
then `default/` with `commit_success.txt`), writes `<step>.orbax-checkpoint-tmp/commit_success.txt` and renames
the directory to `<step>/`. A kill during a save leaves the `*.orbax-checkpoint-tmp*` directory, which orbax
never lists as a step and removes when it saves that step again.

`save` refuses a non-finite state; `all_finite` is the cheap on-device check behind it.
"""
import functools
import json
import pathlib
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

ITEM = "default"  # orbax's directory name for the single item of a step (CheckpointManager default-item mode).
TMP_MARKER = ".orbax-checkpoint-tmp"  # in the names of orbax's in-progress save directories.
# Config fields that change the trained state's tree structure or shapes (prefixes end with ".").
MODEL_CONFIG_FIELDS = ("model.", "dataset.source", "dataset.image_size", "optim.name", "optim.grad_clip")
_MAX_LISTED = 12  # differing leaves listed in a mismatch message.


class CheckpointCorruptError(RuntimeError):
  """No checkpoint of the workdir could be read (the unreadable ones were set aside, not deleted)."""


class CheckpointMismatchError(ValueError):
  """A readable checkpoint holds a differently shaped state: the model or optimiser config changed."""


class NonFiniteStateError(FloatingPointError):
  """`save` was asked to write a state with NaN or inf values."""


# ----------------------------------------------------------------------------------------------------
# Manager, save.


def manager(directory, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """A synchronous CheckpointManager for one unnamed pytree item per step.

  The item handler is fixed here, so the manager's single-item mode does not depend on which step directory
  orbax happens to look at first (an empty step directory used to flip it and make every step unreadable).
  """
  directory = pathlib.Path(directory).absolute()
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options, item_handlers=ocp.StandardCheckpointHandler())


def save(mngr: ocp.CheckpointManager, step: int, state, *, check_finite: bool = True) -> None:
  """Writes `state` as step `step` and waits for it; refuses (NonFiniteStateError) a non-finite state."""
  if check_finite and not all_finite(state):
    raise NonFiniteStateError(
        f"Refusing to save a non-finite training state (NaN or inf) as step {step}. The last good checkpoint "
        f"(step {mngr.latest_step()}) is kept in {mngr.directory}.")
  mngr.save(int(step), args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()


@jax.jit
def _finite_reduce(leaves):
  return functools.reduce(jnp.logical_and, [jnp.isfinite(x).all() for x in leaves])


def _is_float(x) -> bool:
  dtype = x.dtype if hasattr(x, "dtype") else np.result_type(x)
  return jnp.issubdtype(dtype, jnp.inexact)


def all_finite(tree) -> bool:
  """True when every float leaf of `tree` (arrays, Python floats) is finite; integer leaves are ignored.

  One jitted reduction on the devices holding the leaves; only the final bool comes to the host.
  """
  leaves = [x for x in jax.tree.leaves(tree) if _is_float(x)]
  return True if not leaves else bool(_finite_reduce(leaves))


def abstract_like(state):
  """ShapeDtypeStructs with the shardings of `state`, the restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


# ----------------------------------------------------------------------------------------------------
# Restore.


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, *,
                   describe_mismatch: Optional[Callable[[], str]] = None):
  """Returns (state, step) from the newest readable checkpoint, or (None, 0) when there is none.

  abstract_state: a pytree of jax.ShapeDtypeStruct (with shardings) describing the state.
  describe_mismatch: called only for a CheckpointMismatchError; its text (e.g. `describe_config_change`) is
    appended to the message.
  Incomplete and unreadable steps newer than the one restored are renamed aside (kept). Raises
  CheckpointMismatchError when the newest usable checkpoint has another tree structure or shapes, and
  CheckpointCorruptError when checkpoints exist but none is readable (they are renamed aside first, so a
  re-run starts from step 0).
  """
  mngr.reload()
  _warn_in_progress(pathlib.Path(mngr.directory))
  expected = _leaf_shapes(abstract_state)
  bad = {}  # step -> ("incomplete" | "unreadable", reason)
  for step in sorted(mngr.all_steps(), reverse=True):
    reason = incomplete_reason(pathlib.Path(mngr.directory) / str(step))
    if reason:
      bad[step] = ("incomplete", reason)
      continue
    try:
      stored = _leaf_shapes(_item_tree(mngr.item_metadata(step)))
    except Exception as e:  # orbax raises many types for unreadable data; report all of them.
      bad[step] = ("unreadable", f"metadata: {type(e).__name__}: {str(e)[:200]}")
      continue
    differences = shape_differences(stored, expected)
    if differences:
      _set_aside(mngr, bad)
      raise CheckpointMismatchError(_mismatch_message(mngr, step, differences, describe_mismatch))
    try:
      state = mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # pylint: disable=broad-except
      bad[step] = ("unreadable", f"{type(e).__name__}: {str(e)[:200]}")
      logging.warning("Checkpoint at step %d in %s is unreadable (%s); trying an older one.", step,
                      mngr.directory, e)
      continue
    if bad:
      moved = _set_aside(mngr, bad)
      logging.warning("Resumed from step %d in %s; set aside newer checkpoints that could not be used (kept, "
                      "not deleted): %s", step, mngr.directory, _describe_bad(bad, moved))
    return state, step
  if not bad:
    return None, 0
  moved = _set_aside(mngr, bad)
  if all(kind == "incomplete" for kind, _ in bad.values()):
    logging.warning("No complete checkpoint in %s; starting from step 0. Set aside (kept): %s", mngr.directory,
                    _describe_bad(bad, moved))
    return None, 0
  raise CheckpointCorruptError(
      f"No checkpoint in {mngr.directory} could be read: {_describe_bad(bad, moved)}. Nothing was deleted: they "
      "were renamed as shown, so re-running starts this run from step 0. If the read failure was transient (a "
      "filesystem outage), rename a directory back to its step number to resume from it instead.")


def incomplete_reason(step_dir) -> Optional[str]:
  """Why `step_dir` cannot hold a complete checkpoint (cheap file-system checks), or None.

  Catches what orbax lists as a step but cannot restore: an empty directory, no saved item, no item metadata.
  Damaged data files are only found by reading them (restore).
  """
  step_dir = pathlib.Path(step_dir)
  if not step_dir.is_dir():
    return "not a directory"
  if not any(step_dir.iterdir()):
    return "empty directory"
  if not (step_dir / ITEM).is_dir():
    return f"no '{ITEM}' item (a partial save or copy)"
  if not (step_dir / ITEM / "_METADATA").is_file():
    return f"no '{ITEM}/_METADATA' (a partial save or copy)"
  return None


def in_progress_dirs(directory) -> list:
  """orbax's temporary directories of interrupted (or running) saves: `<step>.orbax-checkpoint-tmp*`."""
  directory = pathlib.Path(directory)
  return sorted(p for p in directory.iterdir() if TMP_MARKER in p.name) if directory.is_dir() else []


def _warn_in_progress(directory: pathlib.Path) -> None:
  tmp = in_progress_dirs(directory)
  if tmp:
    logging.warning("Ignoring %d unfinished checkpoint save(s) in %s (a save was interrupted): %s. orbax "
                    "replaces them when it saves those steps again.", len(tmp), directory,
                    ", ".join(p.name for p in tmp))


def _set_aside(mngr, bad: dict) -> dict:
  """Renames the step directories of `bad` to `<step>.<kind>.<time>` (process 0); returns {step: new name}."""
  moved = {}
  directory = pathlib.Path(mngr.directory)
  for step, (kind, _) in bad.items():
    path = directory / str(step)
    target = path.with_name(f"{step}.{kind}.{int(time.time())}")
    n = 1
    while target.exists():
      target, n = path.with_name(f"{step}.{kind}.{int(time.time())}.{n}"), n + 1
    moved[step] = target.name
    if jax.process_index() == 0 and path.exists():
      path.rename(target)
  if bad and jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("csl_jax_checkpoint_set_aside")
  if bad:
    mngr.reload()
  return moved


def _describe_bad(bad: dict, moved: dict) -> str:
  return "; ".join(f"step {step} ({reason}) -> {moved.get(step, '?')}"
                   for step, (_, reason) in sorted(bad.items(), reverse=True))


# ----------------------------------------------------------------------------------------------------
# Structure mismatch.


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _leaf_shapes(tree) -> dict:
  """{"params.Dense_0.kernel": shape} for every leaf; the path style of orbax's own array names."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {".".join(_key_name(k) for k in path): tuple(getattr(leaf, "shape", ()))
          for path, leaf in flat}


def _item_tree(metadata):
  """The pytree of array metadata inside what `CheckpointManager.item_metadata` returns."""
  return getattr(metadata, "tree", metadata)


def shape_differences(stored: dict, expected: dict) -> list:
  """[(path, stored shape or None, expected shape or None)] for leaves missing on a side or shaped differently.

  Parameters come first (they name the layer that changed), then the optimiser state and the rest.
  """
  paths = sorted(set(stored) | set(expected), key=lambda p: (not p.startswith("params."), p))
  return [(p, stored.get(p), expected.get(p)) for p in paths if stored.get(p) != expected.get(p)]


def _fmt_shape(shape) -> str:
  return "absent" if shape is None else str(tuple(shape))


def _mismatch_message(mngr, step, differences, describe_mismatch) -> str:
  lines = [f"  {path}: checkpoint {_fmt_shape(s)}, expected {_fmt_shape(e)}"
           for path, s, e in differences[:_MAX_LISTED]]
  if len(differences) > _MAX_LISTED:
    lines.append(f"  ... and {len(differences) - _MAX_LISTED} more")
  text = (f"The checkpoint at step {step} in {mngr.directory} is readable but holds a differently shaped state "
          f"than the one being trained (the model or optimiser config changed; the checkpoint is not corrupt). "
          f"{len(differences)} differing leaves:\n" + "\n".join(lines))
  if describe_mismatch is not None:
    try:
      extra = describe_mismatch()
    except Exception as e:  # pylint: disable=broad-except
      extra = f"(could not compare the configs: {type(e).__name__}: {e})"
    if extra:
      text += "\n" + extra
  return text + ("\nTrain with the config this workdir was created with to resume, or use a new --workdir for "
                 "the new config. Nothing in the workdir was changed.")


# ----------------------------------------------------------------------------------------------------
# Config comparison (for the mismatch message).


def _flatten_config(config, prefix: str = "") -> dict:
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) or hasattr(value, "to_dict"):
      out.update(_flatten_config(value, name + "."))
    else:
      out[name] = value
  return out


def _selected(field: str, prefixes: Sequence[str]) -> bool:
  return any(field == p.rstrip(".") or field.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def config_differences(stored, current, prefixes: Sequence[str] = MODEL_CONFIG_FIELDS) -> list:
  """Fields under `prefixes` whose values differ, as sentences; [] when none do.

  stored, current: config dicts (or ConfigDicts), e.g. run.json's "config" and `config.to_dict()`.
  E.g. ["model.projection_dim: this workdir was trained with 64, the config says 128"].
  """
  old, new = _flatten_config(stored), _flatten_config(current)
  missing = object()
  out = []
  for field in sorted(set(old) | set(new)):
    a, b = old.get(field, missing), new.get(field, missing)
    if _selected(field, prefixes) and a != b:
      out.append(f"{field}: this workdir was trained with {'(unset)' if a is missing else repr(a)}, "
                 f"the config says {'(unset)' if b is missing else repr(b)}")
  return out


def describe_config_change(stored, current, prefixes: Sequence[str] = MODEL_CONFIG_FIELDS) -> str:
  """One paragraph for CheckpointMismatchError from `config_differences` (stored may be None: unknown)."""
  if stored is None:
    return "The config this workdir was trained with is unknown (no earlier run.json)."
  differences = config_differences(stored, current, prefixes)
  if not differences:
    return "The model and optimiser fields of the config are the same as when this workdir was trained."
  return "Config fields that changed since this workdir was trained:\n" + "\n".join(f"  {d}" for d in differences)


def read_stored_config(run_dir) -> Optional[dict]:
  """The "config" dict of `<run_dir>/run.json`, or None. Read it *before* the pipeline rewrites run.json."""
  path = pathlib.Path(run_dir) / "run.json"
  try:
    return json.loads(path.read_text()).get("config")
  except (OSError, ValueError, AttributeError):
    return None

"""Resume after damaged checkpoints, config changes and NaNs, with orbax for real.

Damaged step directories (empty, partial copies, a save killed with SIGKILL) must not block resuming: the previous
step is restored and the damaged directories are renamed aside with their files. A readable checkpoint of a
differently configured model is a CheckpointMismatchError naming the leaves, not "corruption".
"""
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from csl_jax.train import checkpoint
from csl_jax.train.state import create_train_state

REPO = pathlib.Path(__file__).resolve().parents[2]

# A failed orbax restore leaves some of its asyncio reads pending; they are reported when garbage-collected.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class Tiny(nn.Module):
  """Encoder (Dense 64->32, 8 KiB kernel: stored outside orbax's inline values), BatchNorm, projection head."""
  projection_dim: int = 4

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(32, name="encoder")(x.reshape(x.shape[0], -1))
    x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
    return nn.Dense(self.projection_dim, name="head")(x)


def make_state(projection_dim=4, seed=0):
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  return create_train_state(Tiny(projection_dim), tx, jax.random.PRNGKey(seed), jnp.zeros((2, 8, 8, 1)))


def bump(state, k):
  """A distinct, finite state per step (so the restored step is identifiable by its values)."""
  return jax.tree.map(lambda x: x + k if jnp.issubdtype(x.dtype, jnp.floating) else x + k, state)


def assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def files_of(path):
  return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


@pytest.fixture
def saved(tmp_path):
  """Checkpoints at steps 3 and 6 of a tiny TrainState in tmp_path/checkpoints; returns (dir, {step: state})."""
  directory = tmp_path / "checkpoints"
  mngr = checkpoint.manager(directory)
  states = {step: bump(make_state(), step) for step in (3, 6)}
  for step, state in states.items():
    checkpoint.save(mngr, step, state)
  return directory, states


def restore(directory, state_like, **kwargs):
  """As the training loop does it: a fresh manager, then restore_latest."""
  return checkpoint.restore_latest(checkpoint.manager(directory), checkpoint.abstract_like(state_like), **kwargs)


def set_aside(directory, step):
  return sorted(p.name for p in directory.iterdir() if p.name.startswith(f"{step}."))


# ----------------------------------------------------------------------------------------------------
# Damaged step directories.


def test_empty_step_dir_does_not_block_resume(saved):
  directory, states = saved
  (directory / "80").mkdir()  # the bug report: this made every checkpoint "unreadable"
  state, step = restore(directory, states[6])
  assert step == 6
  assert_trees_equal(state, states[6])
  assert not (directory / "80").exists() and len(set_aside(directory, 80)) == 1
  assert set_aside(directory, 80)[0].startswith("80.incomplete.")
  assert (directory / "3").is_dir() and (directory / "6").is_dir()
  # Training goes on in the same directory: a new save and a second resume work.
  mngr = checkpoint.manager(directory)
  checkpoint.save(mngr, 9, bump(states[6], 1))
  assert restore(directory, states[6])[1] == 9


def _truncate(files):
  for f in files:
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


def _damage_copy(kind, good: pathlib.Path, target: pathlib.Path):
  """Simulates a kill during a copy / write of step directory `target` (a copy of `good`)."""
  if kind == "empty":
    target.mkdir()
    return
  if kind == "no_item":  # killed before the item directory was written
    target.mkdir()
    shutil.copy(good / "_CHECKPOINT_METADATA", target)
    return
  shutil.copytree(good, target)
  data = [f for f in (target / "default" / "ocdbt.process_0" / "d").iterdir()]
  assert data
  if kind == "truncated_data":
    _truncate(data)
  elif kind == "missing_data":
    for f in data:
      f.unlink()
  elif kind == "no_item_metadata":
    (target / "default" / "_METADATA").unlink()
  elif kind == "garbage":
    for f in target.rglob("*"):
      if f.is_file():
        f.write_bytes(b"garbage")


@pytest.mark.parametrize("kind, label", [("empty", "incomplete"), ("no_item", "incomplete"),
                                         ("no_item_metadata", "incomplete"), ("truncated_data", "unreadable"),
                                         ("missing_data", "unreadable"), ("garbage", "unreadable")])
def test_partial_newest_step_falls_back_to_previous_and_keeps_its_files(saved, kind, label):
  directory, states = saved
  _damage_copy(kind, directory / "6", directory / "9")
  damaged_files = files_of(directory / "9")
  state, step = restore(directory, states[6])
  assert step == 6
  assert_trees_equal(state, states[6])
  (moved,) = set_aside(directory, 9)
  assert moved.startswith(f"9.{label}.")
  assert files_of(directory / moved) == damaged_files, "set aside, not deleted"


def test_two_damaged_newer_steps_fall_back_two_steps(saved):
  directory, states = saved
  _damage_copy("garbage", directory / "6", directory / "12")
  _damage_copy("empty", directory / "6", directory / "9")
  shutil.rmtree(directory / "6")
  _damage_copy("truncated_data", directory / "3", directory / "6")
  state, step = restore(directory, states[3])
  assert step == 3
  assert_trees_equal(state, states[3])
  assert [set_aside(directory, s)[0].split(".")[1] for s in (6, 9, 12)] == ["unreadable", "incomplete", "unreadable"]


_KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from orbax.checkpoint._src.path import atomicity
    from csl_jax.train import checkpoint

    finalize = atomicity.AtomicRenameTemporaryPath.finalize
    def kill_during_step_6(self, *args, **kwargs):
      if "6.orbax-checkpoint-tmp" in str(self._final_path) or self._final_path.name == "6":
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 while step 6 is being written
      return finalize(self, *args, **kwargs)
    atomicity.AtomicRenameTemporaryPath.finalize = kill_during_step_6

    mngr = checkpoint.manager(sys.argv[1])
    for step in (3, 6):
      checkpoint.save(mngr, step, {"w": np.full((64, 64), step, np.float32), "step": np.int32(step)})
    """)


def test_kill_9_during_a_checkpoint_write_resumes_from_previous_step(tmp_path):
  directory = tmp_path / "checkpoints"
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu",
             XLA_FLAGS="")
  proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(directory)], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  in_progress = checkpoint.in_progress_dirs(directory)
  assert [p.name for p in in_progress] == ["6.orbax-checkpoint-tmp"], sorted(os.listdir(directory))
  like = {"w": jnp.zeros((64, 64), jnp.float32), "step": jnp.zeros((), jnp.int32)}
  state, step = restore(directory, like)
  assert step == 3 and int(state["step"]) == 3 and float(state["w"][0, 0]) == 3.0
  # The in-progress directory is not a step; saving step 6 again replaces it.
  mngr = checkpoint.manager(directory)
  checkpoint.save(mngr, 6, {"w": jnp.full((64, 64), 6.0), "step": jnp.int32(6)})
  assert checkpoint.in_progress_dirs(directory) == []
  assert restore(directory, like)[1] == 6


def test_no_readable_checkpoint_raises_without_advising_deletion(saved):
  directory, states = saved
  for step in (3, 6):
    for f in (directory / str(step)).rglob("*"):
      if f.is_file():
        f.write_bytes(b"garbage")
  before = {s: files_of(directory / str(s)) for s in (3, 6)}
  with pytest.raises(checkpoint.CheckpointCorruptError) as info:
    restore(directory, states[6])
  message = str(info.value)
  assert "Nothing was deleted" in message and "Move the directory away" not in message
  for s in (3, 6):
    (moved,) = set_aside(directory, s)
    assert files_of(directory / moved) == before[s]
  assert restore(directory, states[6]) == (None, 0)  # the re-run starts from scratch


def test_only_incomplete_dirs_start_from_scratch(tmp_path):
  directory = tmp_path / "checkpoints"
  directory.mkdir()
  (directory / "80").mkdir()
  assert restore(directory, make_state()) == (None, 0)
  assert set_aside(directory, 80)[0].startswith("80.incomplete.")


def test_no_checkpoints(tmp_path):
  assert restore(tmp_path / "checkpoints", make_state()) == (None, 0)


# ----------------------------------------------------------------------------------------------------
# A changed model config is a mismatch, not corruption.


def test_changed_projection_dim_is_a_mismatch_naming_the_leaves(saved):
  directory, states = saved
  (directory / "9").mkdir()  # an incomplete newer step does not hide the mismatch
  stored = {"model": {"projection_dim": 4, "encoder": "tiny"}, "optim": {"lr": 0.1}}
  current = {"model": {"projection_dim": 8, "encoder": "tiny"}, "optim": {"lr": 0.2}}
  with pytest.raises(checkpoint.CheckpointMismatchError) as info:
    restore(directory, make_state(projection_dim=8),
            describe_mismatch=lambda: checkpoint.describe_config_change(stored, current))
  message = str(info.value)
  assert not isinstance(info.value, checkpoint.CheckpointCorruptError)
  assert message.index("params.head.kernel: checkpoint (32, 4), expected (32, 8)") < message.index("opt_state")
  assert "params.head.bias: checkpoint (4,), expected (8,)" in message
  assert "opt_state.1.0.mu.head.kernel: checkpoint (32, 4), expected (32, 8)" in message
  assert "model.projection_dim: this workdir was trained with 4, the config says 8" in message
  assert "optim.lr" not in message  # does not change the state's shapes
  assert "not corrupt" in message
  assert (directory / "3").is_dir() and (directory / "6").is_dir(), "good checkpoints are not renamed"
  state, step = restore(directory, states[6])  # the original config still resumes
  assert step == 6
  assert_trees_equal(state, states[6])


def test_changed_optimizer_structure_is_a_mismatch(saved):
  directory, _ = saved
  tx = optax.adamw(1e-3)  # no clip_by_global_norm: opt_state paths change
  other = create_train_state(Tiny(4), tx, jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1)))
  with pytest.raises(checkpoint.CheckpointMismatchError) as info:
    restore(directory, other)
  assert "26 differing leaves" in str(info.value) and "... and 14 more" in str(info.value)
  assert "opt_state.0.count: checkpoint absent, expected ()" in str(info.value)


def test_config_differences_names_model_fields_only():
  stored = {"seed": 0, "model": {"projection_dim": 64, "encoder": "resnet50_cifar", "dtype": "float32"},
            "dataset": {"image_size": 0, "train_split": "train"}, "optim": {"lr": 1.0, "name": "lars"},
            "pretrain": {"epochs": 1000.0}}
  current = ml_collections.ConfigDict(stored)
  current.model.projection_dim = 128
  current.dataset.image_size = 64
  current.dataset.train_split = "train[:90%]"
  current.optim.lr = 0.5
  current.pretrain.epochs = 10.0
  current.seed = 1
  assert checkpoint.config_differences(stored, current) == [
      "dataset.image_size: this workdir was trained with 0, the config says 64",
      "model.projection_dim: this workdir was trained with 64, the config says 128"]
  assert checkpoint.config_differences(stored, current, prefixes=("optim.lr", "seed")) == [
      "optim.lr: this workdir was trained with 1.0, the config says 0.5",
      "seed: this workdir was trained with 0, the config says 1"]
  current_new_field = {**stored, "model": {**stored["model"], "width": 2}}
  assert checkpoint.config_differences(stored, current_new_field) == [
      "model.width: this workdir was trained with (unset), the config says 2"]
  assert checkpoint.config_differences(stored, stored) == []


def test_describe_config_change_and_read_stored_config(tmp_path):
  assert "unknown" in checkpoint.describe_config_change(None, {"model": {}})
  assert "same" in checkpoint.describe_config_change({"model": {"a": 1}}, {"model": {"a": 1}})
  assert checkpoint.read_stored_config(tmp_path) is None
  (tmp_path / "run.json").write_text('{"name": "simclr", "config": {"model": {"projection_dim": 64}}}')
  assert checkpoint.read_stored_config(tmp_path) == {"model": {"projection_dim": 64}}
  (tmp_path / "run.json").write_text('{"trunc')
  assert checkpoint.read_stored_config(tmp_path) is None


# ----------------------------------------------------------------------------------------------------
# NaN guard.


def _with_leaf(tree, path_contains, fn):
  return jax.tree_util.tree_map_with_path(
      lambda path, x: fn(x) if path_contains in jax.tree_util.keystr(path) else x, tree)


def test_all_finite_on_train_state():
  state = make_state()
  assert checkpoint.all_finite(state) is True
  nan_mu = _with_leaf(state, "mu['head']['kernel']", lambda x: x.at[1, 2].set(jnp.nan))
  assert checkpoint.all_finite(nan_mu) is False
  inf_param = _with_leaf(state, ".params['encoder']['bias']", lambda x: x.at[0].set(-jnp.inf))
  assert checkpoint.all_finite(inf_param) is False
  assert checkpoint.all_finite({"state": state, "loss": float("nan")}) is False
  assert checkpoint.all_finite({"state": state, "loss": 1.5}) is True


def test_all_finite_ignores_integer_leaves_and_handles_bfloat16():
  ints = {"step": jnp.int32(2**31 - 1), "count": np.int64(-1), "mask": jnp.array([True, False]), "n": 7}
  assert checkpoint.all_finite(ints) is True
  assert checkpoint.all_finite({}) is True
  bf16 = {"w": jnp.ones((3, 3), jnp.bfloat16), "step": jnp.int32(0)}
  assert checkpoint.all_finite(bf16) is True
  bf16["w"] = bf16["w"].at[2, 2].set(jnp.inf)
  assert checkpoint.all_finite(bf16) is False
  assert checkpoint.all_finite({"h": jnp.array([1.0, jnp.nan], jnp.float16)}) is False


def test_all_finite_on_a_sharded_array():
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  x = np.ones((len(jax.devices()) * 4, 3), np.float32)
  x[-1, -1] = np.nan  # only in the last device's shard
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  assert checkpoint.all_finite({"x": sharded}) is False
  assert checkpoint.all_finite({"x": jnp.nan_to_num(sharded)}) is True


def test_save_refuses_a_non_finite_state(saved):
  directory, states = saved
  mngr = checkpoint.manager(directory)
  bad = _with_leaf(states[6], "nu['encoder']['kernel']", lambda x: x.at[0, 0].set(jnp.nan))
  with pytest.raises(checkpoint.NonFiniteStateError, match=r"last good checkpoint \(step 6\)"):
    checkpoint.save(mngr, 9, bad)
  assert isinstance(checkpoint.NonFiniteStateError("x"), FloatingPointError)
  assert sorted(p.name for p in directory.iterdir()) == ["3", "6"]

"""The training spine end to end on digits: resume, corrupt checkpoints, NaN losses, sharding."""
import pathlib

import jax
import numpy as np
import pytest

from csl_jax import config as config_lib
from csl_jax import data
from csl_jax.train import checkpoint, loop, sharding


def tiny_config(**overrides):
  c = config_lib.base_config()
  c.unlock()
  c.dataset.source = "digits"
  c.model.encoder = "small_cnn"
  c.model.projection_hidden_dim = 32
  c.model.projection_dim = 16
  c.augment.crop_scale_min = 0.5
  c.pretrain.batch_size = 64
  c.pretrain.num_steps = 6
  c.pretrain.log_every = 2
  c.pretrain.checkpoint_every = 3
  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.lr_scaling = "none"
  c.optim.warmup_epochs = 0
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  c.lock()
  return c


@pytest.fixture(scope="module")
def digits_train():
  return data.load("digits", "train")


def _params(variables):
  return jax.tree.map(np.asarray, jax.device_get(variables))


@pytest.mark.parametrize("method", ["afnc", "ce"])
def test_kill_and_resume_reproduces_uninterrupted_run(tmp_path, digits_train, method):
  config = tiny_config()
  _, uninterrupted = loop.pretrain(config, method, tmp_path / "a", digits_train)
  with pytest.raises(loop.PreemptedForTest):
    loop.pretrain(config, method, tmp_path / "b", digits_train, interrupt_at=5)  # steps 4-5 are lost
  _, resumed = loop.pretrain(config, method, tmp_path / "b", digits_train)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), _params(uninterrupted), _params(resumed))
  steps = [int(l.split('"step": ')[1].split(",")[0]) for l in (tmp_path / "b/pretrain_metrics.jsonl").read_text().splitlines()]
  assert steps == [2, 4, 6], "replayed steps must not be logged twice"


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, digits_train):
  config = tiny_config()
  _, reference = loop.pretrain(config, "simclr", tmp_path, digits_train)
  ckpt_dir = tmp_path / "checkpoints"
  newest = ckpt_dir / "6"
  assert newest.is_dir() and (ckpt_dir / "3").is_dir()
  for f in newest.rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  mngr = checkpoint.manager(ckpt_dir)
  # Resuming re-trains steps 4..6 from the step-3 checkpoint and ends with the same parameters.
  _, resumed = loop.pretrain(config, "simclr", tmp_path, digits_train)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=0), _params(reference), _params(resumed))
  assert 3 in mngr.all_steps()


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path, digits_train):
  config = tiny_config(**{"optim.name": "sgd", "optim.lr": 1e25, "pretrain.checkpoint_every": 1,
                          "pretrain.log_every": 1})
  with pytest.raises(FloatingPointError, match="last good checkpoint"):
    loop.pretrain(config, "simclr", tmp_path, digits_train)
  steps = checkpoint.manager(tmp_path / "checkpoints").all_steps()
  assert all(s >= 1 for s in steps)  # only finite states were written


def test_sharded_step_equals_single_device_step(tmp_path, digits_train):
  """8-device data parallelism (global BatchNorm, gathered negatives) == the same step on one device."""
  assert jax.device_count() == 8
  config = tiny_config(**{"pretrain.num_steps": 2, "pretrain.checkpoint_every": 100})
  _, eight = loop.pretrain(config, "supcon", tmp_path / "eight", digits_train, mesh=sharding.make_mesh())
  _, one = loop.pretrain(config, "supcon", tmp_path / "one", digits_train, mesh=sharding.make_mesh(jax.devices()[:1]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), _params(eight), _params(one))


def test_unknown_config_key_names_the_valid_ones():
  c = config_lib.base_config()
  with pytest.raises(AttributeError, match="lr"):
    c.optim.lrr = 0.1
  c.unlock()
  c.runs = "simclr,byol"
  with pytest.raises(ValueError, match="unknown method 'byol'"):
    config_lib.validate(c)


def test_batch_not_divisible_by_devices_is_rejected(tmp_path, digits_train):
  with pytest.raises(ValueError, match="divisible"):
    loop.pretrain(tiny_config(**{"pretrain.batch_size": 60}), "simclr", tmp_path, digits_train)

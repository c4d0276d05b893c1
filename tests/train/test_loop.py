"""The training spine end to end on digits: resume, corrupt checkpoints, NaN losses, sharding."""
import jax
import numpy as np
import pytest

from csl_jax import config as config_lib
from csl_jax import data, methods
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
    *sections, name = key.split(".")
    node = c
    for section in sections:
      node = node[section]
    node[name] = value
  c.lock()
  return c


@pytest.fixture(scope="module")
def digits_train():
  return data.load("digits", "train")


class Preempted(RuntimeError):
  pass


def preempt_after(step):
  def on_step(s):
    if s == step:
      raise Preempted(f"simulated preemption after step {s}")
  return on_step


def pretrain(config, method, run_dir, train_ds, **kwargs):
  """loop.pretrain with the digits statistics; returns the trained variables."""
  mean, std = data.channel_stats("digits", train_dataset=train_ds)
  return loop.pretrain(config, methods.get(method), run_dir, train_ds, mean=mean, std=std, **kwargs).variables


def _params(variables):
  return jax.tree.map(np.asarray, jax.device_get(variables))


@pytest.mark.parametrize("method", ["afnc", "ce"])
def test_kill_and_resume_reproduces_uninterrupted_run(tmp_path, digits_train, method):
  config = tiny_config()
  uninterrupted = pretrain(config, method, tmp_path / "a", digits_train)
  with pytest.raises(Preempted):
    pretrain(config, method, tmp_path / "b", digits_train, on_step=preempt_after(5))  # steps 4-5 are lost
  assert checkpoint.manager(tmp_path / "b" / "checkpoints").all_steps() == [3]
  resumed = pretrain(config, method, tmp_path / "b", digits_train)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), _params(uninterrupted), _params(resumed))
  steps = [int(l.split('"step": ')[1].split(",")[0]) for l in (tmp_path / "b/pretrain_metrics.jsonl").read_text().splitlines()]
  assert steps == [2, 4, 6], "replayed steps must not be logged twice"


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, digits_train):
  config = tiny_config()
  reference = pretrain(config, "simclr", tmp_path, digits_train)
  ckpt_dir = tmp_path / "checkpoints"
  newest = ckpt_dir / "6"
  assert newest.is_dir() and (ckpt_dir / "3").is_dir()
  for f in newest.rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  mngr = checkpoint.manager(ckpt_dir)
  # Resuming re-trains steps 4..6 from the step-3 checkpoint and ends with the same parameters.
  resumed = pretrain(config, "simclr", tmp_path, digits_train)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=0), _params(reference), _params(resumed))
  assert 3 in mngr.all_steps()


@pytest.mark.parametrize("lr", [1e25, 1e30])
def test_divergence_keeps_only_finite_checkpoints_and_names_the_newest(tmp_path, digits_train, lr):
  config = tiny_config(**{"optim.name": "sgd", "optim.lr": lr, "pretrain.checkpoint_every": 1,
                          "pretrain.log_every": 1, "pretrain.num_steps": 20, "pretrain.keep_checkpoints": 50})
  with pytest.raises(FloatingPointError, match="newest finite checkpoint|No checkpoint was written") as error:
    pretrain(config, "simclr", tmp_path, digits_train)
  mngr = checkpoint.manager(tmp_path / "checkpoints")
  for step in mngr.all_steps():  # every state that was written is finite ...
    restored = mngr.restore(step)
    assert checkpoint.all_finite(restored), f"checkpoint {step} holds non-finite values"
  if mngr.all_steps():  # ... and the message names the newest one, the one a re-run resumes from.
    assert f"(step {max(mngr.all_steps())})" in str(error.value)


def test_sharded_step_equals_single_device_step(tmp_path, digits_train):
  """8-device data parallelism (global BatchNorm, gathered negatives) == the same step on one device."""
  assert jax.device_count() == 8
  config = tiny_config(**{"pretrain.num_steps": 2, "pretrain.checkpoint_every": 100})
  eight = pretrain(config, "supcon", tmp_path / "eight", digits_train, mesh=sharding.make_mesh())
  one = pretrain(config, "supcon", tmp_path / "one", digits_train, mesh=sharding.make_mesh(jax.devices()[:1]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), _params(eight), _params(one))


def test_unknown_config_key_names_the_valid_ones():
  c = config_lib.base_config()
  with pytest.raises(AttributeError, match="lr"):
    c.optim.lrr = 0.1
  c.runs = "simclr,byol"
  with pytest.raises(ValueError, match="unknown method 'byol'"):
    config_lib.validate(c)


def test_batch_not_divisible_by_devices_is_rejected(tmp_path, digits_train):
  with pytest.raises(ValueError, match="divisible"):
    pretrain(tiny_config(**{"pretrain.batch_size": 60}), "simclr", tmp_path, digits_train)

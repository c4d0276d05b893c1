"""Global-batch losses under jax.shard_map on 8 simulated CPU devices equal the single-device losses."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from csl_jax import losses

NUM_IMAGES, DIM = 16, 4  # 2 images per device; 4-d so random views often exceed the FNC thresholds

HYPER = {
    "nt_xent": {"temperature": 0.5},
    "supcon": {"temperature": 0.1},
    "adaptive_fnc": {"temperature": 0.5, "rho": 0.6},
    "fnc": {"temperature": 0.5, "threshold": 0.8, "top_k": 2},
}


def _single_device(name, z1, z2, labels, rho):
  if name == "nt_xent":
    return losses.nt_xent(z1, z2, **HYPER[name]), {}
  if name == "supcon":
    return losses.supcon(z1, z2, labels, **HYPER[name]), {}
  if name == "adaptive_fnc":
    return losses.adaptive_fnc(z1, z2, temperature=0.5, rho=rho, labels=labels)
  return losses.fnc(z1, z2, labels=labels, **HYPER[name])


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  z1 = rng.normal(size=(NUM_IMAGES, DIM)).astype(np.float32)
  z2 = (z1 + 0.5 * rng.normal(size=(NUM_IMAGES, DIM))).astype(np.float32)
  return z1, z2, rng.integers(0, 3, size=NUM_IMAGES).astype(np.int32)


@pytest.mark.parametrize("name,with_labels,axis_type", [
    ("nt_xent", False, AxisType.Explicit),
    ("nt_xent", True, AxisType.Auto),
    ("supcon", True, AxisType.Explicit),
    ("adaptive_fnc", False, AxisType.Explicit),
    ("adaptive_fnc", True, AxisType.Auto),
    ("fnc", False, AxisType.Auto),
    ("fnc", True, AxisType.Explicit),
])
def test_sharded_equals_single_device_in_value_and_gradient(batch, name, with_labels, axis_type):
  assert jax.device_count() == 8, "tests/conftest.py should provide 8 simulated CPU devices"
  z1, z2, labels = batch
  labels = labels if with_labels else None
  mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
  sharded = losses.make_sharded_loss(name, mesh, **HYPER[name])
  # rho enters as a traced argument, as it does from a schedule inside the train step.
  rho = jnp.float32(0.55) if name == "adaptive_fnc" else None

  def sharded_loss(a, b, rho):
    return sharded(a, b, labels, rho=rho)

  def single_loss(a, b, rho):
    return _single_device(name, a, b, labels, rho)

  grad_fn = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))
  (value, stats), grads = grad_fn(sharded_loss)(z1, z2, rho)
  (expected, expected_stats), expected_grads = grad_fn(single_loss)(z1, z2, rho)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  chex.assert_trees_all_close(grads, expected_grads, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(stats, expected_stats, rtol=1e-6)
  if name in ("adaptive_fnc", "fnc"):
    assert stats["num_cancelled"] > 0, "test data should trigger cancellations"
    assert ("cancel_recall" in stats) == with_labels


def test_sharded_loss_uses_global_negatives(batch):
  # Per-device losses over local negatives only would differ from the global loss: guard the all_gather.
  z1, z2, _ = batch
  sharded = losses.make_sharded_loss("nt_xent", jax.make_mesh((8,), ("data",)))
  nt_xent = jax.jit(losses.nt_xent)
  local_only = np.mean([nt_xent(z1[i:i + 2], z2[i:i + 2]) for i in range(0, NUM_IMAGES, 2)])
  value, _ = jax.jit(sharded)(z1, z2)
  np.testing.assert_allclose(value, nt_xent(z1, z2), rtol=1e-5)
  assert abs(float(value) - local_only) > 1e-2


def test_sharded_bad_arguments_raise_clear_errors(batch):
  z1, z2, labels = batch
  mesh = jax.make_mesh((8,), ("data",))
  with pytest.raises(ValueError, match="unknown loss 'simclr'"):
    losses.make_sharded_loss("simclr", mesh)
  with pytest.raises(ValueError, match=r"fnc takes \['labels'|fnc takes \['temperature', 'threshold', 'top_k'\]"):
    losses.make_sharded_loss("fnc", mesh, rho=0.5)
  with pytest.raises(ValueError, match="no data axis 'batch'"):
    losses.make_sharded_loss("nt_xent", mesh, axis_name="batch")
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    losses.make_sharded_loss("nt_xent", mesh)(z1[:12], z2[:12])
  with pytest.raises(ValueError, match="sharded supcon needs labels"):
    losses.make_sharded_loss("supcon", mesh)(z1, z2)
  with pytest.raises(ValueError, match="takes no rho"):
    losses.make_sharded_loss("fnc", mesh)(z1, z2, labels, rho=0.5)

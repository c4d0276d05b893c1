"""models.batch_norm.BatchNorm against flax's nn.BatchNorm: variables, values, running statistics and gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax.models import batch_norm

SHAPES = [(32, 8, 8, 16), (64, 2048), (6, 5, 7, 3)]


def _apply(module, variables, x, cotangent, train):
  """Loss that reads the output and (in training) the updated running statistics, its gradients, outputs."""
  def loss(params, x):
    y, mutated = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                              use_running_average=not train, mutable=["batch_stats"])
    stats = mutated["batch_stats"]
    return jnp.sum(y * cotangent) + jnp.sum(3.0 * stats["mean"]) + jnp.sum(0.7 * stats["var"]), (y, stats)

  (_, (y, stats)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(variables["params"], x)
  return y, stats, grads


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("train", [True, False])
def test_matches_flax_batch_norm(shape, train):
  keys = jax.random.split(jax.random.key(0), 5)
  x = 3.0 * jax.random.normal(keys[0], shape) + 2.0
  cotangent = jax.random.normal(keys[1], shape)
  ours = batch_norm.BatchNorm(momentum=0.9, epsilon=1e-5)
  flax_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
  variables = ours.init(keys[2], x, use_running_average=False)
  assert jax.tree.structure(variables) == jax.tree.structure(flax_bn.init(keys[2], x, use_running_average=False))
  features = shape[-1:]
  variables = {"params": {"scale": jax.random.normal(keys[3], features), "bias": jax.random.normal(keys[4], features)},
               "batch_stats": {"mean": jnp.full(features, 0.5), "var": jnp.full(features, 2.0)}}
  got, expected = _apply(ours, variables, x, cotangent, train), _apply(flax_bn, variables, x, cotangent, train)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(np.max(np.abs(b))))


def test_cpu_sums_equal_plain_sums_and_keep_precision():
  x = 1.0 + 0.1 * jax.random.normal(jax.random.key(1), (512, 32, 32, 8))  # 0.5M values per channel
  exact = np.asarray(x, np.float64).reshape(-1, 8).sum(axis=0)
  for sums in (batch_norm._sums_dot, batch_norm._sums_reduce, batch_norm.channel_sums):
    np.testing.assert_allclose(jax.jit(sums)(x), exact, rtol=2e-6)


def test_bfloat16_output_and_float32_statistics():
  x = jax.random.normal(jax.random.key(2), (16, 4, 4, 8)).astype(jnp.bfloat16)
  module = batch_norm.BatchNorm(use_running_average=False, momentum=0.9, dtype=jnp.bfloat16)
  variables = module.init(jax.random.key(3), x)
  y, mutated = module.apply(variables, x, mutable=["batch_stats"])
  assert y.dtype == jnp.bfloat16 and mutated["batch_stats"]["mean"].dtype == jnp.float32
  expected, _ = nn.BatchNorm(use_running_average=False, momentum=0.9, dtype=jnp.bfloat16).apply(
      variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(expected, np.float32), atol=2e-2)

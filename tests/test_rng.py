"""csl_jax.rng draws the same numbers as jax.random, in both threefry modes, and its HLO has no rank-r iota."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax import rng

SHAPES = [(7,), (5, 3), (4, 6, 5, 3), (2, 3, 4, 5, 2)]
DRAWS = [("uniform", dict(minval=-0.5, maxval=2.0)), ("normal", {}), ("laplace", {})]


@pytest.fixture(params=[True, False], ids=["partitionable", "original"])
def threefry_mode(request):
  before = jax.config.jax_threefry_partitionable
  jax.config.update("jax_threefry_partitionable", request.param)
  yield request.param
  jax.config.update("jax_threefry_partitionable", before)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,kwargs", DRAWS)
def test_same_numbers_as_jax_random(threefry_mode, shape, name, kwargs):
  del threefry_mode
  key = jax.random.PRNGKey(42)
  ours = jax.jit(lambda k: getattr(rng, name)(k, shape, jnp.float32, **kwargs))(key)
  reference = jax.jit(lambda k: getattr(jax.random, name)(k, shape, jnp.float32, **kwargs))(key)
  assert ours.shape == shape and ours.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference))
  # Not trivially equal: the draw varies with the key and over the array.
  other = getattr(rng, name)(jax.random.PRNGKey(43), shape, jnp.float32, **kwargs)
  assert not np.array_equal(np.asarray(other), np.asarray(ours))
  assert np.unique(np.asarray(ours)).size == int(np.prod(shape))


def test_counters_are_one_flat_iota():
  """The point of the module: the compiled draw builds its counters from a rank-1 iota, not one iota per axis."""
  key = jax.random.PRNGKey(0)
  shape = (8, 16, 16, 3)
  ours = jax.jit(lambda k: rng.uniform(k, shape)).lower(key).as_text()
  reference = jax.jit(lambda k: jax.random.uniform(k, shape)).lower(key).as_text()
  iota_lines = lambda text: [line for line in text.splitlines() if "iota" in line]  # noqa: E731
  assert all("tensor<8x16x16x3" not in line for line in iota_lines(ours))
  if jax.config.jax_threefry_partitionable:  # JAX's own lowering uses per-axis iotas (what compiles slowly)
    assert any("tensor<8x16x16x3" in line for line in iota_lines(reference))

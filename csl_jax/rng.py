"""Random draws shaped like image batches that compile fast on XLA:CPU; the same numbers as `jax.random`'s.

`jax.random` gives every element of a draw of shape S its own threefry counter. Under
`jax_threefry_partitionable` (JAX's default since 0.5) the counters of a rank-r array are built from r
broadcast iotas, and XLA:CPU is slow to compile that for rank ≥ 3: one `uniform(key, (64, 16, 16, 1))`
takes 1.5 s to compile, the same draw made as a flat (16384,) vector and reshaped 0.27 s (jaxlib 0.10.2,
2-core AMD EPYC; the normal draw: 1.16 → 0.22 s). In both modes of that flag an element's counter is its
row-major linear index, so the flat draw reshaped is bit-for-bit the draw of shape S
(`tests/test_rng.py` checks both modes). Every attack's random start and every augmentation draw goes
through here; on the quickstart that removed ~10 s of its ~49 s of compilation.
"""
import math

import jax
import jax.numpy as jnp


def _flat(draw, key, shape, *args, **kwargs):
  shape = tuple(int(d) for d in shape)
  if len(shape) <= 1:
    return draw(key, shape, *args, **kwargs)
  return jnp.reshape(draw(key, (math.prod(shape),), *args, **kwargs), shape)


def uniform(key, shape, dtype=jnp.float32, minval=0.0, maxval=1.0):
  """`jax.random.uniform(key, shape, dtype, minval, maxval)`, drawn flat and reshaped."""
  return _flat(jax.random.uniform, key, shape, dtype, minval, maxval)


def normal(key, shape, dtype=jnp.float32):
  """`jax.random.normal(key, shape, dtype)`, drawn flat and reshaped."""
  return _flat(jax.random.normal, key, shape, dtype)


def laplace(key, shape, dtype=jnp.float32):
  """`jax.random.laplace(key, shape, dtype)`, drawn flat and reshaped."""
  return _flat(jax.random.laplace, key, shape, dtype)

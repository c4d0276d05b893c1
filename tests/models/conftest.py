"""Shared helpers for model tests."""
import functools

import jax
import numpy as np
import pytest


def _random_variables(model, *inputs, seed: int = 0, **init_kwargs):
  """Random variables shaped like `model.init(key, *inputs)`, drawn in numpy.

  `jax.jit(model.init)` of a ResNet spends ~10 s compiling one RNG program per kernel on a busy 2-core
  CPU; `eval_shape` + numpy costs milliseconds. BN scales/biases and running statistics are random
  too (not 1/0), so a swapped or untransposed tensor changes the outputs.
  """
  shapes = jax.eval_shape(functools.partial(model.init, **init_kwargs), jax.random.key(0), *inputs)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":  # He-normal over fan-in keeps activations O(1) through deep nets.
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)  # bias, mean

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="session")
def random_variables():
  return _random_variables

"""rho_schedule: endpoints, monotonicity, shape of the decay, warmup, and input validation."""
import math

import jax
import numpy as np
import pytest

from csl_jax import losses


def _values(schedule, total_steps):
  return np.array([float(schedule(step)) for step in range(total_steps + 20)])


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("rho_initial,rho_final", [(0.99, 0.7), (0.9, 0.5), (0.5, 0.9)])
def test_endpoints_and_monotone(kind, rho_initial, rho_final):
  values = _values(losses.rho_schedule(rho_initial, rho_final, total_steps=50, kind=kind), 50)
  np.testing.assert_allclose(values[0], rho_initial, rtol=1e-6)
  np.testing.assert_allclose(values[50:], rho_final, rtol=1e-6)  # reached at total_steps, then held
  steps = np.diff(values) * np.sign(rho_final - rho_initial)
  assert np.all(steps >= -1e-7), "rho must move monotonically from rho_initial to rho_final"
  assert np.all(steps[:50] > 0), "rho must move at every step of the decay"


def test_decay_shapes():
  cosine = losses.rho_schedule(0.99, 0.7, total_steps=100, kind="cosine")
  linear = losses.rho_schedule(0.99, 0.7, total_steps=100, kind="linear")
  for step in (10, 25, 50, 90):
    fraction = step / 100
    np.testing.assert_allclose(linear(step), 0.99 - 0.29 * fraction, rtol=1e-6)
    np.testing.assert_allclose(cosine(step), 0.7 + 0.29 * 0.5 * (1 + math.cos(math.pi * fraction)), rtol=1e-6)


def test_warmup_holds_rho_initial_then_decays_to_rho_final():
  schedule = losses.rho_schedule(0.99, 0.7, total_steps=40, kind="linear", warmup_steps=10)
  values = _values(schedule, 40)
  np.testing.assert_allclose(values[:11], 0.99, rtol=1e-6)
  np.testing.assert_allclose(values[25], 0.99 - 0.29 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(values[40:], 0.7, rtol=1e-6)


def test_constant_and_traced_step():
  schedule = losses.rho_schedule(0.9, 0.9, total_steps=10, kind="constant")
  np.testing.assert_allclose(_values(schedule, 10), 0.9, rtol=1e-7)
  cosine = losses.rho_schedule(total_steps=10)
  np.testing.assert_allclose(jax.jit(cosine)(np.int32(5)), cosine(5), rtol=1e-6)


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match="unknown kind 'exp'"):
    losses.rho_schedule(total_steps=10, kind="exp")
  with pytest.raises(ValueError, match="kind='constant' holds one threshold"):
    losses.rho_schedule(0.99, 0.7, total_steps=10, kind="constant")
  with pytest.raises(ValueError, match="warmup_steps < total_steps"):
    losses.rho_schedule(total_steps=10, warmup_steps=10)
  with pytest.raises(ValueError, match="total_steps must be a positive int"):
    losses.rho_schedule(total_steps=0)

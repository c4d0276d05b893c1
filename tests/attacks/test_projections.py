"""Property tests of the threat-model geometry (csl_jax/attacks/projections.py)."""
import hypothesis.extra.numpy as hnp
import jax
import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

from csl_jax.attacks import projections

TOL = 1e-5
SETTINGS = settings(max_examples=40, deadline=None)


# Fixed shapes: every example reuses one compiled projection (a new shape would recompile).
BATCH, DIM = 4, 24
project = jax.jit(projections.project, static_argnames="norm")
project_l1 = jax.jit(projections.project_l1)
steepest_l1 = jax.jit(projections.l1_box_steepest_ascent)
random_in_ball = jax.jit(projections.random_in_ball, static_argnames="norm")


@st.composite
def centres_and_points(draw, dim=DIM, batch=BATCH):
  """(x in [0, 1]^{B×d}, z arbitrary, eps > 0)."""
  unit = st.floats(0.0, 1.0, width=32)
  x = draw(hnp.arrays(np.float32, (batch, dim), elements=unit))
  z = x + draw(hnp.arrays(np.float32, (batch, dim), elements=st.floats(-3.0, 3.0, width=32)))
  eps = draw(st.floats(1e-3, 4.0))
  return x, z, np.float32(eps)


def _norm(delta, norm):
  return np.asarray(projections.lp_norm(np.asarray(delta, np.float64), norm))


@pytest.mark.parametrize("norm", projections.NORMS)
@SETTINGS
@given(data=centres_and_points())
def test_projection_lands_in_ball_and_box(norm, data):
  x, z, eps = data
  p = np.asarray(project(z, x, eps, norm=norm))
  assert np.all(_norm(p - x, norm) <= eps * (1 + TOL) + TOL)
  assert p.min() >= 0.0 and p.max() <= 1.0


@pytest.mark.parametrize("norm", projections.NORMS)
@SETTINGS
@given(data=centres_and_points(), shrink=st.floats(0.0, 0.95))
def test_projection_is_identity_inside(norm, data, shrink):
  x, z, eps = data
  delta = z - x
  # Scale δ strictly inside the ball, then clip to the box: clipping only shrinks |δ_i|, so z_in is feasible.
  delta = delta * (shrink * eps / max(float(_norm(delta, norm).max()), 1e-6))
  z_in = np.clip(x + delta, 0.0, 1.0).astype(np.float32)
  np.testing.assert_allclose(np.asarray(project(z_in, x, eps, norm=norm)), z_in, atol=2e-6)


@SETTINGS
@given(data=centres_and_points())
def test_linf_projection_is_exact(data):
  x, z, eps = data
  expected = np.clip(z, np.maximum(x - eps, 0), np.minimum(x + eps, 1))
  np.testing.assert_allclose(np.asarray(projections.project_linf(z, x, eps)), expected, atol=1e-6)


def _l1_box_projection_reference(z, x, eps):
  """float64 reference: δ_i = sign(v_i) clip(|v_i| − λ, 0, u_i), λ by root finding (Croce & Hein 2021)."""
  out = np.empty_like(z, dtype=np.float64)
  for i in range(z.shape[0]):
    v = z[i].astype(np.float64) - x[i]
    room = np.where(v >= 0, 1.0 - x[i], x[i])
    a = np.abs(v)
    mass = lambda lam: np.clip(a - lam, 0, room).sum() - eps  # noqa: E731
    lam = 0.0 if mass(0.0) <= 0 else scipy.optimize.brentq(mass, 0.0, a.max(), xtol=1e-14)
    out[i] = x[i] + np.sign(v) * np.clip(a - lam, 0, room)
  return out


@SETTINGS
@given(data=centres_and_points(dim=60))
def test_l1_projection_matches_float64_reference(data):
  x, z, eps = data
  np.testing.assert_allclose(np.asarray(project_l1(z, x, eps)), _l1_box_projection_reference(z, x, eps),
                             atol=2e-5)


def test_l1_projection_is_nearest_feasible_point():
  """Optimality: no random feasible point is closer to z than the projection."""
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (1, 30)).astype(np.float32)
  z = (x + rng.normal(0, 1, x.shape)).astype(np.float32)
  eps = 2.0
  p = np.asarray(project_l1(z, x, eps))
  candidates = np.asarray(random_in_ball(jax.random.PRNGKey(1), np.repeat(x, 500, 0), eps, norm="l1"))
  assert np.linalg.norm(p - z) <= np.linalg.norm(candidates - z, axis=1).min() + 1e-6


@pytest.mark.parametrize("norm", projections.NORMS)
@pytest.mark.parametrize("shape", [(3, 4, 4, 2), (2, 3, 4, 4, 1)])
def test_random_start_in_ball_and_box_any_rank(norm, shape):
  x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
  eps = {"linf": 0.1, "l2": 0.7, "l1": 3.0}[norm]
  r = np.asarray(random_in_ball(jax.random.PRNGKey(0), x, eps, norm=norm))
  assert r.shape == x.shape
  assert np.all(_norm(r - x, norm) <= eps * (1 + TOL))
  assert r.min() >= 0 and r.max() <= 1
  assert np.all(_norm(r - x, norm) > 0)


@settings(max_examples=25, deadline=None)
@given(data=centres_and_points(dim=10, batch=2))
def test_l1_box_steepest_ascent_solves_the_linear_program(data):
  """The knapsack step attains the LP optimum max ⟨g, δ⟩ s.t. ‖δ‖₁ ≤ eps, 0 ≤ x + δ ≤ 1."""
  x, g, eps = data
  g = (g - x).astype(np.float32)
  delta = np.asarray(steepest_l1(g, x, eps), np.float64)
  for i in range(x.shape[0]):
    d = x.shape[1]
    # δ = p − n with p, n ≥ 0: maximise g·(p − n) s.t. Σ(p + n) ≤ eps, p ≤ 1 − x, n ≤ x.
    res = scipy.optimize.linprog(np.concatenate([-g[i], g[i]]), A_ub=np.ones((1, 2 * d)), b_ub=[eps],
                                 bounds=[(0, 1 - xi) for xi in x[i]] + [(0, xi) for xi in x[i]])
    assert res.status == 0
    assert g[i] @ delta[i] >= -res.fun - 1e-4 * (1 + abs(res.fun))
    assert np.abs(delta[i]).sum() <= eps * (1 + TOL) + TOL
    assert np.all(x[i] + delta[i] >= -1e-6) and np.all(x[i] + delta[i] <= 1 + 1e-6)


@pytest.mark.parametrize("fraction", [0.01, 0.2, 0.5, 1.0])
def test_top_fraction_mask_keeps_the_largest(fraction):
  rng = np.random.default_rng(0)
  magnitudes = rng.permutation(100).reshape(1, 10, 10).astype(np.float32)
  mask = np.asarray(projections.top_fraction_mask(magnitudes, fraction))
  expected = max(100 - int(np.floor((1 - fraction) * 100)), 1)
  assert mask.sum() == expected
  assert magnitudes[mask].min() > magnitudes[~mask].max() if expected < 100 else mask.all()

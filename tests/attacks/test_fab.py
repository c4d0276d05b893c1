"""FAB: hyperplane-box projections against LP/QP solvers, minimal-norm behaviour on linear classifiers."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from csl_jax.attacks.fab import _boundary_linearization, fab, project_hyperplane_box

NUM_CLASSES = 10
SHAPE = (4, 4, 3)
DIM = int(np.prod(SHAPE))
_rng = np.random.default_rng(0)
WEIGHTS = jnp.asarray(_rng.normal(size=(DIM, NUM_CLASSES)), jnp.float32)
BIAS = jnp.asarray(_rng.normal(size=NUM_CLASSES), jnp.float32)


def linear_logits(x):
  return jnp.reshape(x, (x.shape[0], -1)) @ WEIGHTS + BIAS


def mlp_logits(x):
  return jnp.tanh(jnp.reshape(x, (x.shape[0], -1)) @ WEIGHTS * 0.5) @ WEIGHTS.T[:, :NUM_CLASSES] * 0.3


def _norm(delta, norm):
  flat = np.reshape(delta, (delta.shape[0], -1))
  return np.abs(flat).max(1) if norm == "linf" else np.linalg.norm(flat, axis=1)


def _min_distance(x, y, norm):
  """Analytic ℓp distance to the decision boundary of the linear model: min_j margin_j / ‖w_y − w_j‖_dual."""
  w = np.asarray(WEIGHTS, np.float64)
  logits = np.reshape(x, (len(x), -1)).astype(np.float64) @ w + np.asarray(BIAS, np.float64)
  dual = 1 if norm == "linf" else 2
  dist = np.full(len(x), np.inf)
  for i, label in enumerate(y):
    for j in range(NUM_CLASSES):
      if j != label:
        gap = logits[i, label] - logits[i, j]
        dist[i] = min(dist[i], gap / np.linalg.norm(w[:, label] - w[:, j], ord=dual))
  return dist


def _reference_projection(t, w, b, norm):
  """min ‖d‖_p s.t. ⟨w, t + d⟩ = b, 0 ≤ t + d ≤ 1 by scipy (LP for ℓ∞, SLSQP for ℓ2); None if infeasible."""
  dim = len(t)
  bounds = [(-t[i], 1 - t[i]) for i in range(dim)]
  rhs = b - w @ t
  if norm == "linf":  # variables (d, s): min s, −s ≤ d_i ≤ s
    eye, ones = np.eye(dim), np.ones((dim, 1))
    res = optimize.linprog(np.r_[np.zeros(dim), 1.0], A_ub=np.block([[eye, -ones], [-eye, -ones]]),
                           b_ub=np.zeros(2 * dim), A_eq=np.r_[w, 0.0][None], b_eq=[rhs],
                           bounds=bounds + [(0, None)])
    return res.fun if res.status == 0 else None
  if not (np.sum(np.minimum(w * -t, w * (1 - t))) <= rhs <= np.sum(np.maximum(w * -t, w * (1 - t)))):
    return None
  res = optimize.minimize(lambda d: d @ d, np.zeros(dim), jac=lambda d: 2 * d, method="SLSQP", bounds=bounds,
                          constraints=[{"type": "eq", "fun": lambda d: w @ d - rhs, "jac": lambda d: w}],
                          options={"ftol": 1e-14, "maxiter": 500})
  return np.sqrt(res.fun)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_hyperplane_box_projection_is_minimal_and_feasible(norm):
  rng = np.random.default_rng(1)
  rows, dim = 24, 10
  t = rng.uniform(0, 1, (rows, dim))
  w = rng.normal(size=(rows, dim))
  w[:4, :3] = 0.0  # zero weights must not move
  # Offsets from "already on the plane" through box-binding to unreachable planes.
  b = np.sum(w * t, 1) + np.linspace(-4.0, 4.0, rows)
  b[5] = np.sum(w[5] * t[5])
  d = np.asarray(project_hyperplane_box(jnp.asarray(t, jnp.float32), jnp.asarray(w, jnp.float32),
                                        jnp.asarray(b, jnp.float32), norm), np.float64)
  z = t + d
  assert np.all(z >= -1e-6) and np.all(z <= 1 + 1e-6)
  assert np.all(d[w == 0] == 0)
  n_feasible = 0
  for i in range(rows):
    best = _reference_projection(t[i], w[i], b[i], norm)
    if best is None:
      # Unreachable plane: every moving coordinate goes to the box corner nearest the plane.
      corner = np.where((w[i] > 0) == (b[i] > w[i] @ t[i]), 1.0, 0.0)
      np.testing.assert_allclose(z[i][w[i] != 0], corner[w[i] != 0], atol=1e-6)
    else:
      n_feasible += 1
      np.testing.assert_allclose(w[i] @ z[i], b[i], atol=2e-5)
      np.testing.assert_allclose(_norm(d[i:i + 1], norm)[0], best, rtol=1e-4, atol=1e-6)
  assert 5 <= n_feasible < rows  # both branches exercised


def test_untargeted_linearization_matches_jacobian():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.uniform(0, 1, (3, DIM)), jnp.float32)
  y = jnp.asarray([0, 4, 9])
  df, dg, _ = _boundary_linearization(mlp_logits, (3,) + SHAPE, x, y, None, targeted=False)
  logits = mlp_logits(x)
  jac = jax.vmap(jax.jacrev(lambda v: mlp_logits(v[None])[0]))(x)  # [B, K, D]
  for i, label in enumerate(np.asarray(y)):
    others = np.arange(NUM_CLASSES) != label
    np.testing.assert_allclose(df[i, others], (logits[i] - logits[i, label])[others], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dg[i], jac[i] - jac[i, label], rtol=1e-4, atol=1e-5)
    assert np.isinf(df[i, label])


@pytest.fixture(scope="module")
def linear_batch():
  rng = np.random.default_rng(3)
  x = rng.uniform(0.3, 0.7, (32,) + SHAPE).astype(np.float32)  # far from the box faces
  y = np.array(jnp.argmax(linear_logits(x), 1))
  y[0] = (y[0] + 1) % NUM_CLASSES  # misclassified from the start
  return x, y


@pytest.mark.parametrize("norm,targeted", [("linf", False), ("linf", True), ("l2", False), ("l2", True)])
def test_fab_finds_minimal_perturbation_on_linear_model(linear_batch, norm, targeted):
  x, y = linear_batch
  dist = _min_distance(x, y, norm)
  eps = float(np.median(dist[1:]))
  assert eps < 0.3  # the analytic minimiser stays inside the box
  x_adv = np.asarray(fab(linear_logits, x, jnp.asarray(y), eps=eps, norm=norm, targeted=targeted))
  fooled = np.asarray(jnp.argmax(linear_logits(x_adv), 1)) != y
  size = _norm(x_adv - x, norm)
  found = fooled & (size > 0)
  assert np.all((x_adv >= 0) & (x_adv <= 1))
  assert np.all(size <= eps * (1 + 1e-5))
  chex.assert_trees_all_equal(x_adv[0], x[0])  # already misclassified: untouched
  assert np.all(found[1:][dist[1:] < 0.99 * eps])  # every reachable point is found
  assert not np.any(found[dist > eps])  # and none beyond the true distance
  np.testing.assert_array_equal(x_adv[~found], x[~found])
  if not targeted:
    assert np.max(size[found] / dist[found]) <= 1.05  # FAB is a minimal-norm attack


def test_fab_treats_any_rank_as_flat_vectors(linear_batch):
  x, y = linear_batch
  video = np.reshape(x, (len(x), 2, 2, 4, 3))
  video_logits = lambda v: linear_logits(jnp.reshape(v, (v.shape[0],) + SHAPE))
  eps = 0.05
  flat = fab(linear_logits, x, jnp.asarray(y), eps=eps, targeted=False, n_iter=20)
  as_video = fab(video_logits, video, jnp.asarray(y), eps=eps, targeted=False, n_iter=20)
  np.testing.assert_allclose(np.reshape(as_video, x.shape), flat, atol=1e-6)


def test_fab_restarts_on_nonlinear_model_stay_in_threat_model():
  rng = np.random.default_rng(4)
  x = rng.uniform(0, 1, (16,) + SHAPE).astype(np.float32)
  y = np.asarray(jnp.argmax(mlp_logits(x), 1))
  eps = 0.05
  x_adv = np.asarray(fab(mlp_logits, x, jnp.asarray(y), eps=eps, norm="linf", n_iter=20, n_restarts=2,
                         n_target_classes=3, key=jax.random.PRNGKey(7)))
  fooled = np.asarray(jnp.argmax(mlp_logits(x_adv), 1)) != y
  assert np.all((x_adv >= 0) & (x_adv <= 1))
  assert np.all(_norm(x_adv - x, "linf") <= eps * (1 + 1e-5))
  np.testing.assert_array_equal(x_adv[~fooled], x[~fooled])
  assert fooled.any()


@pytest.mark.parametrize("bad,match", [
    (dict(norm="l1"), "norm"),
    (dict(x=np.full((2,) + SHAPE, 1.5, np.float32)), r"\[0, 1\]"),
    (dict(y=np.zeros(3, np.int32)), "batch sizes differ"),
    (dict(eps=-0.1), "eps"),
])
def test_fab_rejects_bad_inputs(bad, match):
  args = dict(x=np.full((2,) + SHAPE, 0.5, np.float32), y=np.zeros(2, np.int32), eps=0.1, norm="linf")
  args.update(bad)
  with pytest.raises(ValueError, match=match):
    fab(linear_logits, args.pop("x"), args.pop("y"), **args)


def _numpy_multiplier(slope, cap, excess):
  """float64 sort-based root of Σ_i min(λ·slope_i, cap_i) = excess (an independent slow reference)."""
  lam = np.full(len(excess), np.inf)
  for r in range(len(excess)):
    s, c = slope[r][slope[r] > 0], cap[r][slope[r] > 0]
    if c.sum() < excess[r]:
      continue
    knots = np.sort(c / s)
    for lo, hi in zip(np.r_[0.0, knots], knots):
      g_lo = np.minimum(lo * s, c).sum()
      free = s[c / s > lo].sum()
      if g_lo + (hi - lo) * free >= excess[r]:
        lam[r] = lo + (excess[r] - g_lo) / free
        break
  return lam


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_multiplier_matches_sorting_reference_on_image_sized_rows(norm):
  """The sort-free bisection root against a float64 sort-and-scan, on 3072-dim rows whose weights span
  six orders of magnitude (as input gradients do), with some planes out of reach."""
  from csl_jax.attacks.fab import _multiplier  # noqa: PLC0415
  rng = np.random.default_rng(4)
  rows, dim = 12, 3072
  magnitude = np.abs(rng.normal(size=(rows, dim))) * 10.0 ** rng.uniform(-6, 0, (rows, dim))
  magnitude[:, :100] = 0.0
  room = rng.uniform(0, 1, (rows, dim))
  slope = magnitude if norm == "linf" else magnitude ** 2
  cap = magnitude * room
  excess = cap.sum(1) * np.linspace(0.0, 1.2, rows)
  expected = _numpy_multiplier(slope, cap, excess)
  got = np.asarray(_multiplier(*(jnp.asarray(a, jnp.float32) for a in (slope, cap, excess))), np.float64)
  assert np.array_equal(np.isinf(got), np.isinf(expected)) and np.sum(np.isinf(expected)) >= 2
  finite = np.isfinite(expected)
  np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-4, atol=1e-9)
  achieved = np.minimum(got[finite, None] * slope[finite], cap[finite]).sum(1)
  np.testing.assert_allclose(achieved, excess[finite], rtol=1e-4, atol=1e-9)

"""Geometry of the threat models: ℓp norms, projections onto {ℓp ball ∩ [0, 1] box}, random starts.

Every attack in the suite calls these, so each one is property-tested (tests/attacks/test_projections.py).
All functions work per example on inputs of any rank: x f32[B, ...] is treated as B flat vectors.
Norm names are "linf", "l2" and "l1".

Projections take the perturbed point `x_adv` and the clean centre `x` (both f32[B, ...], x in [0, 1])
and return a point that lies in the ℓp ball of radius `eps` around x AND in the [0, 1] box:
- ℓ∞: exact Euclidean projection onto the intersection (clip per coordinate; the sets are aligned).
- ℓ2: rescale into the ball, then clip to the box. Clipping only shrinks |δ_i|, so the result stays in the
  ball; it is the projection AutoAttack's APGD-ℓ2 uses (not the exact projection onto the intersection,
  which differs only when both constraints are active).
- ℓ1: exact Euclidean projection onto {‖δ‖₁ ≤ eps} ∩ {0 ≤ x + δ ≤ 1} (Croce & Hein 2021, "Mind the
  box"); the soft threshold of the piecewise-linear dual function is bracketed by bisection over float
  bit patterns and solved exactly on its last linear piece (no sort: see `_l1_box_threshold`).
"""
import jax
import jax.numpy as jnp

from csl_jax import rng

NORMS = ("linf", "l2", "l1")

# Guards divisions by a zero-norm perturbation (e.g. a zero gradient or δ = 0).
_TINY = 1e-12


def per_example(values, like):
  """Reshapes per-example values f32[B] to f32[B, 1, ..., 1] so they broadcast against `like` f32[B, ...]."""
  return jnp.reshape(values, values.shape[:1] + (1,) * (like.ndim - 1))


def lp_norm(delta, norm: str):
  """Per-example ℓp norm of δ f32[B, ...] -> f32[B] (norm in {"linf", "l2", "l1"})."""
  flat = jnp.reshape(delta, (delta.shape[0], -1))
  if norm == "linf":
    return jnp.max(jnp.abs(flat), axis=1)
  if norm == "l2":
    return jnp.sqrt(jnp.sum(flat * flat, axis=1))
  if norm == "l1":
    return jnp.sum(jnp.abs(flat), axis=1)
  raise ValueError(f"Unknown norm {norm!r}; expected one of {NORMS}.")


def normalize_direction(g, norm: str):
  """Scales g f32[B, ...] to unit ℓp norm per example (zero rows stay zero): g / max(‖g‖_p, 1e-12)."""
  return g / per_example(jnp.maximum(lp_norm(g, norm), _TINY), g)


def project_linf(x_adv, x, eps):
  """Exact projection onto {‖x_adv − x‖∞ ≤ eps} ∩ [0, 1]^d."""
  lo = jnp.maximum(x - eps, 0.0)
  hi = jnp.minimum(x + eps, 1.0)
  return jnp.clip(x_adv, lo, hi)


def project_l2(x_adv, x, eps):
  """Rescale δ = x_adv − x to ‖δ‖₂ ≤ eps, then clip x + δ to [0, 1] (result is in ball and box)."""
  delta = x_adv - x
  norms = lp_norm(delta, "l2")
  scale = jnp.minimum(1.0, eps / jnp.maximum(norms, _TINY))
  return jnp.clip(x + delta * per_example(scale, delta), 0.0, 1.0)


# Bisection over the bit patterns of non-negative float32s, which are ordered like their values: 31
# halvings of [0, 2^31) leave two adjacent floats. XLA:CPU's sort made the sort-based versions of the
# ℓ1 threshold and the top-k mask cost more than the model's forward and backward pass (on 256 CIFAR
# images: 490 ms and 150 ms per PGD-ℓ1 step against 330 ms for small_cnn); 31 elementwise passes do not.
_FLOAT_BISECTION_STEPS = 31


def _as_float(bits):
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _as_bits(values):
  return jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32)


def _bisect_float(predicate, lo, hi):
  """Adjacent float bit patterns (lo, hi) with predicate(lo) and not predicate(hi), per row.

  predicate(bits int32[B]) -> bool[B] must be true at lo, false at hi and change only once in between
  (monotone in the value). lo, hi: int32[B] bit patterns of non-negative float32s.
  """
  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    holds = predicate(mid)
    return jnp.where(holds, mid, lo), jnp.where(holds, hi, mid)

  return jax.lax.fori_loop(0, _FLOAT_BISECTION_STEPS, halve, (lo, hi))


def _l1_box_threshold(a, u, eps):
  """Soft threshold λ ≥ 0 with Σ_i clip(a_i − λ, 0, u_i) = eps (or 0 when the box alone satisfies it).

  a, u: f32[B, n] magnitudes |v_i| and per-coordinate box room u_i ≥ 0; eps: scalar or f32[B].
  g(λ) = Σ_i clip(a_i − λ, 0, u_i) is piecewise linear and non-increasing, with breakpoints a_i − u_i and
  a_i (all float32s). Bisection over float bit patterns brackets the root between adjacent floats
  lo < hi (g(lo) > eps ≥ g(hi)); no breakpoint lies strictly between them, so g is linear there with
  slope −(number of coordinates with a_i − u_i ≤ lo < a_i) and the root is solved exactly on that piece.
  """
  batch = a.shape[0]
  a = a.astype(jnp.float32)
  eps = jnp.broadcast_to(jnp.asarray(eps, jnp.float32), (batch,))
  g = lambda lam: jnp.sum(jnp.clip(a - lam[:, None], 0.0, u), axis=1)  # noqa: E731
  g0 = jnp.sum(jnp.minimum(a, u), axis=1)
  top = _as_bits(jnp.max(a, axis=1))
  lo, hi = _bisect_float(lambda bits: g(_as_float(bits)) > eps, jnp.zeros_like(top), top)
  lam_lo = _as_float(lo)
  over = a - lam_lo[:, None]
  active = jnp.sum((over > 0) & (over <= u), axis=1)
  lam = jnp.clip(lam_lo + (g(lam_lo) - eps) / jnp.maximum(active, 1), lam_lo, _as_float(hi))
  return jnp.where(g0 > eps, lam, 0.0)


def project_l1(x_adv, x, eps):
  """Exact Euclidean projection onto {‖x_adv − x‖₁ ≤ eps} ∩ [0, 1]^d (Croce & Hein 2021).

  The KKT conditions give δ_i = sign(v_i) · clip(|v_i| − λ, 0, u_i) with v = x_adv − x and u_i the room
  to the box face v_i points at (1 − x_i or x_i); λ is found by `_l1_box_threshold`.
  """
  shape = x.shape
  v = jnp.reshape(x_adv - x, (shape[0], -1))
  x_flat = jnp.reshape(x, (shape[0], -1))
  room = jnp.clip(jnp.where(v >= 0, 1.0 - x_flat, x_flat), 0.0, None)
  lam = _l1_box_threshold(jnp.abs(v), room, eps)
  delta = jnp.sign(v) * jnp.clip(jnp.abs(v) - lam[:, None], 0.0, room)
  # Shrinking toward 0 stays inside the box (it contains δ = 0); this only removes float excess.
  excess = jnp.sum(jnp.abs(delta), axis=1) / jnp.maximum(jnp.asarray(eps, delta.dtype), _TINY)
  delta = delta / jnp.maximum(excess, 1.0)[:, None]
  return jnp.clip(x + jnp.reshape(delta, shape), 0.0, 1.0)


def project(x_adv, x, eps, norm: str):
  """Projection onto the threat model {‖x_adv − x‖_p ≤ eps} ∩ [0, 1]^d for norm in {"linf", "l2", "l1"}."""
  if norm == "linf":
    return project_linf(x_adv, x, eps)
  if norm == "l2":
    return project_l2(x_adv, x, eps)
  if norm == "l1":
    return project_l1(x_adv, x, eps)
  raise ValueError(f"Unknown norm {norm!r}; expected one of {NORMS}.")


def random_in_ball(key, x, eps, norm: str):
  """A random start x + δ, δ uniform in the ℓp ball of radius eps, projected onto the box.

  ℓ∞: δ ~ U[−eps, eps]^d. ℓ2 and ℓ1: uniform in the ball via a random direction (Gaussian for ℓ2,
  Laplace for ℓ1 — both give uniformly distributed points on the sphere of their norm) scaled by
  eps · U^(1/d), the radius law of a uniform point in a d-dimensional ball.
  """
  if norm == "linf":
    delta = rng.uniform(key, x.shape, x.dtype, -eps, eps)
    return project_linf(x + delta, x, eps)
  dim = x[0].size
  k_dir, k_rad = jax.random.split(key)
  if norm == "l2":
    direction = normalize_direction(rng.normal(k_dir, x.shape, x.dtype), "l2")
  elif norm == "l1":
    direction = normalize_direction(rng.laplace(k_dir, x.shape, x.dtype), "l1")
  else:
    raise ValueError(f"Unknown norm {norm!r}; expected one of {NORMS}.")
  radius = eps * rng.uniform(k_rad, (x.shape[0],), x.dtype) ** (1.0 / dim)
  return project(x + direction * per_example(radius, x), x, eps, norm)


def top_fraction_mask(magnitudes, fraction):
  """bool[B, ...]: the coordinates whose magnitude reaches the (1 − fraction) quantile, per example.

  magnitudes: f32[B, ...] ≥ 0; fraction: scalar or f32[B] in (0, 1]. The threshold is the sorted value at
  index ⌊(1 − fraction) · d⌋ (clipped to [0, d − 1]), the sparsity rule of APGD-ℓ1 and SLIDE: the k-th
  largest magnitude with k = d − index, i.e. the largest t with #{i: |m_i| ≥ t} ≥ k, found by bisection
  over float bit patterns (the count only changes at the magnitudes themselves, so t is one of them).
  """
  flat = jnp.abs(jnp.reshape(magnitudes, (magnitudes.shape[0], -1))).astype(jnp.float32)
  dim = flat.shape[1]
  fraction = jnp.broadcast_to(jnp.asarray(fraction, flat.dtype), (flat.shape[0],))
  index = jnp.clip(jnp.floor((1.0 - fraction) * dim), 0, dim - 1).astype(jnp.int32)
  count_needed = dim - index
  enough = lambda bits: jnp.sum(flat >= _as_float(bits)[:, None], axis=1) >= count_needed  # noqa: E731
  top = _as_bits(jnp.max(flat, axis=1)) + 1
  threshold, _ = _bisect_float(enough, jnp.zeros_like(top), top)
  return jnp.reshape(flat >= _as_float(threshold)[:, None], magnitudes.shape)


def l1_box_steepest_ascent(grad, x, eps):
  """The maximiser of ⟨grad, δ⟩ over {‖δ‖₁ ≤ eps} ∩ {0 ≤ x + δ ≤ 1}, δ f32[B, ...].

  A fractional knapsack: coordinates are filled in decreasing order of |grad_i|, each up to its room
  toward the box face sign(grad_i) points at, until the ℓ1 budget eps is spent. Without the box this is
  the textbook ℓ1 steepest-ascent step (all of eps on the top coordinate); with it, a saturated pixel
  never absorbs budget it cannot use.
  """
  shape = grad.shape
  g = jnp.reshape(grad, (shape[0], -1))
  x_flat = jnp.reshape(x, (shape[0], -1))
  room = jnp.where(g > 0, 1.0 - x_flat, jnp.where(g < 0, x_flat, 0.0))
  order = jnp.argsort(-jnp.abs(g), axis=1)
  room_sorted = jnp.take_along_axis(room, order, axis=1)
  spent_before = jnp.cumsum(room_sorted, axis=1) - room_sorted
  fill_sorted = jnp.clip(jnp.asarray(eps, g.dtype) - spent_before, 0.0, room_sorted)
  rows = jnp.arange(shape[0])[:, None]
  fill = jnp.zeros_like(g).at[rows, order].set(fill_sorted)
  return jnp.reshape(jnp.sign(g) * fill, shape)

"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), ℓ∞ and ℓ2, as run by AutoAttack.

FAB looks for the *smallest* perturbation that changes the prediction. At iterate x₁ it linearises the
boundary between the true class y and a class k,
    f_k(z) − f_y(z) ≈ df + ⟨dg, z − x₁⟩ = 0,    df = f_k(x₁) − f_y(x₁),  dg = ∇(f_k − f_y)(x₁),
picks the k whose hyperplane is nearest (|df| / ‖dg‖_dual) — or the one target class of FAB-T — and
projects both x₁ and the clean x onto {hyperplane} ∩ [0, 1]^d (`project_hyperplane_box`), giving
displacements d₁, d₂. The step mixes the two, biased toward staying close to x:
    α = clip(‖d₁‖ / (‖d₁‖ + ‖d₂‖), 0, α_max),   x₁ ← clip((x₁ + η·d₁)(1 − α) + (x + η·d₂)·α, 0, 1).
When x₁ is adversarial it is recorded if closer than the best so far, then pulled back toward x:
x₁ ← x + β·(x₁ − x). Defaults follow AutoAttack's "standard" FAB-T: 100 iterations, α_max = 0.1,
η = 1.05, β = 0.9, targets = the classes with the 2nd … 10th largest clean logit, one restart each;
restart r > 0 starts from x + ½·eps·u/‖u‖ (u uniform in [−1, 1]^d for ℓ∞, Gaussian for ℓ2).

Reference: fra31/auto-attack, autoattack/fab_base.py, fab_pt.py, fab_projections.py (read, not copied).
The whole schedule (targets × restarts × iterations) is one `jax.jit`: a `lax.while_loop` over runs that
stops once every point is fooled, around a `lax.fori_loop` over iterations. Points that are already
misclassified or already fooled are masked, not gathered, so shapes stay static.
"""
import functools

import jax
import jax.numpy as jnp

from csl_jax.attacks import objectives
from csl_jax.models import inference
from csl_jax.attacks.conv_layout import canonical_conv_kernels
from csl_jax.attacks import projections
from csl_jax.attacks.validation import check_attack_inputs
from csl_jax import rng

FAB_NORMS = ("linf", "l2")

# Same guards as the reference: distance denominators, the step-length floor and the ℓ2 cut-off below
# which a gradient coordinate counts as zero (it cannot move the point along the normal).
_DIST_EPS = 1e-12
_MIN_STEP = 1e-8
_L2_ZERO_WEIGHT = 1e-8


def _multiplier(slope, cap, excess):
  """Smallest λ ≥ 0 with Σ_i min(λ·slope_i, cap_i) = excess, +inf where even Σ_i cap_i < excess.

  slope, cap: f32[N, D] ≥ 0 (coordinates with slope 0 never move and must have cap 0); excess: f32[N] ≥ 0.
  g(λ) = Σ_i min(λ·slope_i, cap_i) is concave, piecewise linear and non-decreasing with knots
  cap_i / slope_i. Instead of sorting the D knots (XLA:CPU's sort made this projection cost more than the
  model's forward and backward pass), λ is bracketed by bisection over the bit patterns of non-negative
  float32s — which are ordered like their values, so 31 halvings of [0, largest knot] leave two adjacent
  floats lo < hi with g(lo) < excess ≤ g(hi) — and then solved exactly on that last linear piece:
  coordinates whose knot is ≤ lo are saturated, the others still grow with slope_i.
  """
  moving = slope > 0
  knots = jnp.where(moving, cap / jnp.where(moving, slope, 1.0), 0.0)
  g = lambda lam: jnp.sum(jnp.minimum(lam[:, None] * slope, cap), axis=1)
  as_float = lambda bits: jax.lax.bitcast_convert_type(bits, jnp.float32)

  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    below = g(as_float(mid)) < excess
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  top = jax.lax.bitcast_convert_type(jnp.max(knots, axis=1).astype(jnp.float32), jnp.int32)
  lo, hi = jax.lax.fori_loop(0, 31, halve, (jnp.zeros_like(top), top))
  lam_lo = as_float(lo)[:, None]
  growing = knots > lam_lo
  free = jnp.sum(jnp.where(growing, slope, 0.0), axis=1)
  saturated = jnp.sum(jnp.where(growing, 0.0, cap), axis=1)
  lam = jnp.clip((excess - saturated) / jnp.maximum(free, 1e-30), as_float(lo), as_float(hi))
  return jnp.where(jnp.sum(cap, axis=1) >= excess, lam, jnp.inf)


def project_hyperplane_box(points, w, b, norm: str):
  """Minimal-ℓp displacement d onto {z : ⟨w, z⟩ = b} ∩ [0, 1]^D (the reference's `projection_linf/_l2`).

  Args:
    points: f32[N, D] points t in [0, 1].
    w, b: f32[N, D] normals and f32[N] offsets of one hyperplane per row.
    norm: "linf" or "l2".

  Returns:
    f32[N, D] d with ⟨w, t + d⟩ = b, t + d in the box and ‖d‖_p minimal. Where the box cannot reach
    the hyperplane, d moves every coordinate to the box corner that goes furthest toward it.

  KKT: with c = ⟨w, t⟩ − b ≥ 0 (flip w otherwise) every coordinate moves against sign(w_i), by
  min(λ, room_i) for ℓ∞ and min(λ·|w_i|, room_i) for ℓ2, room_i being its distance to that box face;
  λ solves Σ_i |w_i|·move_i = c (`_multiplier`).
  """
  excess = jnp.sum(w * points, axis=1) - b
  w = jnp.where(excess[:, None] >= 0, w, -w)
  excess = jnp.abs(excess)
  room = jnp.clip(jnp.where(w > 0, points, 1.0 - points), 0.0, 1.0)
  magnitude = jnp.abs(w)
  if norm == "linf":
    moving = w != 0
    slope = jnp.where(moving, magnitude, 0.0)
  elif norm == "l2":
    moving = magnitude > _L2_ZERO_WEIGHT
    slope = jnp.where(moving, magnitude * magnitude, 0.0)
  else:
    raise ValueError(f"Unknown norm {norm!r}; expected one of {FAB_NORMS}.")
  lam = _multiplier(slope, jnp.where(moving, magnitude * room, 0.0), excess)[:, None]
  step = jnp.minimum(lam, room) if norm == "linf" else jnp.minimum(lam * magnitude, room)
  return jnp.where(moving, -jnp.sign(w) * step, 0.0)


def _boundary_linearization(logits_fn, shape, x1, y, target, targeted):
  """(df f32[B, M], dg f32[B, M, D], logits f32[B, K]) of f_k − f_y at flat x1 f32[B, D].

  FAB-T needs one difference (k = target, M = 1), hence one backward pass; untargeted FAB needs every
  class (M = K): one vjp per class, with df = +inf on the true class so it is never picked.
  """
  forward = lambda flat: logits_fn(jnp.reshape(flat, shape))
  if targeted:
    def difference(flat):
      logits = forward(flat)
      diff = objectives.true_logit(logits, target) - objectives.true_logit(logits, y)
      return jnp.sum(diff), (diff, logits)

    grad, (diff, logits) = canonical_conv_kernels(jax.grad(difference, has_aux=True))(x1)
    return diff[:, None], grad[:, None, :], logits
  def jacobian_and_logits(flat):
    logits, vjp = jax.vjp(forward, flat)
    basis = jnp.broadcast_to(jnp.eye(logits.shape[1], dtype=logits.dtype)[:, None, :], (logits.shape[1],) + logits.shape)
    return jnp.moveaxis(jax.vmap(lambda cotangent: vjp(cotangent)[0])(basis), 0, 1), logits  # [B, K, D]

  jacobian, logits = canonical_conv_kernels(jacobian_and_logits)(x1)
  num_classes = logits.shape[1]
  own = jax.nn.one_hot(y, num_classes, dtype=bool)
  df = jnp.where(own, jnp.inf, logits - objectives.true_logit(logits, y)[:, None])
  dg = jacobian - jnp.take_along_axis(jacobian, y[:, None, None], axis=1)
  return df, dg, logits


def _dual_norm(g, norm):
  """Dual norm over the last axis (ℓ1 for ℓ∞ distances, ℓ2 for ℓ2)."""
  return jnp.sum(jnp.abs(g), axis=-1) if norm == "linf" else jnp.sqrt(jnp.sum(g * g, axis=-1))


def _fab_run(logits_fn, shape, x0, x_start, y, target, *, norm, targeted, n_iter, alpha_max, eta, beta):
  """One FAB run from x_start: returns (closest adversarial found f32[B, D], its ℓp norm f32[B], inf if none)."""
  batch = x0.shape[0]
  predict = lambda flat: jnp.argmax(logits_fn(jnp.reshape(flat, shape)), axis=1)

  def iteration(_, carry):
    x1, best, best_norm = carry
    df, dg, _ = _boundary_linearization(logits_fn, shape, x1, y, target, targeted)
    nearest = jnp.argmin(jnp.abs(df) / (_DIST_EPS + _dual_norm(dg, norm)), axis=1)
    w = jnp.take_along_axis(dg, nearest[:, None, None], axis=1)[:, 0]
    offset = jnp.sum(w * x1, axis=1) - jnp.take_along_axis(df, nearest[:, None], axis=1)[:, 0]
    # Both projections in one call, as in the reference: rows [x1; x0] share the hyperplane.
    d = project_hyperplane_box(jnp.concatenate([x1, x0]), jnp.concatenate([w, w]),
                               jnp.concatenate([offset, offset]), norm)
    lengths = jnp.maximum(projections.lp_norm(d, norm), _MIN_STEP)
    d1, d2, a1, a2 = d[:batch], d[batch:], lengths[:batch], lengths[batch:]
    alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
    x1 = jnp.clip((x1 + eta * d1) * (1.0 - alpha) + (x0 + eta * d2) * alpha, 0.0, 1.0)
    fooled = predict(x1) != y
    size = projections.lp_norm(x1 - x0, norm)
    closer = fooled & (size < best_norm)
    best = jnp.where(closer[:, None], x1, best)
    best_norm = jnp.where(closer, size, best_norm)
    # Backward step: restart the next linearisation from nearer the clean point.
    x1 = jnp.where(fooled[:, None], x0 + beta * (x1 - x0), x1)
    return x1, best, best_norm

  init = (x_start, x0, jnp.full((batch,), jnp.inf, x0.dtype))
  _, best, best_norm = jax.lax.fori_loop(0, n_iter, iteration, init)
  return best, best_norm


def _random_start(key, x0, eps, norm):
  """x + ½·eps·u/‖u‖_p clipped to the box: the reference's start for restarts after the first."""
  if norm == "linf":
    u = rng.uniform(key, x0.shape, x0.dtype, -1.0, 1.0)
  else:
    u = rng.normal(key, x0.shape, x0.dtype)
  u = u / jnp.maximum(projections.lp_norm(u, norm), 1e-30)[:, None]
  return jnp.clip(x0 + 0.5 * eps * u, 0.0, 1.0)


@inference.jit_over_model(static_argnames=(
    "norm", "targeted", "n_iter", "n_restarts", "n_targets", "alpha_max", "eta", "beta"))
def _fab(logits_fn, x, y, key, eps, *, norm, targeted, n_iter, n_restarts, n_targets, alpha_max, eta, beta):
  shape = x.shape
  x0 = jnp.reshape(x, (shape[0], -1))
  logits = logits_fn(x)
  # Runs in the reference's order: for each target rank (2nd, 3rd, … largest clean logit), each restart.
  n_runs = n_targets * n_restarts if targeted else n_restarts
  by_logit = jnp.argsort(logits, axis=1)
  run = functools.partial(_fab_run, logits_fn, shape, norm=norm, targeted=targeted, n_iter=n_iter,
                          alpha_max=alpha_max, eta=eta, beta=beta)

  def attack(carry):
    r, robust, x_adv = carry
    restart = r % n_restarts
    rank = 2 + r // n_restarts
    target = jnp.take(by_logit, logits.shape[1] - rank, axis=1)
    start = jnp.where(restart > 0, _random_start(jax.random.fold_in(key, r), x0, eps, norm), x0)
    best, best_norm = run(x0, start, y, target)
    candidate = jnp.where(jnp.isfinite(best_norm)[:, None], best, x0)
    # The reference's acceptance test: misclassified and within eps.
    wrong = ~objectives.is_correct(logits_fn(jnp.reshape(candidate, shape)), y)
    success = robust & wrong & (projections.lp_norm(candidate - x0, norm) <= eps)
    return r + 1, robust & ~success, jnp.where(success[:, None], candidate, x_adv)

  keep_going = lambda carry: (carry[0] < n_runs) & jnp.any(carry[1])
  robust = objectives.is_correct(logits, y)
  _, _, x_adv = jax.lax.while_loop(keep_going, attack, (jnp.int32(0), robust, x0))
  return jnp.reshape(x_adv, shape)


def fab(logits_fn, x, y, *, eps, norm="linf", targeted=True, n_iter=100, n_restarts=1, n_target_classes=9,
        key=None, alpha_max=0.1, eta=1.05, beta=0.9):
  """FAB (targeted FAB-T by default, as in AutoAttack "standard") within an ℓ∞ or ℓ2 ball of radius eps.

  Args:
    logits_fn: jittable f32[B, ...] images in [0, 1] -> f32[B, K] logits (a static argument: reuse the
      same function object across batches to avoid recompilation).
    x: f32[B, ...] clean images in [0, 1], any rank (flattened internally).
    y: int[B] true labels.
    eps: radius; FAB minimises the norm, eps only decides success and sets the random-start radius.
    norm: "linf" or "l2".
    targeted: FAB-T (one target class per run) or untargeted FAB (nearest of all classes each step).
    n_iter: iterations per run.
    n_restarts: runs per target; restart r > 0 starts at a random point at distance eps/2.
    n_target_classes: targets = classes with the 2nd … (n+1)-th largest clean logit; capped at K − 1
      (the reference needs K > n_target_classes).
    key: PRNG key for the random starts (default PRNGKey(0)).
    alpha_max, eta, beta: the paper's step bias bound, overshoot and backward step.

  Returns:
    f32[B, ...] images: an adversarial example with ‖x_adv − x‖_p ≤ eps where FAB found one, else x.
  """
  x, y = check_attack_inputs(x, y, eps=eps, norm=norm, supported_norms=FAB_NORMS, attack="fab")
  if int(n_iter) < 1 or int(n_restarts) < 1 or int(n_target_classes) < 1:
    raise ValueError(f"fab: n_iter, n_restarts and n_target_classes must be >= 1, got {n_iter}, "
                     f"{n_restarts}, {n_target_classes}.")
  num_classes = jax.eval_shape(logits_fn, x).shape[-1]
  if num_classes < 2:
    raise ValueError(f"fab: logits_fn must return f32[B, K] with K >= 2 classes, got K = {num_classes}.")
  key = jax.random.PRNGKey(0) if key is None else key
  return _fab(logits_fn, x, y, key, jnp.asarray(eps, jnp.float32), norm=norm, targeted=bool(targeted),
              n_iter=int(n_iter), n_restarts=int(n_restarts),
              n_targets=min(int(n_target_classes), num_classes - 1),
              alpha_max=float(alpha_max), eta=float(eta), beta=float(beta))

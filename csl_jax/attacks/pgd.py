"""Projected Gradient Descent (Madry et al. 2018) for the ℓ∞, ℓ2 and ℓ1 threat models.

x₀ = x + δ₀ with δ₀ uniform in the ℓp ball (random start), then for t < steps:
    x_{t+1} = Π(x_t + α · s(∇_x CE(f(x_t), y))),   Π = projection onto {‖x' − x‖_p ≤ eps} ∩ [0, 1]^d,
with the steepest-ascent direction s of each norm:
- ℓ∞: sign(∇).   ℓ2: ∇ / ‖∇‖₂.   Default α = 2.5 · eps / steps (Madry et al.), enough to cross the
  ball and back.
- ℓ1: a sparse sign step (SLIDE, Tramèr & Boneh 2019) with the adaptive sparsity of APGD-ℓ1 (Croce &
  Hein 2021): sign(∇_i) on the k_t coordinates with the largest |∇_i|, scaled to ℓ1 length α, where
      k_t = clip(‖δ_t‖₀ / 1.5, 1, l1_sparsity · d)      (δ_t = x_t − x; l1_sparsity = 5% by default).
  Pixels already at the box face the gradient points to are excluded first: they cannot move. Default
  α = eps / 4 whatever the number of steps. Π is the exact ℓ1-ball-and-box projection.
  Why: with plain SLIDE (always the top 5%, α = 2.5 · eps / steps; this module until the box fix), once
  the ℓ1 budget is full the step adds α/k to each of the top k coordinates and the projection's soft
  threshold removes α/k from each again, so any split of eps over them is a fixed point, while the
  optimum fills a few pixels up to their box face. With k below the perturbation's own support, the
  coordinates outside the top k drain every step and the mass moves to the largest gradients; α = eps / 4
  drains the dense random start within a few steps (α = 2.5 · eps / steps was too slow for that, eps / 8,
  eps / 2 and eps were weaker on the CNN). Measured (benchmarks/pgd_l1_box.py; ATTACKS.md, "PGD-ℓ1 and
  the box"): on a dense linear model whose box binds, robust accuracy above the exact optimum fell from
  7–7.75 points to 0.25–0.75 (APGD-ℓ1: 0.5–2); on a briefly trained small CNN (256 CIFAR-10 test images)
  PGD-ℓ1-40 went from 18.4% to 12.1% at eps = 8 and from 10.2% to 5.9% at eps = 12 (APGD-ℓ1-100: 9.0%,
  4.7%). The box-aware steepest-ascent step of FGSM-ℓ1 (`projections.l1_box_steepest_ascent`) was as
  exact on the linear model but moves about one pixel per step: on the CNN it did not beat plain SLIDE.
  So "PGD-ℓ1 eps = 8 / 12" in the robustness stage (`pgd:l1:8.0`, default options) is: 40 steps from a
  random start, this adaptive-sparsity sign step with α = 2 (eps 8) / 3 (eps 12), exact projection,
  cross-entropy loss.

The whole loop is one `lax.fori_loop` inside one `jax.jit`. Per example, the attack returns the last
iterate unless it is correctly classified and an earlier iterate was not; then it returns the first
misclassified iterate (the model logits of every iterate are computed for the gradient anyway).
"""

import jax
import jax.numpy as jnp

from csl_jax.attacks import objectives
from csl_jax.models import inference
from csl_jax.attacks import projections
from csl_jax.attacks import validation

# Largest fraction of coordinates an ℓ1 step moves (the top 5% of |grad|, the 95th percentile).
L1_SPARSITY = 0.05
# Default ℓ1 step size as a fraction of eps (ℓ∞ / ℓ2: 2.5 · eps / steps).
L1_STEP_SCALE = 0.25
# k_t = ‖δ_t‖₀ / L1_SUPPORT_RATIO: each ℓ1 step moves fewer coordinates than the perturbation has (APGD-ℓ1).
L1_SUPPORT_RATIO = 1.5


def l1_step_fraction(delta, max_fraction):
  """Fraction f32[B] of coordinates the next ℓ1 step moves: ‖δ‖₀ / (1.5·d), within [1/d, max_fraction].

  delta: f32[B, ...] current perturbation x_t − x. Tying the step's support to the perturbation's own
  (Croce & Hein 2021, APGD-ℓ1) keeps the exact projection from undoing the step (see module docstring).
  """
  flat = jnp.reshape(delta, (delta.shape[0], -1))
  dim = flat.shape[1]
  support = jnp.sum(flat != 0, axis=1).astype(flat.dtype)
  return jnp.minimum(jnp.maximum(support / (L1_SUPPORT_RATIO * dim), 1.0 / dim), max_fraction)


def sparse_l1_direction(grad, x_adv, fraction):
  """SLIDE direction f32[B, ...] with unit ℓ1 norm: sign(∇) on the top-|∇| coordinates that can move.

  fraction: scalar or f32[B], the share of coordinates kept (`projections.top_fraction_mask`).
  """
  blocked = ((grad > 0) & (x_adv >= 1.0)) | ((grad < 0) & (x_adv <= 0.0))
  grad = jnp.where(blocked, 0.0, grad)
  keep = projections.top_fraction_mask(jnp.abs(grad), fraction) & (grad != 0)
  return projections.normalize_direction(jnp.where(keep, jnp.sign(grad), 0.0), "l1")


def ascent_direction(grad, x_adv, x, norm, l1_sparsity=L1_SPARSITY):
  """Steepest-ascent direction of unit ℓp length (ℓ∞: the sign vector) for a PGD step from x_adv."""
  if norm == "linf":
    return jnp.sign(grad)
  if norm == "l2":
    return projections.normalize_direction(grad, "l2")
  return sparse_l1_direction(grad, x_adv, l1_step_fraction(x_adv - x, l1_sparsity))


def default_step_size(eps, steps, norm):
  """α when step_size=None: eps / 4 for ℓ1, else 2.5 · eps / steps (Madry et al. 2018)."""
  return L1_STEP_SCALE * eps if norm == "l1" else 2.5 * eps / steps


def _step_toward(norm: str, l1_sparsity: float):
  """x_adv, x, grad, eps, α -> Π(x_adv + α · s(∇)) for one norm (see the module docstring)."""
  def update(x_adv, x, grad, eps, step_size):
    direction = ascent_direction(grad, x_adv, x, norm, l1_sparsity)
    return projections.project(x_adv + step_size * direction, x, eps, norm)
  return update


@inference.jit_over_model(static_argnames=("steps", "random_start", "loss", "l1_sparsity"))
def _pgd(logits_fn, x, y, key, eps, step_size, norm_index, *, steps, random_start, loss, l1_sparsity):
  """-> (x_adv f32[B, ...], bool[]: every logit the attack computed was finite).

  The norm is a traced index into `projections.NORMS` (a `lax.switch` per step picks the update): PGD-ℓ∞,
  ℓ2 and ℓ1 of one model share one compiled program, which matters where compilation, not the attack,
  dominates (a CPU evaluating a small model: one ~4 s compile instead of three).
  """
  value_and_grad = objectives.eot_value_and_grad(logits_fn, objectives.get_loss(loss))
  start_key, step_key = jax.random.split(key)
  if random_start:
    starts = [lambda k, x, eps, norm=norm: projections.random_in_ball(k, x, eps, norm) for norm in projections.NORMS]
    x_adv = jax.lax.switch(norm_index, starts, start_key, x, eps)
  else:
    x_adv = x
  updates = [_step_toward(norm, l1_sparsity) for norm in projections.NORMS]

  def step(t, carry):
    x_adv, x_fooled, fooled, finite = carry
    _, logits, grad = value_and_grad(x_adv, y, y, jax.random.fold_in(step_key, t))
    # Remember the first iterate that fools the model; later steps may walk back across the boundary.
    wrong = ~objectives.is_correct(logits, y)
    x_fooled = jnp.where(projections.per_example(wrong & ~fooled, x), x_adv, x_fooled)
    x_adv = jax.lax.switch(norm_index, updates, x_adv, x, grad, eps, step_size)
    return x_adv, x_fooled, fooled | wrong, finite & validation.all_finite(logits)

  fooled = jnp.zeros(y.shape, bool)
  x_adv, x_fooled, fooled, finite = jax.lax.fori_loop(0, steps, step, (x_adv, x, fooled, jnp.bool_(True)))
  final_logits = objectives.with_key(logits_fn)(x_adv, step_key)
  final_correct = objectives.is_correct(final_logits, y)
  x_out = jnp.where(projections.per_example(final_correct & fooled, x), x_fooled, x_adv)
  return x_out, finite & validation.all_finite(final_logits)


def pgd(logits_fn, x, y, *, eps, norm="linf", steps=40, step_size=None, random_start=True, key=None,
        loss="ce", l1_sparsity=L1_SPARSITY):
  """PGD on the cross-entropy (or another `objectives.LOSSES` entry, e.g. loss="dlr").

  Args:
    logits_fn: jittable f32[B, ...] images in [0, 1] -> f32[B, K] logits (a static argument: reuse the
      same function object across batches to avoid recompilation).
    x: f32[B, ...] clean images in [0, 1], any rank.
    y: int[B] true labels in [0, K).
    eps: radius of the threat model.
    norm: "linf", "l2" or "l1".
    steps: number of gradient steps (>= 1).
    step_size: α >= 0; None means 2.5 · eps / steps (ℓ∞, ℓ2) or eps / 4 (ℓ1).
    random_start: start uniformly in the ℓp ball (else at x).
    key: PRNG key for the random start (default PRNGKey(0)).
    loss: untargeted objective to ascend ("ce" or "dlr").
    l1_sparsity: largest fraction of coordinates an ℓ1 step moves.

  Returns:
    f32[B, ...] adversarial images with ‖x_adv − x‖_p ≤ eps and values in [0, 1].

  Raises:
    ValueError: bad inputs (`validation.check_attack_inputs`: shapes, ranges, labels outside [0, K), a
      model output that is not [B, K]), steps < 1, a negative step size, or a model whose logits are
      NaN/Inf on x (or, with finite clean logits, at a point the attack visited). Value checks are
      skipped when called inside `jax.jit`.
  """
  x, y = validation.check_attack_inputs(x, y, eps=eps, norm=norm, attack="pgd", logits_fn=logits_fn)
  if loss not in ("ce", "dlr"):
    raise ValueError(f"pgd: loss={loss!r} is not an untargeted loss; choose 'ce' or 'dlr'.")
  steps = validation.check_count(steps, "steps", attack="pgd")
  validation.check_step_size(step_size, attack="pgd")
  if not 0.0 < float(l1_sparsity) <= 1.0:
    raise ValueError(f"pgd: l1_sparsity is a fraction of coordinates in (0, 1], got {l1_sparsity}.")
  step_size = default_step_size(eps, steps, norm) if step_size is None else step_size
  key = jax.random.PRNGKey(0) if key is None else key
  x_adv, finite = _pgd(logits_fn, x, y, key, jnp.asarray(eps, jnp.float32), jnp.asarray(step_size, jnp.float32),
                       jnp.int32(projections.NORMS.index(norm)), steps=steps,
                       random_start=bool(random_start), loss=loss, l1_sparsity=float(l1_sparsity))
  if validation.is_concrete(finite) and not bool(finite):
    # Only now pay for a clean forward pass, to say whether the clean inputs or the attack hit NaN/Inf.
    validation.check_finite_logits(validation.clean_logits_finite(logits_fn, x), attack="pgd")
    validation.check_finite_logits(False, attack="pgd", where="perturbed")
  return x_adv

"""Fast Gradient Sign Method (Goodfellow et al. 2015) and its ℓ2 / ℓ1 analogues.

One gradient of the cross-entropy, one step of length eps along the steepest-ascent direction of the
chosen norm, then projection onto the threat model {‖δ‖_p ≤ eps} ∩ [0, 1]^d:
- ℓ∞: δ = eps · sign(∇) (the classic FGSM).
- ℓ2: δ = eps · ∇ / ‖∇‖₂ (the fast gradient method).
- ℓ1: the exact maximiser of the linearised loss over the ℓ1 ball AND the box (a fractional knapsack,
  `projections.l1_box_steepest_ascent`): eps is poured into the coordinates with the largest |∇_i|,
  each up to the pixel's room in the gradient's direction. The plain ℓ1 steepest-ascent step would put
  all of eps on one pixel, which the [0, 1] box then clips to at most 1 — wasting the budget at ℓ1
  radii such as eps = 8 (paper, Table 4).
"""

import jax

from csl_jax.attacks import objectives
from csl_jax.models import inference
from csl_jax.attacks import projections
from csl_jax.attacks import validation


@inference.jit_over_model(static_argnames=("norm",))
def _fgsm(logits_fn, x, y, eps, *, norm):
  """-> (x_adv f32[B, ...], bool[]: the clean logits, computed for the gradient anyway, are all finite)."""
  loss = objectives.get_loss("ce")
  _, logits, grad = objectives.eot_value_and_grad(logits_fn, loss)(x, y, y, jax.random.PRNGKey(0))
  if norm == "linf":
    x_adv = x + eps * jax.numpy.sign(grad)
  elif norm == "l2":
    x_adv = x + eps * projections.normalize_direction(grad, "l2")
  else:
    x_adv = x + projections.l1_box_steepest_ascent(grad, x, eps)
  return projections.project(x_adv, x, eps, norm), validation.all_finite(logits)


def fgsm(logits_fn, x, y, *, eps, norm="linf"):
  """One-step attack on the cross-entropy loss.

  Args:
    logits_fn: jittable f32[B, ...] images in [0, 1] -> f32[B, K] logits. Reuse the same function
      object across calls: it is a static argument of the compiled attack.
    x: f32[B, ...] clean images in [0, 1] (any rank: [B, H, W, C], [B, T, H, W, C], ...).
    y: int[B] true labels.
    eps: radius of the threat model.
    norm: "linf", "l2" or "l1".

  Returns:
    f32[B, ...] adversarial images with ‖x_adv − x‖_p ≤ eps and values in [0, 1].

  Raises:
    ValueError: bad inputs (see `validation.check_attack_inputs`: shapes, ranges, labels outside [0, K),
      a model output that is not [B, K]) or a model with non-finite logits on x.
  """
  x, y = validation.check_attack_inputs(x, y, eps=eps, norm=norm, attack="fgsm", logits_fn=logits_fn)
  x_adv, finite = _fgsm(logits_fn, x, y, eps, norm=norm)
  validation.check_finite_logits(finite, attack="fgsm")
  return x_adv

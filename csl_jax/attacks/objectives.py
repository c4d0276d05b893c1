"""Per-example attack objectives (to be maximised) and their input gradients.

All losses map logits f32[B, K] (and int labels [B]) to f32[B]; attacks ascend them.
- "ce": cross-entropy of the true class.
- "dlr": Difference of Logits Ratio (Croce & Hein 2020), shift- and scale-invariant in the logits:
    DLR(z, y) = −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12),   π = logits sorted in decreasing order.
- "ce-targeted": −CE(z, t), pushes toward target class t.
- "dlr-targeted": targeted DLR (Croce & Hein 2020):
    −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12).
The targeted DLR needs at least 4 classes and DLR at least 3, as in the reference.
"""
import inspect
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from csl_jax.attacks.conv_layout import canonical_conv_kernels

# Keeps the DLR denominator positive when the top logits tie (same constant as the reference).
_DLR_EPS = 1e-12


def true_logit(logits, y):
  """z_y per example: f32[B, K], int[B] -> f32[B]."""
  return jnp.take_along_axis(logits, y[:, None].astype(jnp.int32), axis=1)[:, 0]


def best_other_logit(logits, y):
  """max_{i≠y} z_i per example: f32[B, K], int[B] -> f32[B]."""
  mask = jax.nn.one_hot(y, logits.shape[1], dtype=bool)
  return jnp.max(jnp.where(mask, -jnp.inf, logits), axis=1)


def margin(logits, y):
  """Classification margin z_y − max_{i≠y} z_i (> 0 iff correctly classified, ties aside) -> f32[B]."""
  return true_logit(logits, y) - best_other_logit(logits, y)


def is_correct(logits, y):
  """argmax(logits) == y -> bool[B]."""
  return jnp.argmax(logits, axis=1) == y


def cross_entropy(logits, y):
  """Per-example softmax cross-entropy −log softmax(z)_y -> f32[B]."""
  return -true_logit(jax.nn.log_softmax(logits, axis=1), y)


def ce_targeted(logits, y, y_target):
  """Targeted CE objective −CE(z, t) -> f32[B] (maximising it moves toward class t)."""
  del y
  return -cross_entropy(logits, y_target)


def dlr(logits, y):
  """Untargeted DLR loss (Croce & Hein 2020) -> f32[B]. Needs K ≥ 3."""
  top = jax.lax.top_k(logits, 3)[0]
  return -margin(logits, y) / (top[:, 0] - top[:, 2] + _DLR_EPS)


def dlr_targeted(logits, y, y_target):
  """Targeted DLR loss (Croce & Hein 2020) -> f32[B]. Needs K ≥ 4."""
  top = jax.lax.top_k(logits, 4)[0]
  numerator = true_logit(logits, y) - true_logit(logits, y_target)
  return -numerator / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_EPS)


# name -> (loss(logits, y, y_target), minimum number of classes)
LOSSES = {
    "ce": (lambda z, y, t: cross_entropy(z, y), 2),
    "dlr": (lambda z, y, t: dlr(z, y), 3),
    "ce-targeted": (ce_targeted, 2),
    "dlr-targeted": (dlr_targeted, 4),
}


def get_loss(name: str, num_classes: Optional[int] = None):
  """Returns loss(logits, y, y_target) -> f32[B] registered under `name` (see `LOSSES`).

  Raises a ValueError for unknown names or when the model has too few classes for the loss.
  """
  if name not in LOSSES:
    raise ValueError(f"Unknown attack loss {name!r}; choose one of {sorted(LOSSES)}.")
  loss, min_classes = LOSSES[name]
  if num_classes is not None and num_classes < min_classes:
    raise ValueError(f"Loss {name!r} needs at least {min_classes} classes, the model has {num_classes}.")
  return loss


def loss_index(name: str) -> int:
  """Position of loss `name` in `LOSSES`: the traced argument of `switched_loss`."""
  if name not in LOSSES:
    raise ValueError(f"Unknown attack loss {name!r}; choose one of {sorted(LOSSES)}.")
  return list(LOSSES).index(name)


def switched_loss(index):
  """loss(logits, y, y_target) -> f32[B] of the `LOSSES` entry at `index` (an int32 scalar, may be traced).

  One compiled attack then serves every loss (APGD-CE and APGD-T share their programs: a `lax.switch` over
  the loss head only, the model's forward and backward are traced once). A loss the model has too few classes
  for is replaced by CE in the switch, so tracing never fails; callers validate the name with `get_loss`.
  """
  def loss(logits, y, y_target):
    num_classes = logits.shape[1]
    branches = [fn if num_classes >= min_classes else LOSSES["ce"][0] for fn, min_classes in LOSSES.values()]
    return jax.lax.switch(index, branches, logits, y, y_target)
  return loss


def takes_key(logits_fn: Callable) -> bool:
  """True if `logits_fn` is a randomised model called as logits_fn(x, key=...) (e.g. a defence for EOT)."""
  try:
    return "key" in inspect.signature(logits_fn).parameters
  except (TypeError, ValueError):  # builtins and some C callables have no signature
    return False


def with_key(logits_fn: Callable) -> Callable:
  """Returns f(x, key) -> logits: passes `key` through to randomised models, drops it for deterministic ones."""
  if takes_key(logits_fn):
    return lambda x, key: logits_fn(x, key=key)
  return lambda x, key: logits_fn(x)


def eot_value_and_grad(logits_fn: Callable, loss: Callable, eot_iter: int = 1):
  """Builds f(x, y, y_target, key) -> (loss f32[B], logits f32[B, K], ∂loss/∂x f32[B, ...]).

  Examples are independent (models run in eval mode), so the gradient of the summed loss is the stack of
  per-example gradients: one backward pass for the whole batch. For randomised models (logits_fn(x, key=k))
  the gradient is averaged over `eot_iter` draws — Expectation over Transformation (Athalye et al. 2018) —
  and loss and logits come from the last draw, as in AutoAttack's "rand" version. Deterministic models
  ignore `key`; use eot_iter=1 for them.
  """
  logits_fn_k = with_key(logits_fn)

  def objective(x, y, y_target, key):
    logits = logits_fn_k(x, key)
    values = loss(logits, y, y_target)
    return jnp.sum(values), (values, logits)

  # On CPU, convolution kernels of the backward pass are kept in the fast layout (see conv_layout).
  grad_fn = canonical_conv_kernels(jax.grad(objective, has_aux=True))

  def f(x, y, y_target, key):
    if eot_iter == 1:
      grad, (values, logits) = grad_fn(x, y, y_target, key)
      return values, logits, grad

    def draw(grad_sum, k):
      grad, aux = grad_fn(x, y, y_target, k)
      return grad_sum + grad, aux

    grad_sum, (values, logits) = jax.lax.scan(draw, jnp.zeros_like(x), jax.random.split(key, eot_iter))
    return values[-1], logits[-1], grad_sum / eot_iter

  return f

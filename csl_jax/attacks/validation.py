"""Eager input checks shared by every attack: clear errors before anything is traced.

Checks run only on concrete (non-traced) values, so calling an attack inside `jax.jit` still works;
inside a trace only the static checks (shapes, norm name, dtype) apply.
"""
import jax
import jax.numpy as jnp
import numpy as np

from csl_jax.attacks.projections import NORMS

# Images that went through a float round trip (e.g. uint8 / 255) may sit a hair outside [0, 1].
RANGE_TOLERANCE = 1e-6


def _is_concrete(value) -> bool:
  return not isinstance(value, jax.core.Tracer)


def check_norm(norm: str, supported=NORMS, *, attack: str = "attack") -> str:
  """Returns `norm` if `attack` supports it, else raises a ValueError naming the supported norms."""
  if norm not in supported:
    raise ValueError(f"{attack}: norm={norm!r} is not supported; choose one of {tuple(supported)}.")
  return norm


def check_eps(eps, *, attack: str = "attack"):
  """Checks that a concrete eps is a finite positive scalar; returns it unchanged."""
  if _is_concrete(eps):
    value = np.asarray(eps)
    if value.ndim != 0 or not np.issubdtype(value.dtype, np.number):
      raise ValueError(f"{attack}: eps must be a scalar number, got {eps!r}.")
    if not np.isfinite(value) or value <= 0:
      raise ValueError(f"{attack}: eps must be finite and > 0, got {float(value)}.")
  return eps


def check_attack_inputs(x, y, *, eps, norm: str, supported_norms=NORMS, attack: str = "attack"):
  """Validates (x, y, eps, norm) for an attack and returns (x f32[B, ...], y int32[B]).

  Args:
    x: images f32[B, ...] (rank ≥ 2, e.g. [B, H, W, C] or video [B, T, H, W, C]) with values in [0, 1].
    y: integer labels [B] (true labels, or target labels for targeted attacks).
    eps: positive radius of the ℓp ball.
    norm: one of `supported_norms`.
    attack: name used in error messages.

  Raises:
    ValueError: wrong rank, mismatched batch sizes, non-integer labels, values outside [0, 1],
      non-positive eps or an unsupported norm. Value checks run only when the inputs are concrete.
  """
  check_norm(norm, supported_norms, attack=attack)
  check_eps(eps, attack=attack)
  if jnp.ndim(x) < 2:
    raise ValueError(f"{attack}: x must be a batch f32[B, ...] of rank >= 2, got shape {jnp.shape(x)}.")
  if jnp.ndim(y) != 1:
    raise ValueError(f"{attack}: y must be integer labels of shape [B], got shape {jnp.shape(y)}.")
  if jnp.shape(x)[0] != jnp.shape(y)[0]:
    raise ValueError(
        f"{attack}: batch sizes differ: x has {jnp.shape(x)[0]} examples but y has {jnp.shape(y)[0]} "
        "labels. Pass one label per image.")
  if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
    raise ValueError(f"{attack}: y must hold integer class ids, got dtype {jnp.result_type(y)}.")
  if jnp.issubdtype(jnp.result_type(x), jnp.integer):
    raise ValueError(
        f"{attack}: x has integer dtype {jnp.result_type(x)}; attacks work on float images in [0, 1]. "
        "Convert uint8 images with x.astype(np.float32) / 255.")
  if _is_concrete(x):
    # Reduced where x lives: two scalars come back, not a host copy of every batch.
    lo, hi = float(jnp.min(x)), float(jnp.max(x))
    if not np.isfinite(lo) or not np.isfinite(hi) or lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
      raise ValueError(
          f"{attack}: x must be images with values in [0, 1], found range [{lo:.4g}, {hi:.4g}]. "
          "Pass un-normalised pixels in [0, 1]; the model's logits_fn should apply mean/std itself.")
  x = jnp.clip(jnp.asarray(x, jnp.float32), 0.0, 1.0)
  return x, jnp.asarray(y, jnp.int32)


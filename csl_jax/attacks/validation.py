"""Eager input checks shared by every attack: clear errors before anything is traced.

Checks run only on concrete (non-traced) values, so calling an attack inside `jax.jit` still works;
inside a trace only the static checks (shapes, norm name, dtype, the model's output shape) apply.

What each check costs per attack call:
- the model's output shape: one `jax.eval_shape` of `logits_fn` per (logits_fn, input shape), cached;
- the ranges of x and y: one jitted min/max reduction on the device, two pairs of scalars to the host;
- finite logits: no extra model call; each attack reduces logits it computes anyway to one bool
  (`all_finite`), and `check_finite_logits` raises if it is False.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from csl_jax.attacks import objectives
from csl_jax.models import inference
from csl_jax.attacks.projections import NORMS

# Images that went through a float round trip (e.g. uint8 / 255) may sit a hair outside [0, 1].
RANGE_TOLERANCE = 1e-6


def is_concrete(value) -> bool:
  """False for a tracer (inside jax.jit / grad / vmap), where values are unknown; True otherwise."""
  return not isinstance(value, jax.core.Tracer)


def check_norm(norm: str, supported=NORMS, *, attack: str = "attack") -> str:
  """Returns `norm` if `attack` supports it, else raises a ValueError naming the supported norms."""
  if norm not in supported:
    raise ValueError(f"{attack}: norm={norm!r} is not supported; choose one of {tuple(supported)}.")
  return norm


def check_eps(eps, *, attack: str = "attack"):
  """Checks that a concrete eps is a finite positive scalar; returns it unchanged."""
  if is_concrete(eps):
    value = np.asarray(eps)
    if value.ndim != 0 or not np.issubdtype(value.dtype, np.number):
      raise ValueError(f"{attack}: eps must be a scalar number, got {eps!r}.")
    if not np.isfinite(value) or value <= 0:
      raise ValueError(f"{attack}: eps must be finite and > 0, got {float(value)}.")
  return eps


def check_step_size(step_size, *, attack: str = "attack"):
  """Checks that a concrete step size is a finite number >= 0 (None means the attack's default)."""
  if step_size is not None and is_concrete(step_size):
    value = np.asarray(step_size)
    if value.ndim != 0 or not np.issubdtype(value.dtype, np.number):
      raise ValueError(f"{attack}: step_size must be a scalar number, got {step_size!r}.")
    if not np.isfinite(value) or value < 0:
      raise ValueError(f"{attack}: step_size must be finite and >= 0, got {float(value)}.")
  return step_size


def check_count(value, name: str, *, minimum: int = 1, attack: str = "attack") -> int:
  """Returns int(value) for an iteration / restart count, raising a ValueError unless it is a whole
  number >= `minimum`."""
  try:
    count = int(value)
    whole = count == value
  except (TypeError, ValueError):
    whole = False
  if not whole:
    raise ValueError(f"{attack}: {name} must be an integer, got {value!r}.")
  if count < minimum:
    raise ValueError(f"{attack}: {name} must be >= {minimum}, got {count}.")
  return count


@functools.lru_cache(maxsize=64)
def _cached_logits_shape(treedef, leaf_types, shape, dtype):
  """Keyed on the model's structure and weight shapes (not its weights: the cache holds no arrays)."""
  def apply(leaves, images, key):
    return objectives.with_key(jax.tree_util.tree_unflatten(treedef, leaves))(images, key)
  leaves = [jax.ShapeDtypeStruct(leaf_shape, leaf_dtype) for leaf_shape, leaf_dtype in leaf_types]
  out = jax.eval_shape(apply, leaves, jax.ShapeDtypeStruct(shape, dtype), jax.ShapeDtypeStruct((2,), jnp.uint32))
  return tuple(getattr(out, "shape", ()))


def _logits_shape(logits_fn, shape, dtype):
  images = jax.ShapeDtypeStruct(shape, dtype)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  out = jax.eval_shape(objectives.with_key(logits_fn), images, key)
  return tuple(getattr(out, "shape", ()))


def logits_shape(logits_fn, x) -> tuple:
  """Shape of logits_fn(x) without running the model (`jax.eval_shape`, cached per model structure and shape)."""
  shape, dtype = tuple(jnp.shape(x)), jnp.float32
  if not is_concrete(x):  # inside a trace the model may close over tracers: never keep it in the cache
    return _logits_shape(logits_fn, shape, dtype)
  leaves, treedef = jax.tree_util.tree_flatten(inference.as_pytree(logits_fn))
  if not all(is_concrete(leaf) for leaf in leaves):
    return _logits_shape(logits_fn, shape, dtype)
  leaf_types = tuple((tuple(np.shape(leaf)), jnp.result_type(leaf)) for leaf in leaves)
  try:
    return _cached_logits_shape(treedef, leaf_types, shape, dtype)
  except TypeError:  # an unhashable logits_fn: trace every time
    return _logits_shape(logits_fn, shape, dtype)


def check_logits_shape(logits_fn, x, *, attack: str = "attack") -> int:
  """Checks that logits_fn maps a batch f32[B, ...] to logits f32[B, K] (K ≥ 2); returns K.

  Catches models that return [1, K] for a batch (silently broadcast against B labels), [B] or [B, K, 1].
  """
  batch = jnp.shape(x)[0]
  shape = logits_shape(logits_fn, x)
  if len(shape) != 2 or shape[0] != batch or shape[1] < 2:
    raise ValueError(
        f"{attack}: logits_fn must return logits of shape [B, K] = [{batch}, K] (K >= 2 classes) for a batch "
        f"of {batch} images of shape {tuple(jnp.shape(x))}; it returned shape {shape}.")
  return int(shape[1])


@jax.jit
def _value_ranges(x, y):
  """[min x, max x] f32[2] and [min y, max y] int32[2], reduced where the arrays live."""
  return jnp.stack([jnp.min(x), jnp.max(x)]), jnp.stack([jnp.min(y), jnp.max(y)])


def check_labels(lo: int, hi: int, num_classes: int, *, attack: str = "attack"):
  """Raises a ValueError unless every label lies in [0, num_classes) (lo, hi: smallest and largest)."""
  if lo < 0 or hi >= num_classes:
    raise ValueError(
        f"{attack}: labels must be class ids in [0, {num_classes}) for a model with {num_classes} classes; "
        f"found labels in [{lo}, {hi}].")


def all_finite(logits):
  """bool[]: every entry of the logits is finite (a device-side reduction to return from a jitted attack)."""
  return jnp.all(jnp.isfinite(logits))


@inference.jit_over_model
def clean_logits_finite(logits_fn, x):
  """bool[]: logits_fn(x) is finite everywhere (one forward pass, reduced on the device)."""
  return all_finite(objectives.with_key(logits_fn)(x, jax.random.PRNGKey(0)))


def check_finite_logits(finite, *, attack: str = "attack", where: str = "clean"):
  """Raises a ValueError when `finite` (a concrete bool, e.g. `all_finite` of the clean logits) is False.

  where="clean": the model gave NaN/Inf on the unperturbed inputs. where="perturbed": the clean logits were
  finite but some point the attack visited inside the threat model gave NaN/Inf (its gradient would be NaN).
  """
  if not is_concrete(finite) or bool(finite):
    return
  if where == "clean":
    raise ValueError(
        f"{attack}: the model outputs non-finite logits (NaN or Inf) on clean inputs; robust accuracy is "
        "meaningless for it. Check the model's weights and the input normalisation inside logits_fn.")
  raise ValueError(
      f"{attack}: the model outputs non-finite logits (NaN or Inf) at perturbed inputs inside the threat "
      "model (its clean logits are finite), so the attack's gradient is NaN and its result is not valid.")


def check_attack_inputs(x, y, *, eps, norm: str, supported_norms=NORMS, attack: str = "attack", logits_fn=None):
  """Validates (x, y, eps, norm) for an attack and returns (x f32[B, ...], y int32[B]).

  Args:
    x: images f32[B, ...] (rank ≥ 2, e.g. [B, H, W, C] or video [B, T, H, W, C]) with values in [0, 1].
    y: integer labels [B] (true labels, or target labels for targeted attacks).
    eps: positive radius of the ℓp ball.
    norm: one of `supported_norms`.
    attack: name used in error messages.
    logits_fn: the model; when given, its output shape must be [B, K] and the labels must lie in [0, K).

  Raises:
    ValueError: wrong rank, mismatched batch sizes, non-integer labels, values outside [0, 1],
      non-positive eps, an unsupported norm, a model output that is not [B, K], or labels outside
      [0, K). Value checks run only when the inputs are concrete.
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
  num_classes = None if logits_fn is None else check_logits_shape(logits_fn, x, attack=attack)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
  if is_concrete(x) and is_concrete(y):
    # Reduced where x and y live: four scalars come back, not a host copy of every batch.
    x_range, y_range = jax.device_get(_value_ranges(x, y))
    lo, hi = float(x_range[0]), float(x_range[1])
    if not np.isfinite(lo) or not np.isfinite(hi) or lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
      raise ValueError(
          f"{attack}: x must be images with values in [0, 1], found range [{lo:.4g}, {hi:.4g}]. "
          "Pass un-normalised pixels in [0, 1]; the model's logits_fn should apply mean/std itself.")
    if num_classes is not None:
      check_labels(int(y_range[0]), int(y_range[1]), num_classes, attack=attack)
  return jnp.clip(x, 0.0, 1.0), y

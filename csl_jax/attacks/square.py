"""Square Attack (Andriushchenko et al., ECCV 2020): score-based random search, ℓ∞ and ℓ2, as in AutoAttack.

The attack only queries logits. It minimises the margin loss L = z_y − max_{k≠y} z_k from a random start
and, each query, proposes a perturbation change on one random s×s square (the same spatial window in
every channel), keeping it only if L decreases; a point stops once L ≤ 0 (misclassified).
- ℓ∞: start at a random vertex made of vertical stripes (one ±eps per column and channel); an update sets
  the square to ±eps per channel (x_best ± 2·eps, projected back).
- ℓ2: start from a 5×5-ish grid of nested-square patterns `eta(s)` with random signs, rescaled to ‖δ‖₂ =
  eps; an update moves mass from a second random square into the first: the first square
  gets `eta(s)`·±1 plus its old content, renormalised so the whole δ keeps norm eps.
The side s = round(√(p·H·W)) follows the piecewise-constant schedule `p_selection` (p_init halved at
fixed query counts; AutoAttack uses it without rescaling to n_queries).

Reference: fra31/auto-attack, autoattack/square.py (read, not copied). Like it, the window positions, the
ℓ∞ channel signs and the transposition of `eta` are drawn once per query for the whole batch; the ℓ2 signs
are per example and channel. Randomness is `fold_in(fold_in(key, restart), query)`, so runs replay.

Layout: images f32[B, H, W, C]; any leading axes between B and H (video [B, T, H, W, C]) count as
channels (a square covers the same pixels of every frame). Rank-2 inputs [B, D] are one row of D
pixels, rank-3 inputs [B, H, W] one channel. The query loop is one `lax.while_loop` inside one `jax.jit`
(stopping once every point is fooled); side lengths are looked up from a static table, windows are
masks built from iotas, so every query runs the same compiled body.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from csl_jax.attacks import objectives
from csl_jax.models import inference
from csl_jax.attacks import projections
from csl_jax.attacks.validation import check_attack_inputs
from csl_jax import rng

SQUARE_NORMS = ("linf", "l2")
_SPATIAL = (-3, -2)
# Same guard as the reference for normalising (near-)zero windows.
_TINY = 1e-12


def p_selection(query: int, p_init: float, n_queries: int, rescale: bool = False) -> float:
  """Fraction p of pixels in the square at `query` (reference schedule): p_init / 2^j after fixed query counts."""
  if rescale:
    query = int(query / n_queries * 10000)
  for bound, halvings in ((8000, 9), (6000, 8), (4000, 7), (2000, 6), (1000, 5), (500, 4), (200, 3),
                          (50, 2), (10, 1)):
    if query > bound:
      return p_init / 2**halvings
  return p_init


def side_lengths(norm, n_queries, p_init, height, width, rescale=False) -> np.ndarray:
  """int32[n_queries] square side per query: round(√(p·H·W)), ≥ 1 for ℓ∞, ≥ 3 and odd for ℓ2, ≤ min(H, W)."""
  sides = []
  for query in range(n_queries):
    side = int(round(math.sqrt(p_selection(query, p_init, n_queries, rescale) * height * width)))
    if norm == "linf":
      side = max(side, 1)
    else:
      side = max(side, 3)
      side += 1 - side % 2
    sides.append(min(side, height, width))
  return np.asarray(sides, np.int32)


def _nested_squares(rows_idx, cols_idx, rows, cols, size):
  """The reference's `eta_rectangles(rows, cols)` at integer coordinates (0 outside), unit ℓ2 norm.

  Pixel (i, j) of a rows×cols rectangle lies in the k-th centred square (half-width k) for every
  k ≥ m = max(|i − rows//2|, |j − cols//2|), each square adding 1/(k+1)² up to k = max(rows, cols)//2:
  value = Σ_{n=m+1}^{K} 1/n² with K = max(rows//2, cols//2) + 1. `size` (static) bounds rows and cols.
  """
  inside = (rows_idx >= 0) & (rows_idx < rows) & (cols_idx >= 0) & (cols_idx < cols)
  ring = jnp.maximum(jnp.abs(rows_idx - rows // 2), jnp.abs(cols_idx - cols // 2))
  outer = jnp.maximum(rows // 2, cols // 2) + 1
  # partial[n] = Σ_{q≤n} 1/q², so the value is partial[K] − partial[m].
  partial = jnp.asarray(np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, size + 2) ** 2)]), jnp.float32)
  value = partial[jnp.clip(outer, 0, size + 1)] - partial[jnp.clip(ring, 0, size + 1)]
  value = jnp.where(inside, value, 0.0)
  total = jnp.sqrt(jnp.sum(value * value))
  return jnp.where(total > 0, value / jnp.maximum(total, _TINY), 0.0)


def eta_pattern(side, size, transpose):
  """The ℓ2 update pattern `eta(side)` on a [size, size] canvas (zero outside [0, side)²), unit ℓ2 norm.

  Top half: nested squares; bottom half: negative nested squares; each half has unit ℓ2 norm before the total is.
  `side` and `transpose` may be traced; `size` is static.
  """
  i = jnp.arange(size)[:, None]
  j = jnp.arange(size)[None, :]
  half = side // 2
  pattern = (_nested_squares(i, j, half, side, size)
             - _nested_squares(i - half, j, side - half, side, size))
  pattern = pattern / jnp.sqrt(jnp.sum(pattern * pattern))
  return jnp.where(transpose, pattern.T, pattern)


def _window(height, width, top, left, side):
  """f32[H, W, 1] indicator of the square [top, top + side) × [left, left + side)."""
  rows = (jnp.arange(height) >= top) & (jnp.arange(height) < top + side)
  cols = (jnp.arange(width) >= left) & (jnp.arange(width) < left + side)
  return (rows[:, None] & cols[None, :])[..., None].astype(jnp.float32)


def _place(canvas, height, width, top, left):
  """f32[H, W, 1]: image pixel (i, j) takes canvas[i − top, j − left] (0 where that is off the canvas)."""
  size = canvas.shape[0]
  rows = jnp.arange(height) - top
  cols = jnp.arange(width) - left
  valid = ((rows >= 0) & (rows < size))[:, None] & ((cols >= 0) & (cols < size))[None, :]
  values = canvas[jnp.clip(rows, 0, size - 1)[:, None], jnp.clip(cols, 0, size - 1)[None, :]]
  return jnp.where(valid, values, 0.0)[..., None]


def _corner(u, height, width, side):
  """Top-left corner of a square from two uniforms, as the reference draws it: ⌊U·(H − s)⌋, ⌊U·(W − s)⌋."""
  return (jnp.floor(u[0] * (height - side)).astype(jnp.int32),
          jnp.floor(u[1] * (width - side)).astype(jnp.int32))


def _signs(u):
  """±1 from uniforms in [0, 1) (the reference's sign(2U − 1))."""
  return jnp.where(u < 0.5, -1.0, 1.0)


def _per_example_l2(delta):
  return projections.per_example(projections.lp_norm(delta, "l2"), delta)


def _sign_shape(x, tiles=(1, 1)):
  """Shape of per-(example, channel) signs for x f32[B, ..., H, W, C], with `tiles` in place of (H, W)."""
  return x.shape[:-3] + tuple(tiles) + x.shape[-1:]


def linf_init(x, eps, stripe_signs):
  """Vertical-stripe vertex x ± eps: stripe_signs ±1 of shape [B, ..., 1, W, C], constant down each column."""
  return jnp.clip(x + eps * stripe_signs, 0.0, 1.0)


def l2_init(x, eps, tile_signs, tile_flips):
  """Grid of eta(s) tiles (s = H // 5, from row/column (H − 5s) // 2) scaled to ‖δ‖₂ = eps.

  tile_signs: ±1 of shape [B, ..., H // s, W // s, C]; tile_flips: bool[H // s, W // s] (transpose eta).
  Tiles running off the image are cut (the reference only supports sizes where none do).
  """
  height, width = x.shape[-3:-1]
  side = max(height // 5, 1)
  start = max((height - 5 * side) // 2, 0)
  tiles_down, tiles_across = tile_flips.shape
  canvas = eta_pattern(side, side, False)
  rows, cols = jnp.arange(height) - start, jnp.arange(width) - start
  tile_r, tile_c = rows // side, cols // side
  on_grid = ((rows >= 0) & (tile_r < tiles_down))[:, None] & ((cols >= 0) & (tile_c < tiles_across))[None, :]
  tile_r, tile_c = jnp.clip(tile_r, 0, tiles_down - 1), jnp.clip(tile_c, 0, tiles_across - 1)
  local_r, local_c = (rows % side)[:, None], (cols % side)[None, :]
  flip = tile_flips[tile_r[:, None], tile_c[None, :]]
  pattern = jnp.where(flip, canvas.T[local_r, local_c], canvas[local_r, local_c])
  pattern = jnp.where(on_grid, pattern, 0.0)[..., None]
  delta = pattern * jnp.take(jnp.take(tile_signs, tile_r, axis=-3), tile_c, axis=-2)
  return jnp.clip(x + delta / (_per_example_l2(delta) + _TINY) * eps, 0.0, 1.0)


def _random_init(key, x, eps, norm):
  height, width = x.shape[-3:-1]
  k_sign, k_flip = jax.random.split(key)
  if norm == "linf":
    return linf_init(x, eps, _signs(rng.uniform(k_sign, x.shape[:-3] + (1,) + x.shape[-2:])))
  side = max(height // 5, 1)
  tiles = (height // side, width // side)
  tile_signs = _signs(rng.uniform(k_sign, _sign_shape(x, tiles)))
  return l2_init(x, eps, tile_signs, rng.uniform(k_flip, tiles) > 0.5)


def linf_proposal(x, x_best, eps, side, corner, signs):
  """x_best with the square at `corner` (top, left) of side `side` moved by ±2·eps per channel, projected.

  signs: ±1 of shape [C] (one per channel, shared by the batch as in the reference).
  """
  height, width = x.shape[-3:-1]
  x_new = x_best + _window(height, width, *corner, side) * (2.0 * eps) * signs
  return jnp.clip(jnp.clip(x_new, x - eps, x + eps), 0.0, 1.0)


def l2_proposal(x, x_best, eps, side, corner, corner2, transpose, signs):
  """Empty the square at `corner2`, refill the one at `corner` with eta(side)·signs + its old content.

  Per channel the refilled square gets the ℓ2 mass both squares held plus an equal share of the budget
  the image has left (eps² − ‖δ‖²), then the whole δ is rescaled to ‖δ‖₂ = eps.
  signs: ±1 of shape [B, ..., 1, 1, C]; transpose: bool, use eta(side)ᵀ.
  """
  height, width = x.shape[-3:-1]
  channels = x[0].size // (height * width)
  delta = x_best - x
  first = _window(height, width, *corner, side)
  second = _window(height, width, *corner2, side)
  norm_first = jnp.sqrt(jnp.sum((delta * first) ** 2, axis=_SPATIAL, keepdims=True))
  norm_both = jnp.sqrt(jnp.sum((delta * jnp.maximum(first, second)) ** 2, axis=_SPATIAL, keepdims=True))
  norm_image = _per_example_l2(delta)
  canvas = eta_pattern(side, max(height, width), transpose)
  update = _place(canvas, height, width, *corner) * signs + delta * first / (_TINY + norm_first)
  budget = jnp.sqrt(jnp.maximum(eps**2 - norm_image**2, 0.0) / channels + norm_both**2)
  update = update / (_TINY + jnp.sqrt(jnp.sum(update**2, axis=_SPATIAL, keepdims=True))) * budget
  delta = jnp.where(second > 0, 0.0, delta)
  delta = jnp.where(first > 0, update, delta)
  return jnp.clip(x + delta / (_per_example_l2(delta) + _TINY) * eps, 0.0, 1.0)


def _random_proposal(key, x, x_best, eps, side, norm):
  """One query's proposal. All its randomness is one uniform draw: fewer PRNG calls in the loop body
  keep it cheap to compile (each threefry call adds XLA work)."""
  height, width = x.shape[-3:-1]
  if norm == "linf":
    u = rng.uniform(key, (2 + x.shape[-1],))
    return linf_proposal(x, x_best, eps, side, _corner(u[:2], height, width, side), _signs(u[2:]))
  sign_shape = _sign_shape(x)
  u = rng.uniform(key, (5 + math.prod(sign_shape),))
  return l2_proposal(x, x_best, eps, side, _corner(u[:2], height, width, side),
                     _corner(u[2:4], height, width, side), u[4] > 0.5, jnp.reshape(_signs(u[5:]), sign_shape))


@inference.jit_over_model(static_argnames=("shape", "norm", "n_restarts", "sides"))
def _square(logits_fn, x, y, key, eps, *, shape, norm, n_restarts, sides):
  # `sides` is a static tuple: one compiled body looks its side up per query.
  side_table = jnp.asarray(sides, jnp.int32)
  n_queries = len(sides)
  margin_of = lambda images: objectives.margin(logits_fn(jnp.reshape(images, shape)), y)
  per_example = lambda mask: projections.per_example(mask, x)

  def restart(r, carry):
    robust, x_adv = carry
    run_key = jax.random.fold_in(key, r)
    x_best = _random_init(jax.random.fold_in(run_key, n_queries), x, eps, norm)
    margin_min = margin_of(x_best)

    def query(carry):
      i, x_best, margin_min = carry
      x_new = _random_proposal(jax.random.fold_in(run_key, i), x, x_best, eps, side_table[i], norm)
      margin = margin_of(x_new)
      # Only points still being attacked move; a proposal is kept only if it lowers the margin.
      improved = robust & (margin_min > 0) & (margin < margin_min)
      return (i + 1, jnp.where(per_example(improved), x_new, x_best),
              jnp.where(improved, margin, margin_min))

    active = lambda carry: (carry[0] < n_queries) & jnp.any(robust & (carry[2] > 0))
    _, x_best, _ = jax.lax.while_loop(active, query, (jnp.int32(0), x_best, margin_min))
    fooled = robust & ~objectives.is_correct(logits_fn(jnp.reshape(x_best, shape)), y)
    return robust & ~fooled, jnp.where(per_example(fooled), x_best, x_adv)

  robust = objectives.is_correct(logits_fn(jnp.reshape(x, shape)), y)
  _, x_adv = jax.lax.fori_loop(0, n_restarts, restart, (robust, x))
  return jnp.reshape(x_adv, shape)


def _as_images(x):
  """View x as rank ≥ 4 [..., H, W, C]: [B, D] -> [B, 1, D, 1], [B, H, W] -> [B, H, W, 1]."""
  if x.ndim == 2:
    return jnp.reshape(x, (x.shape[0], 1, x.shape[1], 1))
  if x.ndim == 3:
    return x[..., None]
  return x


def square(logits_fn, x, y, *, eps, norm="linf", n_queries=5000, p_init=0.8, n_restarts=1, key=None,
           rescale_schedule=False):
  """Untargeted Square Attack on the margin loss within an ℓ∞ or ℓ2 ball of radius eps.

  Args:
    logits_fn: jittable f32[B, ...] images in [0, 1] -> f32[B, K] logits (a static argument: reuse the
      same function object across batches to avoid recompilation). Only its outputs are used.
    x: f32[B, H, W, C] clean images in [0, 1] (see the module docstring for other ranks).
    y: int[B] true labels.
    eps: radius of the threat model.
    norm: "linf" or "l2".
    n_queries: proposals per restart (one logits_fn call each).
    p_init: initial fraction of pixels in a square.
    n_restarts: independent runs on the points still correctly classified.
    key: PRNG key (default PRNGKey(0)); the same key gives the same result.
    rescale_schedule: stretch `p_selection` to n_queries (the reference's standalone default; AutoAttack
      turns it off, so the default here is False).

  Returns:
    f32[B, ...] images: a misclassified x_adv with ‖x_adv − x‖_p ≤ eps where one was found, else x.
  """
  x, y = check_attack_inputs(x, y, eps=eps, norm=norm, supported_norms=SQUARE_NORMS, attack="square")
  if int(n_queries) < 1 or int(n_restarts) < 1:
    raise ValueError(f"square: n_queries and n_restarts must be >= 1, got {n_queries} and {n_restarts}.")
  if not 0.0 < float(p_init) <= 1.0:
    raise ValueError(f"square: p_init is a fraction of the image, expected 0 < p_init <= 1, got {p_init}.")
  images = _as_images(x)
  height, width = images.shape[-3:-1]
  sides = side_lengths(norm, int(n_queries), float(p_init), height, width, bool(rescale_schedule))
  key = jax.random.PRNGKey(0) if key is None else key
  x_adv = _square(logits_fn, images, y, key, jnp.asarray(eps, jnp.float32), shape=x.shape, norm=norm,
                  n_restarts=int(n_restarts), sides=tuple(int(s) for s in sides))
  return jnp.reshape(x_adv, x.shape)

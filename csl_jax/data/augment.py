"""On-device data augmentation, pure JAX: call it inside the jitted train step on u8 batches.

Every recipe takes a PRNG key and u8[B, H, W, C] images and returns f32[B, out, out, C] in [0, 1].
All random choices of a batch come from one draw, `rng.uniform(key, (B, K))`: row b holds the
K uniforms example b consumes (crop proposals, flip, jitter factors and order, ...). The same key always
gives the same batch (resumed runs replay the same views when the step's key is
`jax.random.fold_in(key, step)`), and a single draw keeps compile time low (every separate
`jax.random` call adds a PRNG kernel). Nothing loops over the batch.

`simclr` follows the SimCLR recipe (Chen et al. 2020a, appendix A):
  1. random resized crop: area fraction ~ U(crop_scale), log aspect ratio ~ U(log 3/4, log 4/3), bilinear
     resize to out_size (10 proposals per example, first that fits; otherwise the whole image);
  2. horizontal flip with probability 1/2;
  3. colour jitter with probability jitter_prob: brightness, contrast, saturation (factors
     ~ U(max(0, 1 - 0.8 s), 1 + 0.8 s)) and hue (shift ~ U(-0.2 s, 0.2 s)), s = jitter_strength, applied in
     a random order per example as in the reference implementation, clipped to [0, 1] after each;
  4. grayscale with probability grayscale_prob;
  5. Gaussian blur (kernel 10% of out_size, sigma ~ U(0.1, 2)) with probability blur_prob, only when
     blur=True (the ImageNet recipe; SimCLR does not blur CIFAR).
Brightness is multiplicative (the SimCLR v2 / torchvision form); contrast blends with each channel's mean
(tf.image.adjust_contrast). For one-channel images saturation, hue and grayscale are skipped.

It runs on the whole batch at once, written for XLA:CPU, where it once took ~18 % of a small-CNN
SimCLR step (per-example `vmap` with a `lax.switch` per jitter slot, i.e. every op on every example):
crop + resize + flip + u8 scaling are two batched matmuls with per-example interpolation matrices, the
colour ops run on planar [B, C, H, W] images with per-example factors and a select per slot, the HSV
quantities are computed once per pixel and slot, and `mod` is floor-based (vectorised). Same uniforms, same
views as the per-example version (tests/data/test_augment.py keeps it as the reference).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from csl_jax import rng

# ITU-R 601-2 luma weights, as in tf.image.rgb_to_grayscale.
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
CROP_RATIO = (3 / 4, 4 / 3)
_CROP_PROPOSALS = 10
_BLUR_SIGMA = (0.1, 2.0)


def _check_u8(images):
  if images.dtype != jnp.uint8 or images.ndim != 4:
    raise TypeError(f"augment expects u8[B, H, W, C] images, got {images.dtype}{list(images.shape)}; "
                    f"pass the batch from data.load(...).batches(...) before any conversion.")


def _as_unit_float(images):
  _check_u8(images)
  return images.astype(jnp.float32) / 255.0


def _resize(x, out_size: int):
  """f32[B, H, W, C] -> f32[B, out_size, out_size, C], bilinear with antialiasing when shrinking."""
  if x.shape[1:3] == (out_size, out_size):
    return x
  return jax.image.resize(x, (x.shape[0], out_size, out_size, x.shape[3]), "linear", antialias=True)


def to_float(images, *, out_size: int | None = None):
  """Evaluation path: u8[B, H, W, C] -> f32[B, out, out, C] in [0, 1] (resized only if out_size differs)."""
  x = _as_unit_float(images)
  if out_size is not None:
    x = jnp.clip(_resize(x, out_size), 0.0, 1.0)
  return x


# ----------------------------------------------------------------------------------------------------
# Geometry.


CROP_UNIFORMS = 2 * _CROP_PROPOSALS + 2


def crop_box(u, height: int, width: int, scale=(0.08, 1.0), ratio=CROP_RATIO):
  """A random-resized-crop box (y0, x0, h, w) in pixels (continuous) inside a height x width image.

  u: f32[..., CROP_UNIFORMS] uniforms in [0, 1), one row per example; returns four f32[...] arrays. Area
  fraction ~ U(scale), aspect w/h log-uniform in `ratio`; the first of 10 proposals that fits is kept, else the
  whole image with its aspect clamped into `ratio` (torchvision's fallback). The offset is uniform over the
  positions where the box fits.
  """
  u_area, u_ratio, u_offset = u[..., :_CROP_PROPOSALS], u[..., _CROP_PROPOSALS:-2], u[..., -2:]
  area = height * width * (scale[0] + (scale[1] - scale[0]) * u_area)
  log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
  aspect = jnp.exp(log_low + (log_high - log_low) * u_ratio)
  w, h = jnp.sqrt(area * aspect), jnp.sqrt(area / aspect)
  fits = (w <= width) & (h <= height)
  first = jnp.argmax(fits, axis=-1)[..., None]
  found = jnp.take_along_axis(fits, first, axis=-1)[..., 0]
  h = jnp.where(found, jnp.take_along_axis(h, first, axis=-1)[..., 0], min(height, width / ratio[0]))
  w = jnp.where(found, jnp.take_along_axis(w, first, axis=-1)[..., 0], min(width, height * ratio[1]))
  return u_offset[..., 0] * (height - h), u_offset[..., 1] * (width - w), h, w


def interpolation_matrix(start, length, in_size: int, out_size: int):
  """Bilinear resampling of the interval [start, start + length) of an axis of in_size pixels to out_size.

  start, length: f32[...] (one interval per example) -> f32[..., out_size, in_size] with rows summing to 1, so
  that `matrix @ signal` resamples. The weights are those of `jax.image.scale_and_translate(..., "linear",
  antialias=True)` with scale out_size / length: half-pixel centres, a triangle kernel widened by
  length / out_size when shrinking (antialiasing), renormalised over the pixels inside the image.
  """
  start, length = jnp.asarray(start)[..., None, None], jnp.asarray(length)[..., None, None]
  step = length / out_size  # input pixels per output pixel (1 / scale)
  centres = (jnp.arange(out_size, dtype=step.dtype)[:, None] + 0.5) * step + start - 0.5
  kernel_scale = jnp.maximum(step, 1.0)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(centres - jnp.arange(in_size, dtype=step.dtype)) / kernel_scale)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  weights = jnp.where(total > 1000 * jnp.finfo(jnp.float32).eps, weights / jnp.where(total != 0, total, 1.0), 0.0)
  return jnp.where((centres >= -0.5) & (centres <= in_size - 0.5), weights, 0.0)


def resized_crop(image, box, out_size: int):
  """Bilinear resample of the crop `box` = (y0, x0, h, w) of f32[H, W, C] to f32[out_size, out_size, C].

  Pixel centres follow the half-pixel convention; antialiased when the crop is larger than out_size.
  """
  y0, x0, h, w = box
  rows = interpolation_matrix(y0, h, image.shape[0], out_size)
  cols = interpolation_matrix(x0, w, image.shape[1], out_size)
  return jnp.einsum("oh,hwc,pw->opc", rows, image, cols)


def flip_if(flip, image):
  """Mirrors f32[H, W, C] left-right where the boolean `flip` is set."""
  return jnp.where(flip, image[:, ::-1], image)


# ----------------------------------------------------------------------------------------------------
# Colour. Every op takes images f32[..., C] in [0, 1] with the channels on `channel_axis` (-1: one [H, W, C]
# image; `simclr` uses 1, a planar [B, C, H, W] batch, so per-pixel work runs over contiguous planes) and
# factors that broadcast against them (scalars, or f32[B, 1, 1, 1] for one factor per example).


def _rgb(image, channel_axis: int):
  """The three channels of `image`, each keeping a length-1 channel axis (so they broadcast back)."""
  return [jax.lax.slice_in_dim(image, n, n + 1, axis=channel_axis) for n in range(3)]


def _mod6(x):
  """x mod 6 in [0, 6] for finite x: floor-based, so XLA:CPU vectorises it (jnp.mod is a libm fmod call).

  May return 6.0 where the exact result is just below 6; every use below is 6-periodic and continuous there.
  """
  return x - 6.0 * jnp.floor(x * (1.0 / 6.0))


def _hue_sextant(r, g, b, value, chroma):
  """Hue x 6 in [-1, 5) from RGB with value = max, chroma = max - min (0 where chroma == 0)."""
  inverse = 1.0 / jnp.where(chroma > 0, chroma, 1.0)
  hue = jnp.where(r == value, (g - b) * inverse,
                  jnp.where(g == value, 2.0 + (b - r) * inverse, 4.0 + (r - g) * inverse))
  return jnp.where(chroma > 0, hue, 0.0)


def _from_hue_sextant(hue6, value, chroma, channel_axis: int, ndim: int):
  """RGB with the given hue x 6 (any real; 6-periodic), value and chroma, each with a length-1 channel axis:
  channel n in (r, g, b) is v - c clip(min(k, 4 - k), 0, 1), k = (n_offset + 6h) mod 6, offsets (5, 3, 1).

  Written as one broadcast over the channel axis (no concatenate), so it stays a single elementwise loop.
  """
  shape = [1] * ndim
  shape[channel_axis] = 3
  k = _mod6(jnp.reshape(jnp.array([5.0, 3.0, 1.0], hue6.dtype), shape) + hue6)
  return value - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def rgb_to_hsv(rgb):
  """f32[..., 3] RGB in [0, 1] -> HSV with hue in [0, 1) (the colorsys / tf.image convention)."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  value = jnp.max(rgb, axis=-1)
  chroma = value - jnp.min(rgb, axis=-1)
  saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
  hue = jnp.mod(_hue_sextant(r, g, b, value, chroma) / 6.0, 1.0)
  return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv):
  """Inverse of `rgb_to_hsv`."""
  hue, saturation, value = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
  return _from_hue_sextant(6.0 * hue, value, value * saturation, -1, hsv.ndim)


def adjust_brightness(image, factor):
  return image * factor


def adjust_contrast(image, factor, *, spatial_axes=(0, 1)):
  """Blends each channel with its spatial mean (tf.image.adjust_contrast)."""
  mean = jnp.mean(image, axis=spatial_axes, keepdims=True)
  return (image - mean) * factor + mean


def _pixel_stats(image, channel_axis: int):
  """(value, chroma, hue x 6) of every pixel, each with a length-1 channel axis: HSV without the division."""
  r, g, b = _rgb(image, channel_axis)
  value = jnp.maximum(jnp.maximum(r, g), b)
  chroma = value - jnp.minimum(jnp.minimum(r, g), b)
  return value, chroma, _hue_sextant(r, g, b, value, chroma)


def _saturation_ratio(factor, value, chroma):
  """s' / s of `adjust_saturation`: min(factor, 1 / s) = min(factor, v / chroma); 1 for gray pixels."""
  return jnp.where(chroma > 0, jnp.minimum(factor, value / jnp.where(chroma > 0, chroma, 1.0)), 1.0)


def adjust_saturation(image, factor, *, channel_axis: int = -1):
  """Scales HSV saturation by `factor`, clipped to [0, 1], keeping hue and value (tf.image.adjust_saturation).

  With h and v fixed every channel is affine in s, c = v - (v - c0) s / s0, so no HSV round trip is needed:
  s' / s0 = min(factor, 1 / s0) = min(factor, v / (v - min)).
  """
  value, chroma, _ = _pixel_stats(image, channel_axis)
  return value - (value - image) * _saturation_ratio(factor, value, chroma)


def adjust_hue(image, delta, *, channel_axis: int = -1):
  """Rotates the hue by `delta` turns (tf.image.adjust_hue), keeping value and chroma (so saturation)."""
  value, chroma, hue6 = _pixel_stats(image, channel_axis)
  return _from_hue_sextant(hue6 + 6.0 * delta, value, chroma, channel_axis, image.ndim)


def to_grayscale(image, *, channel_axis: int = -1):
  """Luma replicated over all channels: f32[..., C] -> the same shape with equal channels."""
  r, g, b = _rgb(image, channel_axis)
  return jnp.broadcast_to(GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b, image.shape)


JITTER_UNIFORMS = 8


def _per_example(values, ndim: int):
  """f32[B...] -> f32[B..., 1, ..., 1] broadcasting against ndim-dimensional images (B... may be empty)."""
  return jnp.reshape(values, values.shape + (1,) * (ndim - values.ndim))


def color_jitter(u, image, strength: float, *, channel_axis: int = -1, spatial_axes=(0, 1)):
  """SimCLR colour jitter with strength s, the ops in a random order per example, clipped after each.

  image: one f32[H, W, C] image (the defaults) or a batch, e.g. planar f32[B, C, H, W] with channel_axis=1,
  spatial_axes=(2, 3). u: f32[..., JITTER_UNIFORMS] uniforms, one row per example (shape [8] for one image,
  [B, 8] for a batch): 4 factors (brightness, contrast, saturation, hue), then 4 sort keys whose argsort is
  the order (a uniformly random permutation).

  Each of the 2-4 op slots computes every op and keeps, per example, the one its order puts there: a select
  instead of a per-example branch, which under a batch would run all branches anyway.
  """
  low, high = max(0.0, 1.0 - 0.8 * strength), 1.0 + 0.8 * strength
  brightness, contrast, saturation = (_per_example(low + (high - low) * u[..., k], image.ndim) for k in range(3))
  hue_shift = _per_example(0.2 * strength * (2.0 * u[..., 3] - 1.0), image.ndim)
  rgb = image.shape[channel_axis] == 3
  num_ops = 4 if rgb else 2
  order = jnp.argsort(u[..., 4:4 + num_ops], axis=-1)
  for position in range(num_ops):  # A static loop over the 2-4 op slots, not over the batch.
    which = _per_example(order[..., position], image.ndim)
    candidates = [adjust_brightness(image, brightness), adjust_contrast(image, contrast, spatial_axes=spatial_axes)]
    if rgb:
      # The per-pixel HSV quantities are computed once per slot (the barrier keeps XLA from recomputing them
      # for every channel and in every fusion that reads them); saturation and hue are then cheap per channel.
      value, chroma, hue6 = _pixel_stats(image, channel_axis)
      value, chroma, hue6, ratio = jax.lax.optimization_barrier(
          (value, chroma, hue6 + 6.0 * hue_shift, _saturation_ratio(saturation, value, chroma)))
      candidates += [value - (value - image) * ratio, _from_hue_sextant(hue6, value, chroma, channel_axis, image.ndim)]
    image = jnp.select([which == k for k in range(num_ops - 1)], candidates[:-1], candidates[-1])
    # Materialised once: the next slot's contrast mean and pixel statistics read it rather than recompute it.
    image = jax.lax.optimization_barrier(jnp.clip(image, 0.0, 1.0))
  return image


def blur_matrix(sigma, size: int, kernel_size: int):
  """Gaussian blur along one axis of `size` pixels as a matrix: f32[...] sigmas -> f32[..., size, size].

  Odd kernel_size, reflect padding; `matrix @ signal` blurs.
  """
  radius = kernel_size // 2
  offsets = np.arange(-radius, radius + 1)
  weights = jnp.exp(-jnp.square(offsets / jnp.asarray(sigma)[..., None]) / 2.0)
  weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
  rows = np.arange(size)[:, None]
  taps = np.zeros((kernel_size, size, size), np.float32)  # taps[k, i, j] = 1 where tap k of row i reads j
  np.add.at(taps, (np.arange(kernel_size)[None, :], rows, _reflect(rows + offsets[None, :], size)), 1.0)
  return jnp.einsum("...k,kij->...ij", weights, taps)


def _reflect(index, size: int):
  """Mirror indices outside [0, size) back inside, edge not repeated (numpy/TF 'reflect')."""
  period = 2 * (size - 1)
  index = np.mod(index, period) if size > 1 else np.zeros_like(index)
  return np.where(index >= size, period - index, index)


def gaussian_blur(image, sigma, kernel_size: int):
  """Separable Gaussian blur of f32[H, W, C] (odd kernel_size, reflect padding), as a blur matrix per axis."""
  rows, cols = blur_matrix(sigma, image.shape[0], kernel_size), blur_matrix(sigma, image.shape[1], kernel_size)
  return jnp.einsum("ij,jwc,vw->ivc", rows, image, cols)


# ----------------------------------------------------------------------------------------------------
# Recipes.


# Layout of one example's uniforms in `simclr`.
_FLIP, _JITTER_APPLY, _GRAY, _BLUR_APPLY, _BLUR_SIGMA_U = range(5)
_SIMCLR_UNIFORMS = 5 + CROP_UNIFORMS + JITTER_UNIFORMS


def simclr(key, images, *, out_size: int, crop_scale=(0.08, 1.0), jitter_strength: float = 0.5,
           jitter_prob: float = 0.8, grayscale_prob: float = 0.2, blur: bool = False, blur_prob: float = 0.5,
           flip: bool = True):
  """One SimCLR view of each image (see the module docstring): u8[B, H, W, C] -> f32[B, out, out, C] in [0, 1].

  Call it twice with independent keys for the two views of a positive pair.

  The whole batch is processed at once: crop, resize, flip and the u8 -> [0, 1] scaling are one pair of
  per-example interpolation matrices (two batched matmuls); the colour ops run on a planar [B, C, out, out]
  copy, where every per-pixel op reads contiguous planes, and it is transposed back at the end.
  """
  _check_u8(images)
  batch, height, width, channels = images.shape
  u = rng.uniform(key, (batch, _SIMCLR_UNIFORMS))
  u_crop, u_jitter = u[:, 5:5 + CROP_UNIFORMS], u[:, 5 + CROP_UNIFORMS:]
  y0, x0, h, w = crop_box(u_crop, height, width, tuple(crop_scale))
  rows = interpolation_matrix(y0, h, height, out_size) / 255.0
  cols = interpolation_matrix(x0, w, width, out_size)
  if flip:  # Mirroring the output columns = reversing the column matrix's rows.
    cols = jnp.where(u[:, _FLIP, None, None] < 0.5, cols[:, ::-1], cols)
  x = jnp.einsum("boh,bhwc,bpw->bcop", rows, images.astype(jnp.float32), cols)
  x = jnp.clip(x, 0.0, 1.0)
  per_example = lambda values: _per_example(values, 4)
  if jitter_prob > 0:
    jittered = color_jitter(u_jitter, x, jitter_strength, channel_axis=1, spatial_axes=(2, 3))
    x = jnp.where(per_example(u[:, _JITTER_APPLY] < jitter_prob), jittered, x)
  if channels == 3 and grayscale_prob > 0:
    x = jnp.where(per_example(u[:, _GRAY] < grayscale_prob), to_grayscale(x, channel_axis=1), x)
  if blur and blur_prob > 0:
    kernel_size = 2 * (out_size // 10 // 2) + 1  # 10% of the side, made odd (as the reference does).
    sigma = _BLUR_SIGMA[0] + (_BLUR_SIGMA[1] - _BLUR_SIGMA[0]) * u[:, _BLUR_SIGMA_U]
    matrix = blur_matrix(sigma, out_size, kernel_size)
    x = jnp.where(per_example(u[:, _BLUR_APPLY] < blur_prob), jnp.einsum("bij,bcjw,bvw->bciv", matrix, x, matrix), x)
  return jnp.transpose(jnp.clip(x, 0.0, 1.0), (0, 2, 3, 1))


def supervised(key, images, *, out_size: int, padding: int = 4, flip: bool = True):
  """The standard CIFAR recipe: zero-pad by `padding`, random crop back to H x W, random flip.

  u8[B, H, W, C] -> f32[B, out_size, out_size, C] in [0, 1] (resized after cropping if out_size != H).
  """
  x = _as_unit_float(images)
  _, height, width, channels = x.shape

  def one(u, image):
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    dy, dx = jnp.floor(u[:2] * (2 * padding + 1)).astype(jnp.int32)
    image = jax.lax.dynamic_slice(padded, (dy, dx, 0), (height, width, channels))
    return flip_if(u[2] < 0.5, image) if flip else image

  x = jax.vmap(one)(rng.uniform(key, (x.shape[0], 3)), x)
  return jnp.clip(_resize(x, out_size), 0.0, 1.0)

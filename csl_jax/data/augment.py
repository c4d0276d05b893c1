"""On-device data augmentation, pure JAX: call it inside the jitted train step on u8 batches.

Every recipe takes a PRNG key and u8[B, H, W, C] images and returns f32[B, out, out, C] in [0, 1].
All random choices of a batch come from one draw, `jax.random.uniform(key, (B, K))`: row b holds the
K uniforms example b consumes (crop proposals, flip, jitter factors and order, ...). The same key always
gives the same batch (resumed runs replay the same views when the step's key is
`jax.random.fold_in(key, step)`), and a single draw keeps compile time low (every separate
`jax.random` call adds a PRNG kernel). Per-example work is `jax.vmap`ped; nothing loops over the batch.

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
"""
import functools
import math

import jax
import jax.numpy as jnp

# ITU-R 601-2 luma weights, as in tf.image.rgb_to_grayscale.
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
CROP_RATIO = (3 / 4, 4 / 3)
_CROP_PROPOSALS = 10
_BLUR_SIGMA = (0.1, 2.0)


def _as_unit_float(images):
  if images.dtype != jnp.uint8 or images.ndim != 4:
    raise TypeError(f"augment expects u8[B, H, W, C] images, got {images.dtype}{list(images.shape)}; "
                    f"pass the batch from data.load(...).batches(...) before any conversion.")
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

  u: f32[CROP_UNIFORMS] uniforms in [0, 1). Area fraction ~ U(scale), aspect w/h log-uniform in `ratio`;
  the first of 10 proposals that fits is kept, else the whole image with its aspect clamped into
  `ratio` (torchvision's fallback). The offset is uniform over the positions where the box fits.
  """
  u_area, u_ratio, u_offset = u[:_CROP_PROPOSALS], u[_CROP_PROPOSALS:-2], u[-2:]
  area = height * width * (scale[0] + (scale[1] - scale[0]) * u_area)
  log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
  aspect = jnp.exp(log_low + (log_high - log_low) * u_ratio)
  w, h = jnp.sqrt(area * aspect), jnp.sqrt(area / aspect)
  fits = (w <= width) & (h <= height)
  first = jnp.argmax(fits)
  h = jnp.where(fits[first], h[first], min(height, width / ratio[0]))
  w = jnp.where(fits[first], w[first], min(width, height * ratio[1]))
  return u_offset[0] * (height - h), u_offset[1] * (width - w), h, w


def resized_crop(image, box, out_size: int):
  """Bilinear resample of the crop `box` = (y0, x0, h, w) of f32[H, W, C] to f32[out_size, out_size, C].

  Pixel centres follow the half-pixel convention; antialiased when the crop is larger than out_size.
  """
  y0, x0, h, w = box
  scale = jnp.stack([out_size / h, out_size / w])
  translation = -jnp.stack([y0, x0]) * scale
  return jax.image.scale_and_translate(image, (out_size, out_size, image.shape[-1]), (0, 1), scale, translation,
                                       method="linear", antialias=True)


def flip_if(flip, image):
  """Mirrors f32[H, W, C] left-right where the boolean `flip` is set."""
  return jnp.where(flip, image[:, ::-1], image)


# ----------------------------------------------------------------------------------------------------
# Colour (per image f32[H, W, C] in [0, 1]).


def rgb_to_hsv(rgb):
  """f32[..., 3] RGB in [0, 1] -> HSV with hue in [0, 1) (the colorsys / tf.image convention)."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  value = jnp.max(rgb, axis=-1)
  delta = value - jnp.min(rgb, axis=-1)
  saturation = jnp.where(value > 0, delta / jnp.where(value > 0, value, 1.0), 0.0)
  safe = jnp.where(delta > 0, delta, 1.0)
  hue = jnp.where(r == value, (g - b) / safe, jnp.where(g == value, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
  hue = jnp.where(delta > 0, jnp.mod(hue / 6.0, 1.0), 0.0)
  return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv):
  """Inverse of `rgb_to_hsv`: channel n in (r, g, b) is v - v s clip(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6."""
  hue, saturation, value = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
  k = jnp.mod(jnp.array([5.0, 3.0, 1.0]) + 6.0 * hue, 6.0)
  return value - value * saturation * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_brightness(image, factor):
  return image * factor


def adjust_contrast(image, factor):
  """Blends each channel with its spatial mean (tf.image.adjust_contrast)."""
  mean = jnp.mean(image, axis=(0, 1), keepdims=True)
  return (image - mean) * factor + mean


def adjust_saturation(image, factor):
  """Scales HSV saturation by `factor`, clipped to [0, 1], keeping hue and value (tf.image.adjust_saturation).

  With h and v fixed every channel is affine in s, c = v - (v - c0) s / s0, so no HSV round trip is needed:
  s' / s0 = min(factor, 1 / s0) = min(factor, v / (v - min)).
  """
  value = jnp.max(image, axis=-1, keepdims=True)
  delta = value - jnp.min(image, axis=-1, keepdims=True)
  ratio = jnp.where(delta > 0, jnp.minimum(factor, value / jnp.where(delta > 0, delta, 1.0)), 1.0)
  return value - (value - image) * ratio


def adjust_hue(image, delta):
  """Rotates the hue by `delta` turns (tf.image.adjust_hue)."""
  hsv = rgb_to_hsv(image)
  return hsv_to_rgb(hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + delta, 1.0)))


def to_grayscale(image):
  """Luma replicated over all channels: f32[H, W, C] -> f32[H, W, C] with equal channels."""
  gray = image @ jnp.asarray(GRAY_WEIGHTS, image.dtype)
  return jnp.broadcast_to(gray[..., None], image.shape)


JITTER_UNIFORMS = 8


def color_jitter(u, image, strength: float):
  """SimCLR colour jitter of f32[H, W, C] with strength s, the ops in a random order, clipped after each.

  u: f32[JITTER_UNIFORMS] uniforms: 4 factors (brightness, contrast, saturation, hue), then 4 sort keys
  whose argsort is the order (a uniformly random permutation).
  """
  low, high = max(0.0, 1.0 - 0.8 * strength), 1.0 + 0.8 * strength
  factors = low + (high - low) * u[:3]
  hue_shift = 0.2 * strength * (2.0 * u[3] - 1.0)
  ops = [functools.partial(adjust_brightness, factor=factors[0]),
         functools.partial(adjust_contrast, factor=factors[1])]
  if image.shape[-1] == 3:
    ops += [functools.partial(adjust_saturation, factor=factors[2]), functools.partial(adjust_hue, delta=hue_shift)]
  order = jnp.argsort(u[4:4 + len(ops)])
  for position in range(len(ops)):  # A static loop over the 2-4 op slots, not over the batch.
    image = jnp.clip(jax.lax.switch(order[position], ops, image), 0.0, 1.0)
  return image


def _reflect(index, size: int):
  """Mirror indices outside [0, size) back inside, edge not repeated (numpy/TF 'reflect')."""
  period = 2 * (size - 1)
  index = jnp.mod(index, period) if size > 1 else jnp.zeros_like(index)
  return jnp.where(index >= size, period - index, index)


def gaussian_blur(image, sigma, kernel_size: int):
  """Separable Gaussian blur of f32[H, W, C] (odd kernel_size, reflect padding), as a blur matrix per axis."""
  radius = kernel_size // 2
  offsets = jnp.arange(-radius, radius + 1)
  weights = jnp.exp(-jnp.square(offsets / sigma) / 2.0)
  weights = weights / jnp.sum(weights)

  def blur_matrix(size):
    rows = jnp.arange(size)[:, None]
    return jnp.zeros((size, size)).at[rows, _reflect(rows + offsets[None, :], size)].add(weights[None, :])

  image = jnp.einsum("ij,jwc->iwc", blur_matrix(image.shape[0]), image)
  return jnp.einsum("vw,iwc->ivc", blur_matrix(image.shape[1]), image)


# ----------------------------------------------------------------------------------------------------
# Recipes.


# Layout of one example's uniforms in `simclr`.
_FLIP, _JITTER_APPLY, _GRAY, _BLUR_APPLY, _BLUR_SIGMA_U = range(5)
_SIMCLR_UNIFORMS = 5 + CROP_UNIFORMS + JITTER_UNIFORMS


def _simclr_one(u, image, *, out_size, crop_scale, jitter_strength, jitter_prob, grayscale_prob, blur,
                blur_prob, flip):
  u_crop, u_jitter = u[5:5 + CROP_UNIFORMS], u[5 + CROP_UNIFORMS:]
  height, width, channels = image.shape
  image = resized_crop(image, crop_box(u_crop, height, width, crop_scale), out_size)
  if flip:
    image = flip_if(u[_FLIP] < 0.5, image)
  image = jnp.clip(image, 0.0, 1.0)
  if jitter_prob > 0:
    image = jnp.where(u[_JITTER_APPLY] < jitter_prob, color_jitter(u_jitter, image, jitter_strength), image)
  if channels == 3 and grayscale_prob > 0:
    image = jnp.where(u[_GRAY] < grayscale_prob, to_grayscale(image), image)
  if blur and blur_prob > 0:
    kernel_size = 2 * (out_size // 10 // 2) + 1  # 10% of the side, made odd (as the reference does).
    sigma = _BLUR_SIGMA[0] + (_BLUR_SIGMA[1] - _BLUR_SIGMA[0]) * u[_BLUR_SIGMA_U]
    image = jnp.where(u[_BLUR_APPLY] < blur_prob, gaussian_blur(image, sigma, kernel_size), image)
  return jnp.clip(image, 0.0, 1.0)


def simclr(key, images, *, out_size: int, crop_scale=(0.08, 1.0), jitter_strength: float = 0.5,
           jitter_prob: float = 0.8, grayscale_prob: float = 0.2, blur: bool = False, blur_prob: float = 0.5,
           flip: bool = True):
  """One SimCLR view of each image (see the module docstring): u8[B, H, W, C] -> f32[B, out, out, C] in [0, 1].

  Call it twice with independent keys for the two views of a positive pair.
  """
  x = _as_unit_float(images)
  one = functools.partial(_simclr_one, out_size=out_size, crop_scale=tuple(crop_scale),
                          jitter_strength=jitter_strength, jitter_prob=jitter_prob, grayscale_prob=grayscale_prob,
                          blur=blur, blur_prob=blur_prob, flip=flip)
  return jax.vmap(one)(jax.random.uniform(key, (x.shape[0], _SIMCLR_UNIFORMS)), x)


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

  x = jax.vmap(one)(jax.random.uniform(key, (x.shape[0], 3)), x)
  return jnp.clip(_resize(x, out_size), 0.0, 1.0)

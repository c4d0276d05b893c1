"""Blur corruptions: defocus, glass, motion and zoom blur (Hendrycks & Dietterich, 2019, Sec. 3).

Batched numpy versions of `defocus_blur`, `glass_blur`, `motion_blur` and `zoom_blur` in
hendrycks/robustness `make_cifar_c.py` / `make_imagenet_c.py`. Randomness is drawn up front and
passed to deterministic cores (`local_shuffle`, `motion_blur_stack`) so tests can replay the
reference scripts' draws. Every channel is blurred alike, so 1-channel images work natively.

Public corruptions map u8[B, H, W, C] → f[B, H, W, C] on the 0..255 scale.
"""
import numpy as np
from scipy import ndimage, signal

from csl_jax.eval.corruptions import params
from csl_jax.eval.corruptions import resample


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
  """skimage.filters.gaussian(x, sigma, channel_axis=-1) on every image of f[B, H, W, C].

  (mode "nearest", truncate 4, as the scripts' skimage calls).
  """
  return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0)


def _opencv_gaussian(size: int, sigma: float) -> np.ndarray:
  """cv2.getGaussianKernel(size, sigma) for sigma > 0."""
  taps = np.arange(size) - (size - 1) / 2
  weights = np.exp(-taps ** 2 / (2 * sigma ** 2))
  return weights / weights.sum()


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
  """Anti-aliased disk f32[K, K] summing to 1: the scripts' `disk` (K = 17 for radius ≤ 8).

  A binary disk on an integer grid, normalised, then blurred by cv2.GaussianBlur (3x3, or 5x5
  beyond radius 8) whose default border is reflect-101 (scipy "mirror").
  """
  if radius <= 8:
    coords, size = np.arange(-8, 8 + 1), 3
  else:
    coords, size = np.arange(-radius, radius + 1), 5
  xx, yy = np.meshgrid(coords, coords)
  disk = np.asarray(xx ** 2 + yy ** 2 <= radius ** 2, dtype=np.float32)
  disk /= disk.sum()
  taps = _opencv_gaussian(size, alias_blur)
  disk = ndimage.correlate1d(disk, taps, axis=0, mode="mirror")
  return ndimage.correlate1d(disk, taps, axis=1, mode="mirror")


def defocus_blur(images: np.ndarray, setting: params.Defocus, rng=None) -> np.ndarray:
  """Correlation with `disk_kernel` and reflect-101 borders (cv2.filter2D), via FFT."""
  del rng  # Deterministic.
  kernel = disk_kernel(setting.radius, setting.alias_blur).astype(np.float64)
  half = kernel.shape[0] // 2
  x = np.pad(images / 255.0, ((0, 0), (half, half), (half, half), (0, 0)), mode="reflect")
  # The kernel is symmetric, so convolution equals cv2's correlation.
  out = signal.fftconvolve(x, kernel[None, :, :, None], mode="valid", axes=(1, 2))
  return np.clip(out, 0, 1) * 255


def local_shuffle(images: np.ndarray, offsets: np.ndarray, max_delta: int) -> np.ndarray:
  """One pass of glass blur's pixel shuffle, exactly as the scripts execute it.

  The scripts visit h = H - d, ..., d + 1 (outer) and w = W - d, ..., d + 1 (inner) and write
  `x[h, w], x[h', w'] = x[h', w'], x[h, w]`; with numpy views on the right-hand side this *copies*
  x[h', w'] into x[h, w] and leaves x[h', w'] unchanged, and CIFAR-10-C / ImageNet-C were made so.
  A pixel's source is therefore final unless it lies in the same row to its right (dy = 0,
  dx > 0), which was rewritten earlier in the row: those copy chains are resolved per row by
  pointer doubling, so a pass costs O(H log W) vectorised steps instead of O(H W) Python steps.

  Args:
    images: u8[B, H, W, C].
    offsets: int[B, R, K, 2] with (dx, dy) in [-d, d - 1] for the i-th visited row and j-th
      visited column (R = K = 0 when the image is not larger than 2 d).
    max_delta: d.

  Returns:
    u8[B, H, W, C].
  """
  x = images.copy()
  batch_size, height, width = x.shape[:3]
  columns = np.arange(width - max_delta, max_delta, -1)
  batch = np.arange(batch_size)[:, None]
  doubling_steps = int(np.ceil(np.log2(max(width, 2))))
  for i, h in enumerate(range(height - max_delta, max_delta, -1)):
    dx, dy = offsets[:, i, :, 0], offsets[:, i, :, 1]
    row = x[:, h].copy()
    row[:, columns] = x[batch, h + dy, columns + dx]
    pointer = np.broadcast_to(np.arange(width), (batch_size, width)).copy()
    pointer[:, columns] = np.where((dy == 0) & (dx > 0), columns + dx, columns)
    for _ in range(doubling_steps):
      pointer = np.take_along_axis(pointer, pointer, axis=1)
    x[:, h] = row[batch, pointer]
  return x


def shuffle_offsets(rng: np.random.Generator, batch_size: int, height: int, width: int,
                    max_delta: int) -> np.ndarray:
  """Random (dx, dy) for one `local_shuffle` pass: int[B, R, K, 2] in [-d, d - 1]."""
  rows, cols = max(height - 2 * max_delta, 0), max(width - 2 * max_delta, 0)
  return rng.integers(-max_delta, max_delta, size=(batch_size, rows, cols, 2))


def glass_blur_from_offsets(images: np.ndarray, setting: params.GlassBlur, offsets) -> np.ndarray:
  """Glass blur given the (dx, dy) draws of each shuffle pass (a list of `shuffle_offsets` arrays)."""
  x = (gaussian_blur(images / 255.0, setting.sigma) * 255).astype(np.uint8)  # The scripts' np.uint8.
  for pass_offsets in offsets:
    x = local_shuffle(x, pass_offsets, setting.max_delta)
  return np.clip(gaussian_blur(x / 255.0, setting.sigma), 0, 1) * 255


def glass_blur(images: np.ndarray, setting: params.GlassBlur, rng: np.random.Generator) -> np.ndarray:
  """Gaussian blur, `iterations` local pixel shuffles within ±max_delta, Gaussian blur."""
  batch_size, height, width = images.shape[:3]
  offsets = [shuffle_offsets(rng, batch_size, height, width, setting.max_delta)
             for _ in range(setting.iterations)]
  return glass_blur_from_offsets(images, setting, offsets)


def motion_blur_stack(x: np.ndarray, radius: int, sigma: float, angles: np.ndarray) -> np.ndarray:
  """Linear motion blur of each image f[B, H, W, ...] along its own angle (degrees).

  The scripts call ImageMagick's MotionBlurImage; this is the shift-and-add port the
  `imagecorruptions` package uses instead: 2 r + 1 taps with one-sided Gaussian weights
  exp(-i^2 / 2 sigma^2), tap i shifted by (-ceil(i sin a - 1/2), -ceil(i cos a - 1/2)) with edge
  replication, stopping at the first tap that leaves the image.
  """
  width = 2 * radius + 1
  taps = np.arange(width)
  weights = np.exp(-taps ** 2 / (2 * sigma ** 2))
  weights /= weights.sum()
  radians = np.deg2rad(np.asarray(angles, dtype=np.float64))[:, None]
  # Same float expression as the port (point = width * (sin, cos), divided by its norm).
  point_y, point_x = width * np.sin(radians), width * np.cos(radians)
  norm = np.hypot(point_y, point_x)
  shift_y = -np.ceil(taps * point_y / norm - 0.5).astype(np.int64)  # [B, taps]
  shift_x = -np.ceil(taps * point_x / norm - 0.5).astype(np.int64)
  height, image_width = x.shape[1:3]
  inside = np.cumprod((np.abs(shift_y) < height) & (np.abs(shift_x) < image_width), axis=1)
  batch = np.arange(x.shape[0])[:, None, None]
  out = np.zeros(x.shape, dtype=np.float64)
  extra_axes = (1,) * (x.ndim - 1)
  for i in range(width):
    rows = np.clip(np.arange(height)[None] - shift_y[:, i, None], 0, height - 1)
    cols = np.clip(np.arange(image_width)[None] - shift_x[:, i, None], 0, image_width - 1)
    tap_weight = (weights[i] * inside[:, i]).reshape(-1, *extra_axes)
    out += tap_weight * x[batch, rows[:, :, None], cols[:, None, :]]
  return out


def motion_blur(images: np.ndarray, setting: params.MotionBlur, rng: np.random.Generator) -> np.ndarray:
  """Motion blur along a random angle in [-45, 45] degrees per image.

  Rounded to the nearest 8-bit value: the CIFAR-10-C / ImageNet-C generator blurs with ImageMagick and reads
  its 8-bit output back, which rounds (the other corruptions' final np.uint8 truncates; truncating here
  would make the images 0.5/255 darker on average than the published sets).
  """
  angles = rng.uniform(-45, 45, size=images.shape[0])
  blurred = motion_blur_stack(images.astype(np.float64), setting.radius, setting.sigma, angles)
  return np.round(np.clip(blurred, 0, 255))


def zoom_blur(images: np.ndarray, setting: params.ZoomBlur, rng=None) -> np.ndarray:
  """Mean of the image and its centre zoomed by each factor in `setting.factors()`."""
  del rng  # Deterministic.
  x = (images / 255.0).astype(np.float32)
  factors = setting.factors()
  out = x.copy()
  for factor in factors:
    out += resample.clipped_zoom(x, factor)
  return np.clip(out / (len(factors) + 1), 0, 1) * 255

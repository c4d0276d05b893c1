"""Batched linear resampling shared by several corruptions (zoom blur, snow, elastic, frost).

All functions work on a batch of images f[B, H, W, ...] (any trailing channel axes) in numpy and
reproduce the scipy / OpenCV calls the reference scripts make on one image at a time.
"""
import numpy as np


def _lerp_along(x: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
  """Linear interpolation of `x` along `axis` at in-range float `positions` (same for the batch)."""
  low = np.floor(positions).astype(np.int64)
  high = np.minimum(low + 1, x.shape[axis] - 1)
  weight_shape = [1] * x.ndim
  weight_shape[axis] = len(positions)
  weight = (positions - low).reshape(weight_shape).astype(x.dtype)
  return np.take(x, low, axis=axis) * (1 - weight) + np.take(x, high, axis=axis) * weight


def _zoom_positions(size: int, factor: float) -> np.ndarray:
  """Source positions of `clipped_zoom` along one axis of length `size` (scipy.ndimage.zoom semantics).

  The scripts crop the central ceil(size / factor) pixels, zoom them with scipy.ndimage.zoom
  (order=1, output round(crop * factor), corners aligned: step (crop - 1) / (out - 1)) and
  keep the central `size` pixels of the result.
  """
  crop = int(np.ceil(size / factor))
  top = (size - crop) // 2
  out = int(round(crop * factor))
  step = (crop - 1) / (out - 1) if out > 1 else 0.0
  trim = (out - size) // 2
  return top + np.arange(trim, trim + size) * step


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
  """Zooms the centre of every image in by `factor` ≥ 1, keeping the size.

  Args:
    x: f[B, H, W, ...].
    factor: zoom factor ≥ 1 (1 is the identity).

  Returns:
    f[B, H, W, ...] like `clipped_zoom` in make_cifar_c.py / make_imagenet_c.py.
  """
  x = _lerp_along(x, _zoom_positions(x.shape[1], factor), axis=1)
  return _lerp_along(x, _zoom_positions(x.shape[2], factor), axis=2)


def boundary_index(index: np.ndarray, size: int, mode: str) -> np.ndarray:
  """Maps integer indices outside [0, size) back inside.

  mode "reflect": half-sample symmetric, d c b a | a b c d | d c b a (scipy "reflect").
  mode "mirror":  whole-sample symmetric, d c b | a b c d | c b a (scipy "mirror", OpenCV
  BORDER_REFLECT_101).
  """
  if mode == "reflect":
    index = np.mod(index, 2 * size)
    return np.where(index >= size, 2 * size - 1 - index, index)
  if mode == "mirror":
    if size == 1:
      return np.zeros_like(index)
    index = np.mod(index, 2 * size - 2)
    return np.where(index >= size, 2 * size - 2 - index, index)
  raise ValueError(f"boundary_index: mode must be 'reflect' or 'mirror', got {mode!r}.")


def bilinear_sample(images: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str) -> np.ndarray:
  """Samples every image at its own float coordinates with bilinear interpolation.

  Equals scipy.ndimage.map_coordinates(order=1, mode=mode) per image and channel: reflecting the
  integer neighbours commutes with linear interpolation for both symmetric modes.

  Args:
    images: f[B, H, W, C].
    rows, cols: f[B, h, w] source coordinates (pixel centres at integers).
    mode: "reflect" or "mirror" (see `boundary_index`).

  Returns:
    f[B, h, w, C].
  """
  height, width = images.shape[1:3]
  row0, col0 = np.floor(rows), np.floor(cols)
  row_weight = (rows - row0)[..., None].astype(images.dtype)
  col_weight = (cols - col0)[..., None].astype(images.dtype)
  row0, col0 = row0.astype(np.int64), col0.astype(np.int64)
  r0, r1 = boundary_index(row0, height, mode), boundary_index(row0 + 1, height, mode)
  c0, c1 = boundary_index(col0, width, mode), boundary_index(col0 + 1, width, mode)
  batch = np.arange(images.shape[0]).reshape(-1, *([1] * (rows.ndim - 1)))
  top = images[batch, r0, c0] * (1 - col_weight) + images[batch, r0, c1] * col_weight
  bottom = images[batch, r1, c0] * (1 - col_weight) + images[batch, r1, c1] * col_weight
  return top * (1 - row_weight) + bottom * row_weight


def _linear_resize_positions(size: int, out: int, scale: float) -> np.ndarray:
  # OpenCV INTER_LINEAR: half-pixel centres, no anti-aliasing, coordinates clamped to the image.
  return np.clip((np.arange(out) + 0.5) / scale - 0.5, 0, size - 1)


def resize_linear(image: np.ndarray, scale: float) -> np.ndarray:
  """Resizes one image u8/f[H, W, C] by `scale` like cv2.resize(fx=fy=scale, INTER_LINEAR).

  Output side round(side * scale). For scale 0.2 every output pixel is exactly source pixel
  5 i + 2, which is what the CIFAR frost textures are.
  """
  height, width = image.shape[:2]
  out_h, out_w = int(np.round(height * scale)), int(np.round(width * scale))
  x = image.astype(np.float64)
  x = _lerp_along(x, _linear_resize_positions(height, out_h, scale), axis=0)
  x = _lerp_along(x, _linear_resize_positions(width, out_w, scale), axis=1)
  return np.clip(np.round(x), 0, 255).astype(np.uint8)

"""Digital corruptions: contrast, elastic transform, pixelate and JPEG (Hendrycks & Dietterich, 2019).

Batched versions of `contrast`, `elastic_transform`, `pixelate` and `jpeg_compression` in
hendrycks/robustness `make_cifar_c.py` / `make_imagenet_c.py`. Pixelate and JPEG run PIL per
image (the scripts' own calls; PIL has no batch API), 1-channel images as PIL mode "L".

Public corruptions map u8[B, H, W, C] → f[B, H, W, C] or u8[B, H, W, C] on the 0..255 scale.
"""
import io

import numpy as np
from PIL import Image

from csl_jax.eval.corruptions import params
from csl_jax.eval.corruptions import resample


def contrast(images: np.ndarray, factor: float, rng=None) -> np.ndarray:
  """Shrinks every channel's deviation from its spatial mean by `factor`."""
  del rng  # Deterministic.
  x = images / 255.0
  means = x.mean(axis=(1, 2), keepdims=True)
  return np.clip((x - means) * factor + means, 0, 1) * 255


def _affine_anchors(height: int, width: int) -> np.ndarray:
  """The three (x, y) anchor points f32[3, 2] of the scripts' random affine (cv2 point order)."""
  centre_x, centre_y = np.float32(width) // 2, np.float32(height) // 2
  square = min(height, width) // 3
  return np.float32([[centre_x + square, centre_y + square],
                     [centre_x + square, centre_y - square],
                     [centre_x - square, centre_y - square]])


def _reflect_gaussian_matrix(size: int, sigma: float, truncate: float) -> np.ndarray:
  """f64[size, size] M with M @ v = scipy.ndimage.gaussian_filter1d(v, sigma, mode="reflect", truncate)."""
  radius = int(truncate * sigma + 0.5)
  taps = np.arange(-radius, radius + 1)
  kernel = np.exp(-0.5 * (taps / sigma) ** 2)
  kernel /= kernel.sum()
  rows = np.repeat(np.arange(size), taps.size)
  cols = resample.boundary_index(rows + np.tile(taps, size), size, "reflect")
  matrix = np.zeros((size, size))
  np.add.at(matrix, (rows, cols), np.tile(kernel, size))
  return matrix


def smooth_fields(fields: np.ndarray, sigma: float, truncate: float = 3.0) -> np.ndarray:
  """scipy.ndimage.gaussian_filter over the last two axes of f[..., H, W] (mode "reflect").

  Done as two dense matrix products with the reflect-folded kernel: ImageNet-C's first elastic
  severities smooth with sigma = 171 px, a 1,025-tap kernel on a 224-pixel image, which direct
  filtering (or padding for an FFT) makes ~50x slower.
  """
  if sigma == 0:  # gaussian_filter skips axes with sigma 0.
    return np.array(fields, dtype=np.float64)
  height, width = fields.shape[-2:]
  # One flat GEMM per axis: numpy's stacked matmul is several times slower here.
  out = fields.reshape(-1, width) @ _reflect_gaussian_matrix(width, sigma, truncate).T
  out = np.swapaxes(out.reshape(fields.shape), -1, -2).reshape(-1, height)
  out = out @ _reflect_gaussian_matrix(height, sigma, truncate).T
  return np.swapaxes(out.reshape(fields.shape[:-2] + (width, height)), -1, -2)


def elastic_from_draws(images: np.ndarray, setting: params.Elastic, anchor_shifts: np.ndarray,
                       fields: np.ndarray) -> np.ndarray:
  """Random affine warp followed by a smooth random displacement, given the random draws.

  Args:
    images: u8[B, H, W, C].
    setting: alpha, sigma, affine in *pixels* (see `params.elastic_pixels`).
    anchor_shifts: f[B, 3, 2] ~ U(-affine, affine): moves of the three affine anchors.
    fields: f[B, 2, H, W] ~ U(-1, 1): raw (dx, dy) fields, smoothed by a Gaussian of `sigma`
      (reflect borders, truncate 3) and scaled by `alpha`.

  Returns:
    f[B, H, W, C] on 0..255: cv2.warpAffine (bilinear, reflect-101 borders) with the affine map
    sending the anchors to their shifted positions, then scipy map_coordinates(order=1,
    mode="reflect") at (row + dy, col + dx), as in the scripts.
  """
  height, width = images.shape[1:3]
  x = images.astype(np.float32) / 255
  anchors = _affine_anchors(height, width).astype(np.float64)
  moved = anchors + anchor_shifts.astype(np.float32)
  # warpAffine samples the source at M^-1(destination); M^-1 maps the moved anchors back.
  moved_h = np.concatenate([moved, np.ones(moved.shape[:2] + (1,))], axis=-1)  # [B, 3, 3]
  inverse = np.linalg.solve(moved_h, np.broadcast_to(anchors, moved.shape))  # [B, 3, 2]
  rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
  source_cols = (inverse[:, None, None, 0, 0] * cols + inverse[:, None, None, 1, 0] * rows
                 + inverse[:, None, None, 2, 0])
  source_rows = (inverse[:, None, None, 0, 1] * cols + inverse[:, None, None, 1, 1] * rows
                 + inverse[:, None, None, 2, 1])
  x = resample.bilinear_sample(x, source_rows, source_cols, mode="mirror")
  smooth = (smooth_fields(fields, setting.sigma) * setting.alpha).astype(np.float32)  # float32 as the scripts.
  x = resample.bilinear_sample(x, rows + smooth[:, 1], cols + smooth[:, 0], mode="reflect")
  return np.clip(x, 0, 1) * 255


def elastic_transform(images: np.ndarray, setting: params.Elastic, rng: np.random.Generator) -> np.ndarray:
  """Elastic deformation; `setting` in pixels."""
  batch_size, height, width = images.shape[:3]
  anchor_shifts = rng.uniform(-setting.affine, setting.affine, size=(batch_size, 3, 2))
  fields = rng.uniform(-1, 1, size=(batch_size, 2, height, width))
  return elastic_from_draws(images, setting, anchor_shifts, fields)


def _to_pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(image: Image.Image, channels: int) -> np.ndarray:
  array = np.asarray(image)
  return array[..., None] if channels == 1 else array


def pixelate(images: np.ndarray, factor: float, rng=None) -> np.ndarray:
  """Box-downsamples every image to int(side * factor) and box-upsamples it back (PIL BOX)."""
  del rng  # Deterministic.
  height, width, channels = images.shape[1:]
  small = (max(int(width * factor), 1), max(int(height * factor), 1))
  return np.stack([_from_pil(_to_pil(image).resize(small, Image.BOX).resize((width, height), Image.BOX),
                             channels) for image in images])


def jpeg_compression(images: np.ndarray, quality: int, rng=None) -> np.ndarray:
  """Round trip through PIL's JPEG encoder at `quality` (default 4:2:0 chroma subsampling)."""
  del rng  # Deterministic.
  channels = images.shape[-1]
  out = []
  for image in images:
    buffer = io.BytesIO()
    _to_pil(image).save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as decoded:
      out.append(_from_pil(decoded, channels))
  return np.stack(out)

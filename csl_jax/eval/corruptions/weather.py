"""Weather corruptions: snow, frost, fog and brightness (Hendrycks & Dietterich, 2019, Sec. 3).

Batched numpy versions of `snow`, `frost`, `fog` and `brightness` in hendrycks/robustness
`make_cifar_c.py` / `make_imagenet_c.py`. Colour-dependent steps (snow's whitening, the frost
texture) use the image itself when it has one channel and the ITU-R 601 luma of RGB otherwise.

The frost textures are the six photos the scripts ship, read at run time from the installed
`imagecorruptions` package (never copied into this repository).

Public corruptions map u8[B, H, W, C] → f[B, H, W, C] on the 0..255 scale.
"""
import functools
import importlib.util
import pathlib
from typing import Callable

import numpy as np
from PIL import Image

from csl_jax.eval.corruptions import blur
from csl_jax.eval.corruptions import params
from csl_jax.eval.corruptions import resample

# The scripts draw np.random.randint(5) over a six-name list, so frost6.jpg is never used.
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
_LUMA = np.array([0.299, 0.587, 0.114])


def _gray(x: np.ndarray) -> np.ndarray:
  """f[..., C] → f[..., 1]: itself for one channel, luma (cv2 RGB2GRAY weights) for RGB."""
  return x if x.shape[-1] == 1 else (x @ _LUMA.astype(x.dtype))[..., None]


def snow_from_draws(images: np.ndarray, setting: params.Snow, normal_draws: np.ndarray,
                    angles: np.ndarray) -> np.ndarray:
  """Snow given the layer's N(mean, std^2) draws f[B, H, W] and the blur angles f[B] (degrees).

  The layer is zoomed, thresholded, stored as 8 bits (the scripts hand it to ImageMagick as a
  PNG), motion blurred, rounded back to 8 bits, and added twice (upright and rotated by 180°) to
  the image blended with its whitened version.
  """
  layer = resample.clipped_zoom(normal_draws, setting.zoom)
  layer = np.clip(np.where(layer < setting.threshold, 0, layer), 0, 1)
  layer = (layer * 255).astype(np.uint8).astype(np.float64)
  layer = blur.motion_blur_stack(layer, setting.blur_radius, setting.blur_sigma, angles)
  layer = (np.round(layer) / 255)[..., None]
  x = images.astype(np.float32) / 255
  x = setting.blend * x + (1 - setting.blend) * np.maximum(x, _gray(x) * 1.5 + 0.5)
  return np.clip(x + layer + layer[:, ::-1, ::-1], 0, 1) * 255


def snow(images: np.ndarray, setting: params.Snow, rng: np.random.Generator) -> np.ndarray:
  batch_size, height, width = images.shape[:3]
  normal_draws = rng.normal(setting.mean, setting.std, size=(batch_size, height, width))
  angles = rng.uniform(-135, -45, size=batch_size)
  return snow_from_draws(images, setting, normal_draws, angles)


def frost_directory() -> pathlib.Path:
  """Folder of the frost photos inside the installed `imagecorruptions` package (not imported)."""
  spec = importlib.util.find_spec("imagecorruptions")
  directory = None
  if spec is not None and spec.submodule_search_locations:
    directory = pathlib.Path(list(spec.submodule_search_locations)[0]) / "frost"
  if directory is None or not all((directory / name).exists() for name in FROST_FILES):
    raise ModuleNotFoundError(
        "corruption 'frost' needs the frost photos of ImageNet-C, which this project loads from the "
        "'imagecorruptions' package, and that package is not installed. Install it with "
        "`pip install --no-deps imagecorruptions==1.1.2` (only its image files are read, so its "
        "OpenCV/scikit-image dependencies are not needed), or leave 'frost' out of the corruptions.")
  return directory


@functools.lru_cache(maxsize=8)
def frost_textures(scale: float, min_height: int = 0, min_width: int = 0) -> tuple:
  """The five frost photos as u8[h, w, 3] RGB, resized by `scale` like cv2.resize(INTER_LINEAR).

  A texture not larger than (min_height, min_width) is enlarged to 1.1 times the size that covers
  it (as `imagecorruptions` does), so a crop position can always be drawn.
  """
  textures = []
  for name in FROST_FILES:
    with Image.open(frost_directory() / name) as photo:
      texture = np.asarray(photo.convert("RGB"))  # cv2.imread also drops the PNGs' alpha.
    if scale != 1:
      texture = resample.resize_linear(texture, scale)
    height, width = texture.shape[:2]
    if height <= min_height or width <= min_width:
      cover = 1.1 * max((min_height + 1) / height, (min_width + 1) / width)
      texture = resample.resize_linear(texture, cover)
    textures.append(texture)
  return tuple(textures)


def frost(images: np.ndarray, setting: params.Frost, rng: np.random.Generator) -> np.ndarray:
  """image_weight * image + frost_weight * a random crop of a random frost photo (0..255)."""
  batch_size, height, width = images.shape[:3]
  textures = frost_textures(setting.texture_scale, height, width)
  which = rng.integers(len(textures), size=batch_size)
  tops = rng.integers(0, [textures[i].shape[0] - height for i in which])
  lefts = rng.integers(0, [textures[i].shape[1] - width for i in which])
  layer = np.stack([textures[i][top:top + height, left:left + width]
                    for i, top, left in zip(which, tops, lefts)]).astype(np.float64)
  if images.shape[-1] == 1:
    layer = _gray(layer)
  return np.clip(setting.image_weight * images + setting.frost_weight * layer, 0, 255)


def plasma_fractal(batch_size: int, mapsize: int, wibble_decay: float,
                   uniform: Callable) -> np.ndarray:
  """Diamond-square height maps f64[B, N, N] in [0, 1] (the scripts' `plasma_fractal`).

  Args:
    batch_size: number of maps B.
    mapsize: N, a power of two.
    wibble_decay: the random amplitude is divided by this at every halving of the step.
    uniform: `uniform(low, high, size)` draw function (a Generator's or np.random's).
  """
  if mapsize & (mapsize - 1):
    raise ValueError(f"plasma_fractal: mapsize must be a power of two, got {mapsize}.")
  maps = np.zeros((batch_size, mapsize, mapsize))
  step, wibble = mapsize, 100.0

  def wibbled_mean(total):
    return total / 4 + wibble * uniform(-wibble, wibble, total.shape)

  while step >= 2:
    half = step // 2
    corners = maps[:, ::step, ::step]
    squares = corners + np.roll(corners, -1, axis=1)
    squares += np.roll(squares, -1, axis=2)
    maps[:, half::step, half::step] = wibbled_mean(squares)
    centres = maps[:, half::step, half::step]
    corners = maps[:, ::step, ::step]
    maps[:, ::step, half::step] = wibbled_mean(
        centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2))
    maps[:, half::step, ::step] = wibbled_mean(
        centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1))
    step //= 2
    wibble /= wibble_decay
  maps -= maps.min(axis=(1, 2), keepdims=True)
  return maps / maps.max(axis=(1, 2), keepdims=True)


def fog_from_fractal(images: np.ndarray, setting: params.Fog, fractal: np.ndarray) -> np.ndarray:
  """Adds strength * fractal f[B, ≥H, ≥W] and rescales so the image maximum is kept."""
  height, width = images.shape[1:3]
  x = images / 255.0
  max_value = x.max(axis=(1, 2, 3), keepdims=True)
  x = x + setting.strength * fractal[:, :height, :width, None]
  return np.clip(x * max_value / (max_value + setting.strength), 0, 1) * 255


def fog(images: np.ndarray, setting: params.Fog, rng: np.random.Generator) -> np.ndarray:
  side = max(images.shape[1:3])
  mapsize = 1 << (side - 1).bit_length()  # 32 for CIFAR, 256 for 224x224 as in the scripts.
  fractal = plasma_fractal(images.shape[0], mapsize, setting.wibble_decay, rng.uniform)
  return fog_from_fractal(images, setting, fractal)


def brightness(images: np.ndarray, amount: float, rng=None) -> np.ndarray:
  """Adds `amount` to the HSV value (clipped to 1) keeping hue and saturation.

  RGB is linear in V at fixed (H, S), so the skimage rgb2hsv → hsv2rgb round trip of the scripts
  is a per-pixel rescaling by V' / V (and a gray V' where V = 0).
  """
  del rng  # Deterministic.
  x = images / 255.0
  value = x.max(axis=-1, keepdims=True)
  new_value = np.minimum(value + amount, 1)
  safe_value = np.where(value > 0, value, 1)
  return np.where(value > 0, (x / safe_value) * new_value, new_value) * 255

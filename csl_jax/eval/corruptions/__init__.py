"""The 15 common corruptions of Hendrycks & Dietterich (ICLR 2019) at severities 1..5, on the fly.

    from csl_jax.eval import corruptions
    corrupted = corruptions.apply("gaussian_noise", images_u8, severity=3, seed=0)

Parameters are those of the scripts that made the published benchmarks (hendrycks/robustness,
`ImageNet-C/create_c/`): CIFAR-10-C's for 32x32 images and ImageNet-C's for 224x224 images; other
sizes take the table of the nearer size (`params.table_for_size`). Everything is implemented here
in batched numpy (PIL per image for pixelate and JPEG): the `imagecorruptions` package only
supplies the frost photos. Its code is not called because, as of 1.1.2, it needs
`pkg_resources`, breaks on NumPy 2 (fog) and scikit-image ≥ 0.19 (glass blur), and its pixelate,
elastic and frost differ from the scripts.

Conventions, as in the scripts: results are clipped to [0, 255] and truncated (np.uint8) rather
than rounded; ImageMagick's motion blur is replaced by the shift-and-add port of
`imagecorruptions`. Images with one channel are corrupted natively (noise per channel, colour steps
on the luma), not through an RGB round trip.
"""
import numpy as np

from csl_jax.eval.corruptions import blur
from csl_jax.eval.corruptions import digital
from csl_jax.eval.corruptions import noise
from csl_jax.eval.corruptions import params
from csl_jax.eval.corruptions import weather

# Paper order (noise, blur, weather, digital); also the x axis of the drop plot.
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)

_FUNCTIONS = {
    "gaussian_noise": noise.gaussian_noise,
    "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise,
    "defocus_blur": blur.defocus_blur,
    "glass_blur": blur.glass_blur,
    "motion_blur": blur.motion_blur,
    "zoom_blur": blur.zoom_blur,
    "snow": weather.snow,
    "frost": weather.frost,
    "fog": weather.fog,
    "brightness": weather.brightness,
    "contrast": digital.contrast,
    "elastic_transform": digital.elastic_transform,
    "pixelate": digital.pixelate,
    "jpeg_compression": digital.jpeg_compression,
}
# Corruptions whose output depends on the seed; the others are deterministic.
RANDOM_CORRUPTIONS = frozenset({"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur",
                                "motion_blur", "snow", "frost", "fog", "elastic_transform"})


def check_name(name: str) -> str:
  if name not in _FUNCTIONS:
    raise ValueError(f"Unknown corruption {name!r}; choose one of {list(CORRUPTIONS)}.")
  return name


def check_severity(severity) -> int:
  if isinstance(severity, (bool, np.bool_)) or not isinstance(severity, (int, np.integer)) \
      or severity not in SEVERITIES:
    raise ValueError(f"severity must be an integer in 1..5, got {severity!r}.")
  return int(severity)


def check_images(images) -> np.ndarray:
  """Returns `images` as a numpy u8[B, H, W, C] (C = 1 or 3) or raises a ValueError saying why not."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"corruptions expect uint8 images in 0..255, got dtype {images.dtype}; convert "
                     "[0, 1] floats with np.round(x * 255).astype(np.uint8).")
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    hint = " (one image? pass images[None])" if images.ndim == 3 else ""
    raise ValueError(f"corruptions expect a batch u8[B, H, W, C] with C = 1 or 3, got shape "
                     f"{images.shape}{hint}.")
  return images


def setting(name: str, severity: int, height: int, width: int):
  """The parameters `apply` uses for `name` at `severity` on height x width images."""
  table = params.table_for_size(height, width)
  chosen = params.TABLES[table][check_name(name)][check_severity(severity) - 1]
  if name == "elastic_transform":
    chosen = params.elastic_pixels(chosen, table, min(height, width))
  return chosen


def apply(name: str, images_uint8, severity: int, *, seed: int = 0) -> np.ndarray:
  """Corrupts a batch of images with corruption `name` at `severity`.

  Args:
    name: one of `CORRUPTIONS`.
    images_uint8: u8[B, H, W, C], C = 1 or 3.
    severity: 1..5.
    seed: non-negative int; the output is a deterministic function of (images, name, severity,
      seed). Images of one batch get independent draws.

  Returns:
    u8[B, H, W, C], same shape as the input.
  """
  function = _FUNCTIONS[check_name(name)]
  severity = check_severity(severity)
  images = check_images(images_uint8)
  if images.shape[0] == 0:
    return images.copy()
  rng = np.random.default_rng(seed)
  corrupted = function(images, setting(name, severity, *images.shape[1:3]), rng)
  # np.uint8 truncates, as the scripts' final np.uint8(...) does.
  return np.clip(corrupted, 0, 255).astype(np.uint8)

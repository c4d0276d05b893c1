"""Severity tables of the 15 common corruptions (Hendrycks & Dietterich, ICLR 2019).

Two tables, with the numbers of the scripts that generated the published benchmarks
(hendrycks/robustness, `ImageNet-C/create_c/`):
  * "cifar10_c"  — `make_cifar_c.py`, calibrated for 32x32 images (CIFAR-10-C),
  * "imagenet_c" — `make_imagenet_c.py`, calibrated for 224x224 images (ImageNet-C).
Each entry is a tuple of five settings, severity 1..5. Lengths (radii, sigmas, displacements) are
in pixels of the calibration size; `elastic_transform` is stored as fractions of the image side
(see `elastic_pixels`) because the scripts write it that way.
"""
from typing import NamedTuple

import numpy as np

TABLE_NAMES = ("cifar10_c", "imagenet_c")
# Side lengths the two tables were made for; other sizes use the nearest in log scale.
CALIBRATION_SIDES = {"cifar10_c": 32, "imagenet_c": 224}


class Defocus(NamedTuple):
  radius: float  # radius of the disk kernel, pixels
  alias_blur: float  # sigma of the 3x3 (5x5 for radius > 8) Gaussian that anti-aliases the disk


class GlassBlur(NamedTuple):
  sigma: float  # Gaussian blur before and after the local shuffle, pixels
  max_delta: int  # neighbour offsets are drawn from [-max_delta, max_delta - 1]
  iterations: int  # shuffle passes over the image


class MotionBlur(NamedTuple):
  radius: int  # the kernel has 2 * radius + 1 taps along the motion direction
  sigma: float  # one-sided Gaussian weights of the taps, pixels


class ZoomBlur(NamedTuple):
  start: float  # zoom factors are np.arange(start, stop, step), as in the scripts
  stop: float  # (float steps, so the endpoint is sometimes included: kept for fidelity)
  step: float

  def factors(self) -> np.ndarray:
    return np.arange(self.start, self.stop, self.step)


class Snow(NamedTuple):
  mean: float  # snow layer ~ N(mean, std^2) per pixel ...
  std: float
  zoom: float  # ... zoomed in by this factor (bigger flakes) ...
  threshold: float  # ... values below this are no snow ...
  blur_radius: int  # ... then motion blurred (radius, sigma) at an angle in [-135, -45] degrees
  blur_sigma: float
  blend: float  # weight of the image against its whitened version max(x, 1.5 * gray + 0.5)


class Frost(NamedTuple):
  image_weight: float  # output = image_weight * image + frost_weight * frost texture (0..255)
  frost_weight: float
  texture_scale: float = 1.0  # the photos are resized by this before cropping (CIFAR: 0.2)


class Fog(NamedTuple):
  strength: float  # amplitude of the plasma-fractal fog added to the [0, 1] image
  wibble_decay: float  # roughness of the fractal: larger decays → smoother fog


class Elastic(NamedTuple):
  alpha: float  # displacement scale, fraction of the image side
  sigma: float  # smoothness of the displacement field, fraction of the side
  affine: float  # max shift of the three affine anchor points, fraction of the side


CIFAR10_C = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std on [0, 1] pixels
    "shot_noise": (500, 250, 100, 75, 50),  # photons per unit intensity (Poisson rate)
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # fraction of salt-and-pepper values
    "defocus_blur": tuple(Defocus(*c) for c in ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))),
    "glass_blur": tuple(GlassBlur(*c) for c in
                        ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))),
    "motion_blur": tuple(MotionBlur(*c) for c in ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))),
    "zoom_blur": tuple(ZoomBlur(1, stop, 0.01) for stop in (1.06, 1.11, 1.16, 1.21, 1.26)),
    "snow": tuple(Snow(*c) for c in ((0.1, 0.2, 1, 0.6, 8, 3, 0.95),
                                     (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                                     (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                                     (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                                     (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))),
    "frost": tuple(Frost(*c, texture_scale=0.2)
                   for c in ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))),
    "fog": tuple(Fog(*c) for c in ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to the HSV value channel
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor on the deviation from the channel mean
    "elastic_transform": tuple(Elastic(*c) for c in ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                                                     (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # side of the downsampled image / side
    "jpeg_compression": (80, 65, 58, 50, 40),  # PIL JPEG quality
}

IMAGENET_C = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "defocus_blur": tuple(Defocus(*c) for c in ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))),
    "glass_blur": tuple(GlassBlur(*c) for c in
                        ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))),
    "motion_blur": tuple(MotionBlur(*c) for c in ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))),
    "zoom_blur": (ZoomBlur(1, 1.11, 0.01), ZoomBlur(1, 1.16, 0.01), ZoomBlur(1, 1.21, 0.02),
                  ZoomBlur(1, 1.26, 0.02), ZoomBlur(1, 1.31, 0.03)),
    "snow": tuple(Snow(*c) for c in ((0.1, 0.3, 3, 0.5, 10, 4, 0.8),
                                     (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                                     (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                                     (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                                     (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))),
    "frost": tuple(Frost(*c) for c in ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))),
    "fog": tuple(Fog(*c) for c in ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4))),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "elastic_transform": tuple(Elastic(*c) for c in ((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02),
                                                     (0.07, 0.01, 0.02), (0.12, 0.01, 0.02))),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "jpeg_compression": (25, 18, 15, 10, 7),
}

TABLES = {"cifar10_c": CIFAR10_C, "imagenet_c": IMAGENET_C}

# make_cifar_c.py multiplies the elastic fractions by IMSIZE = 32; make_imagenet_c.py by 244 for
# its 224x224 images (a typo the authors kept: "ultimately nothing is incorrect").
_ELASTIC_MULTIPLIER = {"cifar10_c": 32, "imagenet_c": 244}


def table_for_size(height: int, width: int) -> str:
  """Name of the parameter table for images of this size.

  32x32 → "cifar10_c", 224x224 → "imagenet_c"; any other size takes the table whose calibration
  side is nearest to min(height, width) in log scale (the switch is at about 85 pixels), so 64x64
  images get CIFAR-10-C numbers and 160x160 ImageNet-C numbers. Pixel-valued parameters (blur radii,
  shuffle distances) are then *not* rescaled, except elastic displacements (see `elastic_pixels`).
  """
  side = min(height, width)
  return min(TABLE_NAMES, key=lambda name: abs(np.log(side / CALIBRATION_SIDES[name])))


def elastic_pixels(setting: Elastic, table: str, side: int) -> Elastic:
  """`setting` in pixels for an image whose shorter side is `side` (exactly the scripts' numbers at 32/224)."""
  scale = _ELASTIC_MULTIPLIER[table] * (side / CALIBRATION_SIDES[table])
  return Elastic(*(fraction * scale for fraction in setting))

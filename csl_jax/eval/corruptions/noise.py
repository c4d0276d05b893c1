"""Noise corruptions: Gaussian, shot (Poisson) and impulse (salt-and-pepper) noise.

Hendrycks & Dietterich (2019), Sec. 3; formulas of `gaussian_noise`, `shot_noise`,
`impulse_noise` in hendrycks/robustness `make_cifar_c.py` / `make_imagenet_c.py`. Every pixel and
channel gets independent noise, so 1-channel images are handled natively.

Each function maps u8[B, H, W, C] → f[B, H, W, C] on the 0..255 scale (unclipped; the caller
clips and converts).
"""
import numpy as np


def gaussian_noise(images: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
  """x + N(0, std^2) on [0, 1] pixels."""
  x = images / 255.0
  return np.clip(x + rng.normal(scale=std, size=x.shape), 0, 1) * 255


def shot_noise(images: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
  """Poisson(rate * x) / rate: photon noise, stronger for smaller `rate`."""
  x = images / 255.0
  return np.clip(rng.poisson(x * rate) / rate, 0, 1) * 255


def impulse_noise(images: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
  """Salt-and-pepper: each value is replaced with probability `amount`, by 0 or 1 with equal odds.

  The scripts call skimage.util.random_noise(mode="s&p", amount=amount), whose salt/pepper masks
  are independent Bernoulli draws per value; this draws the same masks directly.
  """
  x = images / 255.0
  flipped = rng.random(x.shape) < amount
  salted = rng.random(x.shape) < 0.5
  return np.where(flipped, salted.astype(x.dtype), x) * 255

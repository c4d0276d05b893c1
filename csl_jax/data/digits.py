"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 grayscale images, available offline.

The embedded default dataset: quickstart configs and tests train on it in seconds on a CPU.
Pixel values 0..16 map to uint8 by round(v * 255 / 16). The train/test split is stratified by class
and fixed (80/20, seed 0 -> 1,437 / 360 images), so every run and machine sees the same split.
"""
import functools

import numpy as np

from csl_jax.data import dataset

SPLITS = ("train", "test", "all")
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _all_digits():
  from sklearn.datasets import load_digits  # Lazy: scikit-learn is slow to import.
  bunch = load_digits()
  images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # u8[1797, 8, 8, 1]
  return images, bunch.target.astype(np.int32)


def split_indices(split: str) -> np.ndarray:
  """Sorted indices into the 1,797 digits for `split` ("train", "test" or "all")."""
  if split not in SPLITS:
    raise ValueError(f"digits: unknown split {split!r}; choose one of {list(SPLITS)}.")
  _, labels = _all_digits()
  all_indices = np.arange(len(labels))
  if split == "all":
    return all_indices
  from sklearn.model_selection import train_test_split
  train, test = train_test_split(all_indices, test_size=TEST_FRACTION, stratify=labels,
                                 random_state=SPLIT_SEED)
  return np.sort(train if split == "train" else test)


def load(split: str, *, image_size: int | None = None) -> dataset.ArrayDataset:
  """The digits split as an ArrayDataset of u8[N, 8, 8, 1] (or [N, image_size, image_size, 1]) images."""
  images, labels = _all_digits()
  indices = split_indices(split)
  images = images[indices]
  if image_size is not None:
    images = dataset.resize_images(images, image_size)
  return dataset.ArrayDataset(images=images, labels=labels[indices],
                              class_names=[str(d) for d in range(10)], name=f"digits:{split}")

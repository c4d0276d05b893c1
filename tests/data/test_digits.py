"""The embedded digits source: counts, value mapping, stratified split, determinism, resizing."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

from csl_jax import data
from csl_jax.data import digits


@pytest.fixture(scope="module")
def splits():
  return {split: data.load("digits", split) for split in ("train", "test", "all")}


def test_counts_shapes_and_names(splits):
  assert splits["all"].num_examples == 1797
  assert splits["train"].num_examples + splits["test"].num_examples == 1797
  assert abs(splits["test"].num_examples - 0.2 * 1797) < 1
  assert splits["train"].image_shape == (8, 8, 1)
  assert splits["train"].class_names == [str(d) for d in range(10)]


def test_values_map_0_16_to_0_255(splits):
  reference = load_digits()
  ds = splits["all"]
  np.testing.assert_array_equal(ds.images[..., 0], np.round(reference.images * 255 / 16).astype(np.uint8))
  np.testing.assert_array_equal(ds.labels, reference.target)
  assert ds.images.dtype == np.uint8 and ds.images.min() == 0 and ds.images.max() == 255


def test_split_is_a_stratified_partition(splits):
  train, test = digits.split_indices("train"), digits.split_indices("test")
  assert not set(train) & set(test)
  np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
  all_counts = np.bincount(splits["all"].labels, minlength=10)
  test_counts = np.bincount(splits["test"].labels, minlength=10)
  # Stratified: every class contributes its 20% share (to within rounding).
  assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1)


def test_split_is_deterministic(splits):
  again = data.load("digits", "train")
  np.testing.assert_array_equal(again.images, splits["train"].images)
  np.testing.assert_array_equal(again.labels, splits["train"].labels)


def test_resizing_keeps_content():
  big = data.load("digits", "test", image_size=32)
  small = data.load("digits", "test")
  assert big.image_shape == (32, 32, 1)
  # Average-pooling the 4x upsampled digit recovers the original up to interpolation blur.
  pooled = big.images.reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4))
  corr = np.corrcoef(pooled.ravel(), small.images[..., 0].ravel().astype(float))[0, 1]
  assert corr > 0.95


def test_unknown_split():
  with pytest.raises(ValueError, match="unknown split 'validation'.*'train', 'test', 'all'"):
    data.load("digits", "validation")

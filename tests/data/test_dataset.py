"""ArrayDataset batching (resume determinism, epochs, per-process slices), stats and `load` dispatch."""
import itertools

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from csl_jax import data
from csl_jax.data import dataset


def _indexed_dataset(num_examples, num_classes=3):
  """Image i holds the value i (mod 256) and, in pixel [0, 0, 1], i // 256, so batches reveal their indices."""
  images = np.zeros((num_examples, 2, 2, 3), np.uint8)
  images[:, 0, 0, 0] = np.arange(num_examples) % 256
  images[:, 0, 0, 1] = np.arange(num_examples) // 256
  labels = np.arange(num_examples) % num_classes
  return data.ArrayDataset(images, labels, [f"c{i}" for i in range(num_classes)], name="indexed")


def _indices(batch):
  return batch["image"][:, 0, 0, 0].astype(int) + 256 * batch["image"][:, 0, 0, 1].astype(int)


def _take(iterator, n):
  return [_indices(b) for b in itertools.islice(iterator, n)]


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(num_examples=st.integers(5, 300), batch=st.integers(1, 40), seed=st.integers(0, 2**31),
                  start=st.integers(0, 60))
def test_resume_reproduces_the_uninterrupted_stream(num_examples, batch, seed, start):
  hypothesis.assume(batch <= num_examples)
  ds = _indexed_dataset(num_examples)
  full = _take(ds.batches(batch, seed=seed, process_index=0, process_count=1), start + 7)
  resumed = _take(ds.batches(batch, seed=seed, start_step=start, process_index=0, process_count=1), 7)
  for expected, got in zip(full[start:], resumed):
    np.testing.assert_array_equal(got, expected)


def test_each_epoch_visits_every_example_once_in_a_new_order():
  ds = _indexed_dataset(103)
  steps = 103 // 10  # drop_remainder: 3 examples sit out each epoch.
  stream = _take(ds.batches(10, seed=7, process_index=0, process_count=1), 3 * steps)
  epochs = [np.concatenate(stream[e * steps:(e + 1) * steps]) for e in range(3)]
  for e, order in enumerate(epochs):
    assert len(np.unique(order)) == len(order) == 100
    np.testing.assert_array_equal(order, data.epoch_permutation(103, 7, e)[:100])
  assert not np.array_equal(epochs[0], epochs[1])
  # Another seed, another order.
  other = _take(ds.batches(10, seed=8, process_index=0, process_count=1), steps)
  assert not np.array_equal(np.concatenate(other), epochs[0])


def test_labels_travel_with_their_images():
  ds = _indexed_dataset(50, num_classes=7)
  batch = next(ds.batches(16, seed=0, process_index=0, process_count=1))
  np.testing.assert_array_equal(batch["label"], _indices(batch) % 7)
  assert batch["label"].dtype == np.int32 and batch["image"].dtype == np.uint8


@pytest.mark.parametrize("process_count", [2, 4, 8])
def test_process_slices_partition_the_global_batch(process_count):
  ds = _indexed_dataset(200)
  glob = _take(ds.batches(32, seed=3, process_index=0, process_count=1), 9)
  local = [_take(ds.batches(32, seed=3, start_step=2, process_index=p, process_count=process_count), 7)
           for p in range(process_count)]
  for step in range(7):
    parts = [local[p][step] for p in range(process_count)]
    assert all(len(part) == 32 // process_count for part in parts)
    np.testing.assert_array_equal(np.concatenate(parts), glob[step + 2])


def test_one_pass_evaluation_covers_everything_in_order_with_a_smaller_last_batch():
  ds = _indexed_dataset(45)
  batches = _take(ds.batches(16, seed=0, shuffle=False, drop_remainder=False, process_index=0, process_count=1), 99)
  assert [len(b) for b in batches] == [16, 16, 13]
  np.testing.assert_array_equal(np.concatenate(batches), np.arange(45))
  # The partial batch still splits into contiguous per-process parts.
  parts = [_take(ds.batches(16, seed=0, shuffle=False, drop_remainder=False, process_index=p, process_count=4), 99)[-1]
           for p in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts), np.arange(32, 45))
  assert [len(p) for p in parts] == [4, 3, 3, 3]
  # start_step skips whole batches; drop_remainder drops the tail.
  tail = _take(ds.batches(16, seed=0, shuffle=False, start_step=1, process_index=0, process_count=1), 99)
  assert len(tail) == 1 and np.array_equal(tail[0], np.arange(16, 32))


@hypothesis.given(batch_len=st.integers(0, 100), process_count=st.integers(1, 9))
def test_process_slice_partitions_contiguously(batch_len, process_count):
  slices = [dataset.process_slice(batch_len, p, process_count) for p in range(process_count)]
  covered = np.concatenate([np.arange(batch_len)[s] for s in slices])
  np.testing.assert_array_equal(covered, np.arange(batch_len))
  sizes = [s.stop - s.start for s in slices]
  assert max(sizes) - min(sizes) <= 1


def test_batch_size_errors_are_clear():
  ds = _indexed_dataset(10)
  with pytest.raises(ValueError, match="multiple of process_count=4"):
    ds.batches(6, seed=0, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="fewer than one global batch"):
    ds.batches(16, seed=0, process_index=0, process_count=1)


def test_default_process_layout_comes_from_jax():
  batch = next(_indexed_dataset(64).batches(16, seed=0))
  assert len(batch["label"]) == 16  # One process in tests: the whole batch.


def test_subsets():
  ds = _indexed_dataset(20)
  assert ds.take(5).num_examples == 5 and ds[3:6].num_examples == 3
  np.testing.assert_array_equal(ds[np.array([4, 2])].labels, [1, 2])
  assert ds.image_shape == (2, 2, 3) and ds.num_classes == 3 and len(ds[-1]) == 1


def test_array_dataset_validates_its_arrays():
  with pytest.raises(ValueError, match="uint8"):
    data.ArrayDataset(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2), ["a"])
  with pytest.raises(ValueError, match="labels"):
    data.ArrayDataset(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3), ["a"])


def test_compute_channel_stats_matches_numpy():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (37, 5, 6, 3), dtype=np.uint8)
  mean, std = data.compute_channel_stats(images, chunk=8)
  pixels = images.reshape(-1, 3) / 255.0
  np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-10)
  np.testing.assert_allclose(std, pixels.std(0), rtol=1e-8)


def test_channel_stats_table_and_computed():
  assert data.channel_stats("tfds:cifar10") == data.KNOWN_STATS["cifar10"]
  assert data.channel_stats("tfds:imagenet2012:5.1.0") == data.KNOWN_STATS["imagenet2012"]
  mean, std = data.channel_stats("digits")
  expected = data.compute_channel_stats(data.load("digits", "train").images)
  assert (mean, std) == expected and len(mean) == 1


def test_resize_images_shorter_side_then_center_crop():
  # A 4x8 image whose left/right quarters differ: the center crop keeps only the middle.
  image = np.zeros((1, 4, 8, 3), np.uint8)
  image[:, :, 2:6] = 200
  out = dataset.resize_images(image, 4)
  assert out.shape == (1, 4, 4, 3)
  np.testing.assert_array_equal(out, 200)
  up = dataset.resize_images(np.full((2, 3, 3, 1), 77, np.uint8), 9)
  assert up.shape == (2, 9, 9, 1) and np.all(up == 77)


def test_unknown_source_lists_the_valid_forms():
  for bad in ["cifar10", "tfds:", "folder:", "s3:bucket"]:
    with pytest.raises(ValueError, match="digits.*tfds:<name>.*folder:<path>"):
      data.load(bad, "train")

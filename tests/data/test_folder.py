"""Image-folder source: directory == zip, label mapping, RGB conversion, caching, errors, CIFAR-10 zip."""
import io
import os
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from csl_jax import data
from csl_jax.data import folder

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Deliberately unsorted on disk: labels must follow the alphabetical order of the class names.
TINY_CLASSES = ("zebra", "ant", "moth")
MODES = ("RGB", "L", "RGBA", "P")


def _write_tiny_folder(root, size=(6, 5), splits=(("train", 4), ("test", 2))):
  rng = np.random.default_rng(0)
  for split, per_class in splits:
    for c, name in enumerate(TINY_CLASSES):
      os.makedirs(root / split / name)
      for i in range(per_class):
        mode = MODES[(c + i) % len(MODES)]
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(root / split / name / f"{i:03d}.png")
  return root


def _zip_folder(root, zip_path, prefix=""):
  with zipfile.ZipFile(zip_path, "w") as archive:
    for path in sorted(root.rglob("*.png")):
      archive.write(path, prefix + path.relative_to(root).as_posix())
  return zip_path


@pytest.fixture
def tiny(tmp_path):
  return _write_tiny_folder(tmp_path / "tiny")


def _same(a, b):
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.labels, b.labels)
  assert a.class_names == b.class_names


def test_directory_zip_and_nested_zip_give_identical_arrays(tiny, tmp_path):
  cache = tmp_path / "cache"
  from_dir = data.load(f"folder:{tiny}", "train", cache_dir=cache)
  from_zip = data.load(f"folder:{_zip_folder(tiny, tmp_path / 'flat.zip')}", "train", cache_dir=cache)
  nested = data.load(f"folder:{_zip_folder(tiny, tmp_path / 'nested.zip', 'tiny/')}", "train", cache_dir=cache)
  _same(from_dir, from_zip)
  _same(from_dir, nested)


def test_labels_follow_sorted_class_directories_and_pixels_match_pil(tiny, tmp_path):
  ds = data.load(f"folder:{tiny}", "train", cache_dir=tmp_path / "cache")
  assert ds.class_names == sorted(TINY_CLASSES) and ds.image_shape == (5, 6, 3)
  order = folder.fixed_order(ds.num_examples)  # stored k = sorted (class, file) entry order[k]
  np.testing.assert_array_equal(ds.labels, np.repeat([0, 1, 2], 4)[order])
  assert not np.array_equal(order, np.arange(ds.num_examples))
  for k in range(ds.num_examples):
    file = tiny / "train" / ds.class_names[ds.labels[k]] / f"{order[k] % 4:03d}.png"
    np.testing.assert_array_equal(ds.images[k], np.asarray(Image.open(file).convert("RGB")))


def test_grayscale_becomes_three_equal_channels(tiny, tmp_path):
  ds = data.load(f"folder:{tiny}", "train", cache_dir=tmp_path / "cache")
  write_index = [TINY_CLASSES.index(ds.class_names[label]) for label in ds.labels]  # As _write_tiny_folder.
  order = folder.fixed_order(ds.num_examples)
  gray = [k for k in range(ds.num_examples) if MODES[(write_index[k] + order[k] % 4) % len(MODES)] == "L"]
  assert gray
  for k in gray:
    assert np.all(ds.images[k, ..., 0] == ds.images[k, ..., 1]) and np.all(ds.images[k, ..., 1] == ds.images[k, ..., 2])


def test_labels_agree_across_splits_when_a_split_lacks_a_class(tmp_path):
  root = _write_tiny_folder(tmp_path / "tiny", splits=(("train", 1),))
  os.makedirs(root / "test" / "moth")
  Image.new("RGB", (6, 5)).save(root / "test" / "moth" / "x.png")
  test = data.load(f"folder:{root}", "test", cache_dir=tmp_path / "cache")
  assert test.class_names == ["ant", "moth", "zebra"]
  np.testing.assert_array_equal(test.labels, [1])


def test_second_load_reads_the_cache_and_edits_invalidate_it(tiny, tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  first = data.load(f"folder:{tiny}", "test", cache_dir=cache)
  cache_file = folder.cache_path(tiny, "test", cache_dir=cache)
  assert cache_file.exists() and len(list(cache.iterdir())) == 1

  def no_decoding(*args, **kwargs):
    raise AssertionError("decoded although a valid cache exists")

  monkeypatch.setattr(folder, "decode_files", no_decoding)
  _same(first, data.load(f"folder:{tiny}", "test", cache_dir=cache))
  # Replacing an image changes the key, so the stale cache is not used.
  Image.new("RGB", (6, 5), (9, 9, 9)).save(tiny / "test" / "ant" / "000.png")
  os.utime(tiny / "test" / "ant" / "000.png", ns=(1, 1))
  with pytest.raises(AssertionError, match="decoded although"):
    data.load(f"folder:{tiny}", "test", cache_dir=cache)


def test_thread_pool_decoding_equals_serial(tiny, tmp_path):
  zip_path = _zip_folder(tiny, tmp_path / "t.zip")
  serial = folder.load(str(zip_path), "train", cache_dir=tmp_path / "a", num_workers=1)
  threaded = folder.load(str(zip_path), "train", cache_dir=tmp_path / "b", num_workers=3)
  _same(serial, threaded)


def test_mixed_sizes_need_image_size(tmp_path):
  root = _write_tiny_folder(tmp_path / "tiny", size=(6, 5))
  Image.new("RGB", (9, 7), (200, 10, 10)).save(root / "train" / "ant" / "big.png")
  with pytest.raises(ValueError, match="differ in size.*pass image_size=N"):
    data.load(f"folder:{root}", "train", cache_dir=tmp_path / "cache")
  ds = data.load(f"folder:{root}", "train", cache_dir=tmp_path / "cache", image_size=4)
  assert ds.images.shape == (13, 4, 4, 3)
  # "big.png" sorts after 000..003.png in class "ant": sorted entry 4, stored at the k where fixed_order[k] == 4.
  big = ds.images[list(folder.fixed_order(ds.num_examples)).index(4)]
  np.testing.assert_array_equal(big, np.broadcast_to([200, 10, 10], (4, 4, 3)))


def test_missing_path_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"folder:.*nope: no such directory or zip.*<root>/<split>/<class>"):
    data.load(f"folder:{tmp_path / 'nope'}", "train")


def test_missing_split_error_lists_found_splits(tiny, tmp_path):
  for path in [tiny, _zip_folder(tiny, tmp_path / "t.zip"), _zip_folder(tiny, tmp_path / "n.zip", "top/")]:
    with pytest.raises(FileNotFoundError, match=r"no split 'validation' — expected <root>/validation/<class>/\*\.jpg"
                                                r".*found splits: \[.*test.*train.*\]"):
      data.load(f"folder:{path}", "validation", cache_dir=tmp_path / "cache")


def test_empty_class_directory_error(tiny, tmp_path):
  os.makedirs(tiny / "train" / "beetle")
  with pytest.raises(ValueError, match=r"without images in split 'train': \['beetle'\]"):
    data.load(f"folder:{tiny}", "train", cache_dir=tmp_path / "cache")


def test_corrupt_image_error_names_the_file(tiny, tmp_path):
  (tiny / "train" / "ant" / "bad.png").write_bytes(b"not an image")
  with pytest.raises(OSError, match="cannot decode 'train/ant/bad.png'"):
    data.load(f"folder:{tiny}", "train", cache_dir=tmp_path / "cache")


def test_not_a_zip_error(tmp_path):
  (tmp_path / "x.tar").write_bytes(b"abc")
  with pytest.raises(ValueError, match="neither a directory nor a zip"):
    data.load(f"folder:{tmp_path / 'x.tar'}", "train")


# ----------------------------------------------------------------------------------------------------
# The shared CIFAR-10 JPEG zip (skipped where ../shared is absent). Only the 10k test split is decoded.


@pytest.fixture(scope="module")
def cifar_test(cifar10_zip, tmp_path_factory):
  cache = tmp_path_factory.mktemp("cifar_cache")
  start = time.perf_counter()
  ds = data.load(f"folder:{cifar10_zip}", "test", cache_dir=cache)
  return ds, cache, time.perf_counter() - start


def test_cifar10_counts_and_class_order(cifar_test):
  ds, _, _ = cifar_test
  assert ds.class_names == CIFAR10_CLASSES
  assert ds.images.shape == (10000, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(ds.labels), np.full(10, 1000))
  # The first 1,000 (what robustness.num_examples=1000 evaluates) cover every class.
  assert np.bincount(ds.labels[:1000], minlength=10).min() >= 70


def test_cifar10_images_match_their_named_zip_entries(cifar_test, cifar10_zip):
  ds, _, _ = cifar_test
  rng = np.random.default_rng(0)
  with zipfile.ZipFile(cifar10_zip) as archive:
    for k in rng.choice(ds.num_examples, 12, replace=False):
      # Example k is entry fixed_order[k] of the list sorted by (class, file name); files are 0000..0999 per class.
      label, sorted_index = ds.labels[k], folder.fixed_order(ds.num_examples)[k]
      entry = f"test/{CIFAR10_CLASSES[label]}/{sorted_index - 1000 * label:04d}.jpg"
      expected = np.asarray(Image.open(io.BytesIO(archive.read(entry))).convert("RGB"))
      np.testing.assert_array_equal(ds.images[k], expected)


def test_cifar10_second_load_hits_the_cache(cifar_test, cifar10_zip):
  ds, cache, cold_seconds = cifar_test
  assert folder.cache_path(cifar10_zip, "test", cache_dir=cache).exists()
  start = time.perf_counter()
  again = data.load(f"folder:{cifar10_zip}", "test", cache_dir=cache)
  warm_seconds = time.perf_counter() - start
  np.testing.assert_array_equal(again.images, ds.images)
  assert warm_seconds < cold_seconds / 3, (warm_seconds, cold_seconds)


def test_cifar10_channel_stats_agree_with_the_table(cifar_test):
  # Test-split statistics of the JPEG copy lie within 0.01 of the published training-set values.
  mean, std = data.compute_channel_stats(cifar_test[0].images)
  known_mean, known_std = data.KNOWN_STATS["cifar10"]
  np.testing.assert_allclose(mean, known_mean, atol=0.01)
  np.testing.assert_allclose(std, known_std, atol=0.01)

"""TFDS source, offline: missing-data errors, and tiny datasets built locally for both read paths.

Two builders are generated into a temporary data_dir: fixed 8x8 images (loaded into memory) and
constant-colour images of varying size (streamed). Image i of the streamed one has value 5 * i, so
a decoded, resized batch still reveals which examples it holds.
"""
import numpy as np
import pytest

from csl_jax import data
from csl_jax.data import tfds_source

NUM_TRAIN, NUM_TEST = 40, 12


def _fixed_images(split):
  rng = np.random.default_rng(0 if split == "train" else 1)
  return rng.integers(0, 256, ((NUM_TRAIN if split == "train" else NUM_TEST), 8, 8, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  tfds = pytest.importorskip("tensorflow_datasets")

  class CslTinyFixed(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    # No checksums file to look up beside this test (TFDS's lookup also trips over the tests package).
    code_path = None

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(8, 8, 3)),
          "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split):
      for i, image in enumerate(_fixed_images(split)):
        yield i, {"image": image, "label": i % 3}

  class CslTinyVarying(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    code_path = None

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.ClassLabel(names=["a", "b", "c", "d"])}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(NUM_TRAIN)}

    def _generate_examples(self, count):
      rng = np.random.default_rng(2)
      for i in range(count):
        height, width = rng.integers(6, 20, 2)
        yield i, {"image": np.full((height, width, 3), 5 * i, np.uint8), "label": i % 4}

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  for builder_class in (CslTinyFixed, CslTinyVarying):
    builder_class(data_dir=data_dir).download_and_prepare()
  return data_dir


def _ids(batch):
  return batch["image"][:, 0, 0, 0].astype(int) // 5


def test_missing_dataset_says_how_to_build_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"not found.*tfds build cifar10 --data_dir={tmp_path}"):
    data.load("tfds:cifar10", "train", data_dir=str(tmp_path))


def test_missing_imagenet_gives_the_manual_download_steps(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"ILSVRC2012_img_train\.tar.*downloads/manual.*tfds build imagenet2012"):
    data.load("tfds:imagenet2012", "validation", data_dir=str(tmp_path))


def test_unknown_dataset_name(tmp_path):
  with pytest.raises(ValueError, match="no such TFDS dataset"):
    data.load("tfds:no_such_dataset_xyz", "train", data_dir=str(tmp_path))


def test_fixed_shape_dataset_loads_into_memory(tiny_tfds):
  ds = data.load("tfds:csl_tiny_fixed", "train", data_dir=tiny_tfds)
  assert isinstance(ds, data.ArrayDataset) and ds.class_names == ["a", "b", "c"]
  assert ds.images.shape == (NUM_TRAIN, 8, 8, 3) and ds.images.dtype == np.uint8
  # TFDS shuffles on write: compare as a set of (image, label) pairs.
  expected = {(img.tobytes(), i % 3) for i, img in enumerate(_fixed_images("train"))}
  assert {(img.tobytes(), int(label)) for img, label in zip(ds.images, ds.labels)} == expected


def test_split_slicing_and_resizing_pass_through(tiny_tfds):
  ds = data.load("tfds:csl_tiny_fixed", "train[:25%]", data_dir=tiny_tfds, image_size=4)
  assert ds.num_examples == NUM_TRAIN // 4 and ds.image_shape == (4, 4, 3)
  with pytest.raises(ValueError, match="bad split 'validation'.*available"):
    data.load("tfds:csl_tiny_fixed", "validation", data_dir=tiny_tfds)


def test_varying_sizes_stream_and_need_image_size(tiny_tfds):
  with pytest.raises(ValueError, match="vary in size.*image_size"):
    data.load("tfds:csl_tiny_varying", "train", data_dir=tiny_tfds)
  ds = data.load("tfds:csl_tiny_varying", "train", data_dir=tiny_tfds, image_size=5)
  assert isinstance(ds, tfds_source.StreamingDataset) and not hasattr(ds, "images")
  assert ds.image_shape == (5, 5, 3) and ds.num_examples == NUM_TRAIN and ds.num_classes == 4
  batch = next(ds.batches(8, seed=0, process_index=0, process_count=1))
  assert batch["image"].shape == (8, 5, 5, 3) and batch["image"].dtype == np.uint8
  # Constant images stay constant through resize and crop; labels stay attached.
  assert np.all(batch["image"] == batch["image"][:, :1, :1, :1])
  np.testing.assert_array_equal(batch["label"], _ids(batch) % 4)


def test_streaming_epochs_and_resume(tiny_tfds):
  ds = data.load("tfds:csl_tiny_varying", "train", data_dir=tiny_tfds, image_size=4)
  steps = NUM_TRAIN // 8
  stream = ds.batches(8, seed=3, process_index=0, process_count=1)
  full = [_ids(next(stream)) for _ in range(2 * steps + 2)]
  for epoch in range(2):
    assert sorted(np.concatenate(full[epoch * steps:(epoch + 1) * steps])) == list(range(NUM_TRAIN))
  assert not np.array_equal(np.concatenate(full[:steps]), np.concatenate(full[steps:2 * steps]))
  resumed = ds.batches(8, seed=3, start_step=steps - 1, process_index=0, process_count=1)
  for step in range(steps - 1, 2 * steps + 2):
    np.testing.assert_array_equal(_ids(next(resumed)), full[step])


def test_streaming_hosts_read_disjoint_parts_and_evaluation_sees_everything_once(tiny_tfds):
  ds = data.load("tfds:csl_tiny_varying", "train", data_dir=tiny_tfds, image_size=4)
  seen = []
  for process in range(2):
    batches = list(ds.batches(6, seed=0, shuffle=False, drop_remainder=False, process_index=process, process_count=2))
    assert all(len(b["label"]) == 3 for b in batches[:-1]) and len(batches[-1]["label"]) <= 3
    seen.append(np.concatenate([_ids(b) for b in batches]))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen)) == list(range(NUM_TRAIN))

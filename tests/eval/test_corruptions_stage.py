"""The corruption stage: accuracy bookkeeping, output files, TFDS source."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from csl_jax.eval import corruption_stage
from csl_jax.eval import corruptions


@pytest.fixture(scope="module")
def digits32():
  """Real images: sklearn digits as u8[300, 32, 32, 3] and their labels."""
  from sklearn.datasets import load_digits
  bunch = load_digits()
  images = np.round(bunch.images[:300] * 255 / 16).astype(np.uint8)
  images = np.stack([np.asarray(Image.fromarray(im).convert("RGB").resize((32, 32), Image.BILINEAR))
                     for im in images])
  return images, bunch.target[:300].astype(np.int32)


@pytest.fixture(scope="module")
def nearest_mean_logits(digits32):
  """A tiny real classifier: minus the squared distance to each class mean image."""
  images, labels = digits32
  flat = images.reshape(len(images), -1) / 255.0
  means = jnp.asarray(np.stack([flat[labels == k].mean(0) for k in range(10)]), jnp.float32)

  def logits_fn(x):
    features = x.reshape(x.shape[0], -1)
    return 2 * features @ means.T - jnp.sum(means ** 2, axis=1)

  return logits_fn, np.asarray(means)


def _numpy_accuracy(means, images, labels):
  flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
  distances = ((flat[:, None, :] - means[None]) ** 2).sum(-1)
  return float(np.mean(distances.argmin(-1) == labels))


def test_stage_writes_json_markdown_and_png(tmp_path, digits32, nearest_mean_logits):
  images, labels = digits32
  logits_fn, means = nearest_mean_logits
  names = ("gaussian_noise", "contrast", "elastic_transform")
  report = corruption_stage.run_corruption_stage(
      logits_fn, images, labels, tmp_path, corruptions=names, severities=(1, 3, 5), batch_size=64,
      max_examples=150, progress=False)
  on_disk = json.loads((tmp_path / "corruptions.json").read_text())
  assert on_disk == report
  assert report["num_examples"] == 150
  assert report["severities"] == [1, 3, 5]
  assert report["clean_accuracy"] == pytest.approx(_numpy_accuracy(means, images[:150], labels[:150]))
  assert list(report["results"]) == list(names)
  clean = report["clean_accuracy"]
  for name in names:
    assert set(report["results"][name]) == {"1", "3", "5"}
    for severity, accuracy in report["results"][name].items():
      assert 0 <= accuracy <= 1
      assert report["relative_drop"][name][severity] == pytest.approx((clean - accuracy) / clean)
    assert report["mean_relative_drop_by_corruption"][name] == pytest.approx(
        np.mean(list(report["relative_drop"][name].values())))
  # Contrast at severity 5 keeps 15% of the contrast: this classifier must lose accuracy.
  assert report["results"]["contrast"]["5"] < clean - 0.05
  markdown = (tmp_path / "corruptions.md").read_text()
  assert "| contrast |" in markdown and "severity 5" in markdown
  with Image.open(tmp_path / "corruption_drop.png") as plot:
    assert plot.format == "PNG" and plot.size[0] > 300


def test_stage_accuracy_equals_direct_evaluation(tmp_path, digits32, nearest_mean_logits):
  # A deterministic corruption and a batch size that does not divide N (padding must not count).
  images, labels = digits32
  logits_fn, means = nearest_mean_logits
  report = corruption_stage.run_corruption_stage(
      logits_fn, images[:100], labels[:100], tmp_path, corruptions=("fog", "pixelate"), severities=(4,),
      batch_size=48, progress=False, seed=3)
  expected = _numpy_accuracy(means, corruptions.apply("pixelate", images[:100], 4), labels[:100])
  assert report["results"]["pixelate"]["4"] == pytest.approx(expected)
  # Fog is random: each batch gets its own seed, derived from (seed, corruption, severity, start).
  batches = [corruptions.apply("fog", images[start:min(start + 48, 100)], 4,
                               seed=corruption_stage._batch_seed(3, "fog", 4, start)) for start in (0, 48, 96)]
  expected = _numpy_accuracy(means, np.concatenate(batches), labels[:100])
  assert report["results"]["fog"]["4"] == pytest.approx(expected)


def test_stage_rejects_bad_input(tmp_path, digits32, nearest_mean_logits):
  images, labels = digits32
  logits_fn, _ = nearest_mean_logits
  with pytest.raises(ValueError, match="labels"):
    corruption_stage.run_corruption_stage(logits_fn, images, labels[:10], tmp_path, progress=False)
  with pytest.raises(ValueError, match="source"):
    corruption_stage.run_corruption_stage(logits_fn, images, labels, tmp_path, source="disk", progress=False)
  with pytest.raises(ValueError, match="Unknown corruption"):
    corruption_stage.run_corruption_stage(logits_fn, images, labels, tmp_path, corruptions=("blur",),
                                          progress=False)


def test_tfds_config_names():
  assert corruption_stage.tfds_config_name("gaussian_noise", 1) == "gaussian_noise_1"
  assert corruption_stage.tfds_config_name("glass_blur", 3) == "frosted_glass_blur_3"
  assert corruption_stage.tfds_config_name("elastic_transform", 5) == "elastic_5"


def test_every_corruption_has_a_tfds_config():
  tfds = pytest.importorskip("tensorflow_datasets")
  for name in corruptions.CORRUPTIONS:
    builder = tfds.builder(f"cifar10_corrupted/{corruption_stage.tfds_config_name(name, 2)}")
    assert builder.builder_config.severity == 2


def test_tfds_missing_dataset_says_how_to_prepare(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(FileNotFoundError, match="tfds build cifar10_corrupted --config snow_2"):
    corruption_stage.load_tfds_corrupted("snow", 2, data_dir=str(tmp_path))


def test_stage_reads_tfds(tmp_path, nearest_mean_logits, digits32):
  tfds = pytest.importorskip("tensorflow_datasets")
  images, labels = digits32
  logits_fn, means = nearest_mean_logits
  with tfds.testing.mock_data(num_examples=20):
    mocked, mocked_labels = corruption_stage.load_tfds_corrupted("glass_blur", 1, data_dir=str(tmp_path))
    report = corruption_stage.run_corruption_stage(
        logits_fn, images[:30], labels[:30], tmp_path, corruptions=("glass_blur",), severities=(1,),
        source="tfds", data_dir=str(tmp_path), progress=False)
  assert mocked.shape == (20, 32, 32, 3) and mocked.dtype == np.uint8 and mocked_labels.shape == (20,)
  assert report["source"] == "tfds:cifar10_corrupted"
  assert report["num_examples"] == 30  # The clean set.
  assert report["results"]["glass_blur"]["1"] == pytest.approx(_numpy_accuracy(means, mocked, mocked_labels))

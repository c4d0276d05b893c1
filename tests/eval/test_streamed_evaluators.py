"""Every evaluator reads a streamed (TFDS, tf.data) split and gives the numbers it gives on the in-memory split."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from csl_jax import data
from csl_jax.data import tfds_source
from csl_jax.eval import batches
from csl_jax.eval import registry
from csl_jax.train import sharding


@pytest.fixture(scope="module")
def digits_tfds(tmp_path_factory):
  """sklearn digits (16x16, 1 channel) written as a prepared TFDS dataset."""
  tfds = pytest.importorskip("tensorflow_datasets")
  splits = {split: data.load("digits", split, image_size=16) for split in ("train", "test")}

  class CslDigits(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    code_path = None

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(16, 16, 1)),
          "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)])}))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(ds) for split, ds in splits.items()}

    def _generate_examples(self, ds):
      for i, (image, label) in enumerate(zip(ds.images, ds.labels)):
        yield i, {"image": image, "label": int(label)}

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  CslDigits(data_dir=data_dir).download_and_prepare()
  return data_dir


def _classifier(mesh, num_classes=10):
  rng = np.random.default_rng(0)
  w1 = jnp.asarray(rng.normal(size=(256, 32)).astype(np.float32) / 4)
  w2 = jnp.asarray(rng.normal(size=(32, num_classes)).astype(np.float32))
  features = jax.jit(lambda x: jnp.tanh(jnp.reshape(x, (x.shape[0], -1)) @ w1))
  logits = jax.jit(lambda x: features(x) @ w2)
  return registry.Classifier(features=features, logits=logits, num_classes=num_classes,
                             class_names=tuple(str(d) for d in range(10)), mesh=mesh,
                             fingerprint={"checkpoint_step": 0, "params_sha256": "test"})


def _config():
  c = quickstart.get_config("smoke")
  c.robustness.attacks = "fgsm:linf:8/255,pgd:l2:0.5:steps=3"
  c.robustness.num_examples = 50
  c.robustness.batch_size = 24  # does not divide 50: padding must not count
  c.geometry.num_examples = 0
  c.corruptions.names = "gaussian_noise,brightness"
  c.corruptions.num_examples = 100
  c.eval_batch_size = 56
  return c


def _results(train, test, tmp_path, mesh):
  classifier = _classifier(mesh)
  config = _config()
  train_features = lambda: batches.map_batches(lambda b: classifier.features(batches.to_unit_floats(b.images)),
                                               train, config.eval_batch_size, mesh=mesh)
  out = {}
  for evaluator in registry.build(config, train_ds=train, train_features=train_features, mesh=mesh):
    result = evaluator.run(classifier, test, tmp_path)
    for row in result.get("attacks", []):
      row.pop("seconds")
    out[evaluator.name] = result
  return out


def test_streamed_split_gives_the_in_memory_numbers(digits_tfds, tmp_path):
  mesh = sharding.make_mesh()
  in_memory = [tfds_source.load("csl_digits", split, data_dir=digits_tfds, stream=False) for split in ("train", "test")]
  streamed = [tfds_source.load("csl_digits", split, data_dir=digits_tfds, stream=True) for split in ("train", "test")]
  assert isinstance(streamed[1], tfds_source.StreamingDataset) and not hasattr(streamed[1], "images")
  expected = _results(*in_memory, tmp_path / "memory", mesh)
  got = _results(*streamed, tmp_path / "stream", mesh)
  assert set(got) == {"linear_eval", "robustness", "geometry", "corruptions"}
  assert got["linear_eval"]["num_test"] == 360 and got["robustness"]["num_examples"] == 50
  assert got["corruptions"]["num_examples"] == 100 and got["geometry"]["num_examples"] == 360
  for name in got:
    np.testing.assert_equal(got[name], expected[name], err_msg=name)


def test_eval_batches_cover_each_example_once_with_padding_masked(digits_tfds):
  mesh = sharding.make_mesh()
  streamed = tfds_source.load("csl_digits", "test", data_dir=digits_tfds, stream=True)
  in_memory = tfds_source.load("csl_digits", "test", data_dir=digits_tfds, stream=False)
  seen = [batches.gather(b.labels, b.mask) for b in batches.eval_batches(streamed, 50, mesh=mesh, num_examples=130)]
  assert [len(s) for s in seen] == [56, 56, 18]  # 50 rounded up to the 8 devices
  np.testing.assert_array_equal(np.concatenate(seen), in_memory.labels[:130])

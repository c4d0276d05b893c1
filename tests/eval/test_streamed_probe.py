"""The streamed linear probe (features on the fly, nothing held) gives the in-memory probe's head; the choice
between them follows linear_eval.feature_cache_gb, and without held features kNN is skipped."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from csl_jax import data
from csl_jax.eval import batches, linear, registry
from csl_jax.train import sharding

EPOCHS, BATCH = 3, 64


@pytest.fixture(scope="module")
def setup():
  mesh = sharding.make_mesh()
  train = data.load("digits", "train")[:400]  # 400 = 6 full batches of 64 per epoch, 16 left over
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(64, 24)).astype(np.float32) / 8)  # tanh not saturated: no constant features
  # A frozen "encoder" whose features are far from standardised (offsets, scales), as real features are. (A
  # feature constant up to float noise, std ~1e-6, would turn that noise into differences between the two paths.)
  scale = jnp.asarray(np.linspace(0.1, 5.0, 24).astype(np.float32))
  features_fn = jax.tree_util.Partial(
      lambda w, scale, x: jnp.tanh(jnp.reshape(x, (x.shape[0], -1)) @ w) * scale + 2.0, w, scale)
  return mesh, train, features_fn


def _common(weight_decay=1e-3):
  return dict(epochs=EPOCHS, batch_size=BATCH, lr=0.1, weight_decay=weight_decay, seed=4)


def test_streamed_probe_equals_the_in_memory_probe(setup):
  mesh, train, features_fn = setup
  features, labels = batches.map_batches(lambda b: batches.apply_to_uint8(features_fn, b.images), train, 128,
                                         mesh=mesh)
  held = linear.train_linear_head(features, labels, 10, **_common())
  streamed = linear.fit_streamed_head(features_fn, train, 10, mesh=mesh, eval_batch_size=96, **_common())
  # Same examples in the same order (epoch e: data.epoch_permutation), same steps: the same head up to float
  # rounding (features computed in other programs, statistics summed in another order). Compared as the logits
  # it gives (what the evaluators use; a weight on a nearly constant feature is large and its bias compensates).
  logits = lambda head: features @ head["kernel"] + head["bias"]
  scale = np.abs(logits(held)).max()
  assert scale > 1.0
  difference = np.abs(logits(streamed) - logits(held)).max()
  assert difference < 1e-4 * scale, (difference, scale)
  # Not a coincidence of the tolerance: another seed (another batch order) moves the logits by far more.
  other = linear.train_linear_head(features, labels, 10, **{**_common(), "seed": 5})
  assert np.abs(logits(other) - logits(held)).max() > 100 * max(difference, 1e-6 * scale)
  assert np.mean(np.argmax(logits(streamed), 1) == labels) > 0.6


def test_feature_cache_limit_picks_held_or_streamed_features_and_knn_follows(setup, tmp_path):
  mesh, train, features_fn = setup
  config = quickstart.get_config("smoke")
  config.linear_eval.epochs, config.linear_eval.batch_size = EPOCHS, BATCH
  config.linear_eval.num_train_examples = 320
  held_thunk = linear.train_features(config, features_fn, train, mesh)
  features, labels = held_thunk()
  assert features.shape == (320, 24) and held_thunk() is held_thunk()  # memoised, only the first 320
  config.linear_eval.feature_cache_gb = 320 * 24 * 4 / 2**30 * 0.99  # just below what the features need
  assert linear.train_features(config, features_fn, train, mesh)() is None

  fingerprint = {"checkpoint_step": 0, "params_sha256": "test"}
  for run in ("s", "h"):
    (tmp_path / run).mkdir()
  common = dict(num_classes=10, features_fn=features_fn, train_ds=train, mesh=mesh)
  head_streamed = linear.fit_or_load_head(config, lambda: None, tmp_path / "s", model_fingerprint=fingerprint, **common)
  head_held = linear.fit_or_load_head(config, held_thunk, tmp_path / "h", model_fingerprint=fingerprint, **common)
  logits = lambda head: features @ head["kernel"] + head["bias"]
  assert np.abs(logits(head_streamed) - logits(head_held)).max() < 1e-4 * np.abs(logits(head_held)).max()

  logits_fn = jax.tree_util.Partial(lambda f, k, b, x: f(x) @ k + b, features_fn, jnp.asarray(head_held["kernel"]),
                                    jnp.asarray(head_held["bias"]))
  classifier = registry.Classifier(features=features_fn, logits=logits_fn, num_classes=10,
                                   class_names=tuple(map(str, range(10))), mesh=mesh, fingerprint=fingerprint)
  test = data.load("digits", "test")[:100]
  with_knn = linear.LinearEvaluator(config, train_features=held_thunk, mesh=mesh).run(classifier, test, tmp_path)
  without = linear.LinearEvaluator(config, train_features=lambda: None, mesh=mesh).run(classifier, test, tmp_path)
  assert with_knn["top1"] == without["top1"] > 0.5
  assert with_knn["knn_top1"] > 0.5 and without["knn_top1"] is None

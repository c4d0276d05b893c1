"""fra31's evaluation checks: each fires on a model built to trigger it and stays quiet on a plain model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax.attacks import checks
from csl_jax.data import ArrayDataset
from csl_jax.eval import robustness
from csl_jax.train import sharding

RNG = np.random.default_rng(0)
W = jnp.asarray(RNG.normal(size=(48, 10)).astype(np.float32) * 3)
X = jnp.asarray(RNG.uniform(size=(16, 4, 4, 3)).astype(np.float32))


def linear(x):
  return jnp.reshape(x, (x.shape[0], -1)) @ W


Y = jnp.argmax(linear(X), -1)


def _names(flags):
  return sorted(f.check for f in flags)


def test_plain_model_raises_no_flag():
  assert checks.run_model_checks(linear, X, Y, num_autoattack=1) == []


def test_softmax_head_is_flagged():
  flags = checks.run_model_checks(lambda x: jax.nn.softmax(linear(x)), X, Y)
  assert _names(flags) == ["probabilities"] and "logits" in flags[0].message


def test_quantised_input_has_zero_gradients():
  quantised = lambda x: linear(jnp.round(x * 4) / 4)  # round() has zero derivative everywhere
  stopped = lambda x: linear(jax.lax.stop_gradient(x))
  for model in (quantised, stopped):
    flags = checks.run_model_checks(model, X, Y)
    assert _names(flags) == ["zero_gradient"] and "16 of 16 points" in flags[0].message


def test_randomized_model_via_the_key_is_flagged():
  def noisy(x, key):
    return linear(x + 0.05 * jax.random.normal(key, x.shape))
  assert _names(checks.run_model_checks(noisy, X, Y)) == ["randomized"]
  # A key-taking model that ignores its key is deterministic: no flag.
  assert checks.run_model_checks(lambda x, key: linear(x), X, Y) == []


def test_too_few_classes_for_dlr_and_targets():
  assert _names(checks.check_num_classes(3)) == ["num_classes"]
  assert "targeted DLR" in checks.check_num_classes(3)[0].message
  assert "only 4" in checks.check_num_classes(5)[0].message
  assert checks.check_num_classes(10) == []


def test_square_lowering_white_box_accuracy_is_flagged():
  assert checks.check_square_success({"clean": 0.9, "apgd-ce[0]": 0.5, "fab-t": 0.5, "square": 0.5}) == []
  flags = checks.check_square_success({"clean": 0.9, "apgd-ce[0]": 0.5, "fab-t": 0.5, "square": 0.4})
  assert _names(flags) == ["square_success"] and "10.00 points" in flags[0].message


@pytest.mark.slow
def test_robustness_stage_reports_masking_on_a_quantised_model(tmp_path):
  """End to end: APGD and FAB see zero gradients and mostly fail; Square does not — both checks fire."""
  images = (RNG.uniform(size=(16, 4, 4, 3)) * 255).astype(np.uint8)
  quantised = jax.jit(lambda x: linear(jnp.round(x * 8) / 8))
  labels = np.asarray(jnp.argmax(quantised(images / 255.0), -1)).astype(np.int32)
  dataset = ArrayDataset(images=images, labels=labels, class_names=[str(i) for i in range(10)])
  result = robustness.evaluate(quantised, dataset, attacks_spec="autoattack:linf:16/255", batch_size=16, seed=0,
                               mesh=sharding.make_mesh())
  found = {flag["check"] for flag in result["checks"]}
  assert {"zero_gradient", "square_success"} <= found, result["checks"]
  shares = result["attacks"][0]["broken_by_stage"]
  # Random starts alone fool a point or two; the black-box stage does most of the work here.
  assert shares["square"] > sum(v for k, v in shares.items() if k.startswith("apgd")) > -1

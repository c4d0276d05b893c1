"""Input validation, determinism, any-rank inputs and use inside jit for the gradient attacks."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax import attacks
from csl_jax.attacks import projections

RNG = np.random.default_rng(0)
W = RNG.normal(size=(48, 10)).astype(np.float32)
X = RNG.uniform(0, 1, (8, 4, 4, 3)).astype(np.float32)


def logits_fn(x):
  return jnp.reshape(x, (x.shape[0], -1)) @ W


Y = np.argmax(np.asarray(logits_fn(X)), axis=1).astype(np.int32)

ATTACKS = {
    "fgsm": attacks.fgsm,
    "pgd": functools.partial(attacks.pgd, steps=5),
    "apgd": functools.partial(attacks.apgd, n_iter=5),
    "autoattack": attacks.autoattack,
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_out_of_range_images_are_rejected(name):
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    ATTACKS[name](logits_fn, X * 255.0, Y, eps=0.1)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_mismatched_batch_is_rejected(name):
  with pytest.raises(ValueError, match="batch sizes differ"):
    ATTACKS[name](logits_fn, X, Y[:-1], eps=0.1)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd"])
def test_bad_norm_eps_and_dtype_are_rejected(name):
  with pytest.raises(ValueError, match="norm"):
    ATTACKS[name](logits_fn, X, Y, eps=0.1, norm="l3")
  with pytest.raises(ValueError, match="eps"):
    ATTACKS[name](logits_fn, X, Y, eps=0.0)
  with pytest.raises(ValueError, match="uint8"):
    ATTACKS[name](logits_fn, (X * 255).astype(np.uint8), Y, eps=0.1)
  with pytest.raises(ValueError, match="integer"):
    ATTACKS[name](logits_fn, X, Y.astype(np.float32), eps=0.1)


@pytest.mark.parametrize("name", ["pgd", "apgd"])
def test_same_key_same_result_and_key_matters(name):
  fn = functools.partial(ATTACKS[name], logits_fn, X, Y, eps=0.05, norm="l2")
  first = np.asarray(fn(key=jax.random.PRNGKey(7)))
  np.testing.assert_array_equal(first, np.asarray(fn(key=jax.random.PRNGKey(7))))
  if name == "pgd":  # APGD returns x where it fails, so only PGD's output always shows the random start
    assert not np.array_equal(first, np.asarray(fn(key=jax.random.PRNGKey(8))))


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_video_inputs_stay_in_the_threat_model(norm):
  """Any input rank: [B, T, H, W, C] clips go through unchanged code paths."""
  video = RNG.uniform(0, 1, (4, 2, 2, 4, 3)).astype(np.float32)
  labels = np.argmax(np.asarray(logits_fn(video)), axis=1).astype(np.int32)
  eps = {"linf": 0.05, "l2": 0.3, "l1": 1.0}[norm]
  for attack in (attacks.fgsm, functools.partial(attacks.pgd, steps=3), functools.partial(attacks.apgd, n_iter=3)):
    x_adv = np.asarray(attack(logits_fn, video, labels, eps=eps, norm=norm))
    assert x_adv.shape == video.shape
    assert np.all(np.asarray(projections.lp_norm(x_adv - video, norm)) <= eps * (1 + 1e-5) + 1e-6)
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_works_inside_jit():
  """Adversarial training calls PGD from a jitted step where x is a tracer (value checks are skipped)."""

  @jax.jit
  def adversarial_loss(w, x, y):
    model = lambda v: jnp.reshape(v, (v.shape[0], -1)) @ w  # noqa: E731
    x_adv = jax.lax.stop_gradient(attacks.pgd(model, x, y, eps=0.03, steps=3))
    return jnp.mean(-jax.nn.log_softmax(model(x_adv))[jnp.arange(y.shape[0]), y])

  clean = jnp.mean(-jax.nn.log_softmax(logits_fn(X))[jnp.arange(8), Y])
  assert float(adversarial_loss(W, X, Y)) > float(clean)

"""Attack entry points reject inputs that used to give silently wrong results, with a clear ValueError.

- labels outside [0, K) were counted as misclassified (pgd, fgsm, autoattack);
- a model with NaN/Inf logits on the clean batch made pgd return NaN images and AutoAttack report a
  made-up robust accuracy;
- a model output that is not [B, K] either broadcast silently ([1, K]) or failed deep inside with an
  unrelated IndexError ([B], [B, K, 1]);
- negative step sizes, non-positive radii and negative step counts.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax import attacks

K = 10
RNG = np.random.default_rng(0)
W = RNG.normal(size=(48, K)).astype(np.float32)
X = RNG.uniform(0.3, 0.7, (8, 4, 4, 3)).astype(np.float32)


def logits_fn(x):
  return jnp.reshape(x, (x.shape[0], -1)) @ W


Y = np.argmax(np.asarray(logits_fn(X)), axis=1).astype(np.int32)

ATTACKS = {
    "fgsm": attacks.fgsm,
    "pgd": functools.partial(attacks.pgd, steps=3),
    "pgd-l1": functools.partial(attacks.pgd, steps=3, norm="l1"),
    "apgd": functools.partial(attacks.apgd, n_iter=3),
    "autoattack": functools.partial(attacks.autoattack, version="rand"),
}


def _attack(name, model, x=X, y=Y, **kwargs):
  eps = 1.0 if name == "pgd-l1" else 0.05
  return ATTACKS[name](model, x, y, eps=kwargs.pop("eps", eps), **kwargs)


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("bad_label", [K, -1])
def test_labels_outside_the_classes_are_rejected(name, bad_label):
  y = Y.copy()
  y[3] = bad_label
  found = rf"found labels in \[{y.min()}, {y.max()}\]"
  with pytest.raises(ValueError, match=rf"labels must be class ids in \[0, {K}\) .*{found}"):
    _attack(name, logits_fn, y=y)


def _nan_model(x):
  return logits_fn(x) * jnp.nan


def _inf_model(x):
  return logits_fn(x).at[:, 2].set(jnp.inf)


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("model", [_nan_model, _inf_model], ids=["nan", "inf"])
def test_non_finite_clean_logits_are_rejected(name, model):
  with pytest.raises(ValueError, match="non-finite logits .* on clean inputs"):
    _attack(name, model)


def test_non_finite_logits_inside_the_threat_model_are_rejected():
  """Finite on the clean batch, NaN once a pixel passes 0.72: PGD would follow a NaN gradient."""
  def fragile(x):
    top = jnp.max(jnp.reshape(x, (x.shape[0], -1)), axis=1, keepdims=True)
    return logits_fn(x) + jnp.sqrt(0.72 - top)

  x = np.clip(X, 0.0, 0.7)
  y = np.argmax(np.asarray(fragile(x)), axis=1).astype(np.int32)
  with pytest.raises(ValueError, match="non-finite logits .* at perturbed inputs"):
    attacks.pgd(fragile, x, y, eps=0.1, steps=3)


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("bad_output", ["one_row", "vector", "trailing_axis"])
def test_logits_of_the_wrong_shape_are_rejected(name, bad_output):
  model, shape = {
      "one_row": (lambda x: logits_fn(x)[:1], (1, K)),
      "vector": (lambda x: logits_fn(x)[:, 0], (8,)),
      "trailing_axis": (lambda x: logits_fn(x)[:, :, None], (8, K, 1)),
  }[bad_output]
  n = len(X)
  with pytest.raises(ValueError, match=rf"shape \[B, K\] = \[{n}, K\].*returned shape {re_shape(shape)}"):
    _attack(name, model)


def re_shape(shape):
  return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def test_wrong_logits_shape_is_caught_inside_jit():
  """Inside a trace the value checks are skipped but the shape check still applies."""
  with pytest.raises(ValueError, match=r"returned shape \(1, 10\)"):
    jax.jit(lambda x, y: attacks.pgd(lambda v: logits_fn(v)[:1], x, y, eps=0.03, steps=2))(X, Y)


@pytest.mark.parametrize("step_size", [-0.01, float("nan"), float("inf")])
def test_negative_or_non_finite_step_size_is_rejected(step_size):
  with pytest.raises(ValueError, match="step_size must be finite and >= 0"):
    attacks.pgd(logits_fn, X, Y, eps=0.03, steps=3, step_size=step_size)


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("eps", [0.0, -0.1])
def test_non_positive_eps_is_rejected(name, eps):
  with pytest.raises(ValueError, match="eps must be finite and > 0"):
    _attack(name, logits_fn, eps=eps)


@pytest.mark.parametrize("steps", [-1, 0, 2.5])
def test_bad_step_counts_are_rejected(steps):
  with pytest.raises(ValueError, match="steps must be"):
    attacks.pgd(logits_fn, X, Y, eps=0.03, steps=steps)
  with pytest.raises(ValueError, match="n_iter must be"):
    attacks.apgd(logits_fn, X, Y, eps=0.03, n_iter=steps)


def test_valid_inputs_still_pass():
  """The checks accept the boundary cases: step_size 0, labels 0 and K − 1, a jitted model."""
  y = Y.copy()
  y[:2] = [0, K - 1]
  jitted = jax.jit(logits_fn)
  for name in ATTACKS:
    x_adv = np.asarray(_attack(name, jitted, y=y))
    assert x_adv.shape == X.shape and np.all(np.isfinite(x_adv))
  x_adv = attacks.pgd(logits_fn, X, Y, eps=0.03, steps=2, step_size=0.0, random_start=False)
  np.testing.assert_array_equal(np.asarray(x_adv), X)


def test_apgd_oscillation_replaces_rho():
  """APGD's oscillation-check ratio (ρ = 0.75 in Croce & Hein) is `oscillation`; `rho` is the Adaptive FNC
  threshold elsewhere in the library and no longer an APGD option."""
  x_adv = attacks.apgd(logits_fn, X, Y, eps=0.05, n_iter=3, oscillation=0.5)
  assert x_adv.shape == X.shape
  with pytest.raises(TypeError, match="rho"):
    attacks.apgd(logits_fn, X, Y, eps=0.05, n_iter=3, rho=0.75)
  with pytest.raises(ValueError, match="oscillation"):
    attacks.apgd(logits_fn, X, Y, eps=0.05, n_iter=3, oscillation=1.5)

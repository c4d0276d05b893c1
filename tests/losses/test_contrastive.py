"""NT-Xent, SupCon and cross-entropy against float64 numpy loops, optax, and analytic properties."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from csl_jax import losses
from csl_jax.losses import contrastive
from tests.losses import numpy_reference as ref


def _views(seed, num_images=6, dim=5):
  rng = np.random.default_rng(seed)
  # Unnormalised with varied norms: the losses must normalise themselves.
  scale = rng.uniform(0.5, 3.0, size=(num_images, 1))
  return (rng.normal(size=(num_images, dim)) * scale).astype(np.float32), rng.normal(
      size=(num_images, dim)).astype(np.float32)


def _rows(z1, z2, labels=None):
  return contrastive.anchor_rows(z1, z2, z1, z2, labels_rows=labels, labels_all=labels)


@pytest.mark.parametrize("seed,temperature", [(0, 0.5), (1, 0.1), (2, 1.0)])
def test_nt_xent_matches_numpy_reference(seed, temperature):
  z1, z2 = _views(seed)
  expected = ref.nt_xent_per_anchor(z1, z2, temperature)
  per_anchor = contrastive.nt_xent_rows(_rows(z1, z2), temperature=temperature)
  np.testing.assert_allclose(per_anchor, expected, rtol=1e-5, atol=1e-5)
  loss = jax.jit(lambda a, b: losses.nt_xent(a, b, temperature=temperature))(z1, z2)
  np.testing.assert_allclose(loss, expected.mean(), rtol=1e-5)


def test_nt_xent_matches_optax_ntxent():
  # optax.losses.ntxent(embeddings, labels) treats same-label rows as positive pairs and, per pair,
  # uses that positive plus all different-label rows as the denominator. With labels = image ids over
  # concat([z1, z2]) every anchor has exactly one positive (its other view) and 2N - 2 negatives: SimCLR.
  z1, z2 = _views(3, num_images=8, dim=7)
  ids = np.arange(8)
  expected = jax.jit(optax.losses.ntxent)(jnp.concatenate([z1, z2]), jnp.concatenate([ids, ids]), 0.2)
  np.testing.assert_allclose(jax.jit(losses.nt_xent)(z1, z2, temperature=0.2), expected, rtol=1e-5)


def test_optax_ntxent_with_class_labels_is_not_supcon():
  # With class labels optax keeps same-class views out of each other's denominators; SupCon L_out keeps
  # them in. Pinning the difference documents why supcon() does not delegate to optax.
  z1, z2 = _views(4)
  labels = np.array([0, 0, 1, 1, 2, 2])
  optax_value = optax.losses.ntxent(jnp.concatenate([z1, z2]), jnp.concatenate([labels, labels]), 0.1)
  assert abs(float(optax_value) - float(losses.supcon(z1, z2, labels, temperature=0.1))) > 1e-3


@pytest.mark.parametrize("seed,labels", [(0, [0, 0, 1, 1, 1, 2]), (1, [3, 3, 3, 3, 3, 3]), (2, [0, 1, 0, 1, 0, 1])])
def test_supcon_matches_numpy_reference(seed, labels):
  z1, z2 = _views(seed)
  labels = np.array(labels, np.int32)
  expected = ref.supcon_per_anchor(z1, z2, labels, 0.1)
  per_anchor = contrastive.supcon_rows(_rows(z1, z2, labels), temperature=0.1)
  np.testing.assert_allclose(per_anchor, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.jit(losses.supcon)(z1, z2, labels), expected.mean(), rtol=1e-5)


def test_supcon_with_distinct_labels_equals_nt_xent():
  z1, z2 = _views(5)
  np.testing.assert_allclose(losses.supcon(z1, z2, np.arange(6), temperature=0.3),
                             losses.nt_xent(z1, z2, temperature=0.3), rtol=1e-6)


def test_losses_invariant_to_swapping_views_and_permuting_images():
  z1, z2 = _views(6)
  labels = np.array([0, 1, 1, 2, 0, 2])
  order = np.random.default_rng(0).permutation(6)
  for loss_fn in (lambda a, b, y: losses.nt_xent(a, b), losses.supcon,
                  lambda a, b, y: losses.adaptive_fnc(a, b, rho=0.3, labels=y)[0],
                  lambda a, b, y: losses.fnc(a, b, top_k=2, labels=y)[0]):
    value = loss_fn(z1, z2, labels)
    np.testing.assert_allclose(loss_fn(z2, z1, labels), value, rtol=1e-5)
    np.testing.assert_allclose(loss_fn(z1[order], z2[order], labels[order]), value, rtol=1e-5)


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 4)).astype(np.float32) * 3
  labels = np.array([0, 3, 1, 1, 2])
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), -log_probs[np.arange(5), labels].mean(),
                             rtol=1e-6)


@jax.jit
def _all_losses(z1, z2, labels):
  return (losses.nt_xent(z1, z2) + losses.supcon(z1, z2, labels)
          + losses.adaptive_fnc(z1, z2, rho=0.5, labels=labels)[0]
          + losses.fnc(z1, z2, top_k=2, labels=labels)[0])


_all_losses_and_grads = jax.jit(jax.value_and_grad(_all_losses, argnums=(0, 1)))


def test_gradients_finite_for_identical_embeddings():
  # Every view identical: all similarities are 1, Adaptive FNC cancels every negative (FNC its top 2), so
  # denominators collapse to the positive alone. Nothing may become NaN/inf, in value or gradient.
  z = np.tile(np.array([[0.3, -1.2, 0.5, 2.0]], np.float32), (4, 1))
  labels = np.array([0, 0, 1, 1])
  value, grads = _all_losses_and_grads(z, z, labels)
  chex.assert_tree_all_finite((value, grads))
  np.testing.assert_allclose(losses.nt_xent(z, z), np.log(2 * 4 - 1), rtol=1e-6)
  np.testing.assert_allclose(losses.adaptive_fnc(z, z, rho=0.5)[0], 0.0, atol=1e-6)
  # A zero vector has no direction; normalisation must still not divide by zero.
  chex.assert_tree_all_finite(_all_losses_and_grads(np.zeros_like(z), z, labels))


def test_bf16_inputs_give_f32_loss_and_finite_gradients():
  z1, z2 = _views(7)
  labels = np.array([0, 0, 1, 1, 2, 2])
  z1_bf16, z2_bf16 = jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16)
  value, grads = _all_losses_and_grads(z1_bf16, z2_bf16, labels)
  assert value.dtype == jnp.float32
  chex.assert_tree_all_finite((value, grads))
  chex.assert_trees_all_equal_dtypes(grads, (z1_bf16, z2_bf16))
  # f32 accumulation: the bf16 run equals the f32 run on the same (bf16-rounded) numbers.
  as_f32 = (np.asarray(z1_bf16, np.float32), np.asarray(z2_bf16, np.float32))
  np.testing.assert_allclose(value, _all_losses(*as_f32, labels), rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
  z1, z2 = _views(8)
  with pytest.raises(ValueError, match=r"same shape \[N, D\]"):
    losses.nt_xent(z1, z2[:5])
  with pytest.raises(ValueError, match="integer labels of shape"):
    losses.supcon(z1, z2, np.zeros(5, np.int32))
  with pytest.raises(ValueError, match="temperature must be > 0"):
    losses.nt_xent(z1, z2, temperature=0.0)
  with pytest.raises(ValueError, match="integer class ids"):
    losses.cross_entropy(z1, np.zeros(6, np.float32))

"""Degenerate inputs raise clear errors (or, when traced, give NaN) instead of plausible-looking numbers.

Before: N = 1 returned 0.0, N = 0 NaN, D = 0 a number; cross_entropy with label 12 (of 10 classes) NaN and
with -1 a finite loss; rho = NaN silently disabled cancellation; fnc accepted top_k = 0 and top_k > 2N - 2.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax import losses

_LOSSES = {
    "nt_xent": lambda z1, z2, labels: losses.nt_xent(z1, z2),
    "supcon": losses.supcon,
    "adaptive_fnc": lambda z1, z2, labels: losses.adaptive_fnc(z1, z2, labels=labels),
    "fnc": lambda z1, z2, labels: losses.fnc(z1, z2, top_k=1, labels=labels),
}


def _views(num_images, dim=4, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(num_images, dim)).astype(np.float32),
          rng.normal(size=(num_images, dim)).astype(np.float32))


@pytest.mark.parametrize("name", sorted(_LOSSES))
def test_single_image_batch_is_rejected(name):
  z1, z2 = _views(1)
  with pytest.raises(ValueError, match=r"needs N >= 2 images .*\(N = 1 has none\); got z1 \(1, 4\) and z2 \(1, 4\)"):
    _LOSSES[name](z1, z2, np.zeros(1, np.int32))


def test_single_image_batch_is_rejected_under_jit():
  z1, z2 = _views(1)
  with pytest.raises(ValueError, match=r"nt_xent: a contrastive loss needs N >= 2 images"):
    jax.jit(losses.nt_xent)(z1, z2)


def test_empty_batch_is_rejected():
  z1, z2 = _views(0)
  with pytest.raises(ValueError, match=r"needs N >= 2 images .*got z1 \(0, 4\) and z2 \(0, 4\)"):
    losses.nt_xent(z1, z2)


def test_zero_dimensional_embeddings_are_rejected():
  z1, z2 = _views(4, dim=0)
  with pytest.raises(ValueError, match=r"adaptive_fnc: embeddings have dimension D = 0 \(z1 \(4, 0\), z2 \(4, 0\)\)"):
    losses.adaptive_fnc(z1, z2)


def test_sharded_loss_rejects_single_image_batch():
  z1, z2 = _views(1)
  sharded = losses.make_sharded_loss("nt_xent", jax.make_mesh((1,), ("data",), devices=jax.devices()[:1]))
  with pytest.raises(ValueError, match=r"sharded nt_xent: a contrastive loss needs N >= 2 images"):
    sharded(z1, z2)


def test_cross_entropy_rejects_label_at_or_above_num_classes():
  logits = np.zeros((4, 10), np.float32)
  with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 10\) .*out-of-range values \[12\] at 1 of 4"):
    losses.cross_entropy(logits, np.array([0, 12, 3, 9]))


def test_cross_entropy_rejects_negative_label():
  logits = np.zeros((4, 10), np.float32)
  with pytest.raises(ValueError, match=r"out-of-range values \[-1, 10\] at 3 of 4"):
    losses.cross_entropy(logits, jnp.array([-1, 10, 3, -1]))


@pytest.mark.parametrize("bad_label", [12, -1])
def test_cross_entropy_traced_out_of_range_label_gives_nan(bad_label):
  logits = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
  value_and_grad = jax.jit(jax.value_and_grad(losses.cross_entropy))
  good = np.array([0, 5, 3, 9])
  value, grads = value_and_grad(logits, good)
  np.testing.assert_allclose(value, losses.cross_entropy(logits, good), rtol=1e-6)
  bad = good.copy()
  bad[1] = bad_label
  value, grads = value_and_grad(logits, bad)
  assert np.isnan(value), "an out-of-range traced label must make the loss NaN for the NaN guard"
  chex.assert_tree_all_finite(grads)


def test_cross_entropy_rejects_empty_batch():
  with pytest.raises(ValueError, match=r"need B >= 1 examples and C >= 1 classes; got logits \(0, 10\)"):
    losses.cross_entropy(np.zeros((0, 10), np.float32), np.zeros(0, np.int32))


def test_nan_rho_is_rejected():
  z1, z2 = _views(4)
  with pytest.raises(ValueError, match=r"rho is NaN: every 'similarity > rho' test would be False"):
    losses.adaptive_fnc(z1, z2, rho=float("nan"))


def test_traced_nan_rho_gives_nan_loss():
  z1, z2 = _views(4)
  value, _ = jax.jit(lambda a, b, rho: losses.adaptive_fnc(a, b, rho=rho))(z1, z2, jnp.float32(jnp.nan))
  assert np.isnan(value)
  mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
  sharded = losses.make_sharded_loss("adaptive_fnc", mesh)
  value, _ = jax.jit(lambda a, b, rho: sharded(a, b, rho=rho))(z1, z2, jnp.float32(jnp.nan))
  assert np.isnan(value)


def test_nan_fnc_threshold_is_rejected():
  z1, z2 = _views(4)
  with pytest.raises(ValueError, match=r"threshold is NaN"):
    losses.fnc(z1, z2, threshold=float("nan"), top_k=1)


def test_fnc_rejects_top_k_zero():
  z1, z2 = _views(6)
  with pytest.raises(ValueError, match=r"top_k must be a Python int >= 1 .*got 0"):
    losses.fnc(z1, z2, top_k=0)


def test_fnc_rejects_top_k_above_number_of_negatives():
  z1, z2 = _views(6)
  losses.fnc(z1, z2, top_k=10)  # 2N - 2 = 10 negatives per anchor: the largest valid top_k
  with pytest.raises(ValueError, match=r"top_k=11 exceeds the 10 negatives per anchor of a batch of N=6 images"):
    losses.fnc(z1, z2, top_k=11)


def test_sharded_fnc_checks_top_k_at_build_and_call():
  z1, z2 = _views(4)
  mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
  with pytest.raises(ValueError, match=r"top_k must be a Python int >= 1 .*got 0"):
    losses.make_sharded_loss("fnc", mesh, top_k=0)
  sharded = losses.make_sharded_loss("fnc", mesh)  # default top_k = 10 > 2N - 2 = 6 for this batch
  with pytest.raises(ValueError, match=r"top_k=10 exceeds the 6 negatives per anchor of a batch of N=4 images"):
    sharded(z1, z2)

"""IFND's elimination loss (losses.ifnd) against a plain-numpy reference, and its global-batch version on 8 devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax import losses
from csl_jax.train import sharding
from tests.losses import numpy_reference as ref


def _inputs(n=12, dim=5, levels=2, seed=0):
  rng = np.random.default_rng(seed)
  z1, z2 = (rng.normal(size=(n, dim)).astype(np.float32) for _ in range(2))
  pseudo = rng.integers(-1, 3, size=(n, levels)).astype(np.int32)
  labels = rng.integers(0, 3, size=n).astype(np.int32)
  return z1, z2, pseudo, labels


def eliminated_pairs(pseudo):
  """(anchor view, view) negatives whose images share a label >= 0 at some level, by explicit loops."""
  pseudo = np.asarray(pseudo).reshape(len(pseudo), -1)
  n = len(pseudo)
  removed = set()
  for i in range(2 * n):
    for k in range(2 * n):
      a, b = i % n, k % n
      if a != b and any(pseudo[a, l] >= 0 and pseudo[a, l] == pseudo[b, l] for l in range(pseudo.shape[1])):
        removed.add((i, k))
  return removed


@pytest.mark.parametrize("levels", [1, 2])
def test_ifnd_matches_numpy_reference(levels):
  z1, z2, pseudo, labels = _inputs(levels=levels)
  pseudo_in = pseudo[:, 0] if levels == 1 else pseudo
  loss, stats = losses.ifnd(jnp.asarray(z1), jnp.asarray(z2), jnp.asarray(pseudo_in), temperature=0.3,
                            labels=jnp.asarray(labels))
  removed = eliminated_pairs(pseudo)
  assert removed, "the inputs must eliminate something"
  np.testing.assert_allclose(loss, ref.nt_xent_per_anchor(z1, z2, 0.3, removed).mean(), rtol=1e-5)
  n = len(z1)
  true = {(i, k) for i, k in removed if labels[i % n] == labels[k % n]}
  same_class = {(i, k) for i in range(2 * n) for k in range(2 * n)
                if i % n != k % n and labels[i % n] == labels[k % n]}
  assert float(stats["num_cancelled"]) == len(removed)
  assert float(stats["cancel_precision"]) == pytest.approx(len(true) / len(removed))
  assert float(stats["cancel_recall"]) == pytest.approx(len(true) / len(same_class))


def test_unassigned_pseudo_labels_give_nt_xent_and_positive_pair_is_kept():
  z1, z2, _, _ = _inputs()
  unassigned = -np.ones((len(z1), 3), np.int32)
  loss, stats = losses.ifnd(z1, z2, unassigned, temperature=0.5)
  np.testing.assert_allclose(loss, losses.nt_xent(z1, z2, temperature=0.5), rtol=1e-6)
  assert float(stats["num_cancelled"]) == 0
  everything_alike = np.zeros((len(z1), 1), np.int32)  # every other image is a false negative; the positive stays
  loss, stats = losses.ifnd(z1, z2, everything_alike, temperature=0.5)
  assert float(stats["num_cancelled"]) == 2 * len(z1) * (2 * len(z1) - 2)
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)  # only the positive is left in each denominator


def test_sharded_ifnd_equals_single_device_value_gradient_and_stats():
  mesh = sharding.make_mesh()
  z1, z2, pseudo, labels = (jnp.asarray(a) for a in _inputs(n=16, levels=2, seed=1))
  sharded = losses.make_sharded_loss("ifnd", mesh, temperature=0.2)

  def value_and_grad(fn):
    return jax.jit(jax.value_and_grad(lambda a, b: fn(a, b)[0], argnums=(0, 1)))(z1, z2)

  got = value_and_grad(lambda a, b: sharded(a, b, labels, pseudo_labels=pseudo))
  want = value_and_grad(lambda a, b: losses.ifnd(a, b, pseudo, temperature=0.2, labels=labels))
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for g, w in zip(got[1], want[1]):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
  stats = jax.jit(lambda a, b: sharded(a, b, labels, pseudo_labels=pseudo)[1])(z1, z2)
  expected = losses.ifnd(z1, z2, pseudo, temperature=0.2, labels=labels)[1]
  assert set(stats) == set(expected)
  for key in stats:
    np.testing.assert_allclose(stats[key], expected[key], rtol=1e-5, err_msg=key)
  with pytest.raises(ValueError, match="pseudo_labels"):
    sharded(z1, z2, labels)


@pytest.mark.parametrize("bad", [np.zeros((5,), np.int32), np.zeros((12, 2), np.float32), np.zeros((12, 0), np.int32)])
def test_bad_pseudo_labels_raise(bad):
  z1, z2, _, _ = _inputs()
  with pytest.raises(ValueError, match="pseudo_labels"):
    losses.ifnd(z1, z2, bad)

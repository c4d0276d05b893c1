"""Adaptive FNC (Eq. 4) and FNC: which negatives get cancelled, the resulting losses, and the stats."""
import inspect

import chex
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax import losses
from csl_jax.losses import contrastive
from csl_jax.losses.cancellation import adaptive_fnc_mask
from csl_jax.losses.cancellation import adaptive_fnc_rows
from csl_jax.losses.cancellation import fnc_mask
from csl_jax.losses.cancellation import fnc_rows
from tests.losses import numpy_reference as ref


def _random_views(seed, num_images=6, dim=5):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(num_images, dim)).astype(np.float32), rng.normal(size=(num_images, dim)).astype(np.float32)


def _rows(z1, z2, labels=None):
  return contrastive.anchor_rows(z1, z2, z1, z2, labels_rows=labels, labels_all=labels)


def _mask_pairs(mask):
  """Set of (anchor, view) index pairs where a bool[2N, 2N] mask is True."""
  return {(int(i), int(k)) for i, k in zip(*np.nonzero(np.asarray(mask)))}


def test_adaptive_fnc_with_rho_above_one_is_nt_xent():
  z1, z2 = _random_views(0)
  labels = np.array([0, 1, 0, 1, 2, 2])

  def both(a, b):
    value, stats = losses.adaptive_fnc(a, b, temperature=0.2, rho=1.01, labels=labels)
    return value, (losses.nt_xent(a, b, temperature=0.2), stats)

  (value, (nt_xent_value, stats)), grads = jax.value_and_grad(both, argnums=(0, 1), has_aux=True)(z1, z2)
  nt_xent_grads = jax.grad(lambda a, b: losses.nt_xent(a, b, temperature=0.2), argnums=(0, 1))(z1, z2)
  np.testing.assert_array_equal(value, nt_xent_value)
  chex.assert_trees_all_close(grads, nt_xent_grads, rtol=1e-6)
  assert stats["num_cancelled"] == 0 and stats["cancel_precision"] == 0 and stats["cancel_recall"] == 0


def _planted_pair_views():
  """Random 32-d views (|cos| well below 0.8) plus image 3 planted as a near-copy of image 0's first view."""
  z1, z2 = _random_views(1, num_images=6, dim=32)
  z1[3] = z1[0] + 0.05 * np.random.default_rng(2).normal(size=32)
  return z1, z2


def test_planted_pair_leaves_only_its_denominators():
  z1, z2 = _planted_pair_views()
  planted = {(0, 3), (3, 0)}  # view 1 of image 0 <-> view 1 of image 3, in both anchors' rows
  assert ref.cancelled_pairs(z1, z2, threshold=0.8) == planted, "test construction: only the planted pair > rho"

  rows = _rows(z1, z2)
  assert _mask_pairs(adaptive_fnc_mask(rows, 0.8)) == planted
  per_anchor, counts = adaptive_fnc_rows(rows, temperature=0.5, rho=0.8)
  np.testing.assert_allclose(per_anchor, ref.nt_xent_per_anchor(z1, z2, 0.5, removed=planted), rtol=1e-5)
  # Every other anchor keeps its NT-Xent loss exactly; the two planted anchors lose a denominator term.
  nt_xent = contrastive.nt_xent_rows(rows, temperature=0.5)
  others = [i for i in range(12) if i not in (0, 3)]
  np.testing.assert_array_equal(np.asarray(per_anchor)[others], np.asarray(nt_xent)[others])
  assert np.all(np.asarray(per_anchor)[[0, 3]] < np.asarray(nt_xent)[[0, 3]])
  assert counts["num_cancelled"] == 2


def test_precision_and_recall_on_a_constructed_batch():
  # Orthogonal directions: all similarities are 0 except the two planted near-copies (cos = 0.995):
  # image 1 ~ image 0 (same class 0: a true false negative) and image 3 ~ image 2 (classes 1 and 2: a
  # wrong detection). Images 0 and 1 are the only same-class images: each of their 4 views has 2
  # same-class negatives -> 8. Cancelled: 4 pairs, 2 of them true -> precision 1/2, recall 2/8.
  eye = np.eye(16, dtype=np.float32)
  z1 = np.stack([eye[0], eye[0] + 0.1 * eye[9], eye[2], eye[2] + 0.1 * eye[10]])
  z2 = eye[4:8]
  labels = np.array([0, 0, 1, 2])
  _, stats = jax.jit(lambda a, b, y: losses.adaptive_fnc(a, b, rho=0.9, labels=y))(z1, z2, labels)
  expected = {"num_cancelled": 4, "num_true_cancelled": 2, "num_same_class_negatives": 8,
              "cancelled_per_anchor": 0.5, "cancel_precision": 0.5, "cancel_recall": 0.25}
  assert set(stats) == set(expected)
  for name, value in expected.items():
    assert stats[name].dtype == jnp.float32
    np.testing.assert_allclose(stats[name], value, err_msg=name)
  # Without labels only the label-free stats exist.
  _, unlabelled = losses.adaptive_fnc(z1, z2, rho=0.9)
  assert set(unlabelled) == {"num_cancelled", "cancelled_per_anchor"}


def test_zero_over_zero_stats_are_zero():
  z1, z2 = _random_views(3, num_images=4)
  _, stats = losses.adaptive_fnc(z1, z2, rho=1.5, labels=np.arange(4))
  assert stats["num_cancelled"] == 0 and stats["num_same_class_negatives"] == 0
  assert stats["cancel_precision"] == 0 and stats["cancel_recall"] == 0


@pytest.mark.parametrize("threshold,top_k", [(2.0, 3), (0.3, 1), (0.3, 3), (0.0, 10), (-2.0, 3)])
def test_fnc_cancels_top_k_negatives_above_threshold(threshold, top_k):
  z1, z2 = _random_views(4)
  expected = ref.cancelled_pairs(z1, z2, threshold=threshold, top_k=top_k)
  rows = _rows(z1, z2)
  assert _mask_pairs(fnc_mask(rows, threshold=threshold, top_k=top_k)) == expected
  per_anchor, counts = fnc_rows(rows, temperature=0.5, threshold=threshold, top_k=top_k)
  np.testing.assert_allclose(per_anchor, ref.nt_xent_per_anchor(z1, z2, 0.5, removed=expected), rtol=1e-5)
  assert counts["num_cancelled"] == len(expected)
  if threshold > 1:
    assert not expected
  if threshold < -1:
    assert len(expected) == 12 * top_k


def _or_rule_pairs(z1, z2, *, threshold, top_k):
  """The rule fnc_mask used to implement: above threshold OR among the top_k (kept to show the tests tell)."""
  return (ref.cancelled_pairs(z1, z2, threshold=threshold)
          | ref.cancelled_pairs(z1, z2, threshold=-2.0, top_k=top_k))


def _planted_and_or_views():
  """Orthogonal views except three near-copies of e0 (images 0, 1, 2) and a loose pair e3 ~ e4 (images 3, 4).

  Cosines between first views (threshold 0.7, top_k 1): image 0 vs 2: 0.981, 0 vs 1: 0.781, 1 vs 2: 0.766
  (all above threshold), 3 vs 4: 0.555 (the top-1 negative of anchors 3 and 4, below threshold). All second
  views and everything else are orthogonal (cosine 0).
  """
  eye = np.eye(16, dtype=np.float32)
  z1 = np.stack([eye[0], eye[0] + 0.8 * eye[1], eye[0] + 0.2 * eye[2], eye[3], eye[3] + 1.5 * eye[4]])
  return z1, eye[8:13]


def test_fnc_cancels_top_k_and_threshold_not_either():
  z1, z2 = _planted_and_or_views()
  rows = _rows(z1, z2)
  cancelled = _mask_pairs(fnc_mask(rows, threshold=0.7, top_k=1))
  # Anchor 0: its top-1 negative (image 2, 0.981) goes; image 1 (0.781 > 0.7, but 2nd) stays.
  # Anchors 1, 2: their top-1 (image 0) goes; the other above-threshold copy stays.
  # Anchors 3, 4: top-1 at 0.555 < 0.7 stays; the orthogonal second views (anchors 5..9) cancel nothing.
  assert cancelled == {(0, 2), (1, 0), (2, 0)}
  assert cancelled == ref.cancelled_pairs(z1, z2, threshold=0.7, top_k=1)
  old_rule = _or_rule_pairs(z1, z2, threshold=0.7, top_k=1)
  assert {(0, 1), (1, 2), (2, 1), (3, 4), (4, 3)} <= old_rule - cancelled, "test construction: rules must differ"
  per_anchor, counts = fnc_rows(rows, temperature=0.5, threshold=0.7, top_k=1)
  assert counts["num_cancelled"] == 3
  np.testing.assert_allclose(per_anchor, ref.nt_xent_per_anchor(z1, z2, 0.5, removed=cancelled), rtol=1e-5)
  nt_xent = contrastive.nt_xent_rows(rows, temperature=0.5)
  np.testing.assert_array_equal(np.asarray(per_anchor)[3:], np.asarray(nt_xent)[3:])


def test_fnc_defaults_are_the_reference_flags():
  # google-research/fnc run.py: fn_topk = 10, fn_threshold = 0.7.
  parameters = inspect.signature(losses.fnc).parameters
  assert parameters["top_k"].default == 10 and parameters["threshold"].default == 0.7


def test_fnc_with_all_negatives_in_top_k_is_adaptive_fnc_at_the_same_threshold():
  z1, z2 = _random_views(5)
  fnc_value, fnc_stats = losses.fnc(z1, z2, threshold=0.4, top_k=2 * 6 - 2)
  adaptive_value, adaptive_stats = losses.adaptive_fnc(z1, z2, rho=0.4)
  np.testing.assert_array_equal(fnc_value, adaptive_value)
  chex.assert_trees_all_equal(fnc_stats, adaptive_stats)
  assert fnc_stats["num_cancelled"] > 0


def test_positive_pair_is_never_cancelled_even_at_similarity_one():
  z1, _ = _random_views(6, num_images=4)
  rows = _rows(z1, z1)  # second view == first view: every positive pair has cosine 1
  pairs = {(i, (i + 4) % 8) for i in range(8)}
  for mask in (fnc_mask(rows, threshold=-2.0, top_k=3), fnc_mask(rows, threshold=0.0, top_k=7),
               adaptive_fnc_mask(rows, -2.0)):
    assert not _mask_pairs(mask) & pairs
    assert not np.any(np.asarray(mask) & np.asarray(rows.is_self))
  # Everything but the positive cancelled: each anchor's softmax has the positive alone -> loss 0.
  np.testing.assert_allclose(losses.adaptive_fnc(z1, z1, rho=-2.0)[0], 0.0, atol=1e-6)
  value, stats = losses.fnc(z1, z1, threshold=-2.0, top_k=6)  # all 6 negatives of each anchor
  np.testing.assert_allclose(value, 0.0, atol=1e-6)
  assert stats["num_cancelled"] == 8 * 6


_jitted_adaptive_rows = jax.jit(lambda a, b, rho: adaptive_fnc_rows(_rows(a, b), temperature=0.5, rho=rho))


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), rho=st.floats(-1.0, 1.1))
def test_adaptive_fnc_matches_reference_for_any_rho(seed, rho):
  z1, z2 = _random_views(seed, num_images=5, dim=3)
  removed = ref.cancelled_pairs(z1, z2, threshold=rho)
  similarity = ref.cosine_matrix(z1, z2)
  # Skip draws where a similarity sits within f32 rounding of rho: either decision would be right.
  hypothesis.assume(np.min(np.abs(similarity - rho)) > 1e-5)
  per_anchor, counts = _jitted_adaptive_rows(z1, z2, np.float32(rho))
  np.testing.assert_allclose(per_anchor, ref.nt_xent_per_anchor(z1, z2, 0.5, removed=removed), rtol=1e-4,
                             atol=1e-5)
  assert counts["num_cancelled"] == len(removed)


def test_rho_can_be_traced():
  z1, z2 = _random_views(7)
  jitted = jax.jit(lambda a, b, rho: losses.adaptive_fnc(a, b, rho=rho))
  for rho in (0.2, 0.5, 1.1):
    chex.assert_trees_all_close(jitted(z1, z2, jnp.float32(rho)), losses.adaptive_fnc(z1, z2, rho=rho), rtol=1e-6)


def test_bad_hyper_parameters_raise_clear_errors():
  z1, z2 = _random_views(8)
  with pytest.raises(ValueError, match="rho must be a scalar"):
    losses.adaptive_fnc(z1, z2, rho=np.array([0.5, 0.6]))
  with pytest.raises(ValueError, match=r"top_k must be a Python int >= 1"):
    losses.fnc(z1, z2, top_k=-1)
  with pytest.raises(ValueError, match=r"top_k must be a Python int >= 1"):
    losses.fnc(z1, z2, top_k=2.0)

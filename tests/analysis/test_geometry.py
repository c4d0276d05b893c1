"""Class-separation, alignment and uniformity against closed forms and float64 numpy brute force."""
import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from csl_jax.analysis import geometry


def _brute_force(features, labels, num_classes, normalize=True):
  """float64 reference: full N×N distance matrix, per-class intra means averaged over classes."""
  x = np.asarray(features, np.float64)
  if normalize:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
  dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
  matrix = np.full((num_classes, num_classes), np.nan)
  for a in range(num_classes):
    for b in range(num_classes):
      block = dist[np.ix_(labels == a, labels == b)]
      if a == b:
        n = block.shape[0]
        if n >= 2:
          matrix[a, a] = block[~np.eye(n, dtype=bool)].mean()
      elif block.size:
        matrix[a, b] = block.mean()
  different = labels[:, None] != labels[None, :]
  inter = dist[different].mean()
  intra = np.nanmean(np.diag(matrix))
  return {"inter_class": inter, "intra_class": intra, "ratio": inter / intra, "class_distance_matrix": matrix}


def _simplex_points(class_sizes, betas, seed=0):
  """x_i = α_a e_a + β_a g_i (α_a² + β_a² = 1, e_a and g_i orthonormal), randomly rotated.

  Closed form: same class a → d = β_a √2; different classes → d = √(α_a² + β_a² + α_b² + β_b²) = √2.
  """
  num_classes, n = len(class_sizes), sum(class_sizes)
  labels = np.repeat(np.arange(num_classes), class_sizes)
  betas = np.asarray(betas, np.float64)
  alphas = np.sqrt(1 - betas ** 2)
  x = np.zeros((n, num_classes + n))
  x[np.arange(n), labels] = alphas[labels]
  x[np.arange(n), num_classes + np.arange(n)] = betas[labels]
  rotation, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(num_classes + n,) * 2))
  return (x @ rotation).astype(np.float32), labels


@pytest.mark.parametrize("block_size", [1024, 37])
def test_simplex_configuration_matches_closed_form(block_size):
  class_sizes, betas = [40, 25, 60, 11], [0.3, 0.5, 0.2, 0.8]
  features, labels = _simplex_points(class_sizes, betas)
  result = geometry.class_distances(features, labels, 4, block_size=block_size)
  expected_intra = np.sqrt(2) * np.asarray(betas)
  np.testing.assert_allclose(result["intra_class_per_class"], expected_intra, rtol=2e-4)
  # Per-class averaging: the unweighted mean of the class values, not a pooled mean over pairs.
  np.testing.assert_allclose(result["intra_class"], expected_intra.mean(), rtol=2e-4)
  np.testing.assert_allclose(result["inter_class"], np.sqrt(2), rtol=2e-4)
  np.testing.assert_allclose(result["ratio"], 1 / np.mean(betas), rtol=5e-4)
  expected_matrix = np.full((4, 4), np.sqrt(2))
  np.fill_diagonal(expected_matrix, expected_intra)
  np.testing.assert_allclose(result["class_distance_matrix"], expected_matrix, rtol=2e-4)


def test_raw_distances_scale_and_normalised_ones_do_not():
  features, labels = _simplex_points([30, 30, 30], [0.4, 0.6, 0.5], seed=1)
  scale = 3.5
  raw = geometry.class_distances(scale * features, labels, 3, normalize=False)
  unit = geometry.class_distances(scale * features, labels, 3, normalize=True)
  np.testing.assert_allclose(raw["inter_class"], scale * np.sqrt(2), rtol=2e-4)
  np.testing.assert_allclose(raw["intra_class"], scale * np.sqrt(2) * 0.5, rtol=2e-4)
  np.testing.assert_allclose(unit["inter_class"], np.sqrt(2), rtol=2e-4)


@pytest.mark.parametrize("normalize", [True, False])
def test_blocked_equals_unblocked_equals_float64_brute_force(normalize):
  rng = np.random.default_rng(0)
  centers = 2.0 * rng.normal(size=(5, 12))
  labels = rng.integers(0, 5, size=203)
  features = (centers[labels] + rng.normal(size=(203, 12)) + 0.5).astype(np.float32)
  expected = _brute_force(features, labels, 5, normalize)
  blocked = geometry.class_distances(features, labels, 5, normalize=normalize, block_size=64)  # 64 ∤ 203
  whole = geometry.class_distances(features, labels, 5, normalize=normalize, block_size=4096)
  for result in (blocked, whole):
    for key in ("inter_class", "intra_class", "ratio"):
      np.testing.assert_allclose(result[key], expected[key], rtol=1e-4, err_msg=key)
    np.testing.assert_allclose(result["class_distance_matrix"], expected["class_distance_matrix"], rtol=1e-4)
  np.testing.assert_allclose(blocked["class_distance_matrix"], whole["class_distance_matrix"], rtol=1e-5)


def test_singleton_and_empty_classes_are_left_out_of_the_intra_mean():
  rng = np.random.default_rng(3)
  labels = np.array([0, 0, 0, 1, 2, 2, 2, 2])  # class 1 has one example, class 3 none.
  features = rng.normal(size=(8, 6)).astype(np.float32)
  result = geometry.class_distances(features, labels, 4, block_size=3)
  expected = _brute_force(features, labels, 4)
  assert np.isnan(result["intra_class_per_class"][1]) and np.isnan(result["intra_class_per_class"][3])
  np.testing.assert_allclose(result["intra_class"], expected["intra_class"], rtol=1e-4)
  np.testing.assert_allclose(result["inter_class"], expected["inter_class"], rtol=1e-4)


def _numpy_uniformity(x, t=2.0):
  x = np.asarray(x, np.float64)
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  sq = ((x[:, None] - x[None]) ** 2).sum(-1)
  off = ~np.eye(len(x), dtype=bool)
  return np.log(np.exp(-t * sq[off]).mean())


def _numpy_alignment(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  return ((a - b) ** 2).sum(-1).mean()


@hypothesis.settings(max_examples=5, deadline=None)
@hypothesis.given(n=st.integers(2, 70), dim=st.integers(2, 9), block_size=st.integers(1, 80),
                  seed=st.integers(0, 2 ** 16))
def test_uniformity_and_alignment_match_numpy(n, dim, block_size, seed):
  rng = np.random.default_rng(seed)
  view1 = rng.normal(size=(n, dim)).astype(np.float32)
  view2 = (view1 + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)
  np.testing.assert_allclose(geometry.uniformity(view1, block_size=block_size), _numpy_uniformity(view1),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(geometry.alignment(view1, view2), _numpy_alignment(view1, view2), rtol=1e-4, atol=1e-6)


def test_uniformity_closed_forms():
  # Two antipodal points: ‖f − g‖² = 4, so uniformity = log exp(−2·4) = −8.
  np.testing.assert_allclose(geometry.uniformity(np.array([[1.0, 0.0], [-3.0, 0.0]])), -8.0, rtol=1e-5)
  # Regular simplex of k points on the sphere: ‖f − g‖² = 2k / (k − 1) for every pair.
  k = 5
  simplex = np.eye(k) - 1.0 / k
  np.testing.assert_allclose(geometry.uniformity(simplex), -2.0 * 2 * k / (k - 1), rtol=1e-5)
  np.testing.assert_allclose(geometry.alignment(simplex, 2.0 * simplex), 0.0, atol=1e-10)


def test_bad_inputs_raise_actionable_errors():
  features = np.zeros((4, 3), np.float32) + 1
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
    geometry.class_distances(features, np.array([0, 1, 2, 0]), 2)
  with pytest.raises(ValueError, match="int\\[4\\]"):
    geometry.class_distances(features, np.array([0, 1, 0]), 2)
  with pytest.raises(ValueError, match="same shape"):
    geometry.alignment(features, features[:3])
  with pytest.raises(ValueError, match="NaN"):
    geometry.uniformity(np.full((3, 2), np.nan))

"""The geometry stage writes the contract's files with numbers that agree with the library functions."""
import json

import numpy as np
import pytest

from csl_jax.analysis import geometry
from csl_jax.analysis import geometry_stage
from csl_jax.analysis import tsne


def _clusters(n=240, dim=16, num_classes=4, seed=0):
  rng = np.random.default_rng(seed)
  centers = 6.0 * rng.normal(size=(num_classes, dim))
  labels = rng.integers(0, num_classes, size=n)
  return (centers[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def test_stage_outputs(tmp_path):
  features, labels = _clusters()
  view2 = features + 0.1 * np.random.default_rng(1).normal(size=features.shape).astype(np.float32)
  names = ["a", "b", "c", "d"]
  result = geometry_stage.run_geometry_stage(features, labels, names, tmp_path / "run", features_view2=view2,
                                             tsne_max_points=150, seed=3, block_size=100,
                                             tsne_threads=1)
  run = tmp_path / "run"
  on_disk = json.loads((run / "geometry.json").read_text())
  assert on_disk == result
  expected = geometry.class_distances(features, labels, 4)
  for key in ("inter_class", "intra_class", "ratio"):
    assert on_disk[key] == pytest.approx(expected[key], rel=1e-6)
  np.testing.assert_allclose(on_disk["class_distance_matrix"], expected["class_distance_matrix"], rtol=1e-6)
  assert on_disk["uniformity"] == pytest.approx(geometry.uniformity(features), rel=1e-5)
  assert on_disk["alignment"] == pytest.approx(geometry.alignment(features, view2), rel=1e-6)
  assert on_disk["num_examples"] == 240 and on_disk["ratio"] > 1.5  # well-separated clusters.

  embedding = tsne.load_tsne(run / "tsne.npz")
  assert embedding["points"].shape == (150, 2) and embedding["class_names"] == names
  with np.load(run / "tsne.npz") as data:
    indices = data["indices"]
  assert len(set(indices)) == 150 and np.array_equal(embedding["labels"], labels[indices])
  # The 2-D map must keep the clusters: leave-one-out 1-NN in t-SNE space recovers the labels.
  points = embedding["points"]
  dist = ((points[:, None] - points[None]) ** 2).sum(-1) + np.diag(np.full(150, np.inf))
  assert np.mean(embedding["labels"][dist.argmin(1)] == embedding["labels"]) > 0.95
  for name in ("class_distances.png", "tsne.png"):
    assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stage_without_second_view_or_tsne(tmp_path):
  features, labels = _clusters(n=50, seed=2)
  result = geometry_stage.run_geometry_stage(features, labels, list("abcd"), tmp_path, tsne_max_points=0)
  assert result["alignment"] is None and result["tsne_points"] == 0
  assert not (tmp_path / "tsne.npz").exists() and (tmp_path / "class_distances.png").exists()


def test_subsampling_is_seeded_and_without_replacement():
  first = tsne.subsample_indices(1000, 100, seed=7)
  assert np.array_equal(first, tsne.subsample_indices(1000, 100, seed=7))
  assert len(np.unique(first)) == 100 and np.all(np.diff(first) > 0)
  assert not np.array_equal(first, tsne.subsample_indices(1000, 100, seed=8))
  assert np.array_equal(tsne.subsample_indices(30, 100), np.arange(30))

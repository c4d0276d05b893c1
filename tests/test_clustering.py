"""Hierarchical k-means (csl_jax.clustering): Lloyd's algorithm against sklearn and a plain-numpy loop on planted
clusters, the nesting of the levels, and the sharded (8-device) computation against the single-device one."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from csl_jax import clustering
from csl_jax import config as config_lib
from csl_jax import ifnd
from csl_jax.train import sharding


def planted(num_clusters=6, per_cluster=30, dim=5, spread=0.15, seed=0, extra=0):
  """Points around num_clusters random unit centres (+ `extra` more from the first centres), and their truth."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_clusters, dim))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  truth = np.concatenate([np.repeat(np.arange(num_clusters), per_cluster), np.arange(extra) % num_clusters])
  points = centres[truth] + spread * rng.normal(size=(len(truth), dim)) / np.sqrt(dim)
  order = rng.permutation(len(truth))
  return points[order].astype(np.float32), truth[order]


def numpy_lloyd(x, centroids, num_iters):
  """Textbook Lloyd in float64 loops: nearest centroid, then mean of each non-empty cluster."""
  x, c = np.asarray(x, np.float64), np.asarray(centroids, np.float64).copy()
  for _ in range(num_iters):
    labels = np.array([np.argmin([np.sum((p - q) ** 2) for q in c]) for p in x])
    for j in range(len(c)):
      if np.any(labels == j):
        c[j] = x[labels == j].mean(0)
  return c, np.array([np.argmin([np.sum((p - q) ** 2) for q in c]) for p in x])


def same_partition(a, b):
  """True when labelings a and b group the points identically (up to renaming the clusters)."""
  pairs = set(zip(a.tolist(), b.tolist()))
  return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_lloyd_matches_sklearn_and_numpy_and_recovers_planted_clusters():
  x, truth = planted()
  start = np.asarray(clustering.initial_centroids(jax.random.PRNGKey(3), jnp.asarray(x), 6))
  centroids, labels = clustering.lloyd(jnp.asarray(x), jnp.asarray(start), num_iters=15)
  reference = KMeans(n_clusters=6, init=start, n_init=1, max_iter=15, tol=0.0, algorithm="lloyd").fit(x)
  np.testing.assert_array_equal(np.asarray(labels), reference.labels_)
  np.testing.assert_allclose(np.asarray(centroids), reference.cluster_centers_, atol=1e-5)
  numpy_centroids, numpy_labels = numpy_lloyd(x, start, 15)
  np.testing.assert_array_equal(np.asarray(labels), numpy_labels)
  np.testing.assert_allclose(np.asarray(centroids), numpy_centroids, atol=1e-5)
  if same_partition(numpy_labels, truth):  # a random start may merge two planted clusters; sklearn's k-means++ not
    assert same_partition(np.asarray(labels), truth)
  best = KMeans(n_clusters=6, n_init=10, random_state=0).fit(x)
  assert same_partition(best.labels_, truth), "the planted clusters are separable"


def test_hierarchy_levels_nest_and_coarse_level_finds_planted_clusters():
  x, truth = planted(num_clusters=4, per_cluster=40, spread=0.05)
  out = clustering.hierarchical_kmeans(jax.random.PRNGKey(0), x, (12, 4), num_iters=20)
  labels = np.asarray(out.labels)
  assert labels.shape == (2, len(x)) and out.similarity.shape == (2, len(x))
  for fine in np.unique(labels[0]):  # every fine cluster lies inside one coarse cluster
    assert len(np.unique(labels[1][labels[0] == fine])) == 1
  assert same_partition(labels[1], truth)
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  for level in range(2):
    centres = np.asarray(out.centroids[level])[labels[level]]
    expected = np.sum(unit * centres, 1) / np.linalg.norm(centres, axis=1)
    np.testing.assert_allclose(np.asarray(out.similarity[level]), expected, atol=1e-5)


def test_ifnd_hierarchy_recovers_planted_clusters_for_every_seed():
  """IFND's clustering as IFND runs it (its default levels 100/30/10 and Lloyd iterations, L2-normalised embeddings,
  on the 8-device mesh): 10 planted clusters of unequal sizes come back at the coarsest level, whatever the seed.
  Uniform ("Forgy") seeding of every level failed this (median adjusted Rand ≈ 0.75): `initial_centroids`."""
  sub = config_lib.base_config().methods.ifnd
  ks = ifnd.cluster_levels(sub.num_clusters)
  sizes = np.random.default_rng(1).integers(40, 160, size=ks[-1])
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(ks[-1], 32))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  truth = np.repeat(np.arange(ks[-1]), sizes)
  z = centres[truth] + 0.5 * rng.normal(size=(len(truth), 32)) / np.sqrt(32)
  z = (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)
  mesh = sharding.make_mesh()
  for seed in range(5):
    out = clustering.hierarchical_kmeans(jax.random.PRNGKey(seed), jnp.asarray(z), ks, num_iters=sub.kmeans_iters,
                                         mesh=mesh)
    labels = np.asarray(out.labels)
    assert adjusted_rand_score(truth, labels[-1]) >= 0.95, (seed, adjusted_rand_score(truth, labels[-1]))
    for level in range(len(ks) - 1):  # the finer levels split the planted clusters, never mix them
      mixed = [c for c in np.unique(labels[level]) if len(np.unique(truth[labels[level] == c])) > 1]
      assert not mixed, (seed, level, mixed)


def test_kmeans_plus_plus_seeding_covers_separated_groups_and_skips_zero_weights():
  x, truth = planted(num_clusters=8, per_cluster=20, spread=0.05)
  weights = np.ones(len(x), np.float32)
  weights[truth == 0] = 0.0  # e.g. padding rows, or emptied clusters one level up
  for seed in range(10):
    start = np.asarray(clustering.initial_centroids(jax.random.PRNGKey(seed), jnp.asarray(x), 7,
                                                    weights=jnp.asarray(weights)))
    picked = truth[[int(np.argmin(np.sum((x - c) ** 2, 1))) for c in start]]
    assert sorted(picked.tolist()) == list(range(1, 8)), (seed, picked)  # one centre per weighted group


def test_sharded_assignment_and_hierarchy_equal_single_device():
  assert jax.device_count() == 8
  mesh = sharding.make_mesh()
  x, _ = planted(num_clusters=5, per_cluster=40, extra=3)  # 203 points: not a multiple of 8 (padding)
  centroids = jnp.asarray(x[:7])
  padded = jnp.asarray(np.concatenate([x, np.zeros((5, x.shape[1]), np.float32)]))
  labels, distances = jax.jit(clustering.sharded_assign(mesh))(padded, centroids)
  expected_labels, expected_distances = clustering.assign(jnp.asarray(x), centroids)
  np.testing.assert_array_equal(np.asarray(labels)[:len(x)], np.asarray(expected_labels))
  np.testing.assert_allclose(np.asarray(distances)[:len(x)], np.asarray(expected_distances), rtol=1e-5, atol=1e-6)

  key = jax.random.PRNGKey(1)
  single = clustering.hierarchical_kmeans(key, x, (20, 6, 2), num_iters=10)
  sharded = clustering.hierarchical_kmeans(key, x, (20, 6, 2), num_iters=10, mesh=mesh)
  np.testing.assert_array_equal(np.asarray(sharded.labels), np.asarray(single.labels))
  np.testing.assert_allclose(np.asarray(sharded.similarity), np.asarray(single.similarity), atol=1e-5)
  for a, b in zip(sharded.centroids, single.centroids):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.parametrize("ks", [(), (5, 5), (3, 6), (0,), (500,)])
def test_bad_cluster_counts_raise(ks):
  x, _ = planted()
  with pytest.raises(ValueError):
    clustering.hierarchical_kmeans(jax.random.PRNGKey(0), x, ks)

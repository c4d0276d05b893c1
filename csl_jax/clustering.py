"""Hierarchical k-means in JAX, with the assignment step sharded over a mesh's data axis.

IFND (Chen et al., ICLR 2022, `csl_jax.ifnd`) labels the training set by clustering its embeddings at several
granularities. Level 0 runs k-means (Lloyd's algorithm) on the N embeddings with k_0 clusters; level l > 0 runs
k-means on the k_{l-1} centroids of the level below, each weighted by its number of samples (so a level
approximates k-means of the samples themselves, and an emptied cluster's stale centroid counts for nothing), with
k_l < k_{l-1} clusters, and every sample inherits the cluster of its level-(l-1) cluster. The levels therefore
nest: two samples sharing a fine cluster share every coarser one.

Only level 0 touches all N embeddings, so only its Lloyd iterations are sharded: the embeddings stay split over
`sharding.DATA_AXIS`, every device assigns its rows to the (replicated) centroids and a psum of the per-cluster
sums and counts gives the new centroids. Padding rows (N not a multiple of the devices) carry weight 0. The upper
levels cluster at most k_0 points and run replicated. The result equals the unsharded computation up to the
order of the float additions in the centroid sums (`tests/test_clustering.py` checks both).

Lloyd's algorithm here: squared Euclidean distances, a fixed number of iterations (deterministic, jit-friendly),
initial centroids chosen by greedy k-means++ from a PRNG key (`initial_centroids`), and a cluster that loses all
its points keeps its previous centroid.
"""
import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from csl_jax.train import sharding


class Hierarchy(NamedTuple):
  """labels: int32[L, N] cluster of each sample at each level; similarity: f32[L, N] cosine similarity between
  each sample and the centroid it is assigned to at that level (IFND's confidence); centroids: one f32[k_l, D]
  array per level."""
  labels: jax.Array
  similarity: jax.Array
  centroids: tuple


def squared_distances(a, b):
  """f32[A, B]: squared Euclidean distance of each row of a f32[A, D] to each row of b f32[B, D], clipped at 0.

  |a - b|^2 = |a|^2 - 2 a.b + |b|^2; HIGHEST keeps TPU matmuls in f32 so an argmin over it does not flip."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  cross = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(jnp.sum(a * a, -1)[:, None] - 2.0 * cross + jnp.sum(b * b, -1)[None, :], 0.0)


def assign(x, centroids):
  """(int32[N] index of the nearest centroid (squared Euclidean; ties -> lowest index), f32[N] squared distance)."""
  distance = squared_distances(x, centroids)
  return jnp.argmin(distance, axis=-1).astype(jnp.int32), jnp.min(distance, axis=-1)


def _cluster_sums(x, weights, labels, k: int):
  """(f32[k, D] weighted sum of the points of each cluster, f32[k] their total weight)."""
  one_hot = jax.nn.one_hot(labels, k, dtype=jnp.float32) * weights[:, None]
  return jnp.matmul(one_hot.T, x, precision=jax.lax.Precision.HIGHEST), jnp.sum(one_hot, axis=0)


def _update(centroids, sums, counts):
  """New centroids: cluster means; a cluster without points keeps its centroid."""
  return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1e-12)[:, None], centroids)


def lloyd(x, centroids, *, num_iters: int, weights=None):
  """Runs num_iters Lloyd iterations from `centroids` on f32[N, D] points (weights f32[N], default 1).
  Returns (f32[k, D] centroids, int32[N] labels under the returned centroids)."""
  x = x.astype(jnp.float32)
  weights = jnp.ones(x.shape[:1], jnp.float32) if weights is None else weights

  def body(_, c):
    labels, _ = assign(x, c)
    return _update(c, *_cluster_sums(x, weights, labels, c.shape[0]))

  centroids = jax.lax.fori_loop(0, num_iters, body, centroids.astype(jnp.float32))
  return centroids, assign(x, centroids)[0]


def sharded_assign(mesh, axis_name: str = sharding.DATA_AXIS):
  """assign(x, centroids) with x f32[N, D] sharded over `axis_name` (N divisible by its size), centroids
  replicated; returns the same (labels, distances), sharded like x."""
  return jax.shard_map(assign, mesh=mesh, in_specs=(P(axis_name), P()), out_specs=(P(axis_name), P(axis_name)))


def sharded_lloyd(mesh, *, num_iters: int, axis_name: str = sharding.DATA_AXIS):
  """`lloyd` with the points and weights sharded over `axis_name`: the assignment and the per-cluster sums run
  on each device's rows, a psum combines the sums. Returns fn(x, centroids, weights) -> (centroids, labels)."""

  def per_device(x, centroids, weights):
    def body(_, c):
      labels, _ = assign(x, c)
      sums, counts = jax.lax.psum(_cluster_sums(x, weights, labels, c.shape[0]), axis_name)
      return _update(c, sums, counts)

    centroids = jax.lax.fori_loop(0, num_iters, body, centroids)
    return centroids, assign(x, centroids)[0]

  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(axis_name), P(), P(axis_name)),
                       out_specs=(P(), P(axis_name)))


def initial_centroids(key, x, k: int, *, weights=None, num_trials: int = 0):
  """f32[k, D]: k rows of f32[N, D] x chosen by greedy k-means++ (Arthur & Vassilvitskii 2007; sklearn's
  `kmeans_plusplus`, whose default num_trials = 2 + floor(ln k) is used for num_trials=0), for points with
  weights f32[N] (default 1; a row of weight 0 is never chosen while a weighted row is left).

  The first centroid is a row drawn with probability ∝ weight; each next one is the best of num_trials rows drawn
  with probability ∝ weight · squared distance to the nearest centroid so far (best: lowest weighted total squared
  distance afterwards). Why not uniform ("Forgy") seeding: with k centroids drawn uniformly over k' ≤ k
  well-separated groups, some group is often left without a centroid and Lloyd never recovers it — on 10 planted
  clusters IFND's (100, 30, 10) hierarchy then merged two of them in most seeds (adjusted Rand ≈ 0.75;
  tests/test_clustering.py). Rows are distinct while k weighted rows are: a chosen row's distance is 0.
  """
  num_points = x.shape[0]
  if k > num_points:
    raise ValueError(f"k-means with k={k} clusters needs at least k points; got {num_points}.")
  num_trials = num_trials or 2 + int(math.log(k))
  x = x.astype(jnp.float32)
  weights = jnp.ones((num_points,), jnp.float32) if weights is None else weights.astype(jnp.float32)
  first_key, key = jax.random.split(key)
  first = jax.random.choice(first_key, num_points, p=weights / jnp.sum(weights))
  nearest = squared_distances(x[first][None], x)[0].at[first].set(0.0)

  def body(i, carry):
    centroids, nearest = carry
    mass = weights * nearest
    p = jnp.where(jnp.sum(mass) > 0, mass, weights)  # every weighted row already chosen (duplicates): ∝ weight
    candidates = jax.random.choice(jax.random.fold_in(key, i), num_points, (num_trials,), p=p / jnp.sum(p))
    after = jnp.minimum(nearest[None, :], squared_distances(x[candidates], x))
    after = after.at[jnp.arange(num_trials), candidates].set(0.0)
    best = jnp.argmin(jnp.sum(after * weights[None, :], axis=1))
    return centroids.at[i].set(x[candidates[best]]), after[best]

  centroids = jnp.zeros((k, x.shape[1]), jnp.float32).at[0].set(x[first])
  return jax.lax.fori_loop(1, k, body, (centroids, nearest))[0]


def _cosine_to_assigned(x, centroids, labels):
  unit = lambda a: a * jax.lax.rsqrt(jnp.maximum(jnp.sum(a * a, -1, keepdims=True), 1e-24))
  return jnp.sum(unit(x) * unit(centroids)[labels], axis=-1)


@functools.partial(jax.jit, static_argnames=("ks", "num_iters", "num_real", "mesh"))
def _hierarchical(key, x, weights, *, ks, num_iters, num_real, mesh):
  keys = jax.random.split(key, len(ks))
  start = initial_centroids(keys[0], x, ks[0], weights=weights)  # padding rows (weight 0) are never drawn
  if mesh is None:
    centroids, labels = lloyd(x, start, num_iters=num_iters, weights=weights)
  else:
    centroids, labels = sharded_lloyd(mesh, num_iters=num_iters)(x, start, weights)
  all_labels, all_centroids = [labels], [centroids]
  sizes = jax.ops.segment_sum(weights, labels, num_segments=ks[0])  # samples per cluster of the level below
  for level, k in enumerate(ks[1:], 1):
    points = all_centroids[-1]
    start = initial_centroids(keys[level], points, k, weights=sizes)
    upper, parent = lloyd(points, start, num_iters=num_iters, weights=sizes)
    all_labels.append(parent[all_labels[-1]])
    all_centroids.append(upper)
    sizes = jax.ops.segment_sum(sizes, parent, num_segments=k)
  labels = jnp.stack(all_labels)
  similarity = jnp.stack([_cosine_to_assigned(x, c, l) for c, l in zip(all_centroids, all_labels)])
  return Hierarchy(labels, similarity, tuple(all_centroids))


def hierarchical_kmeans(key, x, ks: Sequence[int], *, num_iters: int = 20, mesh=None) -> Hierarchy:
  """Hierarchical k-means of f32[N, D] points x with ks[0] > ks[1] > ... clusters (see the module docstring).

  mesh: None runs on one device; a mesh shards the level-0 iterations over `sharding.DATA_AXIS` (x is padded to
  a multiple of its size here and the padding dropped from the result).
  """
  ks = tuple(int(k) for k in ks)
  if not ks or any(k < 1 for k in ks) or any(a <= b for a, b in zip(ks, ks[1:])):
    raise ValueError(f"hierarchical_kmeans: ks must be strictly decreasing positive cluster counts, got {ks}.")
  num_points = x.shape[0]
  if ks[0] > num_points:
    raise ValueError(f"hierarchical_kmeans: {ks[0]} clusters at the finest level but only {num_points} points.")
  weights = jnp.ones((num_points,), jnp.float32)
  x = jnp.asarray(x, jnp.float32)
  if mesh is not None:
    pad = -num_points % mesh.shape[sharding.DATA_AXIS]
    x = jnp.concatenate([x, jnp.zeros((pad, x.shape[1]), x.dtype)])
    weights = jnp.concatenate([weights, jnp.zeros((pad,), jnp.float32)])
    x, weights = jax.device_put((x, weights), NamedSharding(mesh, P(sharding.DATA_AXIS)))
  out = _hierarchical(key, x, weights, ks=ks, num_iters=int(num_iters), num_real=num_points, mesh=mesh)
  return Hierarchy(out.labels[:, :num_points], out.similarity[:, :num_points], out.centroids)

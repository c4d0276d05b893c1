"""Representation geometry: class separation (paper Fig. 2) and alignment / uniformity (Wang & Isola 2020).

Definitions (d_ij = Euclidean distance between examples i and j; features are L2-normalised first
unless `normalize=False`, so by default d_ij ∈ [0, 2]):
- intra-class distance of class a: mean of d_ij over ordered pairs i ≠ j with c_i = c_j = a.
  `intra_class` is the unweighted mean of these per-class values over classes with ≥ 2 examples, so
  every class counts equally whatever its size.
- inter-class distance: mean of d_ij over all pairs with c_i ≠ c_j (pooled over pairs; with balanced
  classes this equals the mean of the off-diagonal class×class matrix).
- ratio = inter_class / intra_class — the class-separation measure the paper reports
  (1.98× SupCon vs 1.19× SimCLR on CIFAR-10, Fig. 2).
- class_distance_matrix[a, b]: mean d_ij over i in a, j in b (i ≠ j on the diagonal).
- alignment = E_i ‖f(x_i) − f(x_i⁺)‖²₂ over positive pairs (two views of one image), α = 2.
- uniformity = log E_{i≠j} exp(−t ‖f(x_i) − f(x_j)‖²₂), t = 2.

All N×N pair quantities are computed in tiles of block_size × block_size inside one jitted double
`lax.scan`, so the full distance matrix never exists. Each tile is reduced to per-class-pair sums with
one-hot matmuls: Σ_ij d_ij 1[c_i = a] 1[c_j = b] = (Aᵀ D B)_ab.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


def l2_normalize(x, eps: float = 1e-12):
  """Rows of f32[N, D] scaled to unit L2 norm (zero rows stay zero)."""
  x = jnp.asarray(x, jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@dataclasses.dataclass(frozen=True)
class PairSums:
  """Per-class-pair sums over ordered pairs i ≠ j (numpy float64).

  distance:  [C, C] Σ d_ij over i in class a, j in class b.
  potential: [C, C] Σ exp(−t d_ij²) over the same pairs (the uniformity kernel).
  counts:    [C] number of examples per class.
  """
  distance: np.ndarray
  potential: np.ndarray
  counts: np.ndarray

  @property
  def num_pairs(self) -> np.ndarray:
    """[C, C] number of ordered pairs i ≠ j per class pair: n_a n_b, or n_a (n_a − 1) on the diagonal."""
    pairs = np.outer(self.counts, self.counts).astype(np.float64)
    return pairs - np.diag(self.counts.astype(np.float64))


@functools.partial(jax.jit, static_argnames=("block_size",))
def _blocked_pair_sums(x, onehot, t, *, block_size: int):
  """Tiled Σ over i ≠ j of d_ij and exp(−t d_ij²), reduced to class pairs. Returns two f32[C, C]."""
  n, dim = x.shape
  num_classes = onehot.shape[1]
  num_blocks = -(-n // block_size)
  pad = num_blocks * block_size - n
  # Padded rows have an all-zero one-hot row, so they drop out of Aᵀ D B.
  x = jnp.pad(x, ((0, pad), (0, 0))).reshape(num_blocks, block_size, dim)
  onehot = jnp.pad(onehot, ((0, pad), (0, 0))).reshape(num_blocks, block_size, num_classes)
  sq_norms = jnp.sum(x * x, axis=-1)
  index = jnp.arange(num_blocks * block_size).reshape(num_blocks, block_size)
  blocks = (x, onehot, sq_norms, index)

  def row_step(carry, row):
    x_a, h_a, sq_a, i_a = row

    def col_step(carry, col):
      x_b, h_b, sq_b, i_b = col
      gram = jnp.matmul(x_a, x_b.T, precision=_HIGHEST)
      # ‖a‖² + ‖b‖² − 2ab can round below zero for near-duplicates: clamp before the sqrt.
      sq_dist = jnp.maximum(sq_a[:, None] + sq_b[None, :] - 2.0 * gram, 0.0)
      # The diagonal is masked by index rather than trusting sqrt(rounding error) ≈ 3e-4 to be 0.
      off_diagonal = i_a[:, None] != i_b[None, :]
      dist = jnp.where(off_diagonal, jnp.sqrt(sq_dist), 0.0)
      potential = jnp.where(off_diagonal, jnp.exp(-t * sq_dist), 0.0)
      reduce = lambda tile: jnp.matmul(jnp.matmul(h_a.T, tile, precision=_HIGHEST), h_b, precision=_HIGHEST)
      dist_sums, potential_sums = carry
      return (dist_sums + reduce(dist), potential_sums + reduce(potential)), None

    return jax.lax.scan(col_step, carry, blocks)[0], None

  zeros = jnp.zeros((num_classes, num_classes), jnp.float32)
  return jax.lax.scan(row_step, (zeros, zeros), blocks)[0]


def _check_labels(labels, n: int, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be int[{n}] (one per feature row); got {labels.dtype}{list(labels.shape)}.")
  if n and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}); found range [{labels.min()}, {labels.max()}]. "
                     "Pass the dataset's num_classes / class_names.")
  return labels


def _check_features(features, name: str = "features") -> np.ndarray:
  features = np.asarray(features, np.float32)
  if features.ndim != 2:
    raise ValueError(f"{name} must be f32[N, D]; got shape {list(features.shape)}. Flatten or pool the encoder "
                     "output first.")
  if not np.all(np.isfinite(features)):
    raise ValueError(f"{name} contains NaN or inf; the encoder output is broken (check the checkpoint).")
  return features


def pair_sums(features, labels, num_classes: int, *, block_size: int = 1024, t: float = 2.0) -> PairSums:
  """Per-class-pair sums of d_ij and exp(−t d_ij²) over ordered pairs i ≠ j, in tiles.

  features: f32[N, D] used as given (normalise first if wanted); labels: int[N] in [0, num_classes).
  """
  features = _check_features(features)
  labels = _check_labels(labels, features.shape[0], num_classes)
  if block_size < 1:
    raise ValueError(f"block_size must be ≥ 1; got {block_size}.")
  block_size = min(block_size, max(features.shape[0], 1))
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  dist, potential = _blocked_pair_sums(jnp.asarray(features), onehot, jnp.float32(t), block_size=block_size)
  counts = np.bincount(labels, minlength=num_classes)
  return PairSums(np.asarray(dist, np.float64), np.asarray(potential, np.float64), counts)


def class_distances_from_sums(sums: PairSums) -> dict:
  """Inter/intra-class distances and their ratio from `pair_sums` (see the module docstring).

  Returns {"inter_class", "intra_class", "ratio": float | nan, "intra_class_per_class": f64[C] (nan for
  classes with < 2 examples), "class_distance_matrix": f64[C, C] (nan where a class has no pairs)}.
  """
  pairs = sums.num_pairs
  with np.errstate(invalid="ignore", divide="ignore"):
    matrix = np.where(pairs > 0, sums.distance / np.maximum(pairs, 1), np.nan)
  intra_per_class = np.diag(matrix).copy()
  off = ~np.eye(len(sums.counts), dtype=bool)
  inter_pairs = pairs[off].sum()
  inter = sums.distance[off].sum() / inter_pairs if inter_pairs > 0 else np.nan
  intra = float(np.nanmean(intra_per_class)) if np.any(np.isfinite(intra_per_class)) else np.nan
  ratio = inter / intra if np.isfinite(inter) and np.isfinite(intra) and intra > 0 else np.nan
  return {"inter_class": float(inter), "intra_class": intra, "ratio": float(ratio),
          "intra_class_per_class": intra_per_class, "class_distance_matrix": matrix}


def uniformity_from_sums(sums: PairSums) -> float:
  """log of the mean of exp(−t d_ij²) over all ordered pairs i ≠ j (Wang & Isola 2020, Eq. 5)."""
  n = int(sums.counts.sum())
  if n < 2:
    return float("nan")
  return float(np.log(sums.potential.sum() / (n * (n - 1))))


def class_distances(features, labels, num_classes: int, *, normalize: bool = True, block_size: int = 1024) -> dict:
  """Class-separation statistics of f32[N, D] features (L2-normalised first by default); see module docstring."""
  features = _check_features(features)
  if normalize:
    features = l2_normalize(features)
  return class_distances_from_sums(pair_sums(features, labels, num_classes, block_size=block_size))


def uniformity(features, *, t: float = 2.0, block_size: int = 1024) -> float:
  """Uniformity log E_{i≠j} exp(−t ‖f_i − f_j‖²) of L2-normalised f32[N, D] features.

  Lower = more uniform on the hypersphere (Wang & Isola 2020, Eq. 5).
  """
  features = l2_normalize(_check_features(features))
  labels = np.zeros(features.shape[0], np.int32)
  return uniformity_from_sums(pair_sums(features, labels, 1, block_size=block_size, t=t))


def alignment(view1, view2, *, alpha: float = 2.0) -> float:
  """Alignment E_i ‖f(x_i) − f(x_i⁺)‖₂^α of two views f32[N, D], row i ↔ row i.

  Both views are L2-normalised here (Wang & Isola 2020, Eq. 4); 0 = perfectly aligned, 4 = antipodal.
  """
  view1 = _check_features(view1, "features")
  view2 = _check_features(view2, "features_view2")
  if view1.shape != view2.shape:
    raise ValueError(f"The two views must have the same shape (row i of each is one image); got "
                     f"{list(view1.shape)} and {list(view2.shape)}.")
  diff = l2_normalize(view1) - l2_normalize(view2)
  return float(jnp.mean(jnp.linalg.norm(diff, axis=-1) ** alpha))

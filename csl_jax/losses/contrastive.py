"""Contrastive losses over two views: the shared row-wise core, NT-Xent (Eq. 1) and SupCon.

Every contrastive loss in csl_jax is computed row by row. A *block* of anchors (the 2n views of n images,
n = N on one device, N / num_devices under `jax.shard_map`) is compared against the *global* 2N views:
`anchor_rows` builds those rows of the cosine-similarity matrix together with the masks that say which
column is the anchor itself, which is the other view of its image (the positive) and which share its class.
A loss is then a function `AnchorRows -> f32[2n]` of per-anchor losses; the single-device public functions
below are that function at row offset 0 over the whole batch, and `csl_jax.losses.sharded` is the same
function on each device's rows followed by a `psum`. There is one implementation of each formula.

View order: anchors and columns list all first views, then all second views, i.e. the rows of
`concatenate([z1, z2])`. Anchor r < n is view 1 of image `row_offset + r`; anchor r >= n is view 2 of
image `row_offset + r - n`. Column c is view `c // N` of image `c % N`.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Logit given to masked-out columns. Large and negative so exp() underflows to exactly 0, but finite,
# so `logit - logsumexp` never forms inf - inf (NaN) in the value or the gradient.
MASKED_LOGIT = -1e9

# Guards the L2 normalisation of an all-zero embedding (its gradient stays finite).
_NORM_EPS = 1e-12


class AnchorRows(NamedTuple):
  """Rows of the 2N x 2N cosine-similarity matrix for a block of B = 2n anchors.

  cosine: f32[B, 2N] cosine similarity in [-1, 1] between each anchor and every global view.
  is_self: bool[B, 2N], True at the anchor's own column (never in any denominator).
  is_pair: bool[B, 2N], True at the other view of the anchor's image (the positive of Eq. 1).
  same_class: bool[B, 2N] (anchor label == column label, self included) or None without labels.
  """
  cosine: jax.Array
  is_self: jax.Array
  is_pair: jax.Array
  same_class: jax.Array | None

  @property
  def is_negative(self):
    """bool[B, 2N]: every column except the anchor itself and its positive pair (the 2N - 2 negatives)."""
    return ~(self.is_self | self.is_pair)


def l2_normalize(z):
  """Projects f32/bf16[M, D] embeddings onto the unit sphere, computing in f32 -> f32[M, D]."""
  z = z.astype(jnp.float32)
  return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), _NORM_EPS**2))


def check_views(z1, z2, labels=None, *, what: str = "loss"):
  """Raises ValueError unless z1, z2 are [N, D] floating arrays of equal shape and labels is int[N].

  Also rejects N < 2 (with one image each anchor has only itself and its positive: no negative, and the
  loss would be a meaningless constant 0; N = 0 would be a NaN mean) and D = 0 (no direction to compare).
  Shapes are static, so this works under jax.jit too.
  """
  z1_shape, z2_shape = jnp.shape(z1), jnp.shape(z2)
  if len(z1_shape) != 2 or z1_shape != z2_shape:
    raise ValueError(f"{what}: expected two views z1, z2 of the same shape [N, D] (one row per image); "
                     f"got z1 {z1_shape} and z2 {z2_shape}. Flatten features to [N, D] first.")
  if z1_shape[0] < 2:
    raise ValueError(f"{what}: a contrastive loss needs N >= 2 images so every anchor has a negative "
                     f"(N = 1 has none); got z1 {z1_shape} and z2 {z2_shape}.")
  if z1_shape[1] == 0:
    raise ValueError(f"{what}: embeddings have dimension D = 0 (z1 {z1_shape}, z2 {z2_shape}); "
                     "expected [N, D] with D >= 1.")
  for name, z in (("z1", z1), ("z2", z2)):
    if not jnp.issubdtype(jnp.result_type(z), jnp.floating):
      raise ValueError(f"{what}: {name} must be a floating array, got dtype {jnp.result_type(z)}.")
  if labels is not None:
    if jnp.shape(labels) != z1_shape[:1] or not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
      raise ValueError(f"{what}: expected integer labels of shape ({z1_shape[0]},) — one class id per "
                       f"image, shared by both views; got {jnp.result_type(labels)}{list(jnp.shape(labels))}.")


def anchor_rows(z1_rows, z2_rows, z1_all, z2_all, *, row_offset=0, labels_rows=None,
                labels_all=None) -> AnchorRows:
  """Similarity rows of the anchors z1_rows, z2_rows (images row_offset .. row_offset + n - 1) vs all views.

  Args:
    z1_rows, z2_rows: [n, D] the two views of this block's images (any float dtype; normalised here in f32).
    z1_all, z2_all: [N, D] the two views of the whole (global) batch; rows row_offset .. row_offset + n - 1
      must be z1_rows, z2_rows.
    row_offset: global index of this block's first image (an int or a traced int32 scalar).
    labels_rows, labels_all: int[n] and int[N] class ids, or both None.

  Returns:
    AnchorRows with B = 2n anchor rows and 2N columns.
  """
  n, num_images = z1_rows.shape[0], z1_all.shape[0]
  anchors = l2_normalize(jnp.concatenate([z1_rows, z2_rows]))
  columns = l2_normalize(jnp.concatenate([z1_all, z2_all]))
  # HIGHEST: on TPU the default f32 matmul runs single-pass bf16 (~3 significant digits), which would
  # flip the cosine > rho decisions of (Adaptive) FNC near rho = 0.99. The matrix is small next to the encoder.
  cosine = jnp.matmul(anchors, columns.T, precision=jax.lax.Precision.HIGHEST)

  row = jnp.arange(2 * n)
  anchor_view, anchor_image = row // n, row_offset + row % n
  column = jnp.arange(2 * num_images)[None, :]
  is_self = column == (anchor_view * num_images + anchor_image)[:, None]
  is_pair = column == ((1 - anchor_view) * num_images + anchor_image)[:, None]

  same_class = None
  if (labels_rows is None) != (labels_all is None):
    raise ValueError("anchor_rows: pass both labels_rows and labels_all, or neither.")
  if labels_rows is not None:
    anchor_labels = jnp.concatenate([labels_rows, labels_rows])
    column_labels = jnp.concatenate([labels_all, labels_all])
    same_class = anchor_labels[:, None] == column_labels[None, :]
  return AnchorRows(cosine, is_self, is_pair, same_class)


def masked_contrastive_loss(logits, *, keep, positives):
  """Per-anchor -1/|P(i)| sum_{p in P(i)} log(exp(l_ip) / sum_{k in keep(i)} exp(l_ik)).

  Args:
    logits: f32[B, C] similarity / temperature.
    keep: bool[B, C] columns in each anchor's denominator; must contain every positive.
    positives: bool[B, C] with at least one True per row.

  Returns:
    f32[B] per-anchor losses, >= 0 when positives is a subset of keep.
  """
  log_normalizer = jax.nn.logsumexp(jnp.where(keep, logits, MASKED_LOGIT), axis=-1)
  num_positives = jnp.sum(positives, axis=-1)
  mean_positive_logit = jnp.sum(jnp.where(positives, logits, 0.0), axis=-1) / num_positives
  return log_normalizer - mean_positive_logit


def nt_xent_rows(rows: AnchorRows, *, temperature) -> jax.Array:
  """NT-Xent (SimCLR, Eq. 1) per anchor: positive = the other view; denominator = all 2N - 1 others. f32[B]."""
  return masked_contrastive_loss(rows.cosine / temperature, keep=~rows.is_self, positives=rows.is_pair)


def supcon_rows(rows: AnchorRows, *, temperature) -> jax.Array:
  """SupCon L_out (Khosla et al. 2020, Eq. 2) per anchor: P(i) = other views of the same class. f32[B]."""
  if rows.same_class is None:
    raise ValueError("supcon needs labels: pass labels=int[N] (one class id per image).")
  positives = rows.same_class & ~rows.is_self
  return masked_contrastive_loss(rows.cosine / temperature, keep=~rows.is_self, positives=positives)


def check_temperature(temperature):
  """Raises ValueError for a non-positive Python temperature (traced values are trusted)."""
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f"temperature must be > 0 (it divides the cosine similarity); got {temperature}.")


def nt_xent(z1, z2, *, temperature=0.5):
  """NT-Xent / InfoNCE of SimCLR (Chen et al. 2020a; the paper's Eq. 1) over the 2N views of a batch.

  Args:
    z1, z2: f32/bf16[N, D] projections of the two augmented views of the same N >= 2 images (not
      necessarily normalised; normalised here), D >= 1.
    temperature: tau > 0.

  Returns:
    f32[] mean over all 2N anchors of -log(exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau)), j the other view.
  """
  check_views(z1, z2, what="nt_xent")
  check_temperature(temperature)
  return jnp.mean(nt_xent_rows(anchor_rows(z1, z2, z1, z2), temperature=temperature))


def supcon(z1, z2, labels, *, temperature=0.1):
  """Supervised contrastive loss L_out (Khosla et al. 2020) over the 2N views of a batch.

  Args:
    z1, z2: f32/bf16[N, D] projections of the two views, N >= 2, D >= 1.
    labels: int[N] class of each image (both of its views share it).
    temperature: tau > 0.

  Returns:
    f32[] mean over 2N anchors of -1/|P(i)| sum_{p in P(i)} log softmax_p, where P(i) holds every other view
    with the anchor's label (its own other view included) and the softmax runs over all 2N - 1 others.
  """
  check_views(z1, z2, labels, what="supcon")
  check_temperature(temperature)
  rows = anchor_rows(z1, z2, z1, z2, labels_rows=labels, labels_all=labels)
  return jnp.mean(supcon_rows(rows, temperature=temperature))


def _check_labels_in_range(labels, num_classes: int):
  """Raises ValueError naming the entries of concrete int labels outside [0, num_classes)."""
  labels = np.asarray(labels)
  bad = (labels < 0) | (labels >= num_classes)
  if np.any(bad):
    values = np.unique(labels[bad])
    shown = ", ".join(str(v) for v in values[:10]) + (", ..." if values.size > 10 else "")
    raise ValueError(f"cross_entropy: labels must be class ids in [0, {num_classes}) for logits with "
                     f"{num_classes} classes; got out-of-range values [{shown}] at {int(np.sum(bad))} of "
                     f"{labels.size} positions.")


def cross_entropy(logits, labels):
  """Mean softmax cross-entropy: logits f32/bf16[B, C], labels int[B] in [0, C) -> f32[] (computed in f32).

  Out-of-range labels never give a plausible number (optax alone returns NaN for labels >= C and a finite,
  wrong loss for negative ones): concrete labels (an eager call) outside [0, C) raise ValueError naming the
  offending values; traced labels (inside jax.jit, e.g. the train step) cannot be inspected, so the loss is
  NaN when any label is out of range (with zero gradient) and the training loop's non-finite-loss guard
  stops the run.
  """
  if jnp.ndim(logits) != 2 or jnp.shape(labels) != jnp.shape(logits)[:1]:
    raise ValueError(f"cross_entropy: expected logits [B, C] and integer labels [B]; got logits "
                     f"{jnp.shape(logits)} and labels {jnp.shape(labels)}.")
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise ValueError(f"cross_entropy: labels must be integer class ids, got dtype {jnp.result_type(labels)}. "
                     "For one-hot or soft targets use optax.softmax_cross_entropy.")
  batch_size, num_classes = jnp.shape(logits)
  if batch_size == 0 or num_classes == 0:
    raise ValueError(f"cross_entropy: need B >= 1 examples and C >= 1 classes; got logits {jnp.shape(logits)}.")
  if not isinstance(labels, jax.core.Tracer):
    _check_labels_in_range(labels, num_classes)
  in_range = (labels >= 0) & (labels < num_classes)
  safe_labels = jnp.where(in_range, labels, 0)  # finite per-example terms, so the gradient stays finite
  per_example = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe_labels)
  return jnp.where(jnp.all(in_range), jnp.mean(per_example), jnp.nan)

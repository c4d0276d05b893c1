"""IFND's loss (Chen et al., ICLR 2022): NT-Xent with negatives that share the anchor's pseudo-label eliminated.

Pseudo-labels come from clustering the training set (`csl_jax.clustering`, refreshed by `csl_jax.ifnd`); the
loss only sees each image's labels, int[N, L] (one column per clustering level; an int[N] vector is one level).
A label < 0 means "not confidently assigned at this level". A negative (another image's view) leaves the
anchor's denominator when, at some level, both the anchor's image and the negative's image carry the same
label >= 0. Elimination only, like Adaptive FNC (`cancellation.py`): the detected views are not turned into
positives ("attraction"). The positive pair is never cancelled. Nothing here is differentiable in the labels.

The row function `ifnd_rows` works on a block of anchors against the global batch, so `sharded.py` runs it per
device on the all-gathered labels; `ifnd` is the single-device loss. Stats: those of `cancellation_stats`
(cancelled pairs, and with true labels the precision / recall of the cancellations).
"""
import jax
import jax.numpy as jnp

from csl_jax.losses import cancellation
from csl_jax.losses import contrastive
from csl_jax.losses.contrastive import AnchorRows


def as_levels(pseudo_labels) -> jax.Array:
  """int[N] or int[N, L] -> int32[N, L]."""
  pseudo_labels = jnp.asarray(pseudo_labels)
  return (pseudo_labels[:, None] if pseudo_labels.ndim == 1 else pseudo_labels).astype(jnp.int32)


def check_pseudo_labels(pseudo_labels, num_images: int, *, what: str = "ifnd"):
  """Raises ValueError unless pseudo_labels is an integer array of shape [N] or [N, L], L >= 1."""
  shape, dtype = jnp.shape(pseudo_labels), jnp.result_type(pseudo_labels)
  if not jnp.issubdtype(dtype, jnp.integer) or len(shape) not in (1, 2) or shape[0] != num_images or (
      len(shape) == 2 and shape[1] < 1):
    raise ValueError(f"{what}: pseudo_labels must be int[{num_images}] or int[{num_images}, L] (one cluster id "
                     f"per image and level, < 0 = unassigned); got {dtype}{list(shape)}.")


def same_pseudo_label(pseudo_rows, pseudo_all) -> jax.Array:
  """bool[2n, 2N]: anchor (view of an image of pseudo_rows int32[n, L]) and column (view of an image of pseudo_all
  int32[N, L]) share an assigned label at some level. Rows and columns follow `contrastive.anchor_rows`."""
  anchors = jnp.concatenate([pseudo_rows, pseudo_rows])
  columns = jnp.concatenate([pseudo_all, pseudo_all])
  match = (anchors[:, None, :] == columns[None, :, :]) & (anchors[:, None, :] >= 0)
  return jnp.any(match, axis=-1)


def ifnd_mask(rows: AnchorRows, pseudo_rows, pseudo_all) -> jax.Array:
  """bool[B, 2N]: the negatives IFND eliminates (same assigned pseudo-label as the anchor at some level)."""
  return rows.is_negative & same_pseudo_label(as_levels(pseudo_rows), as_levels(pseudo_all))


def ifnd_rows(rows: AnchorRows, *, temperature, pseudo_labels_rows, pseudo_labels_all):
  """IFND elimination on a block of anchors -> (f32[B] per-anchor losses, int32 counts)."""
  cancelled = ifnd_mask(rows, pseudo_labels_rows, pseudo_labels_all)
  per_anchor = cancellation.cancelled_nt_xent_rows(rows, cancelled, temperature=temperature)
  return per_anchor, cancellation.cancellation_counts(rows, cancelled)


def ifnd(z1, z2, pseudo_labels, *, temperature=0.5, labels=None):
  """IFND loss with false negative elimination (Chen et al. 2022, L_elim).

  Args:
    z1, z2: f32/bf16[N, D] projections of the two views (normalised here), N >= 2, D >= 1.
    pseudo_labels: int[N] or int[N, L] cluster ids of each image per clustering level; < 0 = not confidently
      assigned (never matches). All < 0 gives exactly NT-Xent.
    temperature: tau > 0.
    labels: optional int[N] true classes, used only for the precision/recall stats (never by the loss).

  Returns:
    (f32[] mean loss over 2N anchors, dict of f32[] stats — see `cancellation.py`).
  """
  contrastive.check_views(z1, z2, labels, what="ifnd")
  contrastive.check_temperature(temperature)
  check_pseudo_labels(pseudo_labels, jnp.shape(z1)[0])
  rows = contrastive.anchor_rows(z1, z2, z1, z2, labels_rows=labels, labels_all=labels)
  per_anchor, counts = ifnd_rows(rows, temperature=temperature, pseudo_labels_rows=pseudo_labels,
                                 pseudo_labels_all=pseudo_labels)
  return jnp.mean(per_anchor), cancellation.cancellation_stats(counts, per_anchor.shape[0])

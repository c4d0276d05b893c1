"""False negative cancellation: Adaptive FNC (the paper's Eq. 4) and FNC (Huynh et al. 2022).

Both start from NT-Xent (Eq. 1) and remove suspected false negatives — other images' views that look like
the anchor's class — from the anchor's denominator. Elimination only: a cancelled view is not turned into
a positive ("false negative attraction"), which the paper avoids because early detections are unreliable.

- Adaptive FNC cancels every negative whose cosine similarity to the anchor exceeds rho; rho follows a
  schedule from high to low (`csl_jax.losses.rho_schedule`), so it may be a traced scalar.
- FNC cancels negatives above a fixed threshold plus the top_k most similar negatives of each anchor.

The positive pair (the anchor's other view) is never cancelled and the anchor itself never counts. The mask
is read off the similarity row the loss already has (O(N) extra work per anchor) under stop_gradient, so no
gradient flows through the decision. Both losses share the row-wise core of `contrastive.py`, so the
sharded versions in `sharded.py` reuse the functions below on each device's block of anchors.

Stats ("how well is cancellation working"), f32 scalars:
  num_cancelled             cancelled (anchor, negative) pairs, summed over anchors;
  cancelled_per_anchor      num_cancelled / 2N;
and with labels:
  num_true_cancelled        cancelled pairs whose negative shares the anchor's class;
  num_same_class_negatives  negatives sharing the anchor's class (what a perfect detector would cancel);
  cancel_precision          num_true_cancelled / num_cancelled, defined as 0 when nothing was cancelled;
  cancel_recall             num_true_cancelled / num_same_class_negatives, 0 when there are none.
The num_* sums are what to aggregate over steps or devices; the ratios are derived from them.
"""
import jax
import jax.numpy as jnp

from csl_jax.losses import contrastive
from csl_jax.losses.contrastive import AnchorRows


def adaptive_fnc_mask(rows: AnchorRows, rho) -> jax.Array:
  """bool[B, 2N]: negatives with cosine similarity to the anchor > rho (Eq. 4's filtered-out set)."""
  similarity = jax.lax.stop_gradient(rows.cosine)
  return rows.is_negative & (similarity > rho)


def fnc_mask(rows: AnchorRows, *, threshold, top_k: int) -> jax.Array:
  """bool[B, 2N]: negatives with similarity > threshold, plus each anchor's top_k most similar negatives.

  top_k is over the anchor's full (global) row and counts negatives only; ties are broken by lax.top_k
  (lowest column first), so exactly min(top_k, 2N - 2) negatives per anchor come from the top-k rule.
  """
  similarity = jax.lax.stop_gradient(rows.cosine)
  negatives = rows.is_negative
  cancelled = negatives & (similarity > threshold)
  if top_k > 0:
    num_rows, num_columns = similarity.shape
    # -inf-like scores keep self and the positive out of the top-k unless k exceeds the negatives;
    # the final `& negatives` drops them even then.
    scores = jnp.where(negatives, similarity, contrastive.MASKED_LOGIT)
    _, top_columns = jax.lax.top_k(scores, min(top_k, num_columns))
    in_top_k = jnp.zeros_like(negatives).at[jnp.arange(num_rows)[:, None], top_columns].set(True)
    cancelled = cancelled | (in_top_k & negatives)
  return cancelled


def cancelled_nt_xent_rows(rows: AnchorRows, cancelled, *, temperature) -> jax.Array:
  """Eq. 4 per anchor: NT-Xent with the `cancelled` columns left out of the denominator. f32[B]."""
  keep = ~(rows.is_self | cancelled)
  return contrastive.masked_contrastive_loss(rows.cosine / temperature, keep=keep, positives=rows.is_pair)


def cancellation_counts(rows: AnchorRows, cancelled) -> dict[str, jax.Array]:
  """Raw int32 counts for this block of anchors (psum-able): see the module docstring."""
  counts = {"num_cancelled": jnp.sum(cancelled, dtype=jnp.int32)}
  if rows.same_class is not None:
    same_class_negatives = rows.same_class & rows.is_negative
    counts["num_true_cancelled"] = jnp.sum(cancelled & same_class_negatives, dtype=jnp.int32)
    counts["num_same_class_negatives"] = jnp.sum(same_class_negatives, dtype=jnp.int32)
  return counts


def _ratio_or_zero(numerator, denominator):
  """numerator / denominator with 0 / 0 := 0 (no cancellations -> precision 0; no false negatives -> recall 0)."""
  return jnp.where(denominator > 0, numerator / jnp.maximum(denominator, 1.0), 0.0)


def cancellation_stats(counts: dict[str, jax.Array], num_anchors: int) -> dict[str, jax.Array]:
  """f32 stats from counts summed over the whole batch (all devices) of num_anchors = 2N anchors."""
  stats = {name: value.astype(jnp.float32) for name, value in counts.items()}
  stats["cancelled_per_anchor"] = stats["num_cancelled"] / num_anchors
  if "num_true_cancelled" in stats:
    stats["cancel_precision"] = _ratio_or_zero(stats["num_true_cancelled"], stats["num_cancelled"])
    stats["cancel_recall"] = _ratio_or_zero(stats["num_true_cancelled"], stats["num_same_class_negatives"])
  return stats


def adaptive_fnc_rows(rows: AnchorRows, *, temperature, rho):
  """Adaptive FNC on a block of anchors -> (f32[B] per-anchor losses, int32 counts)."""
  cancelled = adaptive_fnc_mask(rows, rho)
  return cancelled_nt_xent_rows(rows, cancelled, temperature=temperature), cancellation_counts(rows, cancelled)


def fnc_rows(rows: AnchorRows, *, temperature, threshold, top_k: int):
  """FNC (elimination) on a block of anchors -> (f32[B] per-anchor losses, int32 counts)."""
  cancelled = fnc_mask(rows, threshold=threshold, top_k=top_k)
  return cancelled_nt_xent_rows(rows, cancelled, temperature=temperature), cancellation_counts(rows, cancelled)


def check_rho(rho):
  """Raises ValueError unless rho is a scalar (a Python number or a traced f32[] from a schedule)."""
  if jnp.ndim(rho) != 0:
    raise ValueError(f"rho must be a scalar threshold on cosine similarity, got shape {jnp.shape(rho)}. "
                     "Evaluate the schedule at the current step: rho=rho_fn(step).")


def adaptive_fnc(z1, z2, *, temperature=0.5, rho=0.7, labels=None):
  """Adaptive False Negative Cancellation loss (the paper's Eq. 4).

  Args:
    z1, z2: f32/bf16[N, D] projections of the two views (normalised here).
    temperature: tau > 0.
    rho: cosine-similarity threshold (float or traced f32[]); negatives with similarity > rho leave the
      denominator. rho > 1 cancels nothing and gives exactly NT-Xent.
    labels: optional int[N] true classes, used only for the precision/recall stats (never by the loss).

  Returns:
    (f32[] mean loss over 2N anchors, dict of f32[] stats — see the module docstring).
  """
  contrastive.check_views(z1, z2, labels, what="adaptive_fnc")
  contrastive.check_temperature(temperature)
  check_rho(rho)
  rows = contrastive.anchor_rows(z1, z2, z1, z2, labels_rows=labels, labels_all=labels)
  per_anchor, counts = adaptive_fnc_rows(rows, temperature=temperature, rho=rho)
  return jnp.mean(per_anchor), cancellation_stats(counts, per_anchor.shape[0])


def check_top_k(top_k):
  """Raises ValueError unless top_k is a non-negative Python int (it sets a static shape)."""
  if not isinstance(top_k, int) or top_k < 0:
    raise ValueError(f"top_k must be a non-negative Python int (0 = threshold only); got {top_k!r}.")


def fnc(z1, z2, *, temperature=0.5, threshold=0.9, top_k=1, labels=None):
  """False Negative Cancellation, elimination variant (Huynh et al. 2022).

  Args:
    z1, z2: f32/bf16[N, D] projections of the two views (normalised here).
    temperature: tau > 0.
    threshold: negatives with cosine similarity > threshold are cancelled.
    top_k: additionally cancel each anchor's top_k most similar negatives (0: threshold only).
    labels: optional int[N] true classes, for the precision/recall stats only.

  Returns:
    (f32[] mean loss over 2N anchors, dict of f32[] stats — see the module docstring).
  """
  contrastive.check_views(z1, z2, labels, what="fnc")
  contrastive.check_temperature(temperature)
  check_top_k(top_k)
  rows = contrastive.anchor_rows(z1, z2, z1, z2, labels_rows=labels, labels_all=labels)
  per_anchor, counts = fnc_rows(rows, temperature=temperature, threshold=threshold, top_k=top_k)
  return jnp.mean(per_anchor), cancellation_stats(counts, per_anchor.shape[0])

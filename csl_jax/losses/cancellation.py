"""False negative cancellation: Adaptive FNC (the paper's Eq. 4) and FNC (Huynh et al. 2022).

Both start from NT-Xent (Eq. 1) and remove suspected false negatives — other images' views that look like
the anchor's class — from the anchor's denominator. Elimination only: a cancelled view is not turned into
a positive ("false negative attraction"), which the paper avoids because early detections are unreliable.

- Adaptive FNC cancels every negative whose cosine similarity to the anchor exceeds rho; rho follows a
  schedule from high to low (`csl_jax.losses.rho_schedule`), so it may be a traced scalar.
- FNC cancels a negative when it is among the anchor's top_k most similar negatives AND its similarity
  exceeds a fixed threshold (defaults top_k=10, threshold=0.7), as in the authors' code: see `fnc_mask`.

The positive pair (the anchor's other view) is never cancelled and the anchor itself never counts. The mask
is read off the similarity row the loss already has (O(N) extra work per anchor) under stop_gradient, so no
gradient flows through the decision. Both losses share the row-wise core of `contrastive.py`, so the
sharded versions in `sharded.py` reuse the functions below on each device's block of anchors.

A NaN threshold (rho or FNC's threshold) would compare False everywhere and silently turn the loss into
NT-Xent. A concrete NaN raises ValueError; a traced one (inside jax.jit) makes the loss NaN instead, so the
training loop's non-finite-loss guard stops the run.

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
import math

import jax
import jax.numpy as jnp

from csl_jax.losses import contrastive
from csl_jax.losses.contrastive import AnchorRows


def adaptive_fnc_mask(rows: AnchorRows, rho) -> jax.Array:
  """bool[B, 2N]: negatives with cosine similarity to the anchor > rho (Eq. 4's filtered-out set)."""
  similarity = jax.lax.stop_gradient(rows.cosine)
  return rows.is_negative & (similarity > rho)


def fnc_mask(rows: AnchorRows, *, threshold, top_k: int) -> jax.Array:
  """bool[B, 2N]: negatives among the anchor's top_k most similar negatives AND with similarity > threshold.

  Follows the authors' code (github.com/google-research/fnc, `objective.py`, `add_contrastive_loss`): the
  threshold mask and the top-k mask are multiplied, so an anchor whose nearest negatives all lie below the
  threshold cancels nothing, and at most top_k negatives per anchor are cancelled. Their defaults are the
  flags `fn_topk` = 10 and `fn_threshold` = 0.7 (strict >) in `run.py`. Differences from that code: there
  each candidate is scored by its maximum similarity over all views of the anchor's image (two views plus a
  support set of extra crops) and the decision is shared by those views; here each anchor row decides from
  its own similarities. And there the detected views are added to the numerator (attraction); here they are
  only removed from the denominator (elimination).

  top_k is over the anchor's full (global) row and counts negatives only; ties are broken by lax.top_k
  (lowest column first), as by tf.math.top_k in the reference.
  """
  similarity = jax.lax.stop_gradient(rows.cosine)
  negatives = rows.is_negative
  num_rows, num_columns = similarity.shape
  # -inf-like scores keep self and the positive out of the top-k unless k exceeds the negatives;
  # the final `& negatives` drops them even then.
  scores = jnp.where(negatives, similarity, contrastive.MASKED_LOGIT)
  _, top_columns = jax.lax.top_k(scores, min(top_k, num_columns))
  in_top_k = jnp.zeros_like(negatives).at[jnp.arange(num_rows)[:, None], top_columns].set(True)
  return in_top_k & negatives & (similarity > threshold)


def cancelled_nt_xent_rows(rows: AnchorRows, cancelled, *, temperature) -> jax.Array:
  """Eq. 4 per anchor: NT-Xent with the `cancelled` columns left out of the denominator. f32[B]."""
  keep = ~(rows.is_self | cancelled)
  return contrastive.masked_contrastive_loss(rows.cosine / temperature, keep=keep, positives=rows.is_pair)


def nan_if_nan_threshold(per_anchor, threshold) -> jax.Array:
  """f32[B] per_anchor, or all NaN when the (possibly traced) threshold is NaN: no silent NT-Xent."""
  return jnp.where(jnp.isnan(threshold), jnp.nan, per_anchor)


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
  """Adaptive FNC on a block of anchors -> (f32[B] per-anchor losses, int32 counts). NaN rho -> NaN losses."""
  cancelled = adaptive_fnc_mask(rows, rho)
  per_anchor = cancelled_nt_xent_rows(rows, cancelled, temperature=temperature)
  return nan_if_nan_threshold(per_anchor, rho), cancellation_counts(rows, cancelled)


def fnc_rows(rows: AnchorRows, *, temperature, threshold, top_k: int):
  """FNC (elimination) on a block of anchors -> (f32[B] per-anchor losses, int32 counts). NaN threshold -> NaN."""
  cancelled = fnc_mask(rows, threshold=threshold, top_k=top_k)
  per_anchor = cancelled_nt_xent_rows(rows, cancelled, temperature=temperature)
  return nan_if_nan_threshold(per_anchor, threshold), cancellation_counts(rows, cancelled)


def check_rho(rho, *, name: str = "rho"):
  """Raises ValueError unless rho is a scalar (a Python number or a traced f32[] from a schedule), not NaN.

  NaN is caught only when rho is concrete; a traced NaN cannot be inspected here and makes the loss NaN
  (see `nan_if_nan_threshold`). `name` words the message for FNC's fixed threshold.
  """
  if jnp.ndim(rho) != 0:
    hint = " Evaluate the schedule at the current step: rho=rho_fn(step)." if name == "rho" else ""
    raise ValueError(f"{name} must be a scalar threshold on cosine similarity, got shape {jnp.shape(rho)}.{hint}")
  if not isinstance(rho, jax.core.Tracer) and math.isnan(float(rho)):
    raise ValueError(f"{name} is NaN: every 'similarity > {name}' test would be False, silently cancelling "
                     f"nothing. Check the schedule or config that produced it.")


def adaptive_fnc(z1, z2, *, temperature=0.5, rho=0.7, labels=None):
  """Adaptive False Negative Cancellation loss (the paper's Eq. 4).

  Args:
    z1, z2: f32/bf16[N, D] projections of the two views (normalised here), N >= 2, D >= 1.
    temperature: tau > 0.
    rho: cosine-similarity threshold (float or traced f32[]); negatives with similarity > rho leave the
      denominator. rho > 1 cancels nothing and gives exactly NT-Xent. NaN raises ValueError when concrete
      and gives a NaN loss when traced.
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


def check_top_k(top_k, num_images: int | None = None):
  """Raises ValueError unless top_k is a Python int in [1, 2N - 2] (it sets a static shape).

  2N - 2 is the number of negatives of each anchor (all views but itself and its positive) for a batch of
  num_images = N images; without num_images only top_k >= 1 is checked.
  """
  if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
    raise ValueError(f"top_k must be a Python int >= 1 (how many of each anchor's most similar negatives may "
                     f"be cancelled); got {top_k!r}.")
  if num_images is not None and top_k > 2 * num_images - 2:
    raise ValueError(f"top_k={top_k} exceeds the {2 * num_images - 2} negatives per anchor of a batch of "
                     f"N={num_images} images (2N - 2); use top_k <= {2 * num_images - 2}.")


def fnc(z1, z2, *, temperature=0.5, threshold=0.7, top_k=10, labels=None):
  """False Negative Cancellation, elimination variant (Huynh et al. 2022).

  A negative is cancelled when it is among the anchor's top_k most similar negatives and its cosine
  similarity exceeds threshold (the rule and defaults of the authors' code; see `fnc_mask`).

  Args:
    z1, z2: f32/bf16[N, D] projections of the two views (normalised here), N >= 2, D >= 1.
    temperature: tau > 0.
    threshold: cosine-similarity threshold (float or traced f32[]); NaN is rejected / gives NaN like rho.
    top_k: Python int in [1, 2N - 2]: only each anchor's top_k most similar negatives can be cancelled
      (top_k = 2N - 2: every negative above threshold, i.e. Adaptive FNC at rho = threshold).
    labels: optional int[N] true classes, for the precision/recall stats only.

  Returns:
    (f32[] mean loss over 2N anchors, dict of f32[] stats — see the module docstring).
  """
  contrastive.check_views(z1, z2, labels, what="fnc")
  contrastive.check_temperature(temperature)
  check_rho(threshold, name="threshold")
  check_top_k(top_k, jnp.shape(z1)[0])
  rows = contrastive.anchor_rows(z1, z2, z1, z2, labels_rows=labels, labels_all=labels)
  per_anchor, counts = fnc_rows(rows, temperature=temperature, threshold=threshold, top_k=top_k)
  return jnp.mean(per_anchor), cancellation_stats(counts, per_anchor.shape[0])

"""Plain-numpy float64 references for the contrastive losses, written as explicit loops over anchors.

Views are numbered like `concatenate([z1, z2])`: view v < N is view 1 of image v, view v >= N is view 2 of
image v - N. Deliberately naive (no masks, no logsumexp) so they share nothing with the JAX code.
"""
import math

import numpy as np


def unit_views(z1, z2):
  """float64[2N, D] L2-normalised views, first views then second views."""
  views = np.concatenate([np.asarray(z1, np.float64), np.asarray(z2, np.float64)])
  return views / np.linalg.norm(views, axis=1, keepdims=True)


def pair_of(anchor, num_images):
  """Index of the other view of the anchor's image."""
  return anchor + num_images if anchor < num_images else anchor - num_images


def cosine_matrix(z1, z2):
  """float64[2N, 2N] cosine similarities between all views."""
  views = unit_views(z1, z2)
  return views @ views.T


def per_anchor_losses(z1, z2, temperature, positives, removed=frozenset()):
  """float64[2N]: -1/|P(i)| sum_p log(e^{s_ip/t} / sum_{k != i, (i, k) not removed} e^{s_ik/t}).

  positives: function anchor -> list of positive views. removed: set of (anchor, view) pairs left out of
  the denominator (cancelled negatives).
  """
  similarity = cosine_matrix(z1, z2)
  num_views = similarity.shape[0]
  losses = np.zeros(num_views)
  for i in range(num_views):
    denominator = 0.0
    for k in range(num_views):
      if k != i and (i, k) not in removed:
        denominator += math.exp(similarity[i, k] / temperature)
    terms = [-math.log(math.exp(similarity[i, p] / temperature) / denominator) for p in positives(i)]
    losses[i] = sum(terms) / len(terms)
  return losses


def nt_xent_per_anchor(z1, z2, temperature, removed=frozenset()):
  """SimCLR NT-Xent (Eq. 1) per anchor, optionally with cancelled (anchor, view) pairs removed (Eq. 4)."""
  num_images = len(z1)
  return per_anchor_losses(z1, z2, temperature, lambda i: [pair_of(i, num_images)], removed)


def supcon_per_anchor(z1, z2, labels, temperature):
  """SupCon L_out per anchor: positives are all other views with the anchor's label."""
  view_labels = list(labels) + list(labels)

  def positives(i):
    return [p for p in range(len(view_labels)) if p != i and view_labels[p] == view_labels[i]]

  return per_anchor_losses(z1, z2, temperature, positives)


def cancelled_pairs(z1, z2, *, threshold, top_k=None):
  """(anchor, view) negatives with similarity > threshold that are among the anchor's top_k most similar negatives.

  The FNC rule of the authors' code (google-research/fnc, objective.py: threshold mask times top-k mask).
  top_k=None: no top-k restriction, i.e. Adaptive FNC's rule at rho = threshold. Ties: lowest view index first.
  """
  similarity = cosine_matrix(z1, z2)
  num_views, num_images = similarity.shape[0], len(z1)
  removed = set()
  for i in range(num_views):
    negatives = [k for k in range(num_views) if k != i and k != pair_of(i, num_images)]
    by_similarity = sorted(negatives, key=lambda k: -similarity[i, k])  # stable: ties keep index order
    candidates = by_similarity if top_k is None else by_similarity[:top_k]
    removed.update((i, k) for k in candidates if similarity[i, k] > threshold)
  return removed

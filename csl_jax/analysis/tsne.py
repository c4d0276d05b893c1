"""2-D t-SNE embedding of encoder features for the paper's Fig. 2 panels.

Uses scikit-learn's Barnes-Hut TSNE. openTSNE (FFT-accelerated) was measured on this project's 2-core
CPU machine and was not clearly faster at the sizes we plot (2,000×128: 3.3–3.7 s vs 4.1–5.3 s for
scikit-learn; 5,000×128: 16.9 s vs 15.6 s), so we keep the dependency we already have.

The embedding is saved as tsne.npz with
  points f32[M, 2], labels int[M], indices int[M] (rows of the full test set), class_names str[C]
so the report can redraw side-by-side panels without recomputing.
"""
import pathlib
from typing import Optional, Sequence

import numpy as np


def subsample_indices(num_examples: int, max_points: int, seed: int = 0) -> np.ndarray:
  """Sorted row indices int[min(N, max_points)], drawn without replacement with a fixed seed."""
  if max_points < 1:
    raise ValueError(f"max_points must be ≥ 1; got {max_points}.")
  if num_examples <= max_points:
    return np.arange(num_examples)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(num_examples, size=max_points, replace=False))


def tsne_embed(features, labels, *, max_points: int = 5000, seed: int = 0, perplexity: float = 30.0,
               num_threads: Optional[int] = None) -> dict:
  """t-SNE of f32[N, D] features (subsampled to ≤ max_points rows) -> {"points", "labels", "indices"}.

  Perplexity is capped at (M − 1) / 3 because scikit-learn requires perplexity < M and the Gaussian
  bandwidth search needs about 3·perplexity neighbours.
  num_threads caps the OpenMP threads of the Barnes-Hut gradient (None: scikit-learn's default, all
  cores). On a machine whose cores are already busy, 1 is much faster: spinning OpenMP workers made
  2,000 points take 118 s instead of 19 s on this project's loaded 2-core machine.
  """
  # Imported lazily: sklearn's import costs ~1 s and most callers never need it.
  from sklearn.manifold import TSNE
  import threadpoolctl

  features = np.asarray(features, np.float32)
  labels = np.asarray(labels)
  if features.ndim != 2 or labels.shape != features.shape[:1]:
    raise ValueError(f"Expected features f32[N, D] and labels int[N]; got {list(features.shape)} and "
                     f"{list(labels.shape)}.")
  if features.shape[0] < 4:
    raise ValueError(f"t-SNE needs at least 4 points; got {features.shape[0]}.")
  indices = subsample_indices(features.shape[0], max_points, seed)
  subset = features[indices]
  perplexity = min(perplexity, (len(indices) - 1) / 3.0)
  with threadpoolctl.threadpool_limits(limits=num_threads, user_api="openmp"):
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(subset)
  return {"points": points.astype(np.float32), "labels": labels[indices].astype(np.int32),
          "indices": indices.astype(np.int64)}


def save_tsne(path, embedding: dict, class_names: Sequence[str]) -> pathlib.Path:
  """Writes tsne.npz (points, labels, indices, class_names) and returns its path."""
  path = pathlib.Path(path)
  np.savez(path, points=embedding["points"], labels=embedding["labels"], indices=embedding["indices"],
           class_names=np.asarray(list(class_names), dtype=str))
  return path


def load_tsne(path) -> dict:
  """Reads a tsne.npz written by `save_tsne`; class_names falls back to the label values when absent."""
  with np.load(path, allow_pickle=False) as data:
    points = np.asarray(data["points"], np.float32)
    labels = np.asarray(data["labels"]).astype(np.int64)
    if points.ndim != 2 or points.shape[1] != 2 or labels.shape != points.shape[:1]:
      raise ValueError(f"{path}: expected points f32[M, 2] and labels int[M]; got {list(points.shape)} and "
                       f"{list(labels.shape)}.")
    if "class_names" in data:
      class_names = [str(name) for name in data["class_names"]]
    else:
      class_names = [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]
  return {"points": points, "labels": labels, "class_names": class_names}

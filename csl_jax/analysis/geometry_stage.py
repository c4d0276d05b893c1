"""Geometry stage: encoder features of the test split -> geometry.json, class_distances.png, tsne.png, tsne.npz.

`measure_geometry` only measures features, so it can be rerun on saved features and tested without a model;
`GeometryEvaluator` (the pipeline's evaluator) extracts them — one plain view and one SimCLR-augmented view
per image, for alignment — through `eval.batches`, from in-memory or streamed splits alike.
"""
import functools
import json
import math
import pathlib
from typing import Optional, Sequence

import numpy as np

from csl_jax.analysis import geometry
from csl_jax.analysis import plots
from csl_jax.analysis import tsne


def _json_number(value):
  """float, or None for nan/inf (JSON has no NaN; the report shows None as '—')."""
  value = float(value)
  return value if math.isfinite(value) else None


def measure_geometry(features, labels, class_names: Sequence[str], out_dir, *, features_view2=None,
                     tsne_max_points: int = 5000, seed: int = 0, block_size: int = 1024,
                     normalize: bool = True, tsne_threads: Optional[int] = None) -> dict:
  """Measures class separation, alignment and uniformity of f32[N, D] features and writes the stage outputs.

  Args:
    features: f32[N, D] encoder features of the test split (one view, no augmentation).
    labels: int[N] in [0, len(class_names)).
    class_names: C names, used for the heatmap and t-SNE legend.
    out_dir: run directory; created if needed.
    features_view2: optional f32[N, D] features of a second augmented view of the same N images (row i
      ↔ row i) for alignment; without it alignment is reported as null.
    tsne_max_points: t-SNE subsample size (fixed seed); 0 skips t-SNE (tsne.png / tsne.npz not written).
    seed: subsampling and t-SNE seed.
    block_size: tile size of the N×N pair computations.
    normalize: measure distances between L2-normalised features (default, as on the contrastive
      hypersphere) or raw ones. Uniformity and alignment are always on normalised features.
    tsne_threads: OpenMP threads for t-SNE (None: all cores; see `tsne.tsne_embed`).

  Returns:
    The geometry.json dict: inter_class, intra_class, ratio, alignment, uniformity,
    class_distance_matrix [[...]], num_examples, plus intra_class_per_class, normalized, tsne_points.
  """
  features = np.asarray(features, np.float32)
  labels = np.asarray(labels)
  num_classes = len(class_names)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"features must be f32[N, D] with N ≥ 2; got shape {list(features.shape)}.")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)

  unit = geometry.l2_normalize(features)
  sums = geometry.pair_sums(unit if normalize else features, labels, num_classes, block_size=block_size)
  separation = geometry.class_distances_from_sums(sums)
  if normalize:
    uniformity = geometry.uniformity_from_sums(sums)
  else:
    uniformity = geometry.uniformity(features, block_size=block_size)
  alignment = None
  if features_view2 is not None:
    alignment = geometry.alignment(features, features_view2)

  matrix = separation["class_distance_matrix"]
  result = {
      "inter_class": _json_number(separation["inter_class"]),
      "intra_class": _json_number(separation["intra_class"]),
      "ratio": _json_number(separation["ratio"]),
      "alignment": None if alignment is None else _json_number(alignment),
      "uniformity": _json_number(uniformity),
      "class_distance_matrix": [[_json_number(v) for v in row] for row in matrix],
      "num_examples": int(features.shape[0]),
      "intra_class_per_class": [_json_number(v) for v in separation["intra_class_per_class"]],
      "class_names": list(class_names),
      "normalized": bool(normalize),
      "tsne_points": 0,
  }
  ratio_text = "n/a" if result["ratio"] is None else f"{result['ratio']:.2f}×"
  plots.class_distance_heatmap(matrix, class_names, out_dir / "class_distances.png",
                               title=f"mean pairwise distance (inter/intra = {ratio_text})")
  if tsne_max_points > 0 and features.shape[0] >= 4:
    # t-SNE sees the same (normalised) vectors the distances were measured on.
    embedding = tsne.tsne_embed(np.asarray(unit) if normalize else features, labels,
                                max_points=tsne_max_points, seed=seed, num_threads=tsne_threads)
    tsne.save_tsne(out_dir / "tsne.npz", embedding, class_names)
    plots.tsne_figure(out_dir / "tsne.png", embedding["points"], embedding["labels"], class_names,
                      title=f"t-SNE of test features (inter/intra = {ratio_text})")
    result["tsne_points"] = int(len(embedding["indices"]))
  return result


def run_geometry_stage(features, labels, class_names: Sequence[str], out_dir, **kwargs) -> dict:
  """`measure_geometry` (same arguments), then writes geometry.json."""
  result = measure_geometry(features, labels, class_names, out_dir, **kwargs)
  (pathlib.Path(out_dir) / "geometry.json").write_text(json.dumps(result, indent=2))
  return result


def second_view(augment, key, images):
  """A SimCLR view of u8 images [B, H, W, C], or of clips [B, T, H, W, C] with one draw per clip: every frame
  of a clip gets its clip's crop, flip and colour change (`augment` draws one row of uniforms per batch row from
  `key`), the temporally consistent augmentation of video contrastive learning."""
  if images.ndim == 5:
    import jax  # Lazy, as in GeometryEvaluator.run.
    return jax.vmap(lambda frames: augment(key, frames), in_axes=1, out_axes=1)(images)
  return augment(key, images)


@functools.lru_cache(maxsize=None)
def _view_features_kernel():
  """features(second_view(augment, key, images)), jitted over the model (`inference.jit_over_model`) with the
  augmentation as a static (function, settings) pair: the runs of a study share one compiled program."""
  from csl_jax.models import inference  # Lazy, as in GeometryEvaluator.run.

  @functools.partial(inference.jit_over_model, static_argnames=("augment_fn", "augment_kwargs"))
  def kernel(features_fn, images, key, *, augment_fn, augment_kwargs):
    return features_fn(second_view(functools.partial(augment_fn, **dict(augment_kwargs)), key, images))
  return kernel


class GeometryEvaluator:
  """geometry.json (+ class_distances.png, tsne.png): inter/intra-class distance ratio (paper Fig. 2),
  alignment and uniformity of the encoder's test features (images or clips)."""
  name = "geometry"

  def __init__(self, config, *, mesh, **unused):
    del unused
    self.config, self.mesh = config, mesh

  def spec(self) -> dict:
    c = self.config
    return {"num_examples": c.geometry.num_examples, "tsne_max_points": c.geometry.tsne_max_points, "seed": c.seed,
            "view_augment": {"crop_scale_min": c.augment.crop_scale_min, "jitter_strength": c.augment.jitter_strength,
                             "grayscale_prob": c.augment.grayscale_prob, "blur": c.augment.blur}}

  def run(self, classifier, dataset, run_dir) -> dict:
    import jax  # Lazy: measuring saved features needs no JAX.
    from csl_jax import methods
    from csl_jax.eval import batches
    c = self.config
    augment = methods.simclr_augment(c, dataset.image_shape[-2])
    view_key = jax.random.PRNGKey(c.seed + 1)
    feats, labels = batches.map_batches(lambda b: batches.apply_to_uint8(classifier.features, b.images), dataset, c.eval_batch_size, mesh=self.mesh,
                                        num_examples=c.geometry.num_examples, desc="geometry features")
    kernel, settings = _view_features_kernel(), tuple(sorted(augment.keywords.items()))
    view = lambda images, key: kernel(classifier.features, images, key, augment_fn=augment.func,  # noqa: E731
                                      augment_kwargs=settings)
    view2, _ = batches.map_batches(lambda b: view(b.images, jax.random.fold_in(view_key, b.index)), dataset,
                                   c.eval_batch_size, mesh=self.mesh, num_examples=c.geometry.num_examples,
                                   desc="geometry second view")
    if jax.process_index() != 0:
      return {}
    return measure_geometry(feats, labels, list(classifier.class_names), run_dir, features_view2=view2,
                            tsne_max_points=c.geometry.tsne_max_points, seed=c.seed)

"""Picking a data source by name: `load(source, split)`, and the per-channel statistics models normalise with.

Sources:
  "digits"          scikit-learn's bundled 8x8 digits (offline; see `digits.py`).
  "tfds:<name>"     a prepared tensorflow-datasets dataset (never downloaded; see `tfds_source.py`).
  "folder:<path>"   an image folder `<root>/<split>/<class>/<file>` or a .zip of one (see `folder.py`).

The source modules are imported lazily: "digits" and "folder:" never pay for importing TensorFlow.
"""
from csl_jax.data.dataset import compute_channel_stats

SOURCES_HELP = ('"digits", "tfds:<name>" (e.g. tfds:cifar10, tfds:imagenet2012) or "folder:<path>" '
                '(a directory <root>/<split>/<class>/<image> or a .zip of one)')


def load(source: str, split: str, *, data_dir: str | None = None, cache_dir: str | None = None,
         image_size: int | None = None):
  """Loads split `split` of `source` (see the module docstring); returns an ArrayDataset or, for large
  TFDS datasets (imagenet2012), a `tfds_source.StreamingDataset` with the same `batches(...)` but no `.images`.

  data_dir: TFDS data directory. cache_dir: where decoded image folders are cached (default ~/.cache/csl_jax).
  image_size: resize (shorter side) + center-crop every image to image_size x image_size on the host.
  """
  kind, sep, arg = source.partition(":")
  if source == "digits":
    from csl_jax.data import digits
    return digits.load(split, image_size=image_size)
  if sep and kind == "tfds" and arg:
    from csl_jax.data import tfds_source
    return tfds_source.load(arg, split, data_dir=data_dir, image_size=image_size)
  if sep and kind == "folder" and arg:
    from csl_jax.data import folder
    return folder.load(arg, split, cache_dir=cache_dir, image_size=image_size)
  raise ValueError(f"Unknown data source {source!r}; expected {SOURCES_HELP}.")


# Per-channel mean/std of images in [0, 1] over the training split, for the model's input normalisation.
# CIFAR: population statistics of the training images; ImageNet: the customary torchvision values.
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
KNOWN_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar10_corrupted": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "imagenet2012": _IMAGENET_STATS,
    "imagenet2012_subset": _IMAGENET_STATS,
    "imagenet2012_real": _IMAGENET_STATS,
    "imagenet2012_corrupted": _IMAGENET_STATS,
    "imagenet_v2": _IMAGENET_STATS,
}


def channel_stats(source: str, train_dataset=None, **load_kwargs) -> tuple:
  """(mean, std) tuples per channel for normalising [0, 1] images of `source`.

  Known TFDS datasets (CIFAR-10/100, ImageNet, MNIST) come from a table; "digits", "folder:" and other
  in-memory sources are computed from their training split: `train_dataset` when given (the pipeline passes
  the split it already loaded, so nothing is loaded twice), else `load(source, "train", **load_kwargs)`.
  """
  kind, _, name = source.partition(":")
  if kind == "tfds":
    base = name.split("/")[0].split(":")[0]
    if base in KNOWN_STATS:
      return KNOWN_STATS[base]
  ds = train_dataset if train_dataset is not None else load(source, "train", **load_kwargs)
  if not hasattr(ds, "images"):
    raise ValueError(f"{source}: no stored channel statistics and the dataset streams, so they cannot be "
                     f"computed here; add them to csl_jax.data.dataset.KNOWN_STATS.")
  return compute_channel_stats(ds.images)

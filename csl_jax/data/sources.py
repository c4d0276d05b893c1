"""Picking a data source by name: `load(source, split)`, and the per-channel statistics models normalise with.

Sources:
  "digits"          scikit-learn's bundled 8x8 digits (offline; see `digits.py`).
  "tfds:<name>"     a prepared tensorflow-datasets dataset (never downloaded; see `tfds_source.py`).
  "folder:<path>"   an image folder `<root>/<split>/<class>/<file>` or a .zip of one: decoded once into memory
                    (`folder.py`), or per batch when resized to a crop (resize_size) or too large for memory
                    (`streamed_folder.py`).
  "frames:<path>"   videos as folders of frames `<root>/<split>/<class>/<video>/<frame>.jpg`, one clip of
                    clip_frames frames per video, streamed (`video_frames.py`).

The source modules are imported lazily: "digits" and "folder:" never pay for importing TensorFlow.
"""
import os

from csl_jax.data.dataset import compute_channel_stats

SOURCES_HELP = ('"digits", "tfds:<name>" (e.g. tfds:cifar10, tfds:imagenet2012), "folder:<path>" '
                '(a directory <root>/<split>/<class>/<image> or a .zip of one) or "frames:<path>" (videos: '
                '<root>/<split>/<class>/<video>/<frame>.jpg)')


def load(source: str, split: str, *, data_dir: str | None = None, cache_dir: str | None = None,
         image_size: int | None = None, resize_size: int | None = None, clip_frames: int = 0):
  """Loads split `split` of `source` (see the module docstring): an ArrayDataset, or a streamed dataset with the
  same `batches(...)` but no `.images` (`tfds_source.StreamingDataset` for large TFDS datasets such as
  imagenet2012, `streamed_folder.StreamedFolder` for large or resized image folders and for frame folders).

  data_dir: TFDS data directory. cache_dir: where decoded image folders are cached (default ~/.cache/csl_jax).
  image_size: resize (shorter side) + center-crop every image to image_size x image_size on the host.
  resize_size: resize the shorter side to resize_size first, then center-crop image_size (the ImageNet evaluation
    transform: 256 then 224); None: to image_size.
  clip_frames: frames per clip of a "frames:" source (videos).
  """
  kind, sep, arg = source.partition(":")
  if clip_frames and kind != "frames":
    raise ValueError(f"clip_frames={clip_frames} is for video frame folders (\"frames:<path>\"), not {source!r}.")
  if source == "digits":
    if resize_size:
      raise ValueError("digits: resize_size is not supported (8x8 images); resize with image_size only.")
    from csl_jax.data import digits
    return digits.load(split, image_size=image_size)
  if sep and kind == "tfds" and arg:
    from csl_jax.data import tfds_source
    return tfds_source.load(arg, split, data_dir=data_dir, image_size=image_size, resize_size=resize_size)
  if sep and kind == "folder" and arg:
    from csl_jax.data import folder, streamed_folder
    if resize_size or (os.path.exists(os.path.expanduser(arg)) and
                       streamed_folder.too_large_for_memory(arg, split, image_size)):
      return streamed_folder.load_images(arg, split, image_size=image_size, resize_size=resize_size)
    return folder.load(arg, split, cache_dir=cache_dir, image_size=image_size)
  if sep and kind == "frames" and arg:
    from csl_jax.data import video_frames
    return video_frames.load(arg, split, clip_frames=clip_frames, image_size=image_size, resize_size=resize_size)
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

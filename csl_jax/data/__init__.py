"""Datasets (`load`, `channel_stats`) and on-device augmentation (`augment`).

    from csl_jax import data
    ds = data.load("folder:/work/shared/data/cifar10_jpg.zip", "train")
    batch = next(ds.batches(512, seed=0))          # {"image": u8[512, 32, 32, 3], "label": i32[512]}
    views = data.augment.simclr(key, batch["image"], out_size=32)

`augment` (JAX) and the source modules are imported on first use, so numpy-only users (the
host-side loaders) never import JAX or TensorFlow.
"""
import importlib

from csl_jax.data.dataset import (ArrayDataset, compute_channel_stats, epoch_permutation, process_slice,
                                  steps_per_epoch)
from csl_jax.data.sources import KNOWN_STATS, channel_stats, load

_LAZY_SUBMODULES = ("augment", "digits", "folder", "streamed_folder", "tfds_source", "video_frames")


def __getattr__(name):
  if name in _LAZY_SUBMODULES:
    return importlib.import_module(f"csl_jax.data.{name}")
  raise AttributeError(f"module 'csl_jax.data' has no attribute {name!r}")


__all__ = ["ArrayDataset", "KNOWN_STATS", "augment", "channel_stats", "compute_channel_stats", "epoch_permutation",
           "load", "process_slice", "steps_per_epoch"]

"""The one way evaluators walk a split: fixed-size, padded, masked batches sharded over the data axis.

Works the same for in-memory (`ArrayDataset`) and streamed (`tfds_source.StreamingDataset`) splits and for
one or many processes: each process reads its own rows (`dataset.batches(..., shuffle=False)`), pads them to
a fixed local size, and the rows become one global array sharded over `sharding.DATA_AXIS`; `mask` marks the
real rows. Every batch has the same shape, so a jitted function compiles once per pass, and a process whose
part of a streamed split runs out first keeps joining the collective calls with empty (all-padding) batches.

Images stay uint8 on the way to the devices (4x less to transfer) and become f32 in [0, 1] inside the jitted
function (`apply_to_uint8`). `map_batches` runs a function over a split and gathers the real rows back to
every host; `count_correct` is the one way a correct prediction is counted.
"""
import dataclasses
import time
from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from csl_jax.models import inference
from csl_jax.train import sharding


@dataclasses.dataclass(frozen=True)
class EvalBatch:
  """One padded global batch. images u8[B, H, W, C] and labels i32[B] sharded over the data axis; mask bool[B]
  is False on padding rows. local_images / local_labels: this process' real rows on the host (unpadded)."""
  images: jax.Array
  labels: jax.Array
  mask: jax.Array
  index: int
  local_images: np.ndarray
  local_labels: np.ndarray


def global_batch_size(batch_size: int, mesh, num_examples: Optional[int] = None) -> int:
  """`batch_size` (capped at `num_examples`) rounded up to a multiple of the data axis and the process count."""
  if int(batch_size) < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  size = min(int(batch_size), max(int(num_examples), 1)) if num_examples is not None else int(batch_size)
  granule = int(np.lcm(mesh.shape[sharding.DATA_AXIS], jax.process_count()))
  return -(-size // granule) * granule


def subset(dataset, num_examples: int):
  """The first `num_examples` of `dataset` (all of it for 0 or more than it has)."""
  return dataset.take(int(num_examples)) if 0 < num_examples < len(dataset) else dataset


def _pad(array: np.ndarray, size: int) -> np.ndarray:
  return np.concatenate([array, np.zeros((size - len(array),) + array.shape[1:], array.dtype)]) if len(
      array) < size else array


def eval_batches(dataset, batch_size: int, *, mesh, num_examples: int = 0,
                 transform: Optional[Callable[[np.ndarray, int], np.ndarray]] = None) -> Iterator[EvalBatch]:
  """Yields EvalBatches covering the first `num_examples` (0 = all) of `dataset` once, in order.

  transform(local u8 images, batch index) -> u8 images of the same shape runs on the host before the
  transfer (e.g. a corruption); it sees only real rows.
  """
  dataset = subset(dataset, num_examples)
  if len(dataset) == 0:
    raise ValueError(f"{getattr(dataset, 'name', 'dataset')}: no examples to evaluate.")
  size = global_batch_size(batch_size, mesh, len(dataset))
  local_size = size // jax.process_count()
  count = dataset.eval_batch_count(size, jax.process_count())
  local = dataset.batches(size, seed=0, shuffle=False, drop_remainder=False)
  data_sharding = sharding.data_sharding(mesh)
  image_shape, empty = tuple(dataset.image_shape), None
  for index in range(count):
    batch = next(local, None)
    if batch is None:  # This process' part of a streamed split is exhausted; the others still run.
      empty = empty or {"image": np.zeros((0,) + image_shape, np.uint8), "label": np.zeros((0,), np.int32)}
      batch = empty
    images, labels = np.asarray(batch["image"]), np.asarray(batch["label"], np.int32)
    if transform is not None and len(images):
      images = np.asarray(transform(images, index), np.uint8)
    mask = np.arange(local_size) < len(images)
    place = lambda a: jax.make_array_from_process_local_data(data_sharding, a)
    yield EvalBatch(images=place(_pad(images, local_size)), labels=place(_pad(labels, local_size)),
                    mask=place(mask), index=index, local_images=images, local_labels=labels)


def to_unit_floats(images):
  """u8 images (in a jitted function) -> f32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


@inference.jit_over_model
def apply_to_uint8(model_fn: Callable, images):
  """model_fn(images / 255) for u8[B, ...] batches (model_fn written on [0, 1] images, e.g. a bound model's
  features), one compiled program per architecture."""
  return model_fn(to_unit_floats(images))


def count_correct(logits, labels, mask):
  """i32[]: real rows (mask) whose argmax logit is the label. logits f32[B, K], labels i32[B], mask bool[B]."""
  return jnp.sum((jnp.argmax(logits, axis=-1) == labels) & mask, dtype=jnp.int32)


def gather(x: jax.Array, mask: jax.Array) -> np.ndarray:
  """The real rows of a sharded batch output, as one host array on every process (rows in batch order)."""
  if jax.process_count() > 1:
    x, mask = (multihost_utils.process_allgather(a, tiled=True) for a in (x, mask))
  return np.asarray(x)[np.asarray(mask)]


class Progress:
  """Periodic progress lines with an ETA (every `every_secs`), for passes that take more than a few seconds."""

  def __init__(self, desc: str, total: int, every_secs: float = 15.0):
    self.desc, self.total, self.every_secs = desc, total, every_secs
    self.start = self.last = time.time()

  def update(self, done: int) -> None:
    now = time.time()
    if self.desc and done < self.total and now - self.last >= self.every_secs:
      self.last = now
      eta = (now - self.start) / max(done, 1) * (self.total - done)
      logging.info("%s: %d/%d, ETA %.0fs", self.desc, done, self.total, eta)


def map_batches(fn: Callable, dataset, batch_size: int, *, mesh, num_examples: int = 0, desc: str = "",
                transform=None) -> tuple:
  """(outputs f[N, ...], labels i32[N]) of `fn(EvalBatch) -> f[B, ...]` (e.g. a jitted model on batch.images)
  over a split's real rows."""
  outputs, labels = [], []
  batches = eval_batches(dataset, batch_size, mesh=mesh, num_examples=num_examples, transform=transform)
  total = len(subset(dataset, num_examples))
  progress = Progress(desc, total)
  for batch in batches:
    outputs.append(gather(fn(batch), batch.mask))
    labels.append(gather(batch.labels, batch.mask))
    progress.update(sum(len(o) for o in outputs))
  return np.concatenate(outputs), np.concatenate(labels)


@inference.jit_over_model
def _accuracy_counts(logits_fn, images, labels, mask):
  """i32[2]: correct and real rows of one batch; one compiled counter per architecture, whatever the weights."""
  return jnp.stack([count_correct(logits_fn(to_unit_floats(images)), labels, mask), jnp.sum(mask, dtype=jnp.int32)])


def accuracy(logits_fn: Callable, dataset, batch_size: int, *, mesh, num_examples: int = 0, transform=None,
             desc: str = "") -> float:
  """Top-1 accuracy of `logits_fn` (f32 in [0, 1] -> logits) over a split, counted on the devices."""
  counts = []
  progress = Progress(desc, len(subset(dataset, num_examples)))
  for batch in eval_batches(dataset, batch_size, mesh=mesh, num_examples=num_examples, transform=transform):
    counts.append(_accuracy_counts(logits_fn, batch.images, batch.labels, batch.mask))
    progress.update(batch.index * len(batch.mask))
  correct, total = np.sum(jax.device_get(counts), axis=0)
  return float(correct) / max(int(total), 1)

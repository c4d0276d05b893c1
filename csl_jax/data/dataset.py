"""The in-memory dataset (`ArrayDataset`) and the batching arithmetic every source shares.

`sources.load(source, split)` picks a source; in-memory sources return an `ArrayDataset` (uint8 images in host
memory), large TFDS splits a `tfds_source.StreamingDataset` with the same `batches(...)` interface. Batch order is a pure function
of (seed, step): epoch e = step // steps_per_epoch visits the examples in the order
`np.random.default_rng([seed, e]).permutation(N)`, so a resumed run (`start_step=s`) sees exactly the
batches an uninterrupted run sees from step s. In multi-host runs every process draws the same global
batch and keeps its own contiguous slice of it.

This module imports no source module (the sources import it), so there is no import cycle.
"""
import dataclasses
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

Batch = dict  # {"image": u8[local_b, H, W, C], "label": i32[local_b], "index": i32[local_b]}


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The visiting order of epoch `epoch`: int64[num_examples], a permutation of range(num_examples)."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(num_examples: int, global_batch_size: int, drop_remainder: bool) -> int:
  """Number of global batches in one pass; a final partial batch counts only without drop_remainder."""
  if drop_remainder:
    return num_examples // global_batch_size
  return -(-num_examples // global_batch_size)


def process_slice(batch_len: int, process_index: int, process_count: int) -> slice:
  """The contiguous part of a global batch of `batch_len` examples that process `process_index` keeps.

  Full batches split evenly; a smaller final batch (one-pass evaluation) splits as evenly as possible
  (`np.array_split` sizes), so the processes' slices still partition it.
  """
  base, extra = divmod(batch_len, process_count)
  start = process_index * base + min(process_index, extra)
  return slice(start, start + base + (process_index < extra))


def resolve_processes(process_index: int | None, process_count: int | None) -> tuple:
  """(process_index, process_count), defaulting to jax.process_index() / jax.process_count()."""
  if process_index is None or process_count is None:
    import jax  # Lazy: host-side loading alone never needs JAX.
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count}).")
  return process_index, process_count


def check_batch_size(global_batch_size: int, process_count: int):
  """Raises unless the global batch splits evenly across processes."""
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                     f"process_count={process_count}: every process takes an equal slice of each batch.")


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous; compare .images yourself.
class ArrayDataset:
  """A labelled image dataset held in host memory.

  images: u8[N, H, W, C] in [0, 255]; labels: i32[N] in [0, num_classes); class_names: label -> name.
  """
  images: np.ndarray
  labels: np.ndarray
  class_names: Sequence[str]
  name: str = ""

  def __post_init__(self):
    if self.images.dtype != np.uint8 or self.images.ndim != 4:
      raise ValueError(f"{self.name}: images must be uint8[N, H, W, C], "
                       f"got {self.images.dtype}{list(self.images.shape)}.")
    if self.labels.shape != self.images.shape[:1]:
      raise ValueError(f"{self.name}: {len(self.labels)} labels for {len(self.images)} images.")
    object.__setattr__(self, "labels", self.labels.astype(np.int32, copy=False))
    object.__setattr__(self, "class_names", list(self.class_names))

  @property
  def num_examples(self) -> int:
    return len(self.images)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple:
    return tuple(self.images.shape[1:])

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index) -> "ArrayDataset":
    """Subset by slice, integer array or boolean mask (always returns a dataset)."""
    if isinstance(index, (int, np.integer)):
      index = slice(index, index + 1 if index != -1 else None)
    return dataclasses.replace(self, images=self.images[index], labels=self.labels[index])

  def take(self, n: int) -> "ArrayDataset":
    """The first n examples (the split's stored order)."""
    return self[:n]

  def eval_batch_count(self, global_batch_size: int, process_count: int) -> int:
    """Batches of one unshuffled pass without drop_remainder (the same on every process)."""
    del process_count
    return steps_per_epoch(self.num_examples, global_batch_size, drop_remainder=False)

  def __repr__(self):
    return (f"ArrayDataset({self.name!r}, num_examples={self.num_examples}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})")

  def batches(self, global_batch_size: int, *, seed: int, start_step: int = 0, shuffle: bool = True,
              drop_remainder: bool = True, process_index: int | None = None,
              process_count: int | None = None) -> Iterator[Batch]:
    """Yields {"image": u8[local_b, H, W, C], "label": i32[local_b], "index": i32[local_b]},
    local_b = global_batch_size // process_count; "index" is each example's position in this dataset (what
    per-example training state, e.g. IFND's pseudo-labels, is looked up by).

    shuffle=True: an endless stream of epochs, each a fresh permutation (see `epoch_permutation`);
    global step s is a pure function of (seed, s), so `start_step=s` resumes exactly.
    shuffle=False: one pass in stored order starting at batch `start_step`; with drop_remainder=False
    the last batch is smaller (evaluation callers pad it themselves).
    process_index/process_count default to jax.process_index()/jax.process_count().
    """
    indices = batch_indices(self.num_examples, global_batch_size, seed=seed, start_step=start_step, shuffle=shuffle,
                            drop_remainder=drop_remainder, process_index=process_index, process_count=process_count,
                            name=self.name)
    return ({"image": self.images[i], "label": self.labels[i], "index": i.astype(np.int32)} for i in indices)


def batch_indices(num_examples: int, global_batch_size: int, *, seed: int, start_step: int = 0, shuffle: bool = True,
                  drop_remainder: bool = True, process_index: int | None = None, process_count: int | None = None,
                  name: str = "") -> Iterator[np.ndarray]:
  """The example indices of `ArrayDataset.batches` (same arguments): int64[local_b] per batch, this process' slice.

  Shared by every dataset that holds its examples by index (in memory, or decoded per batch from files), so they
  all visit the same examples in the same order for the same (seed, step). Validates the arguments at the call.
  """
  process_index, process_count = resolve_processes(process_index, process_count)
  check_batch_size(global_batch_size, process_count)
  steps = steps_per_epoch(num_examples, global_batch_size, drop_remainder)
  if steps == 0:
    raise ValueError(f"{name}: {num_examples} examples are fewer than one global batch of "
                     f"{global_batch_size}; lower the batch size or pass drop_remainder=False.")
  return _iterate_indices(num_examples, global_batch_size, seed, start_step, shuffle, steps, process_index,
                          process_count)


def _iterate_indices(num_examples, global_batch_size, seed, start_step, shuffle, steps, process_index, process_count):
  order, order_epoch = np.arange(num_examples), None
  step = start_step
  while shuffle or step < steps:
    epoch, within = divmod(step, steps)
    if shuffle and epoch != order_epoch:
      order, order_epoch = epoch_permutation(num_examples, seed, epoch), epoch
    indices = order[within * global_batch_size:(within + 1) * global_batch_size]
    yield indices[process_slice(len(indices), process_index, process_count)]
    step += 1


# ----------------------------------------------------------------------------------------------------
# Host-side resizing shared by the sources (done once at load time, not per step).


def fit_image(image: Image.Image, size: int, resize_size: int | None = None) -> Image.Image:
  """Resizes the shorter side to `resize_size` (default `size`), then center-crops size x size.

  torchvision's `Resize(resize_size)` + `CenterCrop(size)` on a PIL image, the evaluation transform of the
  ImageNet releases (resize 256, crop 224): PIL bilinear (antialiased when shrinking), the longer side becomes
  int(resize_size * long / short), the crop starts at round((side - size) / 2). resize_size >= size.
  """
  resize_size = resize_size or size
  if resize_size < size:
    raise ValueError(f"resize_size={resize_size} is smaller than the crop size {size}.")
  width, height = image.size
  short, long = min(width, height), max(width, height)
  if short != resize_size:
    new_long = int(resize_size * long / short)
    new_w, new_h = (resize_size, new_long) if width <= height else (new_long, resize_size)
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    width, height = new_w, new_h
  if (width, height) != (size, size):
    left, top = int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
  return image


def resize_images(images: np.ndarray, size: int, resize_size: int | None = None) -> np.ndarray:
  """u8[N, H, W, C] (C = 1 or 3) -> u8[N, size, size, C] via `fit_image` (shorter side + center crop)."""
  if images.shape[1:3] == (size, size):
    return images
  channels = images.shape[-1]
  out = np.empty((len(images), size, size, channels), np.uint8)
  for i, img in enumerate(images):
    pil = Image.fromarray(img[..., 0] if channels == 1 else img)
    out[i] = np.asarray(fit_image(pil, size, resize_size)).reshape(size, size, channels)
  return out


def compute_channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple:
  """(mean, std) per channel of u8[N, H, W, C] images scaled to [0, 1], pooled over all pixels."""
  total = np.zeros(images.shape[-1])
  total_sq = np.zeros(images.shape[-1])
  for start in range(0, len(images), chunk):  # Chunks bound the float64 temporaries.
    block = images[start:start + chunk].reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    total += block.sum(0)
    total_sq += np.square(block).sum(0)
  count = images.size // images.shape[-1]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)

"""Image folders decoded per batch: `StreamedFolder`, for splits too large for memory or of mixed image sizes.

The in-memory loader (`folder.py`) decodes a whole split once into one u8[N, H, W, 3] array. That does not fit
ImageNet (50,000 validation images are 7.5 GB decoded at 224², the 1.28M training images 190 GB) and its
images differ in size. A `StreamedFolder` keeps only the file list: every batch is read and decoded when it is
needed, by a thread pool (PIL releases the GIL while decoding and resizing), `prefetch` batches ahead. Each
image goes through `dataset.fit_image` (shorter side to resize_size, centre crop image_size x image_size:
torchvision's Resize(256) + CenterCrop(224) for the ImageNet releases), so mixed sizes are fine.

The interface is `tfds_source.StreamingDataset`'s (batches, take, eval_batch_count, num_classes, class_names,
image_shape, len) and the batch order is `ArrayDataset`'s (`dataset.batch_indices`): the same (seed, step) gives
the same examples as the in-memory split of the same folder would, on any number of processes.

Stored order: a fixed shuffle (seed 0) of the (class, file) list, like TFDS's shuffled records, so that "the
first N" (robustness.num_examples, linear_eval.num_train_examples) is a sample of all classes rather than the
first few class directories. Video frame folders (`video_frames.py`) reuse this class with a clip decoder.
"""
import collections
import concurrent.futures
import dataclasses
import itertools
import os
import pathlib
import threading
import zipfile
from typing import Callable, Iterator

import numpy as np

from csl_jax.data import dataset, folder

# A folder split whose decoded images would exceed this many bytes streams instead of loading into memory.
IN_MEMORY_LIMIT_BYTES = 4 << 30


class FileReader:
  """Reads the files of a directory or a zip by their '/'-separated relative names, from any thread.

  zipfile.ZipFile objects are not safe to share between threads, so each thread opens its own handle.
  """

  def __init__(self, root):
    self.root = pathlib.Path(root)
    self.is_zip = not self.root.is_dir()
    self._local = threading.local()

  def read(self, name: str) -> bytes:
    if not self.is_zip:
      return (self.root / name).read_bytes()
    archive = getattr(self._local, "archive", None)
    if archive is None:
      archive = self._local.archive = zipfile.ZipFile(self.root)
    return archive.read(name)


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedFolder:
  """A folder split decoded batch by batch.

  root: the directory or zip; entries[i]: what `decode` reads for example i (a file name, or a video's frame
  names); labels: i32[N]; image_shape: what one decoded example is, (H, W, C) or (T, H, W, C);
  decode(reader, entry) -> u8[image_shape] with `reader` a `FileReader` of root.
  num_workers: decode threads (0: all cores, at most 16); prefetch: batches decoded ahead of the consumer.
  """
  root: str
  entries: tuple
  labels: np.ndarray
  class_names: list
  image_shape: tuple
  decode: Callable
  name: str
  num_workers: int = 0
  prefetch: int = 2

  @property
  def num_examples(self) -> int:
    return len(self.entries)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return self.num_examples

  def __repr__(self):
    return (f"StreamedFolder({self.name!r}, num_examples={self.num_examples}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})")

  def take(self, n: int) -> "StreamedFolder":
    """The first n examples of the stored order."""
    if n >= self.num_examples:
      return self
    return dataclasses.replace(self, entries=self.entries[:n], labels=self.labels[:n], name=f"{self.name}[:{int(n)}]")

  def eval_batch_count(self, global_batch_size: int, process_count: int) -> int:
    """Batches of one unshuffled pass without drop_remainder (the same on every process)."""
    del process_count
    return dataset.steps_per_epoch(self.num_examples, global_batch_size, drop_remainder=False)

  def batches(self, global_batch_size: int, *, seed: int, start_step: int = 0, shuffle: bool = True,
              drop_remainder: bool = True, process_index: int | None = None,
              process_count: int | None = None) -> Iterator[dataset.Batch]:
    """As `ArrayDataset.batches` (same examples for the same arguments), decoding each batch in the thread pool."""
    indices = dataset.batch_indices(self.num_examples, global_batch_size, seed=seed, start_step=start_step,
                                    shuffle=shuffle, drop_remainder=drop_remainder, process_index=process_index,
                                    process_count=process_count, name=self.name)
    return self._decode_batches(indices)

  def _decode_batches(self, indices: Iterator[np.ndarray]) -> Iterator[dataset.Batch]:
    workers = self.num_workers or min(os.cpu_count() or 1, 16)
    reader = FileReader(self.root)
    pool = concurrent.futures.ThreadPoolExecutor(workers)

    def submit(batch_indices):
      return batch_indices, [pool.submit(self.decode, reader, self.entries[i]) for i in batch_indices]

    try:
      pending = collections.deque(submit(i) for i in itertools.islice(indices, self.prefetch + 1))
      while pending:
        batch_indices, jobs = pending.popleft()
        following = next(indices, None)
        if following is not None:
          pending.append(submit(following))
        images = (np.stack([job.result() for job in jobs]) if jobs
                  else np.zeros((0,) + tuple(self.image_shape), np.uint8))
        yield {"image": images, "label": self.labels[batch_indices], "index": batch_indices.astype(np.int32)}
    finally:  # Also when the consumer stops early: drop the batches decoded ahead.
      pool.shutdown(wait=True, cancel_futures=True)


def _image_decoder(root: str, image_size: int, resize_size):
  def decode(reader: FileReader, name: str) -> np.ndarray:
    return folder.decode_image(reader.read(name), root, name, image_size, resize_size)
  return decode


def resolve(path: str, source: str, layout: str = "<root>/<split>/<class>/<image>") -> pathlib.Path:
  """The folder or zip at `path`; an error for people (naming the expected `layout`) when it is neither."""
  resolved = pathlib.Path(path).expanduser().resolve()
  if not resolved.exists():
    raise FileNotFoundError(f"{source}: no such directory or zip file ({resolved}) — expected {layout} "
                            "(a directory or a .zip of one).")
  if not resolved.is_dir() and not zipfile.is_zipfile(resolved):
    raise ValueError(f"{source}: {resolved} is neither a directory nor a zip file — expected {layout}.")
  return resolved


def load_images(path: str, split: str, *, image_size: int, resize_size: int | None = None,
                num_workers: int = 0) -> StreamedFolder:
  """Split `split` of the image folder `<path>/<split>/<class>/<image>` (a directory or .zip), streamed.

  Every image is resized (shorter side to resize_size, default image_size) and centre-cropped to
  image_size x image_size as its batch is decoded.
  """
  source = f"folder:{path}"
  if not image_size:
    raise ValueError(f"{source}: a streamed folder needs image_size (every image is resized and centre-cropped "
                     "to image_size x image_size); set config.dataset.image_size.")
  root = resolve(path, source)
  class_names, entries = folder.index_split(root, split, source)
  order = folder.fixed_order(len(entries))
  return StreamedFolder(root=str(root), entries=tuple(entries[i][0] for i in order),
                        labels=np.array([entries[i][1] for i in order], np.int32), class_names=class_names,
                        image_shape=(image_size, image_size, 3),
                        decode=_image_decoder(str(root), image_size, resize_size), name=f"{source}:{split}",
                        num_workers=num_workers)


def too_large_for_memory(path: str, split: str, image_size: int | None) -> bool:
  """Whether the decoded split would exceed IN_MEMORY_LIMIT_BYTES: (images) x (image_size² x 3, or the first
  image's size when the images keep their own)."""
  root = resolve(path, f"folder:{path}")
  _, entries = folder.index_split(root, split, f"folder:{path}")
  if image_size:
    pixels = image_size * image_size
  else:
    first = folder.decode_image(FileReader(root).read(entries[0][0]), str(root), entries[0][0])
    pixels = first.shape[0] * first.shape[1]
  return len(entries) * pixels * 3 > IN_MEMORY_LIMIT_BYTES

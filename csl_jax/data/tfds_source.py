"""TensorFlow Datasets sources ("tfds:<name>"), read from a prepared data_dir and never downloaded.

Split names pass through to TFDS, so "train[:10%]" works. Datasets whose images have one fixed shape
and fit in memory (CIFAR-10/100, MNIST, SVHN, CIFAR-10-C, ...) load fully as an `ArrayDataset`.
The others (imagenet2012: images of varying size, 150 GB) stream through tf.data as a
`StreamingDataset`: same `batches(...)` interface, but no `.images`/`.labels` arrays.

Streaming, per host: each process reads its own part of the split (`tfds.split_for_jax_process`),
decodes, resizes the shorter side to image_size and center-crops (bilinear, antialiased), all on the
host; random crops and colour augmentation then run on the device (`augment.py`). Epoch e shuffles
files and a buffer with a seed derived from (seed, e), so `start_step=s` replays an uninterrupted run
(it skips the epoch's first batches without decoding them: resuming late in an ImageNet epoch takes a
while).
"""
import dataclasses
import functools
import os
from typing import Iterator

import numpy as np

from csl_jax.data import dataset

# Fixed-shape splits whose decoded images exceed this many bytes stream instead of loading into memory.
IN_MEMORY_LIMIT_BYTES = 4 << 30


@functools.lru_cache(maxsize=1)
def import_tfds():
  """(tensorflow, tensorflow_datasets), imported on first use (seconds) with TensorFlow kept off the GPUs."""
  import tensorflow as tf
  # tf.data runs on the host; keep TensorFlow off the accelerators so JAX owns their memory.
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow was initialised elsewhere first; its device choice stands.
    pass
  import tensorflow_datasets as tfds
  return tf, tfds


def prepare_instructions(name: str, data_dir: str | None, builder=None) -> str:
  """How to prepare dataset `name` in `data_dir` for offline use (the text of the missing-data error)."""
  root = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
  manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
  if manual:
    manual_dir = os.path.join(root, "downloads", "manual")
    return (f"It needs a manual download: {' '.join(manual.split())} Put those files in {manual_dir}, then run "
            f"`tfds build {name} --data_dir={root} --manual_dir={manual_dir}` (on a machine with enough disk; "
            f"imagenet2012 takes ~150 GB and a few hours).")
  return f"Prepare it once, on a machine with internet access, with `tfds build {name} --data_dir={root}`."


def _prepared_builder(name: str, data_dir: str | None):
  _, tfds = import_tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError:
    raise ValueError(f"tfds:{name}: no such TFDS dataset; see https://www.tensorflow.org/datasets/catalog "
                     f"for the names (e.g. tfds:cifar10, tfds:cifar100, tfds:imagenet2012).") from None
  if not builder.is_prepared():
    raise FileNotFoundError(f"tfds:{name}: not found in data_dir={data_dir or '(TFDS default)'} "
                            f"(looked for {builder.data_dir}); datasets are never downloaded here. "
                            f"{prepare_instructions(name, data_dir, builder)}")
  return builder


def _feature_keys(builder, name: str) -> tuple:
  """(image key, label key): "image"/"label" when present, else the first Image / ClassLabel feature."""
  _, tfds = import_tfds()
  features = builder.info.features
  images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
  labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
  if not images or not labels:
    raise ValueError(f"tfds:{name}: needs an Image and a ClassLabel feature; it has {dict(features.items())}.")
  return ("image" if "image" in images else images[0]), ("label" if "label" in labels else labels[0])


def _num_examples(builder, split: str, name: str) -> int:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError) as error:
    raise ValueError(f"tfds:{name}: bad split {split!r} ({error}); available: {list(builder.info.splits)}, "
                     f"with TFDS slicing such as 'train[:10%]'.") from None


def load(name: str, split: str, *, data_dir: str | None = None, image_size: int | None = None,
         resize_size: int | None = None, stream: bool | None = None):
  """Split `split` of the prepared TFDS dataset `name`: an ArrayDataset, or a StreamingDataset when
  `stream` is True or (stream=None) the images vary in size or exceed IN_MEMORY_LIMIT_BYTES decoded.

  image_size: resize the shorter side and center-crop to image_size x image_size (required to stream
  images of varying size). resize_size: resize the shorter side to resize_size first (ImageNet evaluation:
  256, then the 224 crop); None: to image_size.
  """
  builder = _prepared_builder(name, data_dir)
  image_key, label_key = _feature_keys(builder, name)
  shape = builder.info.features[image_key].shape
  num_examples = _num_examples(builder, split, name)
  class_names = list(builder.info.features[label_key].names)
  fixed = None not in shape
  if stream is None:
    stream = not fixed or num_examples * int(np.prod(shape)) > IN_MEMORY_LIMIT_BYTES
  if not stream:
    return _load_in_memory(builder, split, image_key, label_key, class_names, image_size, resize_size, name)
  if image_size is None and not fixed:
    raise ValueError(f"tfds:{name}: images vary in size {shape}; pass image_size=N to resize the shorter side "
                     f"to N and center-crop N x N on the host (e.g. 256 for 224 random crops on the device).")
  image_shape = ((image_size, image_size) if image_size else tuple(shape[:2])) + (shape[2],)
  return StreamingDataset(builder=builder, split=split, image_key=image_key, label_key=label_key,
                          class_names=class_names, num_examples=num_examples, image_shape=image_shape,
                          resize=image_size is not None, resize_size=resize_size, name=f"tfds:{name}:{split}")


def _load_in_memory(builder, split, image_key, label_key, class_names, image_size, resize_size, name):
  _, tfds = import_tfds()
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  images = np.asarray(data[image_key], np.uint8)
  if image_size is not None:
    images = dataset.resize_images(images, image_size, resize_size)
  return dataset.ArrayDataset(images=images, labels=np.asarray(data[label_key], np.int32),
                              class_names=class_names, name=f"tfds:{name}:{split}")


def _fit_image_tf(image, size: int, resize_size: int | None = None):
  """tf u8[h, w, C] -> u8[size, size, C]: shorter side to `resize_size` (default size; bilinear, antialiased),
  center crop; the sizes and crop offsets of `dataset.fit_image` (torchvision's Resize + CenterCrop)."""
  tf, _ = import_tfds()
  resize_size = resize_size or size
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  new_hw = tf.maximum(tf.cast(tf.floor(hw * resize_size / tf.reduce_min(hw)), tf.int32), resize_size)
  image = tf.image.resize(image, new_hw, method="bilinear", antialias=True)
  offsets = tf.cast(tf.round(tf.cast(new_hw - size, tf.float32) / 2.0), tf.int32)
  top, left = offsets[0], offsets[1]
  image = image[top:top + size, left:left + size]
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


@dataclasses.dataclass(frozen=True, eq=False)
class StreamingDataset:
  """A TFDS split read through tf.data, per host. `image_shape` is what batches hold (after the host
  resize to image_size when `resize`).

  Batches are u8[local_b, *image_shape] with local_b = global_batch_size // process_count. Unlike
  ArrayDataset, every process reads a disjoint part of the split rather than a slice of one global batch.
  """
  builder: object
  split: str
  image_key: str
  label_key: str
  class_names: list
  num_examples: int
  image_shape: tuple
  resize: bool
  name: str
  resize_size: int | None = None
  shuffle_buffer: int = 16_384

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return self.num_examples

  def take(self, n: int) -> "StreamingDataset":
    """The first n examples of the split (TFDS slicing `split[:n]`); each process then streams its part of them."""
    if n >= self.num_examples:
      return self
    if "[" in self.split:
      raise ValueError(f"{self.name}: cannot take the first {n} examples of the already sliced split {self.split!r}; "
                       "slice the split in the config instead (e.g. dataset.test_split='validation[:1000]').")
    return dataclasses.replace(self, split=f"{self.split}[:{int(n)}]", num_examples=int(n),
                               name=f"{self.name}[:{int(n)}]")

  def eval_batch_count(self, global_batch_size: int, process_count: int) -> int:
    """Batches of one unshuffled pass on the busiest process: hosts read parts that differ by at most one
    example, so a host that runs out first pads with empty batches to keep the collective calls in step."""
    per_host = -(-self.num_examples // process_count)
    return dataset.steps_per_epoch(per_host, global_batch_size // process_count, drop_remainder=False)

  def batches(self, global_batch_size: int, *, seed: int, start_step: int = 0, shuffle: bool = True,
              drop_remainder: bool = True, process_index: int | None = None,
              process_count: int | None = None) -> Iterator[dataset.Batch]:
    """As `ArrayDataset.batches`: endless seeded epochs when shuffle, else one pass in stored order."""
    _, tfds = import_tfds()
    process_index, process_count = dataset.resolve_processes(process_index, process_count)
    dataset.check_batch_size(global_batch_size, process_count)
    local_batch = global_batch_size // process_count
    # Training hosts drop the remainder so every host runs the same number of steps per epoch;
    # evaluation keeps every example (hosts then differ by at most one example).
    host_split = tfds.split_for_jax_process(self.split, process_index=process_index, process_count=process_count,
                                            drop_remainder=shuffle)
    host_examples = self.builder.info.splits[host_split].num_examples
    steps = dataset.steps_per_epoch(host_examples, local_batch, drop_remainder)
    if steps == 0:
      raise ValueError(f"{self.name}: {host_examples} examples per host are fewer than one local batch of "
                       f"{local_batch}; lower the batch size.")
    return self._iterate(host_split, local_batch, seed, start_step, shuffle, drop_remainder, steps)

  def _iterate(self, host_split, local_batch, seed, start_step, shuffle, drop_remainder, steps):
    epoch, skip = divmod(start_step, steps)
    while True:
      pipeline = self._epoch_pipeline(host_split, local_batch, seed, epoch, skip, shuffle, drop_remainder)
      for batch in pipeline.take(steps - skip).as_numpy_iterator():
        yield batch
      if not shuffle:
        return
      epoch, skip = epoch + 1, 0

  def _epoch_pipeline(self, host_split, local_batch, seed, epoch, skip_batches, shuffle, drop_remainder):
    tf, tfds = import_tfds()
    epoch_seed = int(np.random.default_rng([seed, epoch]).integers(2**31 - 1))
    options = tf.data.Options()
    options.deterministic = True  # Resumption replays the same order only if tf.data keeps it.
    read_config = tfds.ReadConfig(shuffle_seed=epoch_seed, options=options)
    data = self.builder.as_dataset(split=host_split, shuffle_files=shuffle, read_config=read_config,
                                   decoders={self.image_key: tfds.decode.SkipDecoding()})
    data = data.map(lambda ex: (ex[self.image_key], ex[self.label_key]))
    if shuffle:
      data = data.shuffle(self.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    # Skip encoded records: resuming does not pay for decoding the batches it skips.
    data = data.skip(skip_batches * local_batch)
    data = data.map(self._decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return data.batch(local_batch, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)

  def _decode(self, encoded, label):
    tf, _ = import_tfds()
    image = tf.io.decode_image(encoded, channels=self.image_shape[-1], expand_animations=False)
    if self.resize:
      image = _fit_image_tf(image, self.image_shape[0], self.resize_size)
    image = tf.ensure_shape(image, self.image_shape)
    return {"image": image, "label": tf.cast(label, tf.int32)}

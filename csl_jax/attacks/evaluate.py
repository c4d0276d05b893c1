"""Batch loop that runs an attack over an evaluation set: fixed-size batches, sharded, with a progress bar.

Every batch has the same shape — the last one is padded with repeats of earlier examples and the
padding is discarded — so a jitted attack compiles once per evaluation, whatever the set size. With a
`mesh`, each batch is placed with NamedSharding(mesh, P("data")) and the jitted attack runs SPMD over
all devices of the "data" axis (the batch size is rounded up to a multiple of that axis' size).
"""
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from csl_jax.attacks import objectives
from csl_jax.models import inference
from csl_jax.attacks.validation import RANGE_TOLERANCE


def as_unit_float(images: np.ndarray) -> np.ndarray:
  """uint8 images in [0, 255] -> f32 in [0, 1]; float images are checked to lie in [0, 1] and returned as f32."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"images must be uint8 in [0, 255] or float in [0, 1], got dtype {images.dtype}.")
  if images.size and not (images.min() >= -RANGE_TOLERANCE and images.max() <= 1.0 + RANGE_TOLERANCE):
    raise ValueError(f"Float images must lie in [0, 1]; got range [{images.min():.4g}, {images.max():.4g}]. "
                     "Pass uint8 images or un-normalised pixels / 255 (models normalise inside).")
  return images.astype(np.float32)


def padded_batch_size(batch_size: int, mesh=None) -> int:
  """`batch_size` rounded up to a multiple of the mesh's "data" axis (1 device without a mesh)."""
  if int(batch_size) < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  devices = 1 if mesh is None else mesh.shape["data"]
  return int(math.ceil(batch_size / devices) * devices)


# Still-robust subsets smaller than a batch are padded up to a multiple of an eighth of the enclosing
# power of two: e.g. 300 points run as 320 rows, 700 as 768. Padding stays under ~25% — it is pure waste, and
# late AutoAttack stages spend thousands of model calls per point — while each attack compiles for at most four
# sizes per octave of the robust-set size. Below _POWER_OF_TWO_BELOW points the work is small and compiling
# dominates (a new size costs seconds on a CPU), so sizes are powers of two, at least _MIN_BUCKET rows: the
# runs of a study then meet the same few shapes and share their compiled attacks (`models.inference`).
_MIN_BUCKET = 8
_POWER_OF_TWO_BELOW = 128


def bucket_size(num_points: int, batch_size: int, mesh=None) -> int:
  """Fixed batch size for attacking `num_points` still-robust points (see `_MIN_BUCKET`)."""
  floor = max(_MIN_BUCKET, 1 if mesh is None else mesh.shape["data"])
  if num_points >= batch_size or batch_size <= floor:
    return padded_batch_size(batch_size, mesh)
  octave = 2 ** max(int(num_points) - 1, 1).bit_length()  # smallest power of two >= num_points
  granule = octave if num_points < _POWER_OF_TWO_BELOW else octave // 8
  size = min(batch_size, max(floor, -(-int(num_points) // granule) * granule))
  return padded_batch_size(size, mesh)


def place(array, mesh=None):
  """Puts a host batch on the devices: sharded over mesh axis "data" along dim 0, or on the default device."""
  if mesh is None:
    return jnp.asarray(array)
  return jax.device_put(array, NamedSharding(mesh, P("data")))


@inference.jit_over_model
def _correct(logits_fn, x, y):
  return objectives.is_correct(objectives.with_key(logits_fn)(x, jax.random.PRNGKey(0)), y)


def _batches(n: int, batch_size: int):
  """Yields (index array of length batch_size, number of real examples) covering range(n)."""
  for start in range(0, n, batch_size):
    real = min(batch_size, n - start)
    yield np.arange(start, start + batch_size) % n, real


def clean_accuracy(logits_fn, images, labels, *, batch_size: int, mesh=None):
  """Accuracy of `logits_fn` on (images, labels) -> (accuracy float, correct bool[N])."""
  result = robust_accuracy(None, logits_fn, images, labels, batch_size=batch_size, mesh=mesh, progress=False)
  return result[0], result[1]


def robust_accuracy(attack_fn: Optional[Callable], logits_fn: Callable, images, labels, *, batch_size: int,
                    mesh=None, desc: str = "", key=None, progress: bool = True, keep_adversarial: bool = False):
  """Runs `attack_fn` batch by batch and measures accuracy on the adversarial images.

  Args:
    attack_fn: attack_fn(x f32[b, ...], y int32[b], key=...) -> x_adv f32[b, ...], e.g.
      functools.partial(attacks.pgd, logits_fn, eps=8/255). The `key` keyword is passed only if
      attack_fn accepts it (batch i gets fold_in(key, i)). None evaluates the clean images.
    logits_fn: the model, f32[b, ...] in [0, 1] -> f32[b, K].
    images: uint8[N, ...] in [0, 255] or f32[N, ...] in [0, 1] (host arrays). labels: int[N].
    batch_size: examples per attack call (rounded up to a multiple of the mesh's "data" axis).
    mesh: optional jax.sharding.Mesh with a "data" axis; batches are sharded over it.
    desc: progress-bar label. key: PRNG key (default PRNGKey(0)). progress: show a tqdm bar.
    keep_adversarial: also return the adversarial images.

  Returns:
    (accuracy, correct) with correct bool[N] = clean-correct AND adversarial-correct per example
    (a point misclassified without attack never counts as robust); plus f32[N, ...] adversarial images
    when keep_adversarial.
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels; pass one label per image.")
  n = images.shape[0]
  if n == 0:
    raise ValueError("robust_accuracy: the evaluation set is empty.")
  batch_size = padded_batch_size(batch_size, mesh)
  key = jax.random.PRNGKey(0) if key is None else key
  pass_key = attack_fn is not None and objectives.takes_key(attack_fn)
  correct = np.zeros(n, bool)
  adversarial = np.empty(images.shape, np.float32) if keep_adversarial else None
  with tqdm(total=n, desc=desc or "eval", unit="img", disable=not progress, leave=False) as bar:
    for i, (index, real) in enumerate(_batches(n, batch_size)):
      x = place(as_unit_float(images[index]), mesh)
      y = place(labels[index].astype(np.int32), mesh)
      ok = _correct(logits_fn, x, y)
      if attack_fn is not None:
        batch_key = jax.random.fold_in(key, i)
        x_adv = attack_fn(x, y, key=batch_key) if pass_key else attack_fn(x, y)
        ok = ok & _correct(logits_fn, x_adv, y)
        if keep_adversarial:
          adversarial[index[:real]] = np.asarray(x_adv)[:real]
      elif keep_adversarial:
        adversarial[index[:real]] = np.asarray(x)[:real]
      correct[index[:real]] = np.asarray(ok)[:real]
      bar.update(real)
  accuracy = float(np.mean(correct))
  return (accuracy, correct, adversarial) if keep_adversarial else (accuracy, correct)

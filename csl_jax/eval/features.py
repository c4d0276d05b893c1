"""Batched, sharded, padded application of a model function over a whole array of images.

Every encoder evaluator (linear probe, kNN, geometry) goes through `apply_in_batches`, which reuses the
attack suite's uint8 conversion and batch padding, so the last, smaller batch never recompiles.
"""
import math
import time

import jax
import numpy as np
from absl import logging

from csl_jax.attacks.evaluate import as_unit_float, padded_batch_size
from csl_jax.train import sharding as sharding_lib


def apply_in_batches(fn, images, *, batch_size: int, mesh=None, desc: str = "") -> np.ndarray:
  """Applies jitted `fn(f32[b, ...] in [0,1]) -> f32[b, ...]` over u8/f32 images[N, ...].

  The batch is padded to a multiple of the mesh size and to `batch_size`, sharded on the data axis.
  """
  mesh = mesh or sharding_lib.make_mesh()
  n = len(images)
  batch_size = padded_batch_size(min(batch_size, max(n, 1)), mesh)
  in_sharding = sharding_lib.data_sharding(mesh)
  outputs, start_time = [], time.time()
  num_batches = int(math.ceil(n / batch_size))
  for index, start in enumerate(range(0, n, batch_size)):
    chunk = as_unit_float(images[start:start + batch_size])
    valid = len(chunk)
    if valid < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - valid,) + chunk.shape[1:], chunk.dtype)])
    out = fn(jax.device_put(chunk, in_sharding))
    outputs.append(np.asarray(jax.device_get(out))[:valid])
    if desc and num_batches > 10 and (index + 1) % max(num_batches // 5, 1) == 0:
      elapsed = time.time() - start_time
      logging.info("%s: %d/%d batches, ETA %.0fs", desc, index + 1, num_batches,
                   elapsed / (index + 1) * (num_batches - index - 1))
  return np.concatenate(outputs) if outputs else np.zeros((0,))

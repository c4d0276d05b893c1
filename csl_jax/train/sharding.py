"""The device mesh and how batches and state are laid out on it.

One mesh axis, "data": the batch is split over every device of every host; parameters and
optimiser state are replicated. Under `jax.jit` this makes BatchNorm statistics global-batch
statistics automatically, and the contrastive losses gather embeddings explicitly
(`losses.make_sharded_loss`) so negatives come from the global batch.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  if global_batch_size % mesh.size:
    raise ValueError(f"Global batch size {global_batch_size} is not divisible by the {mesh.size} devices of the "
                     f"mesh; choose a multiple of {mesh.size}.")


def shard_batch(local_batch, mesh: Mesh):
  """Host-local numpy batch (this process's rows) -> global jax.Array sharded on the data axis."""
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))

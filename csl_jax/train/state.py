"""Training state: a pure pytree of arrays (the model and optimiser live outside, in closures)."""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


class TrainState(flax.struct.PyTreeNode):
  """step: i32[]; params / batch_stats: flax collections; opt_state: the optax state."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def create_train_state(model, tx, key, sample_images, **apply_kwargs) -> TrainState:
  """Initialises `model` on `sample_images` (f32[B, H, W, C] in [0, 1]) and the optimiser."""
  variables = model.init(key, sample_images, train=False, **apply_kwargs)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))

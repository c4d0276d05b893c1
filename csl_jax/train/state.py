"""Training state: a pure pytree of arrays (the model and optimiser live outside, in closures)."""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


class TrainState(flax.struct.PyTreeNode):
  """step: i32[]; params / batch_stats: flax collections; opt_state: the optax state; method_state: whatever
  a training method carries between steps beside the model (e.g. IFND's cluster assignments), a pytree of
  arrays saved in every checkpoint ({} for most methods)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  method_state: Any = flax.struct.field(default_factory=dict)


def create_train_state(model, tx, key, sample_images, method_state=None, **apply_kwargs) -> TrainState:
  """Initialises `model` on `sample_images` (f32[B, H, W, C] in [0, 1]), the optimiser and the method's state."""
  variables = model.init(key, sample_images, train=False, **apply_kwargs)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    method_state={} if method_state is None else method_state)

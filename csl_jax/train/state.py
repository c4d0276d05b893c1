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


class NoMethodState:
  """The method-state hooks of a family whose methods carry nothing beside the model (most of them).

  Families (`csl_jax.methods`) inherit these; one that needs state (IFND's cluster assignments) overrides them.
  """

  @staticmethod
  def initial_method_state(method, config, num_examples: int):
    """The method's extra training state (`TrainState.method_state`), a pytree of arrays; {} here."""
    del method, config, num_examples
    return {}

  @staticmethod
  def refresh(method, config, state, step: int, *, model, train_ds, mesh):
    """Called by the loop before every step, outside jit (e.g. to re-cluster the training set every few
    epochs); returns the state, updated or not. Must be a pure function of (state, step) for exact resume."""
    del method, config, step, model, train_ds, mesh
    return state


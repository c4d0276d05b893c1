"""The contrastive step as two compiled programs (views, update) equals the same step compiled as one program."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from csl_jax import methods
from csl_jax.train import loop, optim, sharding
from csl_jax.train import step as step_lib
from csl_jax.train.state import create_train_state


@pytest.mark.parametrize("name", ["simclr", "afnc", "supcon"])
def test_two_program_step_equals_one_program_step(name):
  config = quickstart.get_config("smoke")
  config.pretrain.batch_size = 32
  method = methods.get(name)
  mesh = sharding.make_mesh()
  model = method.family.build_model(config, 10, (0.3,), (0.4,))
  lr_fn = optim.learning_rate_schedule(config, 32, 5, 50)
  tx = optim.make_optimizer(config, lr_fn)
  init = jax.jit(functools.partial(create_train_state, model, tx))
  fresh = lambda: init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 1)),  # noqa: E731
                       method.family.initial_method_state(method, config, 100))
  rng = np.random.default_rng(0)
  batches = [{"image": jnp.asarray(rng.integers(0, 256, (32, 16, 16, 1)), jnp.uint8),
              "label": jnp.asarray(rng.integers(0, 10, 32), jnp.int32)} for _ in range(3)]
  key = jax.random.PRNGKey(7)

  split = method.family.train_step(method, config, model, tx, lr_fn, mesh, 16, 50)
  assert isinstance(split, step_lib.TwoProgramStep)
  one = jax.jit(lambda state, batch, key: split.update(state, batch, split.views(key, state.step, batch["image"])))
  two = loop.make_train_step(method, config, model, tx, lr_fn, mesh, 16, 50)
  # The step written out by hand from the method's parts (augmentation, loss, schedule), as one program.
  augment_fn, loss_fn = method.augment(config, 16), method.loss_fn(config, mesh)

  def reference(state, batch, key):
    views = step_lib.two_views(jax.random.fold_in(key, state.step), batch["image"], augment_fn)
    return step_lib.contrastive_update(state, batch, views, model=model, tx=tx, loss_fn=loss_fn,
                                       schedule_fn=method.schedule_fn(config, 50), lr_fn=lr_fn)
  reference = jax.jit(reference)
  results = []
  for fn in (reference, one, two):
    state = fresh()
    for batch in batches:  # three steps: the views must follow state.step
      state, metrics = fn(state, batch, key)
    results.append((jax.device_get(state.params), jax.device_get(metrics)))
  for params, metrics in results[1:]:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), params, results[0][0])
    for k in results[0][1]:
      np.testing.assert_allclose(metrics[k], results[0][1][k], rtol=2e-5, atol=2e-6)
  first = jax.device_get(fresh().params)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(results[0][0])))

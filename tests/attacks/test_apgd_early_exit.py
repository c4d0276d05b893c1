"""APGD with early exit: the same fooled set as the full run, with less work once points are fooled."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from csl_jax.attacks.apgd import apgd_attack, apgd_early_exit

NUM_CLASSES = 10
DIM = 48
_rng = np.random.default_rng(0)
W1 = jnp.asarray(_rng.normal(size=(DIM, 64)) / np.sqrt(DIM), jnp.float32)
W2 = jnp.asarray(_rng.normal(size=(64, NUM_CLASSES)), jnp.float32)


def mlp_logits(x):
  return jnp.tanh(jnp.reshape(x, (x.shape[0], -1)) @ W1 * 3.0) @ W2


@pytest.fixture(scope="module")
def batch():
  x = _rng.uniform(0.2, 0.8, (64, 4, 4, 3)).astype(np.float32)
  y = np.asarray(jnp.argmax(mlp_logits(x), 1)).astype(np.int32)
  y[:3] = (y[:3] + 1) % NUM_CLASSES  # misclassified from the start
  return jnp.asarray(x), jnp.asarray(y)


def _eps_with_mixed_outcome(x, y, norm, loss, targeted):
  """A radius at which the full run fools some but not all points (so both branches are exercised)."""
  for eps in 0.01 * 1.4 ** np.arange(26):  # ℓ1 radii are far larger than ℓ∞ ones
    _, fooled = apgd_attack(mlp_logits, x, y, jax.random.PRNGKey(3), eps, 2, norm=norm, loss=loss, n_iter=40,
                            n_restarts=1, n_targets=int(targeted))
    share = float(np.mean(np.asarray(fooled)[3:]))
    if 0.6 <= share <= 0.95:
      return float(eps), np.asarray(fooled)
  raise AssertionError("no radius with a mixed outcome")


@pytest.mark.parametrize("norm,loss,targeted", [("linf", "ce", False), ("l2", "ce", False),
                                                ("linf", "dlr-targeted", True), ("l1", "ce", False)])
def test_same_fooled_set_as_the_full_run_with_fewer_rows(batch, norm, loss, targeted):
  x, y = batch
  eps, fooled_full = _eps_with_mixed_outcome(x, y, norm, loss, targeted)
  log = []
  x_adv, fooled = apgd_early_exit(mlp_logits, x, y, jax.random.PRNGKey(3), eps, 2, norm=norm, loss=loss,
                                  targeted=targeted, n_iter=40, chunk=5, log=log)
  clean_wrong = np.arange(64) < 3
  np.testing.assert_array_equal(fooled, fooled_full & ~clean_wrong)
  x_adv, x_np = np.asarray(x_adv), np.asarray(x)
  wrong = np.asarray(jnp.argmax(mlp_logits(x_adv), 1)) != np.asarray(y)
  assert np.all(wrong[fooled])  # every fooled point comes back adversarial …
  np.testing.assert_array_equal(x_adv[~fooled], x_np[~fooled])  # … the others as x
  delta = np.reshape(x_adv - x_np, (64, -1))
  size = {"linf": np.abs(delta).max(1), "l2": np.linalg.norm(delta, axis=1), "l1": np.abs(delta).sum(1)}[norm]
  assert np.all(size <= eps * (1 + 1e-4)) and np.all((x_adv >= 0) & (x_adv <= 1))
  assert log[-1][0] == 40 and log[-1][1] < 64  # the batch shrank as points were fooled


def test_stops_once_every_point_is_fooled(batch):
  x, y = batch
  log = []
  _, fooled = apgd_early_exit(mlp_logits, x, y, jax.random.PRNGKey(0), 0.5, norm="linf", loss="ce",
                              targeted=False, n_iter=100, chunk=10, log=log)
  assert fooled[3:].all() and log[-1][0] < 100


def test_sharded_batch_gives_the_unsharded_result(batch):
  x, y = batch
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  kwargs = dict(norm="linf", loss="ce", targeted=False, n_iter=30, chunk=5)
  x_ref, fooled_ref = apgd_early_exit(mlp_logits, x, y, jax.random.PRNGKey(1), 0.03, **kwargs)
  x_sh, fooled_sh = apgd_early_exit(mlp_logits, jax.device_put(x, sharding), jax.device_put(y, sharding),
                                    jax.random.PRNGKey(1), 0.03,
                                    batch_rows=lambda n: max(8, -(-n // 8) * 8), **kwargs)
  np.testing.assert_array_equal(fooled_sh, fooled_ref)
  np.testing.assert_allclose(np.asarray(x_sh), np.asarray(x_ref), atol=1e-6)
  assert x_sh.sharding.is_equivalent_to(sharding, x_sh.ndim)

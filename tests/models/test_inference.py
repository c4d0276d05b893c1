"""Bound models: weights are traced, so same-architecture models share compiled attacks and evaluations —
and a shared program must still attack the weights it is given, not the first model's."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax import attacks
from csl_jax.attacks.apgd import apgd_attack, apgd_early_exit
from csl_jax.eval import batches
from csl_jax.models import inference

TRACES = {"count": 0}


class _Net(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    TRACES["count"] += 1  # Python runs only while JAX traces: counts the programs built around the model.
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    return nn.Dense(5)(jnp.reshape(x, (x.shape[0], -1)))


MODEL = _Net()
X = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (8, 6, 6, 1)), jnp.float32)
Y = jnp.arange(8, dtype=jnp.int32) % 5
WEIGHTS = [MODEL.init(jax.random.PRNGKey(seed), X[:1]) for seed in (1, 2)]
# Each model's own predictions as labels: every point starts correctly classified, so every attack moves it.
LABELS = [jnp.argmax(MODEL.apply(weights, X), axis=1).astype(jnp.int32) for weights in WEIGHTS]

ATTACKS = {
    "pgd": functools.partial(attacks.pgd, eps=0.1, steps=5, key=jax.random.PRNGKey(3)),
    "fgsm": functools.partial(attacks.fgsm, eps=0.1),
    "apgd": lambda f, x, y: apgd_attack(f, x, y, jax.random.PRNGKey(3), 0.1, norm="linf", loss="ce", n_iter=10,
                                              n_restarts=1)[0],
    "fab": functools.partial(attacks.fab, eps=0.1, n_iter=5, n_target_classes=2, key=jax.random.PRNGKey(3)),
    "square": functools.partial(attacks.square, eps=0.1, n_queries=20, key=jax.random.PRNGKey(3)),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_second_model_reuses_the_program_and_gets_its_own_answer(name):
  attack = ATTACKS[name]
  first = attack(inference.bind(MODEL, WEIGHTS[0]), X, LABELS[0])
  before = TRACES["count"]
  second = attack(inference.bind(MODEL, WEIGHTS[1]), X, LABELS[1])
  assert TRACES["count"] == before, f"{name} traced the model again for new weights of the same architecture"
  # The shared program attacks the weights it was given: same answer as a closure over those weights.
  closure = attack(lambda x: MODEL.apply(WEIGHTS[1], x), X, LABELS[1])
  np.testing.assert_allclose(np.asarray(second), np.asarray(closure), atol=1e-6)
  assert not np.allclose(np.asarray(first), np.asarray(second)), "two different models gave the same attack"


def test_bound_model_matches_apply_and_counts_accuracy_per_model():
  for weights in WEIGHTS:
    bound = inference.bind(MODEL, weights)
    np.testing.assert_allclose(np.asarray(bound(X)), np.asarray(MODEL.apply(weights, X)), rtol=1e-6, atol=1e-6)
    images = jnp.asarray(np.asarray(X) * 255, jnp.uint8)
    expected = np.sum(np.argmax(np.asarray(bound(images / 255.0)), 1) == np.asarray(Y))
    counts = batches._accuracy_counts(bound, images, Y, jnp.ones(8, bool))  # pylint: disable=protected-access
    assert int(counts[0]) == expected and int(counts[1]) == 8


def test_plain_functions_still_work_and_a_tuple_output_is_selected():

  class _Pair(nn.Module):

    @nn.compact
    def __call__(self, x, train: bool = False):
      h = nn.Dense(3)(x)
      return h, 2 * h

  pair = _Pair()
  weights = pair.init(jax.random.PRNGKey(0), jnp.ones((2, 4)))
  second = inference.bind(pair, weights, output=1)(jnp.ones((2, 4)))
  np.testing.assert_allclose(np.asarray(second), 2 * np.asarray(pair.apply(weights, jnp.ones((2, 4)))[0]), rtol=1e-6)
  plain = lambda x: MODEL.apply(WEIGHTS[0], x)
  assert inference.as_pytree(plain).func is plain and not jax.tree_util.tree_leaves(inference.as_pytree(plain))


def test_pgd_norms_share_one_program_and_keep_their_own_threat_model():
  """PGD-ℓ∞, ℓ2 and ℓ1 of one model are one compiled program (the norm is a traced switch index), yet each
  result lies in its own ball and box — and the three differ."""
  model = inference.bind(MODEL, WEIGHTS[0])
  eps = {"linf": 0.05, "l2": 0.3, "l1": 1.0}
  attacks.pgd(model, X, LABELS[0], eps=eps["linf"], norm="linf", steps=4)  # compiles
  before = TRACES["count"]
  results = {norm: np.asarray(attacks.pgd(model, X, LABELS[0], eps=eps[norm], norm=norm, steps=4))
             for norm in ("l2", "l1", "linf")}
  assert TRACES["count"] == before, "another norm traced the model again"
  delta = {norm: (results[norm] - np.asarray(X)).reshape(X.shape[0], -1) for norm in results}
  assert np.abs(delta["linf"]).max() <= eps["linf"] + 1e-6
  assert np.linalg.norm(delta["l2"], axis=1).max() <= eps["l2"] + 1e-5
  assert np.abs(delta["l1"]).sum(axis=1).max() <= eps["l1"] + 1e-4
  for norm, x_adv in results.items():
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, norm
  # ℓ∞ steps move every coordinate, ℓ1 steps only a few: the branches really differ.
  assert np.mean(delta["linf"] != 0) > 0.9 > np.mean(delta["l1"] != 0)


def test_apgd_ce_and_apgd_t_share_their_programs_and_keep_their_own_loss():
  """AutoAttack's APGD-CE and APGD-T stages (`apgd_early_exit`) are one compiled program per batch size (loss and
  targeting are traced), yet each still runs its own loss: the targeted run equals apgd_attack's targeted run."""
  model = inference.bind(MODEL, WEIGHTS[0])
  key, eps = jax.random.PRNGKey(5), 0.05
  run = functools.partial(apgd_early_exit, model, X, LABELS[0], key, eps, norm="linf", n_iter=10, chunk=10)
  run(2, loss="ce", targeted=False)  # compiles
  before = TRACES["count"]
  adv_t, fooled_t = run(3, loss="dlr-targeted", targeted=True)
  assert TRACES["count"] == before, "APGD-T traced the model again after APGD-CE"
  reference, fooled_ref = apgd_attack(model, X, LABELS[0], key, eps, 3, norm="linf", loss="dlr-targeted", n_iter=10,
                                      n_restarts=1, n_targets=1)
  np.testing.assert_array_equal(fooled_t, np.asarray(fooled_ref))
  np.testing.assert_allclose(np.asarray(adv_t), np.asarray(reference), atol=1e-6)
  adv_ce, _ = run(3, loss="ce", targeted=False)
  assert not np.allclose(np.asarray(adv_ce), np.asarray(adv_t)), "the CE and targeted DLR runs gave the same points"

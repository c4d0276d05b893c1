"""AutoAttack on a small CNN trained in the test on sklearn digits (8×8 grey images)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from csl_jax import attacks
from csl_jax.attacks.autoattack import build_stages
from csl_jax.attacks import projections

EPS = 0.1  # APGD-CE leaves ~20% robust, so every later stage (APGD-T, FAB-T, Square) runs
N_EVAL = 48


class TinyCNN(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


@pytest.fixture(scope="module")
def digits_model():
  """(logits_fn, x_test f32[N, 8, 8, 1] in [0, 1], y_test): ~95% clean accuracy after a few seconds."""
  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  labels = digits.target.astype(np.int32)
  x_train, y_train = images[:1500], labels[:1500]
  model = TinyCNN()
  params = model.init(jax.random.PRNGKey(0), x_train[:1])
  optimizer = optax.adam(1e-2)

  @jax.jit
  def train_step(params, opt_state):
    def loss_fn(p):
      logits = model.apply(p, x_train)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y_train).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  for _ in range(150):
    params, opt_state = train_step(params, opt_state)
  logits_fn = jax.jit(lambda x: model.apply(params, x))
  return logits_fn, images[1500:1500 + N_EVAL], labels[1500:1500 + N_EVAL]


def _accuracy(logits_fn, x, y):
  return float(np.mean(np.argmax(np.asarray(logits_fn(x)), axis=1) == y))


def test_autoattack_is_at_least_as_strong_as_apgd_ce(digits_model):
  logits_fn, x, y = digits_model
  clean = _accuracy(logits_fn, x, y)
  assert clean > 0.8
  apgd_ce = _accuracy(logits_fn, attacks.apgd(logits_fn, x, y, eps=EPS, norm="linf", key=jax.random.PRNGKey(1)), y)
  result = attacks.run_autoattack(logits_fn, x, y, eps=EPS, norm="linf", version="standard", key=jax.random.PRNGKey(2),
                                  batch_size=16)
  robust = float(np.mean(result.robust))
  assert robust <= apgd_ce <= clean
  assert apgd_ce < clean  # the budget is large enough for the comparison to mean something
  # The reported robustness is what the returned images show, and they respect the threat model.
  still_correct = np.argmax(np.asarray(logits_fn(result.x_adv)), axis=1) == y
  np.testing.assert_array_equal(result.robust, still_correct & (np.argmax(np.asarray(logits_fn(x)), 1) == y))
  assert np.all(np.asarray(projections.lp_norm(result.x_adv - x, "linf")) <= EPS + 1e-6)
  assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
  # Stages only ever remove robust points: the per-stage history is non-increasing.
  history = list(result.robust_accuracy.values())
  assert all(a >= b for a, b in zip(history, history[1:]))
  assert list(result.robust_accuracy)[:2] == ["clean", "apgd-ce[0]"]


def test_standard_sequence_follows_the_reference():
  logits_fn = lambda x: x  # noqa: E731 (never called: only the stage list is built)
  names = [s.name for s in build_stages(logits_fn, eps=0.1, norm="linf", version="standard",
                                                       num_classes=10)]
  assert names == ["apgd-ce[0]"] + [f"apgd-t[{r}]" for r in range(2, 11)] + ["fab-t", "square"]
  names_l1 = [s.name for s in build_stages(logits_fn, eps=5.0, norm="l1", version="standard",
                                                          num_classes=10)]
  assert names_l1 == [f"apgd-ce[{r}]" for r in range(5)] + [f"apgd-t[{r}]" for r in range(2, 7)]
  names_plus = [s.name for s in build_stages(logits_fn, eps=0.1, norm="linf", version="plus", num_classes=10)]
  assert names_plus == ([f"apgd-ce[{r}]" for r in range(5)] + [f"apgd-dlr[{r}]" for r in range(5)] + ["fab", "square"]
                        + [f"apgd-t[{r}]" for r in range(2, 11)] + ["fab-t"])
  names_rand = [s.name for s in build_stages(logits_fn, eps=0.1, norm="l2", version="rand",
                                                            num_classes=10)]
  assert names_rand == ["apgd-ce", "apgd-dlr"]
  with pytest.raises(ValueError, match="version"):
    build_stages(logits_fn, eps=0.1, norm="linf", version="fast", num_classes=10)


def test_rand_version_uses_the_models_randomness(digits_model):
  """EOT: a randomised model gets a `key`; the attack still lowers accuracy and stays in the ball."""
  logits_fn, x, y = digits_model

  def noisy_logits(images, key):
    return logits_fn(jnp.clip(images + 0.02 * jax.random.normal(key, images.shape), 0, 1))

  stages = build_stages(noisy_logits, eps=EPS, norm="linf", version="rand", num_classes=10)[:1]
  result = attacks.run_autoattack(noisy_logits, x[:16], y[:16], eps=EPS, norm="linf", version="rand",
                                  stages=stages)
  assert np.mean(result.robust) < result.robust_accuracy["clean"]
  assert np.all(np.asarray(projections.lp_norm(result.x_adv - x[:16], "linf")) <= EPS + 1e-6)

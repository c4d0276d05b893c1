"""The evaluation loop: padding without recompilation, sharding over 8 simulated devices, compaction."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding

from csl_jax import attacks
from csl_jax.attacks.autoattack import Stage
from csl_jax.attacks.evaluate import bucket_size

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (20, 6, 6, 1)).astype(np.uint8)


class _ConvNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    return nn.Dense(5)(jnp.reshape(x, (x.shape[0], -1)))


_MODEL = _ConvNet()
_PARAMS = _MODEL.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 1)))
TRACES = {"count": 0}


def logits_fn(x):
  TRACES["count"] += 1  # runs only while JAX traces, so it counts compilations
  return _MODEL.apply(_PARAMS, x)


LABELS = np.argmax(np.asarray(logits_fn(IMAGES / 255.0)), axis=1).astype(np.int32)


def test_padding_never_recompiles_and_matches_one_big_batch():
  pgd = functools.partial(attacks.pgd, logits_fn, eps=0.05, steps=3, random_start=False)
  acc_small, correct_small = attacks.robust_accuracy(pgd, logits_fn, IMAGES, LABELS, batch_size=8, progress=False)
  traces = TRACES["count"]
  # Another set size with the same batch size: a different padding, no new compilation.
  attacks.robust_accuracy(pgd, logits_fn, IMAGES[:13], LABELS[:13], batch_size=8, progress=False)
  assert TRACES["count"] == traces
  acc_big, correct_big = attacks.robust_accuracy(pgd, logits_fn, IMAGES, LABELS, batch_size=20, progress=False)
  np.testing.assert_array_equal(correct_small, correct_big)
  assert acc_small == acc_big == correct_small.mean()


def test_sharded_pgd_equals_unsharded():
  devices = jax.devices()
  assert len(devices) == 8, "tests/conftest.py should simulate 8 CPU devices"
  mesh = Mesh(np.array(devices), ("data",))
  seen = []

  def pgd(x, y, key):
    seen.append(x.sharding)
    return attacks.pgd(logits_fn, x, y, eps=0.05, norm="l2", steps=5, key=key)

  key = jax.random.PRNGKey(3)
  _, correct_1, adv_1 = attacks.robust_accuracy(pgd, logits_fn, IMAGES, LABELS, batch_size=16, key=key,
                                                keep_adversarial=True, progress=False)
  _, correct_8, adv_8 = attacks.robust_accuracy(pgd, logits_fn, IMAGES, LABELS, batch_size=16, mesh=mesh, key=key,
                                                keep_adversarial=True, progress=False)
  assert isinstance(seen[-1], NamedSharding) and len(seen[-1].device_set) == 8
  np.testing.assert_array_equal(correct_1, correct_8)
  np.testing.assert_allclose(adv_1, adv_8, atol=1e-6)


def test_batch_size_rounds_up_to_the_mesh():
  mesh = Mesh(np.array(jax.devices()), ("data",))
  acc, _ = attacks.robust_accuracy(None, logits_fn, IMAGES, LABELS, batch_size=5, mesh=mesh, progress=False)
  assert acc == 1.0  # labels are the model's own predictions


def test_robust_points_are_compacted_into_fixed_batches():
  """AutoAttack re-batches only still-robust points; every stage call sees the same batch shape."""
  sizes = []

  # For each class c, an image the model assigns to another class: swapping it in always fools.
  decoys = jnp.asarray(np.stack([IMAGES[np.flatnonzero(LABELS != c)[0]] for c in range(5)]) / 255.0, jnp.float32)

  def fool_first_half(x, y, key):
    del key
    return jnp.where(jnp.arange(x.shape[0])[:, None, None, None] < x.shape[0] // 2, decoys[y], x)

  def record(x, y, key):
    sizes.append(x.shape[0])
    return fool_first_half(x, y, key)

  stages = [Stage("a", record), Stage("b", record), Stage("c", record)]
  result = attacks.run_autoattack(logits_fn, IMAGES, LABELS, eps=1.0, norm="linf", stages=stages, batch_size=16)
  # Shrinking subsets land in a few power-of-two buckets (never below 8 rows), never in ad-hoc shapes.
  assert sizes[0] == 16 and 8 in sizes and set(sizes) <= {16, 8} and sizes == sorted(sizes, reverse=True)
  history = list(result.robust_accuracy.values())
  assert all(a >= b for a, b in zip(history, history[1:]))
  flipped_wrong = np.argmax(np.asarray(logits_fn(result.x_adv)), 1) != LABELS
  np.testing.assert_array_equal(~result.robust, flipped_wrong)


def test_bucket_sizes_follow_the_robust_set():
  assert bucket_size(600, 512) == 512
  assert bucket_size(300, 512) == 320
  assert bucket_size(256, 512) == 256
  assert bucket_size(257, 512) == 320
  assert bucket_size(128, 512) == 128
  assert bucket_size(129, 512) == 160
  assert bucket_size(20, 512) == 32  # small sets: powers of two, shared by every model evaluated
  assert bucket_size(65, 512) == 128
  sizes = [bucket_size(n, 512) for n in range(1, 513)]
  assert all(n <= size < n + max(8, n / 4) for n, size in zip(range(1, 513), sizes) if n >= 128)  # little padding
  assert all(size < max(8, 2 * n) + 1 for n, size in zip(range(1, 128), sizes))
  assert len(set(sizes[:127])) == 5  # 8, 16, 32, 64, 128: five shapes below 128 points
  for low in (128, 256):  # few shapes (compilations) per octave of the robust-set size
    assert len({s for n, s in zip(range(1, 513), sizes) if low < n <= 2 * low}) <= 4
  assert bucket_size(3, 512) == 8  # never below 8 rows: few distinct shapes
  assert bucket_size(3, 6) == 6  # a batch smaller than the floor stays as it is
  assert bucket_size(1, 64, Mesh(np.array(jax.devices()), ("data",))) == 8  # at least one row per device


def test_mismatched_images_and_labels_are_rejected():
  with pytest.raises(ValueError, match="labels"):
    attacks.robust_accuracy(None, logits_fn, IMAGES, LABELS[:-1], batch_size=4, progress=False)


def test_normalised_float_images_are_rejected_everywhere_images_enter():
  """Standardised pixels (mean 0, std 1) instead of [0, 1] get a clear error in the attack loop; the encoder
  evaluators read datasets, which hold uint8 pixels only and say so."""
  from csl_jax.data import ArrayDataset  # noqa: PLC0415
  normalised = (IMAGES / 255.0 - 0.5) / 0.25
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    attacks.robust_accuracy(None, logits_fn, normalised, LABELS, batch_size=8, progress=False)
  with pytest.raises(ValueError, match=r"uint8\[N, H, W, C\]"):
    ArrayDataset(images=normalised.astype(np.float32), labels=LABELS, class_names=[str(i) for i in range(10)])

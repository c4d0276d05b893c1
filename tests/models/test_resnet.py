"""ResNet architecture checks: published parameter counts, stride pattern, init options, dtypes, sharding."""
import functools

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from csl_jax.models import get_encoder
from csl_jax.models.resnet import ResNet


def _num_params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _abstract_variables(model, hw: int):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, hw, hw, 3)))


@pytest.mark.parametrize("name, feature_dim, num_classes, expected", [
    # CIFAR ResNet-18 with a 10-way fc: the count quoted by SupCon/SimCLR CIFAR repos (11.17M).
    ("resnet18_cifar", 512, 10, 11_173_962),
    # torchvision resnet50(): 25,557,032 parameters including the 1000-way fc.
    ("resnet50_imagenet", 2048, 1000, 25_557_032),
])
def test_parameter_counts_match_published(name, feature_dim, num_classes, expected):
  variables = _abstract_variables(get_encoder(name), 32)
  assert _num_params(variables["params"]) + feature_dim * num_classes + num_classes == expected


def _stage_shapes(name: str, hw: int, **kwargs):
  """Output shapes of the last block of each stage, plus the features, traced without computing."""
  model = get_encoder(name, **kwargs)
  variables = _abstract_variables(model, hw)
  apply = functools.partial(model.apply, train=False, capture_intermediates=True, mutable=["intermediates"])
  features, state = jax.eval_shape(apply, variables, jnp.zeros((2, hw, hw, 3)))
  inter = state["intermediates"]
  blocks = sorted(k for k in inter if k.startswith("layer"))
  last = {k.split("_")[0]: k for k in blocks}  # layerN -> its last block
  return [inter[last[f"layer{i}"]]["__call__"][0].shape for i in range(1, 5)], features, inter


def test_cifar_stem_keeps_resolution_in_stage_one():
  stages, features, _ = _stage_shapes("resnet18_cifar", 32)
  assert [s[1:] for s in stages] == [(32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512)]
  assert features.shape == (2, 512) and features.dtype == jnp.float32
  stages, features, _ = _stage_shapes("resnet50_cifar", 32)
  assert [s[1:3] for s in stages] == [(32, 32), (16, 16), (8, 8), (4, 4)]
  assert features.shape == (2, 2048)


def test_imagenet_stem_and_stride_on_the_3x3_conv():
  stages, features, inter = _stage_shapes("resnet50_imagenet", 64)
  # 7x7/2 conv then 3x3/2 max-pool: 64 -> 16 before stage 1.
  assert [s[1:] for s in stages] == [(16, 16, 256), (8, 8, 512), (4, 4, 1024), (2, 2, 2048)]
  assert features.shape == (2, 2048)
  # v1.5: in the first block of stage 2 the 1x1 conv keeps 16x16 and the 3x3 conv halves it.
  block = inter["layer2_0"]
  assert block["conv1"]["__call__"][0].shape[1:3] == (16, 16)
  assert block["conv2"]["__call__"][0].shape[1:3] == (8, 8)


@pytest.mark.parametrize("bottleneck", [False, True])
def test_zero_init_residual_makes_blocks_identities(bottleneck):
  # Two stage-1 blocks only: the option's plumbing (ResNet -> block -> last BN) is the same as in a
  # full ResNet, whose init would take many seconds to compile on CPU.
  model = ResNet(stage_sizes=(2,), bottleneck=bottleneck, imagenet_stem=False, width=8, zero_init_residual=True)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  # unsafe_rbg: XLA compiles its kernels ~5x faster than threefry's on CPU; the values do not matter.
  variables = jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), x)
  apply = jax.jit(functools.partial(model.apply, train=False, capture_intermediates=True,
                                    mutable=["intermediates"]))
  last_bn = "bn3" if bottleneck else "bn2"

  def block_outputs(variables):
    inter = apply(variables, x)[1]["intermediates"]
    return inter["layer1_0"]["__call__"][0], inter["layer1_1"]["__call__"][0]

  # layer1_1 has no downsample: it computes relu(0 + x) = x, since its input is already post-ReLU.
  first, second = block_outputs(variables)
  chex.assert_trees_all_close(second, first)
  # Control: with the usual unit scale the same block is not an identity.
  flat = flax.traverse_util.flatten_dict(variables["params"])
  flat = {k: (jnp.ones_like(v) if k[1:] == (last_bn, "scale") else v) for k, v in flat.items()}
  first, second = block_outputs({**variables, "params": flax.traverse_util.unflatten_dict(flat)})
  assert np.abs(second - first).max() > 1e-2
  assert get_encoder("resnet50_cifar", zero_init_residual=True).zero_init_residual


def test_bf16_computes_in_bf16_but_keeps_f32_state(random_variables):
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  f32 = get_encoder("resnet18_cifar", width=16)
  bf16 = get_encoder("resnet18_cifar", width=16, dtype=jnp.bfloat16)
  for leaf in jax.tree.leaves(jax.eval_shape(bf16.init, jax.random.key(0), x)):
    assert leaf.dtype == jnp.float32
  variables = random_variables(f32, x)
  train = jax.jit(functools.partial(bf16.apply, train=True, mutable=["batch_stats"]))
  features, updates = train(variables, x)
  assert features.dtype == jnp.float32
  for leaf in jax.tree.leaves(updates):
    assert leaf.dtype == jnp.float32
  # Eval mode: train-mode BN over a 4-sample batch at 1x1 resolution amplifies rounding far beyond
  # bf16's 3 significant digits, so the precision comparison uses running statistics.
  expected = jax.jit(functools.partial(f32.apply, train=False))(variables, x)
  actual = jax.jit(functools.partial(bf16.apply, train=False))(variables, x)
  error = np.abs(actual - expected).max()
  assert 0 < error <= 0.05 * np.abs(expected).max()  # > 0: it really computed in bf16


def test_batch_norm_uses_global_batch_statistics_when_sharded(random_variables):
  """The docstring's claim: under jit with a sharded batch, BN statistics are the global batch's."""
  model = get_encoder("resnet18_cifar", width=8)
  devices = np.array(jax.devices())
  assert len(devices) == 8, "tests/conftest.py should simulate 8 CPU devices"
  # Per-device slices with different statistics, so per-device BN would give different numbers.
  x = jax.random.normal(jax.random.key(1), (8, 8, 8, 3)) * jnp.arange(1, 9)[:, None, None, None]
  variables = random_variables(model, x)
  step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  expected = step(variables, x)
  sharded_x = jax.device_put(x, NamedSharding(Mesh(devices, ("batch",)), P("batch")))
  actual = step(variables, sharded_x)
  assert len(sharded_x.sharding.device_set) == 8
  # Only the reduction order differs; per-device statistics would be off by O(1) here.
  chex.assert_trees_all_close(actual, expected, rtol=1e-4, atol=1e-4)
  mean = flax.traverse_util.flatten_dict(actual[1]["batch_stats"])[("bn1", "mean")]
  assert np.abs(mean).max() > 1e-3  # statistics were actually updated


def test_small_cnn_max_pool_equals_flax_max_pool():
  """The slice-based pool in SmallCNN must equal nn.max_pool, odd sizes included (and its gradient too)."""
  import flax.linen as nn
  import jax
  import numpy as np
  from csl_jax.models.small_cnn import max_pool_2x2
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 6, 4))
  np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))
  grad = lambda f: jax.grad(lambda v: jax.numpy.sum(f(v) ** 2))(x)
  np.testing.assert_allclose(grad(max_pool_2x2), grad(lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))), rtol=1e-6)

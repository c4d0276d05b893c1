"""PyTorch twins and torchvision import: same weights must give the same numbers in both frameworks."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax.models import ImageClassifier, get_encoder
from csl_jax.models import convert

torch = pytest.importorskip("torch")

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# Eval mode: f32 rounding through up to 50 layers stays ~2e-6 of the output scale.
EVAL_RTOL = 1e-4
# Train mode normalises each channel with the statistics of only B*H*W = 16 values at the last stage;
# that ill-conditioning leaves *both* f32 implementations ~6e-5 away from a float64 torch reference,
# so their mutual distance can reach ~1e-4.
TRAIN_RTOL = 3e-4

# (name, kwargs, spatial size): tiny inputs keep CPU time low; width=16 for the ResNet-50s likewise.
ENCODERS = [
    ("small_cnn", dict(widths=(8, 16, 32)), 16),
    ("small_cnn", dict(widths=(8, 16, 32)), 3),  # 3 -> 1 after the first pool: later pools are skipped
    ("resnet18_cifar", {}, 16),
    ("resnet50_cifar", dict(width=16), 16),
    ("resnet50_imagenet", dict(width=16), 64),
]


def assert_close(actual, expected, rtol):
  """max |actual - expected| <= rtol * max |expected| (a scale-relative bound; ReLU zeros make elementwise
  relative errors meaningless)."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  scale = np.abs(expected).max()
  assert scale > 0
  error = np.abs(actual - expected).max()
  assert error <= rtol * scale, f"max error {error:.3g} > {rtol} * scale {scale:.3g}"


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _train_forward(model):
  return jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))


def _with_trained_statistics(model, variables, x, steps: int = 3):
  """Runs train-mode passes on shifted/rescaled batches so running statistics are far from init."""
  forward = _train_forward(model)
  for step in range(steps):
    _, updates = forward(variables, x * (1.0 + step) + 0.5 * step)
    variables = {**variables, **updates}
  return variables


@pytest.mark.parametrize("name, kwargs, hw", ENCODERS, ids=lambda v: str(v))
def test_encoder_twin_matches_flax(name, kwargs, hw, random_variables):
  model = get_encoder(name, **kwargs)
  x = np.random.default_rng(1).standard_normal((4, hw, hw, 3)).astype(np.float32)
  variables = _with_trained_statistics(model, random_variables(model, x), x)
  twin = convert.to_torch_encoder(name, variables, **kwargs)
  assert not twin.training

  expected = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  with torch.no_grad():
    assert_close(twin(_nchw(x)).numpy(), expected, EVAL_RTOL)
    expected_train, _ = _train_forward(model)(variables, x)
    assert_close(twin.train()(_nchw(x)).numpy(), expected_train, TRAIN_RTOL)


@pytest.mark.parametrize("name, kwargs", [("small_cnn", dict(widths=(8, 16, 32))), ("resnet18_cifar", {})])
def test_classifier_twin_matches_image_classifier(name, kwargs, random_variables):
  model = ImageClassifier(get_encoder(name, **kwargs), num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD)
  images = np.random.default_rng(2).uniform(0, 1, (4, 16, 16, 3)).astype(np.float32)
  variables = random_variables(model, images)
  expected = jax.jit(model.apply)(variables, images)
  twin = convert.to_torch_classifier(name, variables, num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD,
                                     dtype=jnp.bfloat16, **kwargs)  # dtype: flax-only, ignored
  assert not twin.training
  with torch.no_grad():
    assert_close(twin(_nchw(images)).numpy(), expected, EVAL_RTOL)


def test_twin_rejects_variables_of_another_architecture(random_variables):
  model = get_encoder("small_cnn", widths=(8, 16))
  variables = random_variables(model, np.zeros((1, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match="shape mismatches"):
    convert.to_torch_encoder("small_cnn", variables, widths=(8, 32))
  with pytest.raises(ValueError, match="missing"):
    convert.to_torch_encoder("small_cnn", variables, widths=(8, 16, 32))
  with pytest.raises(TypeError, match="unknown kwargs"):
    convert.to_torch_encoder("small_cnn", variables, width=8)
  with pytest.raises(ValueError, match="No PyTorch twin"):
    convert.to_torch_encoder("vit", variables)


def torchvision_resnet50_shapes(num_classes: int) -> dict:
  """The torchvision resnet50() state-dict layout, written out independently of the twin."""
  shapes = {}

  def bn(prefix, channels):
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{prefix}.{leaf}"] = (channels,)
    shapes[f"{prefix}.num_batches_tracked"] = ()

  shapes["conv1.weight"] = (64, 3, 7, 7)
  bn("bn1", 64)
  in_channels = 64
  for stage, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
    for block in range(blocks):
      prefix = f"layer{stage}.{block}"
      shapes[f"{prefix}.conv1.weight"] = (planes, in_channels, 1, 1)
      bn(f"{prefix}.bn1", planes)
      shapes[f"{prefix}.conv2.weight"] = (planes, planes, 3, 3)
      bn(f"{prefix}.bn2", planes)
      shapes[f"{prefix}.conv3.weight"] = (4 * planes, planes, 1, 1)
      bn(f"{prefix}.bn3", 4 * planes)
      if block == 0:
        shapes[f"{prefix}.downsample.0.weight"] = (4 * planes, in_channels, 1, 1)
        bn(f"{prefix}.downsample.1", 4 * planes)
      in_channels = 4 * planes
  shapes["fc.weight"], shapes["fc.bias"] = (num_classes, 2048), (num_classes,)
  return shapes


def test_torchvision_layout_is_resnet50():
  shapes = torchvision_resnet50_shapes(1000)
  learnable = [s for k, s in shapes.items() if not k.endswith(("running_mean", "running_var", "tracked"))]
  assert sum(int(np.prod(s)) for s in learnable) == 25_557_032  # torchvision resnet50()


@pytest.fixture(scope="module")
def torchvision_state():
  """A random torchvision-layout ResNet-50 (twin encoder + fc) with non-trivial BN state."""
  torch.manual_seed(0)
  encoder = convert.build_torch_encoder("resnet50_imagenet")
  for module in encoder.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      for tensor, low, high in [(module.weight, 0.5, 1.5), (module.bias, -0.1, 0.1),
                                (module.running_mean, -0.1, 0.1), (module.running_var, 0.5, 1.5)]:
        torch.nn.init.uniform_(tensor.data, low, high)
  fc = torch.nn.Linear(2048, 10)
  state = {**encoder.state_dict(), **{f"fc.{k}": v for k, v in fc.state_dict().items()}}
  return encoder.eval(), fc.eval(), state


def test_twin_state_dict_has_torchvision_layout(torchvision_state):
  encoder, _, state = torchvision_state
  assert {k: tuple(v.shape) for k, v in state.items()} == torchvision_resnet50_shapes(10)
  # v1.5: the stride sits on the 3x3 conv of the first bottleneck of stages 2-4.
  assert encoder.layer2[0].conv1.stride == (1, 1) and encoder.layer2[0].conv2.stride == (2, 2)


def test_from_torchvision_resnet50_round_trip(torchvision_state):
  encoder, fc, state = torchvision_state
  variables = convert.from_torchvision_resnet50(state)
  model = ImageClassifier(get_encoder("resnet50_imagenet"), num_classes=10, mean=(0.0,) * 3, std=(1.0,) * 3)
  images = np.random.default_rng(3).uniform(0, 1, (4, 64, 64, 3)).astype(np.float32)
  logits = jax.jit(model.apply)(variables, images)
  with torch.no_grad():
    assert_close(logits, fc(encoder(_nchw(images))).numpy(), EVAL_RTOL)
  # Without an fc (typical of SSL checkpoints) only the encoder comes back.
  encoder_only = convert.from_torchvision_resnet50({k: v for k, v in state.items() if not k.startswith("fc.")})
  assert "head" not in encoder_only["params"]
  np.testing.assert_array_equal(encoder_only["batch_stats"]["encoder"]["bn1"]["var"],
                                state["bn1.running_var"].numpy())


def test_from_torchvision_resnet50_explains_bad_keys(torchvision_state):
  _, _, state = torchvision_state
  with pytest.raises(ValueError, match=r"'backbone\.'.*prefix="):
    convert.from_torchvision_resnet50({f"backbone.{k}": v for k, v in state.items()})
  broken = dict(state)
  broken["layer1.0.conv2.weight"] = broken["layer1.0.conv2.weight"][:, :32]
  with pytest.raises(ValueError, match="layer1.0.conv2.weight: shape"):
    convert.from_torchvision_resnet50(broken)


def test_load_torch_checkpoint_unwraps_common_wrappers(tmp_path):
  weights = {"conv1.weight": torch.randn(4, 3, 3, 3), "bn1.running_var": torch.rand(4)}
  path = tmp_path / "ckpt.pth.tar"
  # What DistributedDataParallel training scripts typically save.
  torch.save({"epoch": 7, "arch": "resnet50", "state_dict": {f"module.{k}": v for k, v in weights.items()},
              "optimizer": {"state": {}, "param_groups": []}}, path)
  loaded = convert.load_torch_checkpoint(path)
  assert sorted(loaded) == sorted(weights)
  for key, value in weights.items():
    np.testing.assert_array_equal(loaded[key], value.numpy())

  torch.save({"model": {f"encoder_q.{k}": v for k, v in weights.items()} | {"queue": torch.zeros(2)}}, path)
  assert sorted(convert.load_torch_checkpoint(path, prefix="encoder_q.")) == sorted(weights)
  with pytest.raises(ValueError, match="no key starts with prefix 'backbone.'"):
    convert.load_torch_checkpoint(path, prefix="backbone.")

  torch.save({"epoch": 7, "weights": [1, 2]}, path)
  with pytest.raises(ValueError, match="found no state dict"):
    convert.load_torch_checkpoint(path)

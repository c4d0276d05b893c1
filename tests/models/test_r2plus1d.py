"""R(2+1)D-18: torchvision, TCLR and CVRL release layouts convert to flax models that equal the torch twin."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax.models import convert_release, get_encoder, r2plus1d
from tests.models import release_checks as rc

torch = pytest.importorskip("torch")
from csl_jax.models import torch_twins  # noqa: E402  pylint: disable=g-import-not-at-top

KINETICS = (convert_release.KINETICS_MEAN, convert_release.KINETICS_STD)


@pytest.fixture(scope="module")
def twin():
  torch.manual_seed(0)
  return rc.randomize_norms(torch_twins.r2plus1d_18(num_classes=400), seed=0)


@pytest.fixture(scope="module")
def clip(cifar10_zip):
  return rc.cifar_clip(cifar10_zip)  # [1, 16, 112, 112, 3]


@pytest.fixture(scope="module")
def kinetics_reference(twin, clip):
  """The twin's (features, logits) on the clip normalised with torchvision's Kinetics statistics."""
  return rc.torch_reference(twin.forward_features, twin.fc, clip, *KINETICS)


def mlp(prefix: str, widths=(512, 64, 32)) -> dict:
  generator = torch.Generator().manual_seed(1)
  return {f"{prefix}{2 * i}.weight": torch.randn(o, n, generator=generator) for i, (n, o) in
          enumerate(zip(widths[:-1], widths[1:]))}


def test_torchvision_release(tmp_path, twin, clip, kinetics_reference):
  features, logits, meta = rc.convert_and_run(tmp_path, "tv", "r2plus1d_18", "torchvision", twin.state_dict(), clip)
  expected = kinetics_reference
  rc.assert_close(features, expected[0], "R(2+1)D-18 torchvision features")
  rc.assert_close(logits, expected[1], "R(2+1)D-18 torchvision logits")
  assert meta["has_head"] and meta["num_classes"] == 400 and meta["feature_dim"] == 512
  assert meta["input_shape"] == [16, 112, 112, 3] and (meta["mean"], meta["std"]) == tuple(map(list, KINETICS))


def test_tclr_release_takes_rgb(tmp_path, twin, clip):
  """TCLR: {'state_dict': DataParallel(Sequential(backbone, mlp))}, BGR frames in [0, 1] without mean/std."""
  state = {**rc.prefixed(twin.state_dict(), "module.0."), **mlp("module.1.")}
  features, logits, meta = rc.convert_and_run(tmp_path, "tclr", "r2plus1d_18", "tclr", {"state_dict": state}, clip)
  expected, _ = rc.torch_reference(twin.forward_features, None, clip, (0.0,) * 3, (1.0,) * 3, bgr=True)
  rc.assert_close(features, expected, "R(2+1)D-18 TCLR features (RGB in, BGR release)")
  assert logits is None and not meta["has_head"]  # its fc was never trained: dropped
  assert meta["prefix"] == "0." and meta["release_channel_order"] == "BGR" and meta["mean"] == [0.0] * 3
  assert sorted(meta["ignored_keys"]) == sorted(["0.fc.weight", "0.fc.bias", "1.0.weight", "1.2.weight"])


def test_cvrl_port_with_key_encoder_and_queue(tmp_path, twin, clip, kinetics_reference):
  encoder = {k: v for k, v in twin.state_dict().items() if not k.startswith("fc.")}
  state = {**rc.prefixed(encoder, "encoder_q."), **rc.prefixed(rc.perturbed(encoder, seed=3), "encoder_k."),
           **mlp("projector."), "queue": torch.randn(32, 8), "queue_ptr": torch.zeros(1, dtype=torch.long)}
  features, logits, meta = rc.convert_and_run(tmp_path, "cvrl", "r2plus1d_18", "cvrl",
                                              {"epoch": 7, "state_dict": state}, clip)
  rc.assert_close(features, kinetics_reference[0], "R(2+1)D-18 CVRL features")
  assert logits is None and meta["prefix"] == "encoder_q." and meta["needs_linear_probe"]


def test_missing_and_unexpected_keys_are_listed(twin):
  state = twin.state_dict()
  missing = {k: v for k, v in state.items() if k != "layer3.0.conv1.0.3.weight"}
  with pytest.raises(ValueError, match=r"missing keys \['layer3\.0\.conv1\.0\.3\.weight'\]"):
    convert_release.convert_release(missing, "r2plus1d_18", "torchvision")
  extra = {**state, "layer3.0.conv1.0.5.weight": torch.zeros(3)}
  with pytest.raises(ValueError, match=r"unexpected keys \['layer3\.0\.conv1\.0\.5\.weight'\]"):
    convert_release.convert_release(extra, "r2plus1d_18", "torchvision")
  tclr = {"bb_state_dict": {**rc.prefixed(state, "module.0."), "module.2.temperature": torch.ones(1)}}
  with pytest.raises(ValueError, match=r"outside the encoder prefix '0\.'.*\['2\.temperature'\]"):
    convert_release.convert_release(tclr, "r2plus1d_18", "tclr")


def test_layout_matches_torchvision(twin):
  """torchvision r2plus1d_18(): 31,505,325 parameters; midplanes 144, 230, 288, 460, 576, 921, 1152."""
  assert sum(p.numel() for p in twin.parameters()) == 31_505_325
  assert [r2plus1d.midplanes(i, o) for i, o in ((64, 64), (64, 128), (128, 128), (128, 256), (256, 256),
                                                (256, 512), (512, 512))] == [144, 230, 288, 460, 576, 921, 1152]
  shapes = jax.eval_shape(get_encoder("r2plus1d_18").init, jax.random.key(0), jnp.zeros((1, 16, 112, 112, 3)))
  flax_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  assert flax_count + 512 * 400 + 400 == 31_505_325
  assert twin.state_dict()["layer1.0.conv1.0.0.weight"].shape == (144, 64, 1, 3, 3)


@pytest.mark.parametrize("kernel, strides", [
    ((1, 3, 3), (1, 1, 1)), ((1, 3, 3), (1, 2, 2)), ((1, 7, 7), (1, 2, 2)), ((1, 3, 3), (2, 2, 2)),
    ((3, 1, 1), (1, 1, 1)), ((3, 1, 1), (2, 1, 1)), ((1, 1, 1), (2, 2, 2)), ((3, 1, 1), (2, 2, 2)),
    ((3, 3, 3), (2, 1, 2))])
def test_conv3d_equals_a_3d_convolution(kernel, strides):
  """The reshaped 2-D forms give lax's 3-D convolution (values, input and kernel gradients), odd sizes included."""
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(sum(kernel) + 10 * sum(strides)), 3)
  x = jax.random.normal(kx, (2, 5, 9, 7, 3))
  w = jax.random.normal(kk, kernel + (3, 4))
  pad = [((k - 1) // 2, (k - 1) // 2) for k in kernel]
  reference = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, pad, dimension_numbers=("NDHWC", "DHWIO",
                                                                                                "NDHWC"))
  ours = lambda x, w: r2plus1d.conv3d(x, w, strides)
  expected = reference(x, w)
  np.testing.assert_allclose(ours(x, w), expected, rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(kg, expected.shape)
  loss = lambda fn: (lambda x, w: jnp.sum(fn(x, w) * cotangent))
  for got, want in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(reference), (0, 1))(x, w)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

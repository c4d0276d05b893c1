"""Shared pieces of the release-conversion tests: real inputs, randomised twins, convert-and-compare.

A test builds a torch twin with seeded random weights (every LayerNorm / BatchNorm parameter and running
statistic random too, so a swapped or missed tensor changes the numbers), saves its state dict in a release's
layout (prefixes, nesting, heads next to the encoder) to a .pth, converts it with the CLI's function, reads the
result back with `load_converted` and requires the flax features (and logits, with a classifier) to equal the
twin's on the same inputs.
"""
import functools
import io
import zipfile

import jax
import numpy as np
import torch
from PIL import Image

from csl_jax import convert as convert_cli
from csl_jax.models import ImageClassifier

# float32 through 12 transformer blocks / 50 conv layers: differences are ~1e-6 of O(1) outputs.
ATOL = 1e-4
# A comparison is only meaningful when the outputs are not tiny: their max |value| must exceed this.
MIN_SCALE = 0.05


def photos(count: int, size: int = 224) -> np.ndarray:
  """f32[count, size, size, 3] in [0, 1]: scikit-image's bundled astronaut, chelsea (a cat) and coffee photos."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  images = [data.astronaut(), data.chelsea(), data.coffee()][:count]
  resized = [np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)) for image in images]
  return np.stack(resized).astype(np.float32) / 255.0


def cifar_clip(zip_path, frames: int = 16, size: int = 112) -> np.ndarray:
  """f32[1, frames, size, size, 3] in [0, 1]: a camera panning over a 2x2 mosaic of CIFAR-10 test photos."""
  with zipfile.ZipFile(zip_path) as archive:
    tiles = [np.asarray(Image.open(io.BytesIO(archive.read(f"test/{name}/0000.jpg"))).convert("RGB"))
             for name in ("airplane", "cat", "horse", "ship")]
  mosaic = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)
  scene = np.asarray(Image.fromarray(mosaic).resize((size + 3 * frames,) * 2, Image.BILINEAR))
  clip = np.stack([scene[3 * t:3 * t + size, 2 * t:2 * t + size] for t in range(frames)])
  return clip[None].astype(np.float32) / 255.0


def randomize_norms(module, seed: int):
  """Random affine parameters and running statistics for every LayerNorm / BatchNorm of `module`; in place."""
  generator = torch.Generator().manual_seed(seed)
  uniform = lambda t, low, high: t.data.copy_(torch.rand(t.shape, generator=generator) * (high - low) + low)
  for m in module.modules():
    if isinstance(m, (torch.nn.LayerNorm, torch.nn.modules.batchnorm._BatchNorm)):  # pylint: disable=protected-access
      uniform(m.weight, 0.5, 1.5)
      uniform(m.bias, -0.2, 0.2)
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):  # pylint: disable=protected-access
      uniform(m.running_mean, -0.2, 0.2)
      uniform(m.running_var, 0.5, 1.5)
  return module.eval()


def channels_second(x: np.ndarray) -> torch.Tensor:
  """NHWC / NTHWC numpy -> NCHW / NCTHW torch."""
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def torch_reference(features_fn, head, inputs, mean, std, *, bgr: bool = False):
  """(features, logits or None) of a torch twin on inputs in [0, 1] normalised by (mean, std) — channels in
  BGR order when the release expects that."""
  x = channels_second(inputs)
  shape = (1, -1) + (1,) * (x.ndim - 2)
  x = (x - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
  if bgr:
    x = x.flip(1)
  with torch.no_grad():
    features = features_fn(x)
    return features.numpy(), None if head is None else head(features).numpy()


@functools.partial(jax.jit, static_argnames=("model", "with_head"))
def flax_forward(model, variables, inputs, with_head):
  if not with_head:
    return model.apply(variables, inputs, method=ImageClassifier.features), None
  logits, state = model.apply(variables, inputs, mutable=["intermediates"],
                              capture_intermediates=lambda module, method: module.name == "encoder")
  return state["intermediates"]["encoder"]["__call__"][0], logits


def convert_and_run(tmp_path, name: str, arch: str, fmt: str, checkpoint, inputs, **options):
  """torch.save(checkpoint) -> `convert_checkpoint` -> `load_converted` -> flax (features, logits or None), meta."""
  src, out_dir = tmp_path / f"{name}.pth", tmp_path / f"{name}_converted"
  torch.save(checkpoint, src)
  written = convert_cli.convert_checkpoint(arch, fmt, src, out_dir, **options)
  meta, variables = convert_cli.load_converted(out_dir)
  assert meta == written
  features, logits = flax_forward(convert_cli.converted_model(meta), variables, inputs, with_head=meta["has_head"])
  return np.asarray(features), None if logits is None else np.asarray(logits), meta


def assert_close(actual, expected, what: str):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs torch {expected.shape}"
  scale = np.abs(expected).max()
  assert scale > MIN_SCALE, f"{what}: torch outputs too small ({scale:.3g}) for the comparison to mean anything"
  error = np.abs(actual - expected).max()
  assert error < ATOL, f"{what}: max |flax - torch| = {error:.3g} >= {ATOL} (output scale {scale:.3g})"


def prefixed(state: dict, prefix: str) -> dict:
  return {f"{prefix}{k}": v for k, v in state.items()}


def perturbed(state: dict, seed: int) -> dict:
  """A copy with every float tensor changed: the other branch of a two-branch method (student, momentum)."""
  generator = torch.Generator().manual_seed(seed)
  return {k: v + 0.1 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v.clone()
          for k, v in state.items()}

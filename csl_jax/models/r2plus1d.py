"""R(2+1)D-18 video encoder (Tran et al. 2018) in torchvision's `r2plus1d_18` layout.

Every 3x3x3 convolution is factorised into a 1x3x3 spatial conv to M_i channels, BatchNorm, ReLU and a 3x1x1
temporal conv, with M_i = (in * out * 27) // (in * 9 + 3 * out) chosen so the pair has about the parameters
of the full 3-D conv (torchvision computes M_i once per block, from the block's input width, and uses it for
both of the block's convs). Stem: 1x7x7/(1,2,2) conv to 45 channels, BN, ReLU, 3x1x1 conv to 64, BN, ReLU. Four
stages of two BasicBlocks (64, 128, 256, 512 channels; stages 2-4 stride 2 in time and space, their first
block with a 1x1x1/2 conv + BN shortcut), global average pool -> 512 features.

Input: clips f32[B, T, H, W, 3] (NTHWC), already normalised; 16 x 112 x 112 in the releases.
BatchNorm: torch defaults (momentum 0.1 == flax 0.9, eps 1e-5), running statistics when train=False.
Padding is explicit, as in `resnet.py`, so strided convs pad symmetrically like torch. The factorised convs
run as 2-D convolutions over reshaped clips (`conv3d`).
"""
from typing import Any

import flax.linen as nn
from jax import lax
import jax.numpy as jnp

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = 2
# flax module name -> torchvision module name, inside the stem / a block. `models.convert_release` maps every
# tensor through this table, so the two layouts cannot drift apart.
TORCH_NAMES = {
    "stem_spatial": "stem.0", "stem_spatial_bn": "stem.1", "stem_temporal": "stem.3", "stem_temporal_bn": "stem.4",
    "conv1_spatial": "conv1.0.0", "conv1_mid_bn": "conv1.0.1", "conv1_temporal": "conv1.0.3", "bn1": "conv1.1",
    "conv2_spatial": "conv2.0.0", "conv2_mid_bn": "conv2.0.1", "conv2_temporal": "conv2.0.3", "bn2": "conv2.1",
    "downsample_conv": "downsample.0", "downsample_bn": "downsample.1",
}

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's kaiming_normal_


def midplanes(in_channels: int, out_channels: int) -> int:
  """Width M_i of the (2+1)D pair replacing a 3x3x3 conv in -> out (torchvision's formula, floored)."""
  return (in_channels * out_channels * 3 * 3 * 3) // (in_channels * 3 * 3 + 3 * out_channels)


def conv3d(x, kernel, strides):
  """A 3-D convolution [B, T, H, W, Cin] * [kt, kh, kw, Cin, Cout] with symmetric (k - 1) // 2 padding.

  R(2+1)D's convolutions are all 1 x kh x kw (spatial) or kt x 1 x 1 (temporal), and those are 2-D
  convolutions over reshaped clips: frames folded into the batch, or space folded into one axis. XLA:CPU runs
  them ~1.5-3x faster that way than as 3-D convolutions (jaxlib 0.10.2, layer-1 shapes at batch 2: spatial
  forward 230 -> 118 ms, input gradient 552 -> 229 ms; temporal 122 -> 38 ms and 228 -> 96 ms), with the
  same result. Other kernel shapes run as a 3-D convolution.
  """
  (kt, kh, kw), (st, sh, sw) = kernel.shape[:3], strides
  pad = lambda k: ((k - 1) // 2, (k - 1) // 2)
  numbers = ("NHWC", "HWIO", "NHWC")
  if kt == 1:  # spatial: frames (every st-th, as a stride-st conv without temporal padding keeps) as images
    x = x[:, ::st]
    batch, frames, height, width, channels = x.shape
    y = lax.conv_general_dilated(jnp.reshape(x, (batch * frames, height, width, channels)), kernel[0],
                                 (sh, sw), (pad(kh), pad(kw)), dimension_numbers=numbers)
    return jnp.reshape(y, (batch, frames) + y.shape[1:])
  if kh == kw == 1:  # temporal: each clip an image of T x (H·W) pixels
    x = x[:, :, ::sh, ::sw]
    batch, frames, height, width, channels = x.shape
    y = lax.conv_general_dilated(jnp.reshape(x, (batch, frames, height * width, channels)), kernel[:, 0],
                                 (st, 1), (pad(kt), (0, 0)), dimension_numbers=numbers)
    return jnp.reshape(y, (batch, y.shape[1], height, width, y.shape[-1]))
  return lax.conv_general_dilated(x, kernel, strides, (pad(kt), pad(kh), pad(kw)),
                                  dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


class _Conv(nn.Module):
  """A bias-free 3-D conv with `nn.Conv`'s parameter (`kernel`, [kt, kh, kw, Cin, Cout]), run by `conv3d`."""
  features: int
  kernel_size: tuple
  strides: tuple
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", _conv_init, tuple(self.kernel_size) + (x.shape[-1], self.features))
    return conv3d(x.astype(self.dtype), kernel.astype(self.dtype), tuple(self.strides))


def _conv(features, kernel, strides, dtype, name):
  return _Conv(features, kernel, strides, dtype, name=name)


def _bn(train, dtype, name):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """Two (2+1)D convs + shortcut: [B, T, H, W, C] -> [B, T/s, H/s, W/s, width]."""
  width: int
  mid: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    y = x
    for index, strides in ((1, self.strides), (2, 1)):
      y = _conv(self.mid, (1, 3, 3), (1, strides, strides), self.dtype, f"conv{index}_spatial")(y)
      y = nn.relu(_bn(train, self.dtype, f"conv{index}_mid_bn")(y))
      y = _conv(self.width, (3, 1, 1), (strides, 1, 1), self.dtype, f"conv{index}_temporal")(y)
      y = _bn(train, self.dtype, f"bn{index}")(y)
      if index == 1:
        y = nn.relu(y)
    if self.strides != 1 or x.shape[-1] != self.width:
      s = self.strides
      x = _conv(self.width, (1, 1, 1), (s, s, s), self.dtype, "downsample_conv")(x)
      x = _bn(train, self.dtype, "downsample_bn")(x)
    return nn.relu(y + x)


class R2Plus1D(nn.Module):
  """R(2+1)D-18 encoder: normalised clips f32[B, T, H, W, 3] -> pooled features f32[B, 512].

  dtype: computation dtype (bf16 on accelerators); params and BN statistics stay f32.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    if x.ndim != 5:
      raise ValueError(f"R(2+1)D expects clips [B, T, H, W, C] (NTHWC), got shape {x.shape}.")
    x = x.astype(self.dtype)
    x = _conv(45, (1, 7, 7), (1, 2, 2), self.dtype, "stem_spatial")(x)
    x = nn.relu(_bn(train, self.dtype, "stem_spatial_bn")(x))
    x = _conv(STAGE_WIDTHS[0], (3, 1, 1), (1, 1, 1), self.dtype, "stem_temporal")(x)
    x = nn.relu(_bn(train, self.dtype, "stem_temporal_bn")(x))
    for stage, width in enumerate(STAGE_WIDTHS):
      for index in range(BLOCKS_PER_STAGE):
        x = BasicBlock(width, midplanes(x.shape[-1], width), 2 if stage > 0 and index == 0 else 1, self.dtype,
                       name=f"layer{stage + 1}_{index}")(x, train=train)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))


def r2plus1d_18(**kwargs) -> R2Plus1D:
  """R(2+1)D-18 (torchvision `r2plus1d_18` without its fc); kwargs (dtype) go to `R2Plus1D`."""
  return R2Plus1D(**kwargs)

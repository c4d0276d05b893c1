"""ResNet encoders (He et al. 2016) in the torchvision layout, so PyTorch checkpoints convert 1:1.

Two stems:
  * CIFAR (`resnet18_cifar`, `resnet50_cifar`): 3x3/1 conv, no max-pool, as in the SimCLR (Chen et al.
    2020a, App. B.9) and SupCon (Khosla et al. 2020) CIFAR experiments — a 32x32 image keeps 32x32 in
    stage 1 and ends at 4x4 before pooling.
  * ImageNet (`resnet50_imagenet`): 7x7/2 conv + 3x3/2 max-pool; bottlenecks put the stride on their
    3x3 conv ("ResNet v1.5", torchvision's choice), which is what published SimCLR/BYOL/supervised
    ResNet-50 checkpoints in torchvision layout assume.

Submodule names follow torchvision ("conv1", "bn1", "layer2_0/conv2", "layer2_0/downsample_conv") so
`models.convert` maps every parameter by name; padding is explicit for the same reason (flax "SAME"
pads a stride-2 conv asymmetrically, torch symmetrically).

BatchNorm uses torch's defaults (momentum 0.1 == flax 0.9, eps 1e-5) so PyTorch twins agree. Under
`jax.jit` with the batch sharded over a `Mesh`, the batch mean/variance are plain `jnp.mean`s over the
global batch, and GSPMD inserts the cross-device reduction itself: statistics are those of the global
batch (what SimCLR calls "global BN") without any `axis_name`.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from csl_jax.models.batch_norm import BatchNorm
from csl_jax.models.branch_norm import batch_norm

# torchvision initialises convs with kaiming_normal_(mode="fan_out", nonlinearity="relu").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# encoder name -> architecture. `models.convert` reads this table too, so the twins cannot drift.
ARCHITECTURES = {
    "resnet18_cifar": dict(stage_sizes=(2, 2, 2, 2), bottleneck=False, imagenet_stem=False),
    "resnet50_cifar": dict(stage_sizes=(3, 4, 6, 3), bottleneck=True, imagenet_stem=False),
    "resnet50_imagenet": dict(stage_sizes=(3, 4, 6, 3), bottleneck=True, imagenet_stem=True),
}


@jax.custom_jvp
def relu(x):
  """`jax.nn.relu` (same values, same gradient, 0 at x = 0) written as a select, for XLA:CPU's backward pass.

  On CPU a conv's kernel gradient is a conv over its input transposed to [C, H, W, N]. XLA's fusion duplicates
  an effectively unary op like `max(x, 0)` into every consumer, so each such transpose recomputed its input from
  the raw conv outputs (BatchNorm, ReLU and the shortcut adds, back through every identity block of the stage:
  up to 15 operands) in transposed, strided order on the untiled loop emitter: 11.3 s of a CIFAR ResNet-18
  fwd+bwd at batch 512. `select(x < 0, 0, x)` reads two full-size operands and feeds a conv, which cannot fuse
  it, so XLA materialises it once and the transposes become plain (tiled) copies of that buffer.
  """
  return jnp.where(x < 0, jnp.zeros((), x.dtype), x)


relu.defjvps(lambda g, ans, x: jax.lax.select(x > 0, g, jax.lax.full_like(g, 0)))


def _conv(features: int, kernel: int, strides: int, dtype: Any, name: str):
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=((pad, pad), (pad, pad)),
                 use_bias=False, dtype=dtype, kernel_init=_conv_init, name=name)


def _batch_norm(train: bool, dtype: Any, name: str, zero_scale: bool = False):
  # Params and running statistics stay f32 (param_dtype); only the normalised output is `dtype`.
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones, name=name)


def _bn(parent, x, train: bool, dtype: Any, name: str, zero_scale: bool = False, *, adversarial: bool = False):
  """`_batch_norm` applied to x, with `parent.dual_bn`'s second (adversarial) branch when it has one."""
  make = lambda n: _batch_norm(train, dtype, n, zero_scale)
  return batch_norm(parent, make, name, x, dual=parent.dual_bn, adversarial=adversarial)


class BasicBlock(nn.Module):
  """Two 3x3 convs + identity (or 1x1 projection) shortcut: f32[B, H, W, C] -> [B, H/s, W/s, width]."""
  width: int
  strides: int = 1
  dtype: Any = jnp.float32
  zero_init_residual: bool = False
  dual_bn: bool = False
  expansion = 1

  @nn.compact
  def __call__(self, x, *, train: bool, adversarial: bool = False):
    out_channels = self.width * self.expansion
    y = _conv(self.width, 3, self.strides, self.dtype, "conv1")(x)
    y = relu(_bn(self, y, train, self.dtype, "bn1", adversarial=adversarial))
    y = _conv(out_channels, 3, 1, self.dtype, "conv2")(y)
    y = _bn(self, y, train, self.dtype, "bn2", self.zero_init_residual, adversarial=adversarial)
    return relu(y + _shortcut(self, x, out_channels, self.strides, train, self.dtype, adversarial))


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand x4 + shortcut: [B, H, W, C] -> [B, H/s, W/s, 4*width]."""
  width: int
  strides: int = 1
  dtype: Any = jnp.float32
  zero_init_residual: bool = False
  dual_bn: bool = False
  expansion = 4

  @nn.compact
  def __call__(self, x, *, train: bool, adversarial: bool = False):
    out_channels = self.width * self.expansion
    y = _conv(self.width, 1, 1, self.dtype, "conv1")(x)
    y = relu(_bn(self, y, train, self.dtype, "bn1", adversarial=adversarial))
    y = _conv(self.width, 3, self.strides, self.dtype, "conv2")(y)
    y = relu(_bn(self, y, train, self.dtype, "bn2", adversarial=adversarial))
    y = _conv(out_channels, 1, 1, self.dtype, "conv3")(y)
    y = _bn(self, y, train, self.dtype, "bn3", self.zero_init_residual, adversarial=adversarial)
    return relu(y + _shortcut(self, x, out_channels, self.strides, train, self.dtype, adversarial))


def _shortcut(block, x, out_channels: int, strides: int, train: bool, dtype: Any, adversarial: bool = False):
  """Identity, or torchvision's `downsample` (1x1 strided conv + BN) when the shape changes.

  Called inside a block's compact `__call__`, so the submodules are named under that block.
  """
  if strides == 1 and x.shape[-1] == out_channels:
    return x
  x = nn.Conv(out_channels, (1, 1), strides=(strides, strides), padding="VALID", use_bias=False,
              dtype=dtype, kernel_init=_conv_init, name="downsample_conv")(x)
  return _bn(block, x, train, dtype, "downsample_bn", adversarial=adversarial)


class ResNet(nn.Module):
  """ResNet encoder: normalised images f32[B, H, W, C] -> global-average-pooled features f32[B, D].

  D = 8 * width * expansion (512 for ResNet-18, 2048 for ResNet-50 at width 64).

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    bottleneck: Bottleneck blocks (ResNet-50) instead of BasicBlocks (ResNet-18).
    imagenet_stem: 7x7/2 conv + 3x3/2 max-pool; otherwise the CIFAR 3x3/1 conv without pooling.
    width: channels of the stem and first stage; stage i has width * 2**i.
    dtype: computation dtype (bf16 on accelerators); params and BN statistics stay f32.
    zero_init_residual: start each block's last BN scale at 0, so blocks begin as identities
      (Goyal et al. 2017); off by default, as in torchvision.
    dual_bn: a second set of BatchNorms for adversarial inputs (ACL(DS), `branch_norm`), used when called
      with adversarial=True; off by default (parameters and outputs as without it).
  """
  stage_sizes: Sequence[int]
  bottleneck: bool
  imagenet_stem: bool
  width: int = 64
  dtype: Any = jnp.float32
  zero_init_residual: bool = False
  dual_bn: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool = True, adversarial: bool = False):
    x = x.astype(self.dtype)
    if self.imagenet_stem:
      x = _conv(self.width, 7, 2, self.dtype, "conv1")(x)
    else:
      x = _conv(self.width, 3, 1, self.dtype, "conv1")(x)
    x = relu(_bn(self, x, train, self.dtype, "bn1", adversarial=adversarial))
    if self.imagenet_stem:
      # Pads with -inf like torch's MaxPool2d(3, 2, padding=1).
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block = Bottleneck if self.bottleneck else BasicBlock
    for stage, num_blocks in enumerate(self.stage_sizes):
      for index in range(num_blocks):
        strides = 2 if stage > 0 and index == 0 else 1
        x = block(width=self.width * 2**stage, strides=strides, dtype=self.dtype,
                  zero_init_residual=self.zero_init_residual, dual_bn=self.dual_bn,
                  name=f"layer{stage + 1}_{index}")(x, train=train, adversarial=adversarial)
    # Pool in f32: a bf16 mean over many positions loses precision.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def _factory(name: str):
  def build(**kwargs) -> ResNet:
    return ResNet(**ARCHITECTURES[name], **kwargs)
  build.__name__ = name
  build.__doc__ = (f"{name}: {ARCHITECTURES[name]}; kwargs (width, dtype, zero_init_residual, dual_bn) go to "
                   "`ResNet`.")
  return build


resnet18_cifar = _factory("resnet18_cifar")
resnet50_cifar = _factory("resnet50_cifar")
resnet50_imagenet = _factory("resnet50_imagenet")

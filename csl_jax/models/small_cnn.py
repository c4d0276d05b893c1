"""A small VGG-style CNN encoder for CPU-scale experiments (digits, CIFAR smoke runs)."""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from csl_jax.models.batch_norm import BatchNorm
from csl_jax.models.branch_norm import batch_norm


def max_pool_2x2(x):
  """2x2/2 max-pool (VALID, odd edges dropped) as an element-wise max of the four window corners.

  Same values as `nn.max_pool(x, (2, 2), strides=(2, 2))`, but its gradient is an element-wise
  select instead of XLA's select-and-scatter, which on CPU made every attack's input-gradient pass
  ~5x slower (attacks call it hundreds of times per image). The corners are taken after a free
  reshape to [B, H/2, 2, W/2, 2, C] rather than as stride-2 slices: same values and gradient, and
  XLA:CPU fuses the backward pass faster (pool + ReLU at batch 96, 32x32x32: 5.35 → 3.72 ms; the
  whole SmallCNN input gradient ~3% at batch 96–256).
  """
  b, h, w, c = x.shape
  x = jnp.reshape(x[:, :h // 2 * 2, :w // 2 * 2], (b, h // 2, 2, w // 2, 2, c))
  return jnp.maximum(jnp.maximum(x[:, :, 0, :, 0], x[:, :, 1, :, 0]), jnp.maximum(x[:, :, 0, :, 1], x[:, :, 1, :, 1]))


def single_channel_conv(lhs, rhs, window_strides, padding, *args, **kwargs):
  """`lax.conv_general_dilated` for NHWC inputs with ONE channel, stride 1, as 3x3 patches times the kernel.

  XLA:CPU runs a convolution with a single input channel far below its usual rate (3x3, 1 → 32 on 16x16
  maps: ~8 GFLOP/s). As a [B·H·W, 9] @ [9, C] product the whole SmallCNN on 16x16 digits at batch 32 — the
  attacks' regime — runs its forward pass in 1.35 instead of 1.8 ms and its input gradient in 4.7 instead of
  5.7 ms (2-core AMD EPYC, jaxlib 0.10.2, medians of alternated runs). Used in inference on CPU only: in
  training the kernel gradient of the patches form is slower (137 → 170 ms per batch-512 forward + backward).
  Same values up to float reassociation.
  """
  del args, kwargs
  kh, kw, _, cout = rhs.shape
  if isinstance(padding, str):  # "SAME" / "VALID" as lax resolves them for stride 1
    pads = [((k - 1) // 2, k // 2) if padding == "SAME" else (0, 0) for k in (kh, kw)]
  else:
    pads = [tuple(p) for p in padding]
  assert tuple(window_strides) == (1, 1) and lhs.shape[-1] == 1
  xp = jnp.pad(lhs[..., 0], ((0, 0), pads[0], pads[1]))
  h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  cols = jnp.stack([xp[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)], axis=-1)
  return cols @ jnp.reshape(rhs, (kh * kw, cout))


class SmallCNN(nn.Module):
  """Conv-BN-ReLU stages with 2x2 max-pool between them, global-average pooled.

  Input: f32[B, H, W, C] already normalised (see `models.heads.normalize`).
  Output: f32[B, widths[-1]] features.
  dual_bn: a second BatchNorm per layer for adversarial inputs (`branch_norm`; ACL(DS)), chosen by
    `adversarial=True`.
  """
  widths: Sequence[int] = (32, 64, 128)
  dtype: jnp.dtype = jnp.float32
  dual_bn: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool = True, adversarial: bool = False):
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      fast_first_layer = x.shape[-1] == 1 and not train and jax.default_backend() == "cpu"
      conv = single_channel_conv if fast_first_layer else None
      x = nn.Conv(width, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype, name=f"conv{i}",
                  conv_general_dilated=conv)(x)
      make_bn = lambda name: BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name=name)
      x = batch_norm(self, make_bn, f"bn{i}", x, dual=self.dual_bn, adversarial=adversarial)
      x = nn.relu(x)
      # No pooling after the last stage: tiny inputs (8x8 digits) keep a 2x2 map.
      if i < len(self.widths) - 1 and min(x.shape[1:3]) >= 2:
        x = max_pool_2x2(x)
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)

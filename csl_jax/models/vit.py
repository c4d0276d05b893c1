"""Vision Transformer encoders (Dosovitskiy et al. 2021) in the timm / DINO / MoCo v3 layout.

ViT-B/16 and ViT-S/16 at 224x224: 16x16 patches embedded by a strided conv, a class token, a learned position
embedding (DINO learns it; MoCo v3 freezes a 2-D sin-cos table, but both store it as `pos_embed`), 12 pre-norm
blocks x -> x + Attn(LN(x)) -> x + MLP(LN(x)), a final LayerNorm. Features are the class token after the final
LayerNorm (what DINO's and MoCo v3's linear probes read for ViT-B/16 with their default flags; DINO's ViT-S/16
probe also concatenates earlier blocks' class tokens, which is not this encoder's feature).

Module and parameter names mirror the PyTorch releases (`patch_embed/proj`, `blocks_3/attn/qkv`, `mlp/fc1`,
`norm`, `cls_token`, `pos_embed`), so `models.convert_release` maps every tensor by name. Numerics follow them
too: LayerNorm eps 1e-6 with the two-pass variance (flax's default one-pass E[x²] − E[x]² loses digits on the
large residual-stream activations of trained ViTs), exact (erf) GELU, one Dense for q, k and v, softmax
attention scaled by head_dim^-1/2.

ViT-S/16 has 6 heads in DINO/DeiT and 12 in MoCo v3: same parameter shapes, different function, so `num_heads`
is part of the encoder's kwargs (the converter records it in meta.json).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LAYER_NORM_EPS = 1e-6
# encoder name -> architecture (num_heads is the DINO/DeiT default; MoCo v3's ViT-S/16 passes num_heads=12).
ARCHITECTURES = {
    "vit_b16": dict(width=768, depth=12, num_heads=12, patch_size=16),
    "vit_s16": dict(width=384, depth=12, num_heads=6, patch_size=16),
}

_dense_init = nn.initializers.truncated_normal(0.02)


def _layer_norm(dtype, name):
  return LayerNorm(dtype=dtype, name=name)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis with flax's parameters (`scale`, `bias`), eps 1e-6, two-pass variance, in f32.

  The two per-token means are matrix-vector products with a 1/D vector: XLA:CPU's row reductions over 768
  features take ~5.7 ms for ViT-B/16's [32, 197, 768] activations (flax.linen.LayerNorm), the matrix-vector
  form ~2.2 ms, 25 times per forward pass.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (width,))
    bias = self.param("bias", nn.initializers.zeros, (width,))
    x = x.astype(jnp.float32)
    average = jnp.full((width,), 1.0 / width, jnp.float32)
    centred = x - (x @ average)[..., None]
    variance = (jnp.square(centred) @ average)[..., None]
    return (centred * jax.lax.rsqrt(variance + LAYER_NORM_EPS) * scale + bias).astype(self.dtype)


class PatchEmbed(nn.Module):
  """[B, H, W, C] -> [B, (H/p)(W/p), width]: a p x p / p conv (`patch_embed.proj`), patches in row-major order.

  Computed as what it is — non-overlapping patches times a [p·p·C, width] matrix — with the conv's parameters
  (`proj/kernel` HWIO [p, p, C, width], `proj/bias`), so checkpoints are unchanged. XLA:CPU runs the input
  gradient of a stride-p conv as a dilated convolution ~20x slower than the forward; as a matmul it is one more
  matmul (the ViT-B/16 input gradient at batch 4: 147 -> ~10 ms for this layer).
  """
  width: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _PatchProjection(self.width, self.patch_size, self.dtype, name="proj")(x)


class _PatchProjection(nn.Module):
  """The conv-shaped parameters of `PatchEmbed` applied as a patches matmul."""
  width: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    p, (batch, height, width, channels) = self.patch_size, x.shape
    if height % p or width % p:
      raise ValueError(f"image side {height}x{width} is not a multiple of the patch size {p}.")
    kernel = self.param("kernel", _dense_init, (p, p, channels, self.width))
    bias = self.param("bias", nn.initializers.zeros, (self.width,))
    patches = jnp.reshape(x, (batch, height // p, p, width // p, p, channels))
    patches = jnp.reshape(jnp.transpose(patches, (0, 1, 3, 2, 4, 5)), (batch, -1, p * p * channels))
    kernel = jnp.reshape(kernel, (p * p * channels, self.width)).astype(self.dtype)
    return patches.astype(self.dtype) @ kernel + bias.astype(self.dtype)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (timm's `Attention`): [B, N, D] -> [B, Q, D].

  `num_queries` (default all N) keeps only the first Q tokens' queries: keys and values still come from all N
  tokens, so the first Q outputs equal full attention's first Q.
  """
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, num_queries=None):
    batch, tokens, width = x.shape
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}.")
    qkv = nn.Dense(3 * width, dtype=self.dtype, kernel_init=_dense_init, name="qkv")(x)
    # timm: qkv.reshape(B, N, 3, heads, head_dim): q, k, v are the three consecutive thirds of the features.
    head_dim = width // self.num_heads
    q, k, v = jnp.transpose(jnp.reshape(qkv, (batch, tokens, 3, self.num_heads, head_dim)), (2, 0, 3, 1, 4))
    out = _attention(q[:, :, :num_queries], k, v)  # [B, heads, Q, head_dim]
    out = jnp.reshape(jnp.transpose(out, (0, 2, 1, 3)), (batch, -1, width))
    return nn.Dense(width, dtype=self.dtype, kernel_init=_dense_init, name="proj")(out)


# Attention runs over groups of this many examples (`lax.map`): one group's scores (4 x 12 heads x 197² f32 for
# ViT-B/16, 7 MB) stay in cache from the q·kᵀ product through the softmax to the product with v. XLA:CPU, ViT-B/16
# attention at batch 32: ~75 -> ~50 ms per block forward.
ATTENTION_GROUP = 4


def _attention(q, k, v):
  """softmax(q kᵀ / √head_dim) v over heads-major [B, heads, N, head_dim] arrays, `ATTENTION_GROUP` examples at
  a time (all at once when the batch is not a multiple of it)."""
  batch = q.shape[0]
  if batch <= ATTENTION_GROUP or batch % ATTENTION_GROUP:
    return _attention_block(q, k, v)
  grouped = [jnp.reshape(t, (batch // ATTENTION_GROUP, ATTENTION_GROUP) + t.shape[1:]) for t in (q, k, v)]
  out = jax.lax.map(lambda qkv: _attention_block(*qkv), grouped)
  return jnp.reshape(out, q.shape[:-1] + v.shape[-1:])


def _attention_block(q, k, v):
  """Attention of one group of examples. Written out rather than `jax.nn.dot_product_attention` (token-major
  [B, N, heads, head_dim]): with the heads axis next to the batch axis XLA:CPU runs both products as plain batched
  matmuls (ViT-B/16's attention input gradient at batch 4: 26 instead of 50 ms). The softmax is max-subtracted
  in f32 and normalised after the product with v (a [.., Q, head_dim] division instead of a [.., Q, N] one)."""
  scores = jnp.einsum("bnqd,bnkd->bnqk", q * (q.shape[-1] ** -0.5), k).astype(jnp.float32)
  weights = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
  out = jnp.einsum("bnqk,bnkd->bnqd", weights.astype(v.dtype), v)
  return out / jnp.sum(weights, axis=-1, keepdims=True).astype(v.dtype)


class Mlp(nn.Module):
  """fc1 (4x width) -> exact GELU -> fc2."""
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_dense_init, name="fc1")(x)
    y = _gelu(y)
    return nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=_dense_init, name="fc2")(y)


def _gelu(x):
  """Exact GELU as PyTorch evaluates it, x/2 · (1 + erf(x/√2)). `nn.gelu(approximate=False)` goes through erfc,
  which XLA:CPU evaluates with two rational branches and an exp: the MLP's input gradient at batch 4 takes
  ~20 ms (15 %) longer per block."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * (2.0 ** -0.5)))


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x)).

  With `num_queries` it returns only the first Q tokens (all tokens still serve as keys and values): the last
  block of an encoder that reads the class token computes its attention output, residuals and MLP for that token
  alone — ~9/12 of the block's matmul work, ~6 % of ViT-B/16's forward and input gradient.
  """
  num_heads: int
  mlp_ratio: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, num_queries=None):
    x = x[:, :num_queries] + Attention(self.num_heads, self.dtype, name="attn")(
        _layer_norm(self.dtype, "norm1")(x), num_queries)
    return x + Mlp(self.mlp_ratio * x.shape[-1], self.dtype, name="mlp")(_layer_norm(self.dtype, "norm2")(x))


class VisionTransformer(nn.Module):
  """ViT encoder: normalised images f32[B, H, W, 3] -> class-token features f32[B, width].

  Attributes:
    width, depth, num_heads, patch_size: the architecture (see `ARCHITECTURES`).
    image_size: the input side the position embedding is for (224); other sizes are refused rather than
      interpolated, since the releases were evaluated at 224.
    mlp_ratio: MLP hidden width / width.
    dtype: computation dtype (bf16 on accelerators); params stay f32.
  `train` is accepted for the encoder interface and changes nothing: there is no dropout, drop-path or BatchNorm.
  """
  width: int
  depth: int
  num_heads: int
  patch_size: int = 16
  image_size: int = 224
  mlp_ratio: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    del train
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"ViT expects images [B, {self.image_size}, {self.image_size}, C], got {x.shape}: its "
                       "position embedding is for that size; resize the inputs.")
    x = PatchEmbed(self.width, self.patch_size, self.dtype, name="patch_embed")(x.astype(self.dtype))
    num_patches = (self.image_size // self.patch_size) ** 2
    cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.width))
    pos_embed = self.param("pos_embed", _dense_init, (1, num_patches + 1, self.width))
    x = jnp.concatenate([jnp.broadcast_to(cls_token, (x.shape[0], 1, self.width)).astype(x.dtype), x], axis=1)
    x = x + pos_embed.astype(x.dtype)
    for index in range(self.depth):
      last = index == self.depth - 1  # the features read only the class token's output
      x = Block(self.num_heads, self.mlp_ratio, self.dtype, name=f"blocks_{index}")(x, 1 if last else None)
    return _layer_norm(self.dtype, "norm")(x[:, 0]).astype(jnp.float32)


def _factory(name: str):
  def build(**kwargs) -> VisionTransformer:
    return VisionTransformer(**{**ARCHITECTURES[name], **kwargs})
  build.__name__ = name
  build.__doc__ = f"{name}: {ARCHITECTURES[name]}; kwargs (num_heads, image_size, dtype) override them."
  return build


vit_b16 = _factory("vit_b16")
vit_s16 = _factory("vit_s16")

"""PyTorch twins of the release architectures, with the releases' exact module names.

* `vision_transformer(...)`: timm / DINO / MoCo v3 `VisionTransformer` names (`cls_token`, `pos_embed`,
  `patch_embed.proj`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`, `head`).
* `r2plus1d_18(...)`: torchvision `r2plus1d_18` names (`stem.0`, `stem.1`, `stem.3`, `stem.4`,
  `layerN.M.conv1.0.0`, ..., `downsample.0`, `fc`).

So a twin's `state_dict()` is a release state dict: the conversion tests save one (with the release's prefixes
and nesting) and require the converted flax model to give the twin's numbers, and the benchmarks time both
frameworks on the same weights. The ResNet twins live in `models.convert` (torchvision ResNet names).
PyTorch is an optional extra: it is imported inside functions only.
"""
import functools
import types

from csl_jax.models import r2plus1d, vit


@functools.cache
def _classes():
  from csl_jax.models.convert import _import_torch  # pylint: disable=g-import-not-at-top
  torch = _import_torch()
  tnn, F = torch.nn, torch.nn.functional

  class PatchEmbed(tnn.Module):
    def __init__(self, patch_size, width):
      super().__init__()
      self.proj = tnn.Conv2d(3, width, patch_size, patch_size)

    def forward(self, x):
      return self.proj(x).flatten(2).transpose(1, 2)  # [B, D, h, w] -> [B, h*w, D], row-major like flax

  class Attention(tnn.Module):
    def __init__(self, width, num_heads):
      super().__init__()
      self.num_heads = num_heads
      self.qkv = tnn.Linear(width, 3 * width)
      self.proj = tnn.Linear(width, width)

    def forward(self, x):
      b, n, d = x.shape
      q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
      return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))

  class Mlp(tnn.Module):
    def __init__(self, width, hidden):
      super().__init__()
      self.fc1, self.fc2 = tnn.Linear(width, hidden), tnn.Linear(hidden, width)

    def forward(self, x):
      return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, torch's default

  class Block(tnn.Module):
    def __init__(self, width, num_heads, mlp_ratio):
      super().__init__()
      self.norm1 = tnn.LayerNorm(width, eps=vit.LAYER_NORM_EPS)
      self.attn = Attention(width, num_heads)
      self.norm2 = tnn.LayerNorm(width, eps=vit.LAYER_NORM_EPS)
      self.mlp = Mlp(width, mlp_ratio * width)

    def forward(self, x):
      x = x + self.attn(self.norm1(x))
      return x + self.mlp(self.norm2(x))

  class VisionTransformer(tnn.Module):
    """NCHW normalised images -> logits (num_classes > 0) or class-token features (num_classes = 0)."""

    def __init__(self, width, depth, num_heads, patch_size=16, image_size=224, mlp_ratio=4, num_classes=0):
      super().__init__()
      self.feature_dim = width
      self.patch_embed = PatchEmbed(patch_size, width)
      self.cls_token = tnn.Parameter(torch.zeros(1, 1, width))
      self.pos_embed = tnn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2 + 1, width))
      tnn.init.trunc_normal_(self.pos_embed, std=0.02)
      tnn.init.normal_(self.cls_token, std=1e-6)
      self.blocks = tnn.Sequential(*[Block(width, num_heads, mlp_ratio) for _ in range(depth)])
      self.norm = tnn.LayerNorm(width, eps=vit.LAYER_NORM_EPS)
      self.head = tnn.Linear(width, num_classes) if num_classes else tnn.Identity()

    def forward_features(self, x):
      x = self.patch_embed(x)
      x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
      return self.norm(self.blocks(x))[:, 0]

    def forward(self, x):
      return self.head(self.forward_features(x))

  def batch_norm(channels):
    return tnn.BatchNorm3d(channels, eps=1e-5, momentum=0.1)

  class Conv2Plus1D(tnn.Sequential):
    def __init__(self, in_planes, out_planes, mid_planes, stride=1):
      super().__init__(
          tnn.Conv3d(in_planes, mid_planes, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
          batch_norm(mid_planes), tnn.ReLU(inplace=True),
          tnn.Conv3d(mid_planes, out_planes, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False))

  class BasicBlock(tnn.Module):
    def __init__(self, in_planes, planes, stride):
      super().__init__()
      mid = r2plus1d.midplanes(in_planes, planes)
      self.conv1 = tnn.Sequential(Conv2Plus1D(in_planes, planes, mid, stride), batch_norm(planes),
                                  tnn.ReLU(inplace=True))
      self.conv2 = tnn.Sequential(Conv2Plus1D(planes, planes, mid), batch_norm(planes))
      self.downsample = None
      if stride != 1 or in_planes != planes:
        self.downsample = tnn.Sequential(tnn.Conv3d(in_planes, planes, 1, stride, bias=False), batch_norm(planes))

    def forward(self, x):
      residual = x if self.downsample is None else self.downsample(x)
      return F.relu(self.conv2(self.conv1(x)) + residual)

  class R2Plus1D18(tnn.Module):
    """NCTHW normalised clips -> logits (num_classes > 0) or pooled features (num_classes = 0)."""

    def __init__(self, num_classes=0):
      super().__init__()
      self.feature_dim = r2plus1d.STAGE_WIDTHS[-1]
      self.stem = tnn.Sequential(
          tnn.Conv3d(3, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False), batch_norm(45), tnn.ReLU(inplace=True),
          tnn.Conv3d(45, 64, (3, 1, 1), 1, (1, 0, 0), bias=False), batch_norm(64), tnn.ReLU(inplace=True))
      channels = r2plus1d.STAGE_WIDTHS[0]
      for stage, width in enumerate(r2plus1d.STAGE_WIDTHS):
        blocks = []
        for index in range(r2plus1d.BLOCKS_PER_STAGE):
          blocks.append(BasicBlock(channels, width, 2 if stage > 0 and index == 0 else 1))
          channels = width
        self.add_module(f"layer{stage + 1}", tnn.Sequential(*blocks))
      self.fc = tnn.Linear(channels, num_classes) if num_classes else tnn.Identity()

    def forward_features(self, x):
      x = self.stem(x)
      for stage in range(len(r2plus1d.STAGE_WIDTHS)):
        x = getattr(self, f"layer{stage + 1}")(x)
      return x.mean(dim=(2, 3, 4))

    def forward(self, x):
      return self.fc(self.forward_features(x))

  class Normalized(tnn.Module):
    """Images/clips in [0, 1], channels second -> model((x - mean) / std): what `ImageClassifier` does in flax."""

    def __init__(self, model, mean, std):
      super().__init__()
      self.model = model
      self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
      self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def forward(self, x):
      shape = (1, -1) + (1,) * (x.ndim - 2)
      return self.model((x - self.mean.view(shape)) / self.std.view(shape))

  return types.SimpleNamespace(VisionTransformer=VisionTransformer, R2Plus1D18=R2Plus1D18, Normalized=Normalized)


def vision_transformer(name: str, *, num_classes: int = 0, **overrides):
  """Untrained torch twin of `vit.<name>` ("vit_b16", "vit_s16"); num_heads etc. may be overridden."""
  if name not in vit.ARCHITECTURES:
    raise ValueError(f"Unknown ViT {name!r}; choose one of {sorted(vit.ARCHITECTURES)}.")
  return _classes().VisionTransformer(**{**vit.ARCHITECTURES[name], **overrides}, num_classes=num_classes)


def r2plus1d_18(*, num_classes: int = 0):
  """Untrained torch twin of torchvision's `r2plus1d_18(num_classes=...)` (fc = Identity for 0)."""
  return _classes().R2Plus1D18(num_classes)


def normalized(model, mean, std):
  """`model` behind per-channel (x - mean) / std on channels-second inputs in [0, 1]."""
  return _classes().Normalized(model, tuple(mean), tuple(std))

"""The SimCLR training step in plain PyTorch: the reference `train_step_throughput.py --vs-torch` races.

Same work as csl_jax's step, written the way one would in PyTorch on a CPU:
  * the model: csl_jax's PyTorch twin of the encoder (`models.convert.build_torch_encoder`) + the projection
    head (Linear without bias, BatchNorm1d, ReLU, Linear), inputs normalised inside; both views through the
    model as one batch (BatchNorm sees both, as in SimCLR and csl_jax);
  * the augmentation (`simclr_views`), batched tensor ops with per-example randomness and the distribution of
    `csl_jax.data.augment.simclr`: random resized crop (10 proposals, first that fits, torchvision's fallback)
    and flip as one `affine_grid` + bilinear `grid_sample` (border padding = csl_jax's edge renormalisation);
    colour jitter with probability 0.8 — brightness, contrast (per-channel mean), saturation, hue in a random
    order per example, clipped after each — where each op runs only on the examples that use it in that slot
    (eager PyTorch can gather subsets, XLA's static shapes cannot); grayscale with probability 0.2;
  * NT-Xent over the 2N views (temperature 0.5);
  * LARS as `optax.lars` (weight decay and trust ratio on kernels only, momentum 0.9).

Import with torch installed; `torch.set_num_threads` is the caller's choice.
"""
import math

import torch
import torch.nn.functional as F

from csl_jax.data.augment import CROP_RATIO, GRAY_WEIGHTS
from csl_jax.models import convert

_CROP_PROPOSALS = 10


def crop_boxes(batch: int, height: int, width: int, scale=(0.08, 1.0), ratio=CROP_RATIO):
  """(y0, x0, h, w) f32[batch] each: the random-resized-crop boxes of `augment.crop_box`."""
  area = height * width * torch.empty(batch, _CROP_PROPOSALS).uniform_(*scale)
  aspect = torch.empty(batch, _CROP_PROPOSALS).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp()
  w, h = (area * aspect).sqrt(), (area / aspect).sqrt()
  fits = (w <= width) & (h <= height)
  first = fits.int().argmax(dim=1, keepdim=True)  # the first proposal that fits
  found = fits.any(dim=1)
  h = torch.where(found, h.gather(1, first)[:, 0], torch.tensor(min(height, width / ratio[0])))
  w = torch.where(found, w.gather(1, first)[:, 0], torch.tensor(min(width, height * ratio[1])))
  return torch.rand(batch) * (height - h), torch.rand(batch) * (width - w), h, w


def resized_crop_and_flip(images, out_size: int, scale=(0.08, 1.0)):
  """f32[B, C, H, W] -> random resized crops f32[B, C, out, out], half of them mirrored, bilinear."""
  batch, channels, height, width = images.shape
  y0, x0, h, w = crop_boxes(batch, height, width, scale)
  mirror = torch.where(torch.rand(batch) < 0.5, -1.0, 1.0)
  theta = torch.zeros(batch, 2, 3)  # output [-1, 1] -> input [-1, 1], align_corners=False
  theta[:, 0, 0] = mirror * w / width
  theta[:, 0, 2] = (2 * x0 + w) / width - 1
  theta[:, 1, 1] = h / height
  theta[:, 1, 2] = (2 * y0 + h) / height - 1
  grid = F.affine_grid(theta, [batch, channels, out_size, out_size], align_corners=False)
  return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _brightness(x, factor, _):
  return x * factor


def _contrast(x, factor, _):
  mean = x.mean(dim=(2, 3), keepdim=True)
  return (x - mean) * factor + mean


def _saturation(x, factor, _):
  value, low = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)
  chroma = value - low
  ratio = torch.where(chroma > 0, torch.minimum(factor, value / chroma.clamp_min(1e-12)), torch.ones_like(chroma))
  return value - (value - x) * ratio


_HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)


def _hue(x, _, shift):
  r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
  value, low = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)
  chroma = value - low
  inverse = 1.0 / chroma.clamp_min(1e-12)
  hue6 = torch.where(r == value, (g - b) * inverse, torch.where(g == value, 2.0 + (b - r) * inverse,
                                                               4.0 + (r - g) * inverse))
  k = torch.remainder(_HUE_OFFSETS + hue6 + 6.0 * shift, 6.0)
  return value - chroma * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def color_jitter(x, strength: float = 0.5, prob: float = 0.8):
  """SimCLR colour jitter of f32[B, 3, H, W] in place, per-example factors and order; applied with `prob`."""
  batch = x.shape[0]
  low, high = max(0.0, 1.0 - 0.8 * strength), 1.0 + 0.8 * strength
  factors = torch.empty(batch, 3, 1, 1, 1).uniform_(low, high)
  shift = torch.empty(batch, 1, 1, 1).uniform_(-0.2 * strength, 0.2 * strength)
  order = torch.rand(batch, 4).argsort(dim=1)
  applied = torch.rand(batch) < prob
  for slot in range(4):
    for op_index, op in enumerate(_JITTER_OPS):
      rows = (applied & (order[:, slot] == op_index)).nonzero()[:, 0]
      if rows.numel():
        factor = factors[rows, min(op_index, 2)]
        x[rows] = op(x[rows], factor, shift[rows]).clamp_(0.0, 1.0)
  return x


def grayscale(x, prob: float = 0.2):
  rows = (torch.rand(x.shape[0]) < prob).nonzero()[:, 0]
  if rows.numel():
    weights = torch.tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    x[rows] = (x[rows] * weights).sum(dim=1, keepdim=True).expand(-1, 3, -1, -1)
  return x


def simclr_views(images_u8, out_size: int, *, crop_scale=(0.08, 1.0), jitter_strength: float = 0.5):
  """u8[B, H, W, 3] (NHWC, as csl_jax batches come) -> f32[2B, 3, out, out]: both views, view 1 then view 2.

  Runs on one intra-op thread, as a DataLoader worker would: its ops are small, and with 2 threads on the
  loaded 2-core build box every op's fork/join made it ~80x slower (3.9 s instead of 50 ms per batch).
  """
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    x = images_u8.permute(0, 3, 1, 2).float().div_(255.0)
    views = []
    for _ in range(2):
      view = resized_crop_and_flip(x, out_size, crop_scale).clamp_(0.0, 1.0)
      views.append(grayscale(color_jitter(view, jitter_strength)))
    return torch.cat(views)
  finally:
    torch.set_num_threads(threads)


def nt_xent(z, temperature: float = 0.5):
  """NT-Xent of f32[2N, D] projections, rows i and i + N the two views of image i."""
  n = z.shape[0] // 2
  z = F.normalize(z, dim=1)
  logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
  targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
  return F.cross_entropy(logits, targets)


class ContrastiveModel(torch.nn.Module):
  """csl_jax's `ContrastiveModel` in torch: normalise, encoder twin, projection head."""

  def __init__(self, encoder_name: str, *, hidden_dim: int, out_dim: int, mean, std):
    super().__init__()
    self.encoder = convert.build_torch_encoder(encoder_name)
    self.projection = torch.nn.Sequential(
        torch.nn.Linear(self.encoder.feature_dim, hidden_dim, bias=False), torch.nn.BatchNorm1d(hidden_dim),
        torch.nn.ReLU(), torch.nn.Linear(hidden_dim, out_dim))
    self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
    self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

  def forward(self, x):
    return self.projection(self.encoder((x - self.mean) / self.std))


class LARS(torch.optim.Optimizer):
  """`optax.lars`: g += wd * w and g *= trust_coefficient * |w| / |g| on kernels (ndim > 1); v = m v + lr g."""

  def __init__(self, params, lr: float, weight_decay: float = 1e-6, momentum: float = 0.9,
               trust_coefficient: float = 0.001):
    super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                  trust_coefficient=trust_coefficient))

  @torch.no_grad()
  def step(self):
    for group in self.param_groups:
      for p in group["params"]:
        if p.grad is None:
          continue
        g = p.grad
        if p.ndim > 1:
          g = g.add(p, alpha=group["weight_decay"])
          w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
          trust = torch.where((w_norm > 0) & (g_norm > 0), group["trust_coefficient"] * w_norm / g_norm, 1.0)
          g = g * trust
        buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
        buf.mul_(group["momentum"]).add_(g, alpha=group["lr"])
        p.sub_(buf)


class SimCLRStep:
  """step(images_u8) -> loss: augmentation + `update`; `update(views)` alone is the model half."""

  def __init__(self, encoder_name: str, *, image_size: int = 32, hidden_dim: int = 2048, out_dim: int = 128,
               lr: float = 1.0, temperature: float = 0.5, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
    self.model = ContrastiveModel(encoder_name, hidden_dim=hidden_dim, out_dim=out_dim, mean=mean, std=std).train()
    self.optimizer = LARS(self.model.parameters(), lr=lr)
    self.image_size, self.temperature = image_size, temperature

  def views(self, images_u8):
    return simclr_views(images_u8, self.image_size)

  def update(self, views):
    self.optimizer.zero_grad(set_to_none=True)
    loss = nt_xent(self.model(views), self.temperature)
    loss.backward()
    self.optimizer.step()
    return loss.detach()

  def __call__(self, images_u8):
    return self.update(self.views(images_u8))

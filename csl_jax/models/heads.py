"""Heads and the two composite models every stage shares.

`ContrastiveModel` (pretraining) and `ImageClassifier` (linear probe, CE training, attacks) both take
images in [0, 1] and normalise inside the model, so attacks and corruptions work in pixel space.
Both keep the encoder's parameters under the key "encoder", so a pretrained encoder drops into a
classifier unchanged.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from csl_jax.models.batch_norm import BatchNorm
from csl_jax.models.branch_norm import batch_norm


def normalize(x, mean: Sequence[float], std: Sequence[float]):
  """Per-channel standardisation of f32[..., C] images in [0, 1]."""
  mean = jnp.asarray(mean, x.dtype)
  std = jnp.asarray(std, x.dtype)
  return (x - mean) / std


class ProjectionHead(nn.Module):
  """SimCLR projection g(.): Dense-BN-ReLU-Dense, f32[B, D] -> f32[B, out_dim] (Chen et al. 2020a)."""
  hidden_dim: int = 512
  out_dim: int = 128
  dual_bn: bool = False  # ACL(DS): a second BatchNorm for adversarial inputs (`branch_norm`)

  @nn.compact
  def __call__(self, h, *, train: bool = True, adversarial: bool = False):
    h = nn.Dense(self.hidden_dim, use_bias=False, name="dense0")(h)
    make_bn = lambda name: BatchNorm(use_running_average=not train, momentum=0.9, name=name)
    h = batch_norm(self, make_bn, "bn0", h, dual=self.dual_bn, adversarial=adversarial)
    h = nn.relu(h)
    return nn.Dense(self.out_dim, name="dense1")(h)


class ContrastiveModel(nn.Module):
  """encoder + projection head. Returns (features f32[B, D], projections f32[B, out_dim]).

  adversarial=True (dual-BN encoder and head only, ACL(DS)) uses the adversarial BatchNorm branch."""
  encoder: nn.Module
  projection: ProjectionHead
  mean: Sequence[float]
  std: Sequence[float]

  def __call__(self, images, *, train: bool = True, adversarial: bool = False):
    branch = {"adversarial": True} if adversarial else {}
    features = self.encoder(normalize(images, self.mean, self.std), train=train, **branch)
    return features, self.projection(features, train=train, **branch)


class ImageClassifier(nn.Module):
  """encoder + linear head: images f32[B, H, W, C] in [0, 1] -> logits f32[B, num_classes]."""
  encoder: nn.Module
  num_classes: int
  mean: Sequence[float]
  std: Sequence[float]

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    features = self.encoder(normalize(images, self.mean, self.std), train=train)
    return nn.Dense(self.num_classes, name="head")(features)

  def features(self, images, *, train: bool = False):
    return self.encoder(normalize(images, self.mean, self.std), train=train)

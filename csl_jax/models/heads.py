"""Heads and the two composite models every stage shares.

`ContrastiveModel` (pretraining) and `ImageClassifier` (linear probe, CE training, attacks) both take
images in [0, 1] and normalise inside the model, so attacks and corruptions work in pixel space.
Both keep the encoder's parameters under the key "encoder", so a pretrained encoder drops into a
classifier unchanged.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def normalize(x, mean: Sequence[float], std: Sequence[float]):
  """Per-channel standardisation of f32[..., C] images in [0, 1]."""
  mean = jnp.asarray(mean, x.dtype)
  std = jnp.asarray(std, x.dtype)
  return (x - mean) / std


class ProjectionHead(nn.Module):
  """SimCLR projection g(.): Dense-BN-ReLU-Dense, f32[B, D] -> f32[B, out_dim] (Chen et al. 2020a)."""
  hidden_dim: int = 512
  out_dim: int = 128

  @nn.compact
  def __call__(self, h, *, train: bool = True):
    h = nn.Dense(self.hidden_dim, use_bias=False, name="dense0")(h)
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn0")(h)
    h = nn.relu(h)
    return nn.Dense(self.out_dim, name="dense1")(h)


class ContrastiveModel(nn.Module):
  """encoder + projection head. Returns (features f32[B, D], projections f32[B, out_dim])."""
  encoder: nn.Module
  projection: ProjectionHead
  mean: Sequence[float]
  std: Sequence[float]

  def __call__(self, images, *, train: bool = True):
    features = self.encoder(normalize(images, self.mean, self.std), train=train)
    return features, self.projection(features, train=train)


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

"""Encoders chosen by name from the config (`config.model.encoder`), plus the shared heads."""
import importlib

from csl_jax.models.heads import ContrastiveModel, ImageClassifier, ProjectionHead, normalize

# name -> (module, factory attribute). Modules are imported lazily so a missing optional one
# never breaks the others.
_ENCODERS = {
    "small_cnn": ("csl_jax.models.small_cnn", "SmallCNN"),
    "resnet18_cifar": ("csl_jax.models.resnet", "resnet18_cifar"),
    "resnet50_cifar": ("csl_jax.models.resnet", "resnet50_cifar"),
    "resnet50_imagenet": ("csl_jax.models.resnet", "resnet50_imagenet"),
    # Encoders of published ImageNet / Kinetics checkpoints (`python -m csl_jax.convert`).
    "vit_b16": ("csl_jax.models.vit", "vit_b16"),
    "vit_s16": ("csl_jax.models.vit", "vit_s16"),
    "r2plus1d_18": ("csl_jax.models.r2plus1d", "r2plus1d_18"),  # video: clips [B, T, H, W, C]
}


def get_encoder(name: str, **kwargs):
  """Returns the encoder module registered under `name`, built with `kwargs`."""
  if name not in _ENCODERS:
    raise ValueError(f"Unknown encoder {name!r}; choose one of {sorted(_ENCODERS)}.")
  module_name, attr = _ENCODERS[name]
  return getattr(importlib.import_module(module_name), attr)(**kwargs)


__all__ = ["ContrastiveModel", "ImageClassifier", "ProjectionHead", "get_encoder", "normalize"]

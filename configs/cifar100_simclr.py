"""CIFAR-100 twin of configs/cifar10_simclr.py (same recipe, 100 classes)."""
from configs import cifar10_simclr


def get_config(arg=None):
  c = cifar10_simclr.get_config(arg)
  c.dataset.source = "tfds:cifar100"
  return c

"""CIFAR-100 twin of configs/cifar10_ce.py (same recipe, 100 classes)."""
from configs import cifar10_ce


def get_config(arg=None):
  c = cifar10_ce.get_config(arg)
  c.dataset.source = "tfds:cifar100"
  return c

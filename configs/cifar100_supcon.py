"""CIFAR-100 twin of configs/cifar10_supcon.py (same recipe, 100 classes)."""
from configs import cifar10_supcon


def get_config(arg=None):
  c = cifar10_supcon.get_config(arg)
  c.dataset.source = "tfds:cifar100"
  return c

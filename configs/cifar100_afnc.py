"""CIFAR-100 twin of configs/cifar10_afnc.py (same recipe, 100 classes)."""
from configs import cifar10_afnc


def get_config(arg=None):
  c = cifar10_afnc.get_config(arg)
  c.dataset.source = "tfds:cifar100"
  return c

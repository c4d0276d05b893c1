"""CIFAR-100 twin of configs/cifar10_fnc.py (same recipe, 100 classes)."""
from configs import cifar10_fnc


def get_config(arg=None):
  c = cifar10_fnc.get_config(arg)
  c.dataset.source = "tfds:cifar100"
  return c

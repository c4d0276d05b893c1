"""Supervised cross-entropy on CIFAR-10: same encoder and schedule, weaker augmentation (pad-crop-flip).

The encoder and its linear head are trained end to end; linear evaluation reports that head.
"""
from configs import cifar10_simclr


def get_config(arg=None):
  c = cifar10_simclr.get_config(arg)
  c.runs = "ce"
  c.optim.name = "sgd"
  c.optim.lr = 0.1
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 5
  c.pretrain.epochs = 200 if arg != "short" else 20
  return c

"""Supervised contrastive (Khosla et al. 2020, L_out) on CIFAR-10: ResNet-18, T=0.1, SimCLR augmentations."""
from configs import cifar10_simclr


def get_config(arg=None):
  c = cifar10_simclr.get_config(arg)
  c.runs = "supcon"
  c.loss.supcon_temperature = 0.1
  c.optim.lr = 0.5
  return c

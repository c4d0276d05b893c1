"""Supervised contrastive learning (Khosla et al. 2020, L_out) on CIFAR-10: the SimCLR recipe, T = 0.1 (Table 1)."""
from configs import cifar10_simclr

OVERRIDES = {**cifar10_simclr.OVERRIDES, "optim.lr": 0.5, "methods.supcon.temperature": 0.1}


def get_config(arg=None):
  return cifar10_simclr.cifar10(arg, runs="supcon", overrides=OVERRIDES)

"""SimCLR + FNC (Huynh et al. 2022; Table 4 baseline), elimination only, as the published code decides it:
a negative is cancelled when it is among the anchor's 10 most similar AND its similarity exceeds 0.7."""
from configs import cifar10_simclr

OVERRIDES = {**cifar10_simclr.OVERRIDES, "methods.fnc.temperature": 0.5, "methods.fnc.threshold": 0.7,
             "methods.fnc.top_k": 10}


def get_config(arg=None):
  return cifar10_simclr.cifar10(arg, runs="fnc", overrides=OVERRIDES)

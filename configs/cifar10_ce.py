"""Supervised cross-entropy on CIFAR-10 (Table 1): same encoder and epochs, SGD, and — as the paper states — the
SimCLR augmentation with weaker colour jitter (`methods.ce.jitter_strength`, 0.25 against SimCLR's 0.5).

The classic pad-crop-flip recipe: --config.methods.ce.augment=pad_crop_flip. The encoder and its linear head are
trained end to end; linear evaluation reports that head.
"""
from configs import cifar10_simclr

OVERRIDES = {
    "optim.name": "sgd",
    "optim.lr": 0.1,
    "optim.weight_decay": 5e-4,
    "optim.warmup_epochs": 5.0,
    "methods.ce.augment": "simclr",
    "methods.ce.jitter_strength": 0.25,
}


def get_config(arg=None):
  return cifar10_simclr.cifar10(arg, runs="ce", overrides=OVERRIDES)

"""SimCLR + IFND (Chen et al., ICLR 2022; paper Table 4's other incremental false-negative method).

Hierarchical k-means of the training set's embeddings every epoch; the share of confidently clustered samples
that get a pseudo-label grows over training; negatives sharing the anchor's pseudo-label are eliminated
(`config.methods.ifnd`, `csl_jax/ifnd.py`). Needs an in-memory training split (CIFAR via TFDS or a folder).
Variants: `:resnet18`, `:short`, `:cifar100`, `:smoke`.
"""
from configs import cifar10_simclr

OVERRIDES = {**cifar10_simclr.OVERRIDES, "methods.ifnd.temperature": 0.5}


def get_config(arg=None):
  return cifar10_simclr.cifar10(arg, runs="ifnd", overrides=OVERRIDES)

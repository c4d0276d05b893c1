"""SimCLR on CIFAR-10 (Chen et al. 2020a CIFAR recipe): ResNet-18, LARS, batch 512, T=0.5, 1000 epochs.

Short run: --config configs/cifar10_simclr.py:short (20 epochs). Image folder instead of TFDS:
--config.dataset.source=folder:/path/to/cifar10_jpg.zip
"""
from csl_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.runs = "simclr"
  c.dataset.source = "tfds:cifar10"
  c.loss.temperature = 0.5
  c.optim.name = "lars"
  c.optim.lr = 1.0                 # x batch/256 (linear scaling) -> 2.0 at batch 512
  c.optim.weight_decay = 1e-6
  c.pretrain.batch_size = 512
  c.pretrain.epochs = 1000
  if arg == "short":
    c.pretrain.epochs = 20
    c.optim.warmup_epochs = 2
  return c

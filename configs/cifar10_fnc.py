"""SimCLR + FNC (Huynh et al. 2022, elimination only): fixed threshold 0.9 plus top-1 cancellation."""
from configs import cifar10_simclr


def get_config(arg=None):
  c = cifar10_simclr.get_config(arg)
  c.runs = "fnc"
  c.loss.fnc_threshold = 0.9
  c.loss.fnc_top_k = 1
  return c

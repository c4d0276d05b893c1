"""Paper Table 1 (CIFAR-10): cross-entropy, SupCon and SimCLR trained alike, attacked alike, in one workdir.

    python -m csl_jax.main --config configs/cifar10_table1.py --workdir runs/table1
    python -m csl_jax.report runs/table1 --out runs/table1/report

Each run keeps its method's recipe (configs/cifar10_<method>.py OVERRIDES). Variants: `:resnet18`, `:short`,
`:cifar100`, `:smoke`; one run only: --config.runs=simclr.
"""
import functools

from configs import cifar10_ce, cifar10_simclr, cifar10_supcon
from csl_jax import config as config_lib


def get_config(arg=None):
  c = cifar10_simclr.cifar10(arg, runs="ce,supcon,simclr")
  spec = functools.partial(config_lib.run_spec, methods_only="smoke" in config_lib.parse_arg(arg))
  with c.unlocked():
    c.run_overrides = {
        "ce": spec("ce", cifar10_ce.OVERRIDES),
        "supcon": spec("supcon", cifar10_supcon.OVERRIDES),
        "simclr": spec("simclr", cifar10_simclr.OVERRIDES),
    }
  return c

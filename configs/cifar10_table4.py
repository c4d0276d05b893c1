"""Paper Table 4 (CIFAR-10): SimCLR and SupCon, SimCLR + FNC, SimCLR + IFND, and SimCLR + Adaptive FNC with the three
ρ schedules (fixed 0.9, 0.9 -> 0.5, 0.99 -> 0.7), trained alike in one workdir; the report's ↑x% is the share of the
SimCLR -> SupCon robustness gap each row closes.

    python -m csl_jax.main --config configs/cifar10_table4.py --workdir runs/table4
    python -m csl_jax.report runs/table4 --out runs/table4/report

Variants: `:resnet18`, `:short`, `:cifar100`, `:smoke`. IFND (`csl_jax/ifnd.py`) needs the training split in
memory (`--config.dataset.source=folder:...` or a TFDS split that loads into memory).
"""
import functools

from configs import cifar10_afnc, cifar10_fnc, cifar10_simclr, cifar10_supcon
from csl_jax import config as config_lib

# SimCLR's recipe with IFND's elimination; the IFND settings are `config.methods.ifnd`'s defaults.
IFND_OVERRIDES = {**cifar10_simclr.OVERRIDES, "methods.ifnd.temperature": 0.5}


def get_config(arg=None):
  c = cifar10_simclr.cifar10(arg, runs="simclr,supcon,fnc,ifnd,afnc_fixed,afnc_09to05,afnc_099to07")
  spec = functools.partial(config_lib.run_spec, methods_only="smoke" in config_lib.parse_arg(arg))
  afnc = lambda schedule: spec("afnc", {**cifar10_afnc.OVERRIDES, **cifar10_afnc.SCHEDULES[schedule]})
  with c.unlocked():
    c.run_overrides = {
        "simclr": spec("simclr", cifar10_simclr.OVERRIDES),
        "supcon": spec("supcon", cifar10_supcon.OVERRIDES),
        "fnc": spec("fnc", cifar10_fnc.OVERRIDES),
        "ifnd": spec("ifnd", IFND_OVERRIDES),
        "afnc_fixed": afnc("fixed"),
        "afnc_09to05": afnc("0.9to0.5"),
        "afnc_099to07": afnc("0.99to0.7"),
    }
  return c

"""SimCLR + Adaptive FNC (paper Eq. 4), threshold ρ scheduled 0.99 -> 0.7 (Table 4's best row).

Table 4's other rows: `:fixed` (ρ = 0.9 throughout) or `:0.9to0.5`; combine with the shared variants,
e.g. `configs/cifar10_afnc.py:fixed,resnet18`. `configs/cifar10_table4.py` trains all of them in one workdir.
"""
from configs import cifar10_simclr
from csl_jax import config as config_lib

# The three ρ schedules of Table 4.
SCHEDULES = {
    "0.99to0.7": {"methods.afnc.rho_initial": 0.99, "methods.afnc.rho_final": 0.7, "methods.afnc.rho_schedule": "cosine"},
    "0.9to0.5": {"methods.afnc.rho_initial": 0.9, "methods.afnc.rho_final": 0.5, "methods.afnc.rho_schedule": "cosine"},
    "fixed": {"methods.afnc.rho_initial": 0.9, "methods.afnc.rho_final": 0.9, "methods.afnc.rho_schedule": "constant"},
}
OVERRIDES = {**cifar10_simclr.OVERRIDES, "methods.afnc.temperature": 0.5}


def get_config(arg=None):
  variants = config_lib.parse_arg(arg, {**config_lib.VARIANTS, "fixed": "ρ = 0.9 throughout",
                                        "0.9to0.5": "ρ scheduled 0.9 -> 0.5"})
  schedule = "fixed" if "fixed" in variants else "0.9to0.5" if "0.9to0.5" in variants else "0.99to0.7"
  shared = ",".join(sorted(variants - {"fixed", "0.9to0.5"}))
  return cifar10_simclr.cifar10(shared, runs="afnc", overrides={**OVERRIDES, **SCHEDULES[schedule]})

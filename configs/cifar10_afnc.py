"""SimCLR + Adaptive FNC (paper Eq. 4), threshold rho scheduled 0.99 -> 0.7 (Table 4's best row).

Ablations from Table 4: --config configs/cifar10_afnc.py:fixed (rho = 0.9) or :0.9to0.5.
"""
from configs import cifar10_simclr


def get_config(arg=None):
  variant = None
  if arg in ("fixed", "0.9to0.5"):
    variant, arg = arg, None
  c = cifar10_simclr.get_config(arg)
  c.runs = "afnc"
  c.loss.rho_initial, c.loss.rho_final = 0.99, 0.7
  if variant == "fixed":
    c.loss.rho_initial = c.loss.rho_final = 0.9
    c.loss.rho_schedule = "constant"
  elif variant == "0.9to0.5":
    c.loss.rho_initial, c.loss.rho_final = 0.9, 0.5
  return c

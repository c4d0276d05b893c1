"""Paper Table 5 (CIFAR-10): adversarial contrastive pretraining — RoCL, A-RoCL (RoCL + Adaptive FNC), ACL(DS),
A-ACL — next to the non-adversarial SimCLR ("Self-Supervised") and SupCon ("Supervised") rows, trained alike in one
workdir and attacked with Table 5's columns.

    python -m csl_jax.main --config configs/cifar10_table5.py --workdir runs/table5
    python -m csl_jax.main --config configs/cifar10_table5.py --workdir runs/table5 --config.runs=rocl,arocl

Table 5's columns (checked against the paper's table): clean, PGD-ℓ∞ 8/255 and 16/255, PGD-ℓ2 0.25, PGD-ℓ1 12,
AutoAttack-ℓ∞ 8/255 and 16/255. The paper trains with a PGD ℓ∞ adversary "following RoCL"; the Adaptive FNC
versions use Table 4's best ρ schedule, 0.99 -> 0.7. Variants: `:resnet18`, `:short`, `:cifar100`, `:smoke`.
"""
import functools

from configs import cifar10_simclr, cifar10_supcon
from csl_jax import config as config_lib

TABLE5_ATTACKS = ("pgd:linf:8/255,pgd:linf:16/255,pgd:l2:0.25,pgd:l1:12,"
                  "autoattack:linf:8/255,autoattack:linf:16/255")

RHO = {"rho_initial": 0.99, "rho_final": 0.7, "rho_schedule": "cosine"}
# RoCL and ACL train with LARS like SimCLR (the shared CIFAR optimiser settings). ACL's own augmentation
# (train_simCLR.py: colour-jitter strength 1.0, crop scale 0.1-1) is not applied: augment.* is shared by all runs.
OPTIM = {k: v for k, v in cifar10_simclr.OVERRIDES.items() if not k.startswith("methods.")}


def get_config(arg=None):
  c = cifar10_simclr.cifar10(arg, runs="simclr,supcon,rocl,arocl,acl,aacl")
  smoke = "smoke" in config_lib.parse_arg(arg)
  spec = functools.partial(config_lib.run_spec, methods_only=smoke)
  rho = lambda name: {f"methods.{name}.{k}": v for k, v in RHO.items()}
  with c.unlocked():
    c.run_overrides = {
        "simclr": spec("simclr", cifar10_simclr.OVERRIDES),
        "supcon": spec("supcon", cifar10_supcon.OVERRIDES),
        "rocl": spec("rocl", OPTIM),
        "arocl": spec("arocl", {**OPTIM, **rho("arocl")}),
        "acl": spec("acl", OPTIM),
        "aacl": spec("aacl", {**OPTIM, **rho("aacl")}),
    }
  if not smoke:
    c.robustness.attacks = TABLE5_ATTACKS
  return c

"""Training objectives: NT-Xent (Eq. 1), SupCon, Adaptive FNC (Eq. 4), FNC, IFND, cross-entropy, the rho schedule.

The contrastive losses share one row-wise core (`contrastive.anchor_rows` + per-loss row functions);
`sharded.make_sharded_loss` runs that core on each device's anchors against the all-gathered global batch.
Modules: `contrastive` (row core, NT-Xent, SupCon, cross-entropy), `cancellation` (Adaptive FNC and FNC),
`pseudo_label` (IFND's pseudo-label elimination), `schedules` (rho), `sharded` (global-batch losses;
`sharded.LOSSES` maps a loss name to its functions).
"""
from csl_jax.losses.cancellation import adaptive_fnc
from csl_jax.losses.cancellation import fnc
from csl_jax.losses.contrastive import cross_entropy
from csl_jax.losses.contrastive import nt_xent
from csl_jax.losses.contrastive import supcon
from csl_jax.losses.pseudo_label import ifnd
from csl_jax.losses.schedules import rho_schedule
from csl_jax.losses.sharded import make_sharded_loss

__all__ = [
    "adaptive_fnc",
    "cross_entropy",
    "fnc",
    "ifnd",
    "make_sharded_loss",
    "nt_xent",
    "rho_schedule",
    "supcon",
]

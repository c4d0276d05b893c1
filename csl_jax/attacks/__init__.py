"""Adversarial attacks on a `logits_fn` (f32[B, ...] images in [0, 1] -> f32[B, K] logits).

    from csl_jax import attacks
    x_adv = attacks.pgd(logits_fn, x, y, eps=8 / 255, norm="linf")
    acc, correct = attacks.robust_accuracy(functools.partial(attacks.pgd, logits_fn, eps=8 / 255),
                                           logits_fn, images, labels, batch_size=256)

Geometry lives in `projections`, input checks in `validation`, losses in `objectives`; each attack is
one module whose iteration loop is a single jitted `lax.fori_loop`.
"""
from csl_jax.attacks.apgd import apgd
from csl_jax.attacks.autoattack import autoattack, run_autoattack
from csl_jax.attacks.evaluate import clean_accuracy, robust_accuracy
from csl_jax.attacks.fab import fab
from csl_jax.attacks.fgsm import fgsm
from csl_jax.attacks.pgd import pgd
from csl_jax.attacks.square import square

__all__ = ["apgd", "autoattack", "clean_accuracy", "fab", "fgsm", "pgd", "robust_accuracy", "run_autoattack",
           "square"]

"""AutoAttack (Croce & Hein 2020): an ensemble of parameter-free attacks, per-example worst case.

Versions, as in the reference fra31/auto-attack (`AutoAttack.set_version`):
- "standard" (ℓ∞, ℓ2): APGD-CE (1 run, 100 iterations) → APGD-T (targeted DLR, top-9 target classes,
  1 run each) → FAB-T (9 targets) → Square (5000 queries, p_init 0.8).
  "standard" (ℓ1): APGD-CE (5 restarts) → APGD-T (5 targets), both with the 3·eps → 2·eps → eps
  schedule; the reference's FAB-T and Square for ℓ1 are not part of this suite (FAB and Square here
  support ℓ∞ and ℓ2 only), so ℓ1 AutoAttack is APGD-only (a warning says so).
- "plus": APGD-CE (5 restarts) → APGD-DLR (5) → FAB (5) → Square → APGD-T (9 targets) → FAB-T (9).
- "rand" (randomised defences): APGD-CE → APGD-DLR, 1 run each with EOT over 20 gradient samples;
  logits_fn must then accept a `key` keyword and draw its randomness from it.

Each attack runs only on points that are still robust after the previous ones: between stages (and
between APGD-T targets and APGD restarts) the still-robust points are gathered and re-batched into
padded batches of a few fixed sizes (`evaluate.bucket_size`: powers of two for small sets, then at most ~25% padding and four sizes per
octave),
so the work shrinks with the robust set while each attack compiles only for the few sizes it meets.
Within an APGD stage the same happens every 10 iterations (`apgd.apgd_early_exit`): points fooled
so far are set aside, so a non-robust point costs the few iterations it takes to fool it, not 100.
A point counts as robust only if every stage fails on it.
"""
import dataclasses
import functools
import time
import warnings
from typing import Callable, Dict, List, Optional

import jax
import numpy as np

from csl_jax.attacks import evaluate
from csl_jax.attacks import validation
from csl_jax.attacks.apgd import apgd_attack
from csl_jax.attacks.apgd import apgd_early_exit

VERSIONS = ("standard", "plus", "rand")


@dataclasses.dataclass
class Stage:
  """One attack pass over the still-robust points: name for logs, attack_fn(x, y, key=) -> x_adv."""
  name: str
  attack_fn: Callable


@dataclasses.dataclass
class AutoAttackResult:
  """x_adv f32[N, ...]; robust bool[N]; robust accuracy after the clean pass and each stage; wall-clock
  seconds in total and per stage (including compilation); broken_by int16[N]: the index of the stage that
  fooled each point (in robust_accuracy's order after "clean"), -1 for robust points, -2 for points already
  misclassified without attack (fra31's log reports the same per-stage shares)."""
  x_adv: np.ndarray
  robust: np.ndarray
  robust_accuracy: Dict[str, float]
  seconds: float
  stage_seconds: Dict[str, float]
  broken_by: Optional[np.ndarray] = None


def _apgd_stage(logits_fn, *, eps, norm, loss, restart, target_rank=None, **options):
  """Single APGD run (one restart / one target) as a stage; restart and target only change the key/target.

  Deterministic models use `apgd_early_exit` (same fooled set, no work on points already fooled);
  EOT runs and the ℓ1 3·eps → 2·eps → eps schedule keep the one-call `apgd_attack`.
  """
  early_exit = options.get("eot_iter", 1) == 1 and not options.get("use_larger_eps", False)

  def attack_fn(x, y, key):
    key = jax.random.fold_in(key, restart)
    rank = 2 if target_rank is None else target_rank
    if early_exit:
      x_adv, _ = apgd_early_exit(logits_fn, x, y, key, eps, rank, norm=norm, loss=loss,
                                 targeted=target_rank is not None, n_iter=100,
                                 oscillation=options.get("oscillation", 0.75))
      return x_adv
    x_adv, _ = apgd_attack(
        logits_fn, x, y, key, eps, rank, norm=norm, loss=loss, n_iter=100,
        n_restarts=1, n_targets=0 if target_rank is None else 1, **options)
    return x_adv

  return attack_fn


def _fab_stage(logits_fn, *, eps, norm, targeted, n_restarts):
  from csl_jax.attacks.fab import fab  # noqa: PLC0415 (another module of the suite; keeps import light)
  return lambda x, y, key: fab(logits_fn, x, y, eps=eps, norm=norm, targeted=targeted, n_iter=100,
                               n_restarts=n_restarts, n_target_classes=9, key=key)


def _square_stage(logits_fn, *, eps, norm):
  from csl_jax.attacks.square import square  # noqa: PLC0415
  return lambda x, y, key: square(logits_fn, x, y, eps=eps, norm=norm, n_queries=5000, p_init=0.8, n_restarts=1,
                                  key=key)


def build_stages(logits_fn, *, eps, norm, version, num_classes) -> List[Stage]:
  """The reference's attack sequence for `version` and `norm`, as a list of stages."""
  if version not in VERSIONS:
    raise ValueError(f"autoattack: version={version!r}; choose one of {VERSIONS}.")
  apgd = functools.partial(_apgd_stage, logits_fn, eps=eps, norm=norm)
  if version == "rand":
    return [Stage(f"apgd-{loss}", apgd(loss=loss, restart=0, eot_iter=20)) for loss in ("ce", "dlr")]
  wanted_targets = 5 if (version == "standard" and norm == "l1") else 9
  n_targets = min(wanted_targets, num_classes - 1)
  if n_targets < wanted_targets:
    warnings.warn(f"autoattack: the model has {num_classes} classes, so APGD-T uses {n_targets} target classes.")
  larger_eps = norm == "l1" and version == "standard"  # the reference sets the ℓ1 schedule in "standard" only
  ce_restarts = 5 if (version == "plus" or norm == "l1") else 1
  stages = [Stage(f"apgd-ce[{r}]", apgd(loss="ce", restart=r, use_larger_eps=larger_eps)) for r in range(ce_restarts)]
  targeted = [Stage(f"apgd-t[{rank}]", apgd(loss="dlr-targeted", restart=0, target_rank=rank,
                                             use_larger_eps=larger_eps)) for rank in range(2, n_targets + 2)]
  has_fab_square = norm in ("linf", "l2")
  if version == "standard":
    stages += targeted
    if has_fab_square:
      stages += [Stage("fab-t", _fab_stage(logits_fn, eps=eps, norm=norm, targeted=True, n_restarts=1)),
                 Stage("square", _square_stage(logits_fn, eps=eps, norm=norm))]
  else:  # plus
    stages += [Stage(f"apgd-dlr[{r}]", apgd(loss="dlr", restart=r)) for r in range(5)]
    if has_fab_square:
      stages += [Stage("fab", _fab_stage(logits_fn, eps=eps, norm=norm, targeted=False, n_restarts=5)),
                 Stage("square", _square_stage(logits_fn, eps=eps, norm=norm))]
    stages += targeted
    if has_fab_square:
      stages.append(Stage("fab-t", _fab_stage(logits_fn, eps=eps, norm=norm, targeted=True, n_restarts=1)))
  if not has_fab_square:
    warnings.warn("autoattack: FAB and Square support linf/l2 only; the l1 evaluation runs the APGD stages only.")
  return stages


def check_clean_logits(logits_fn, x, *, batch_size, mesh=None):
  """Raises a ValueError unless logits_fn gives finite logits on every image of x f32[N, ...].

  One forward pass per image, in padded batches of `batch_size` (one compilation; AutoAttack then makes
  hundreds of forward-backward passes per robust point). All batches are dispatched before one sync.
  """
  n = x.shape[0]
  size = evaluate.padded_batch_size(batch_size, mesh)
  finite = [validation.clean_logits_finite(logits_fn, evaluate.place(x[np.arange(start, start + size) % n], mesh))
            for start in range(0, n, size)]
  validation.check_finite_logits(bool(np.all(jax.device_get(finite))), attack="autoattack")


def run_autoattack(logits_fn, x, y, *, eps, norm="linf", version="standard", key=None, batch_size=None, mesh=None,
                   progress=False, stages: Optional[List[Stage]] = None) -> AutoAttackResult:
  """AutoAttack over a whole evaluation set with the per-stage bookkeeping (see module docstring).

  Args:
    logits_fn: f32[b, ...] in [0, 1] -> f32[b, K]. x: f32[N, ...] in [0, 1] or uint8[N, ...]; y: int[N].
    eps, norm, version: threat model and attack set. key: PRNG key (default PRNGKey(0)).
    batch_size: examples per attack call (default: all N at once). mesh: shard batches over "data".
    progress: one tqdm bar per stage. stages: override the attack sequence (tests, custom versions).
  """
  x_float = evaluate.as_unit_float(x)
  # Shapes, ranges, the model's [N, K] output and labels in [0, K) (K from jax.eval_shape, no model call).
  validation.check_attack_inputs(x_float, y, eps=eps, norm=norm, attack="autoattack", logits_fn=logits_fn)
  num_classes = validation.logits_shape(logits_fn, x_float)[1]
  labels = np.asarray(y, np.int32)
  key = jax.random.PRNGKey(0) if key is None else key
  n = x_float.shape[0]
  batch_size = n if batch_size is None else validation.check_count(batch_size, "batch_size", attack="autoattack")
  batch_size = min(batch_size, n)
  start = time.perf_counter()
  check_clean_logits(logits_fn, x_float, batch_size=batch_size, mesh=mesh)
  clean_acc, robust = evaluate.clean_accuracy(logits_fn, x_float, labels, batch_size=batch_size, mesh=mesh)
  if stages is None:
    stages = build_stages(logits_fn, eps=eps, norm=norm, version=version, num_classes=num_classes)
  history = {"clean": clean_acc}
  stage_seconds = {}
  broken_by = np.where(robust, -1, -2).astype(np.int16)
  x_adv = x_float.copy()
  for i, stage in enumerate(stages):
    index = np.flatnonzero(robust)
    if index.size == 0:
      break
    stage_start = time.perf_counter()
    _, still, adv = evaluate.robust_accuracy(
        stage.attack_fn, logits_fn, x_float[index], labels[index],
        batch_size=evaluate.bucket_size(index.size, batch_size, mesh),
        mesh=mesh, desc=stage.name, key=jax.random.fold_in(key, i), progress=progress, keep_adversarial=True)
    fooled = index[~still]
    x_adv[fooled] = adv[~still]
    robust[fooled] = False
    broken_by[fooled] = i
    history[stage.name] = float(np.mean(robust))
    stage_seconds[stage.name] = time.perf_counter() - stage_start
  return AutoAttackResult(x_adv=x_adv, robust=robust, robust_accuracy=history, seconds=time.perf_counter() - start,
                          stage_seconds=stage_seconds, broken_by=broken_by)


def autoattack(logits_fn, x, y, *, eps, norm="linf", version="standard", key=None, batch_size=None, mesh=None,
               progress=False):
  """AutoAttack; returns x_adv f32[N, ...]: the first successful adversarial example per point, else x.

  See `run_autoattack` for the arguments and the module docstring for the attack sequence.
  """
  return run_autoattack(logits_fn, x, y, eps=eps, norm=norm, version=version, key=key, batch_size=batch_size,
                        mesh=mesh, progress=progress).x_adv

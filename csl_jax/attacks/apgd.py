"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness", Alg. 1) and APGD-ℓ1
(Croce & Hein 2021, "Mind the box"), following the reference fra31/auto-attack (autopgd_base.py).

ℓ∞ / ℓ2 (Alg. 1): step size η₀ = 2·eps; each step is a projected steepest-ascent step z followed by
momentum 0.75 on the previous update,
    x_{k+1} = Π(x_k + 0.75·(z_{k+1} − x_k) + 0.25·(x_k − x_{k−1}))   (no momentum on the first step).
At checkpoints spaced p_{j+1} − p_j = max(p_j − 0.03, 0.06)·N_iter apart (first after 0.22·N_iter) the step
size is halved — and the iterate restarted from the best point found — when (1) the loss increased in at
most a fraction `oscillation` = 0.75 (the paper's ρ) of the steps since the last checkpoint, or (2) the
step was not reduced at the last checkpoint and the best loss has not improved since.
ℓ1: no momentum; sparse steps sign(∇) on the top-k coordinates (k starts at 20% of d and follows the
sparsity of the best point / 1.5), η₀ = eps, every max(0.04·N_iter, 1) steps the step size is reset to
η₀ (and the iterate to the best point) when the best point became sparser, else divided by 1.5 (within
[η₀/10, η₀]); the exact ℓ1-ball-and-box projection. `use_larger_eps` runs the reference's schedule
3·eps, 2·eps, eps for 30%, 30%, 40% of the iterations (AutoAttack-ℓ1 "standard").

Targeted APGD (APGD-T) maximises the targeted DLR loss toward the 2nd, 3rd, … most likely classes of
the clean input, one target after the other, only on points not yet fooled. Restarts likewise attack
only points not yet fooled. Inside one `jax.jit` this "only" is a mask (fixed shapes, no recompilation);
`autoattack` additionally compacts still-robust points between targets and restarts, and within a run
(`apgd_early_exit`: the run advances in jitted chunks and drops fooled rows between them).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from csl_jax.attacks import evaluate
from csl_jax.attacks import objectives
from csl_jax.models import inference
from csl_jax.attacks import projections
from csl_jax.attacks import validation
from csl_jax import rng

MOMENTUM = 0.75
# Initial step size as a multiple of eps, per norm (reference: alpha).
STEP_SCALE = {"linf": 2.0, "l2": 2.0, "l1": 1.0}


def _l0(delta):
  return jnp.sum(jnp.reshape(delta, (delta.shape[0], -1)) != 0, axis=1).astype(jnp.float32)


def random_start(key, x, eps, norm):
  """Reference starting point: on the ℓ∞ / ℓ2 sphere of radius eps (then clipped), or for ℓ1 the
  ℓ1-ball-and-box projection of x + N(0, I)."""
  if norm == "linf":
    direction = projections.normalize_direction(rng.uniform(key, x.shape, x.dtype, -1.0, 1.0), "linf")
    return jnp.clip(x + eps * direction, 0.0, 1.0)
  if norm == "l2":
    direction = projections.normalize_direction(rng.normal(key, x.shape, x.dtype), "l2")
    return jnp.clip(x + eps * direction, 0.0, 1.0)
  return projections.project_l1(x + rng.normal(key, x.shape, x.dtype), x, eps)


# State entries shared by the whole batch (everything else in an APGD state has one row per example).
SHARED_STATE = ("counter", "k", "loop_key")


def init_state(value_and_grad, x, y, y_target, key, eps, x_init=None, *, norm, n_iter):
  """State of one APGD run before its first iteration: the start point, its loss and gradient, the
  step-size schedule's counters and the clean inputs (see `iterate`)."""
  dim = x[0].size
  start_key, loop_key = jax.random.split(key)
  x_adv = random_start(start_key, x, eps, norm) if x_init is None else jnp.clip(x_init, 0.0, 1.0)
  loss, logits, grad = value_and_grad(x_adv, y, y_target, jax.random.fold_in(loop_key, n_iter))
  batch = y.shape[0]
  eta0 = STEP_SCALE[norm] * eps
  if norm == "l1":
    first_check = max(int(0.04 * n_iter), 1)
    sparsity = _l0(x_adv - x)
    topk = jnp.full((batch,), 0.2, jnp.float32) if x_init is None else sparsity / dim / 1.5
    sp_old = jnp.full((batch,), float(dim), jnp.float32) if x_init is None else sparsity
  else:
    first_check = max(int(0.22 * n_iter), 1)
    topk = sp_old = jnp.zeros((batch,))
  # Every entry has a fixed (not weak) dtype: a state cut down on the host (`_take_rows`) must present the same
  # types to the compiled `_continue_run`, or each cut would compile it again.
  return dict(
      x=x, y=y, y_target=y_target, loop_key=loop_key,
      x_adv=x_adv, x_prev=x_adv, grad=grad, x_best=x_adv, grad_best=grad, loss_best=loss,
      x_best_adv=x_adv, fooled=~objectives.is_correct(logits, y),
      step=jnp.full((batch,), eta0, x.dtype), counter=jnp.int32(0), k=jnp.int32(first_check),
      # The reference compares the first loss of the first window with an unwritten (zero) slot.
      loss_prev=jnp.full((batch,), jnp.inf if n_iter == 1 else 0.0, jnp.float32), n_increase=jnp.zeros((batch,)),
      loss_best_last=loss, reduced_last=jnp.ones((batch,), bool), topk=topk, sp_old=sp_old)


def iterate(value_and_grad, state, start, stop, eps, *, norm, n_iter, oscillation=0.75):
  """Runs iterations start … stop − 1 of an APGD run of `n_iter` iterations on `state`.

  Rows are independent (per-example step sizes; the checkpoint counters are shared because every row
  follows the same schedule), so a state may be cut to a subset of its rows between calls.
  """
  x, y, y_target = state["x"], state["y"], state["y_target"]
  dim = x[0].size
  eta0 = STEP_SCALE[norm] * eps
  n_iter_min, size_decr = max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
  ex = lambda v: projections.per_example(v, x)  # noqa: E731

  def body(i, s):
    if norm == "l1":
      keep = projections.top_fraction_mask(jnp.abs(s["grad"]), s["topk"])
      direction = jnp.sign(jnp.where(keep, s["grad"], 0.0))
      direction = direction / ex(projections.lp_norm(direction, "l1") + 1e-10)
      x_new = projections.project_l1(s["x_adv"] + ex(s["step"]) * direction, x, eps)
    else:
      direction = jnp.sign(s["grad"]) if norm == "linf" else projections.normalize_direction(s["grad"], "l2")
      z = projections.project(s["x_adv"] + ex(s["step"]) * direction, x, eps, norm)
      a = jnp.where(i > 0, MOMENTUM, 1.0)
      x_new = s["x_adv"] + a * (z - s["x_adv"]) + (1.0 - a) * (s["x_adv"] - s["x_prev"])
      x_new = projections.project(x_new, x, eps, norm)
    loss, logits, grad = value_and_grad(x_new, y, y_target, jax.random.fold_in(s["loop_key"], i))
    wrong = ~objectives.is_correct(logits, y)
    improved = loss > s["loss_best"]
    n = dict(s)
    n.update(
        x_prev=s["x_adv"], fooled=s["fooled"] | wrong,
        x_best_adv=jnp.where(ex(wrong), x_new, s["x_best_adv"]),
        x_best=jnp.where(ex(improved), x_new, s["x_best"]),
        grad_best=jnp.where(ex(improved), grad, s["grad_best"]),
        loss_best=jnp.where(improved, loss, s["loss_best"]),
        n_increase=s["n_increase"] + (loss > s["loss_prev"]), loss_prev=loss,
        counter=s["counter"] + 1)
    check = n["counter"] == s["k"]
    if norm == "l1":
      sp_curr = _l0(n["x_best"] - x)
      sparser = sp_curr / jnp.maximum(s["sp_old"], 1.0) < 0.95
      reset = check & sparser
      n["step"] = jnp.where(check, jnp.clip(jnp.where(sparser, eta0, s["step"] / 1.5), eta0 / 10.0, eta0),
                            s["step"])
      n["topk"] = jnp.where(check, sp_curr / dim / 1.5, s["topk"])
      n["sp_old"] = jnp.where(check, sp_curr, s["sp_old"])
    else:
      oscillates = n["n_increase"] <= s["k"].astype(jnp.float32) * oscillation
      stalled = ~s["reduced_last"] & (s["loss_best_last"] >= n["loss_best"])
      reduce = oscillates | stalled
      reset = check & reduce
      n["step"] = jnp.where(reset, s["step"] / 2.0, s["step"])
      n["reduced_last"] = jnp.where(check, reduce, s["reduced_last"])
      n["loss_best_last"] = jnp.where(check, n["loss_best"], s["loss_best_last"])
      n["n_increase"] = jnp.where(check, 0.0, n["n_increase"])
      n["k"] = jnp.where(check, jnp.maximum(s["k"] - size_decr, n_iter_min), s["k"])
    n["x_adv"] = jnp.where(ex(reset), n["x_best"], x_new)
    n["grad"] = jnp.where(ex(reset), n["grad_best"], grad)
    n["counter"] = jnp.where(check, 0, n["counter"])
    return n

  return jax.lax.fori_loop(start, stop, body, state)


def single_run(value_and_grad, x, y, y_target, key, eps, x_init=None, *, norm, n_iter, oscillation=0.75):
  """One APGD run of `n_iter` iterations (reference `attack_single_run`).

  Args:
    value_and_grad: f(x, y, y_target, key) -> (loss f32[B], logits f32[B, K], grad f32[B, ...]).
    x: f32[B, ...] clean images; y: int32[B] true labels; y_target: int32[B] targets (= y if untargeted).
    key: PRNG key; eps: radius; x_init: optional starting point (skips the random start).
  Returns:
    (x_best: highest-loss point, fooled: bool[B] some iterate was misclassified, loss_best: f32[B],
     x_best_adv: the last misclassified iterate, or the start where none was).
  """
  state = init_state(value_and_grad, x, y, y_target, key, eps, x_init, norm=norm, n_iter=n_iter)
  s = iterate(value_and_grad, state, 0, n_iter, eps, norm=norm, n_iter=n_iter, oscillation=oscillation)
  return s["x_best"], s["fooled"], s["loss_best"], s["x_best_adv"]


def larger_eps_run(value_and_grad, x, y, y_target, key, eps, *, norm, n_iter, oscillation=0.75):
  """APGD-ℓ1 with the reference's decreasing radius: 3·eps, 2·eps, eps for 30/30/40% of the iterations,
  each stage starting from the previous stage's best point (reference `decr_eps_pgd`)."""
  first = math.ceil(0.3 * n_iter)
  schedule = ((3.0, first), (2.0, first), (1.0, max(n_iter - 2 * first, 1)))
  init_key, key = jax.random.split(key)
  x_init = projections.project_l1(x + rng.normal(init_key, x.shape, x.dtype), x, 3.0 * eps)
  for stage, (scale, iters) in enumerate(schedule):
    x_init = projections.project_l1(x_init, x, scale * eps)
    x_init, fooled, loss, x_adv = single_run(value_and_grad, x, y, y_target, jax.random.fold_in(key, stage),
                                             scale * eps, x_init, norm=norm, n_iter=iters, oscillation=oscillation)
  return x_init, fooled, loss, x_adv


def _target(clean_logits, y, target_rank, targeted):
  """y_target for a run: the class of clean-logit rank `target_rank` (1 = top) if targeted, else y.

  targeted: a Python bool, or a traced bool (one program for targeted and untargeted runs)."""
  if isinstance(targeted, bool) and not targeted:
    return y
  ranking = jnp.argsort(clean_logits, axis=1)
  return jnp.where(targeted, jnp.take(ranking, clean_logits.shape[1] - target_rank, axis=1), y)


@inference.jit_over_model(static_argnames=(
    "norm", "loss", "n_iter", "n_restarts", "n_targets", "oscillation", "eot_iter", "use_larger_eps"))
def apgd_attack(logits_fn, x, y, key, eps, first_target_rank=2, *, norm, loss, n_iter, n_restarts,
                n_targets=0, oscillation=0.75, eot_iter=1, use_larger_eps=False):
  """Jitted APGD over restarts (and targets) -> (x_adv f32[B, ...], fooled bool[B]).

  n_targets = 0: untargeted. n_targets ≥ 1: targets are the clean logits' ranks first_target_rank, …,
  first_target_rank + n_targets − 1 (rank 1 = the top class); each gets `n_restarts` runs.
  x_adv is x where the point was never fooled (including points misclassified from the start).
  """
  clean_key, key = jax.random.split(key)
  clean_logits = objectives.with_key(logits_fn)(x, clean_key)
  num_classes = clean_logits.shape[1]
  if n_targets and n_targets + 1 > num_classes:
    raise ValueError(f"apgd: {n_targets} target classes need at least {n_targets + 1} classes, the model "
                     f"has {num_classes}. Pass n_target_classes <= {num_classes - 1}.")
  value_and_grad = objectives.eot_value_and_grad(logits_fn, objectives.get_loss(loss, num_classes), eot_iter)
  run = larger_eps_run if use_larger_eps else single_run

  def attempt(j, carry):
    x_out, fooled = carry
    y_target = _target(clean_logits, y, first_target_rank + j // n_restarts, bool(n_targets))
    _, fooled_run, _, x_adv = run(value_and_grad, x, y, y_target, jax.random.fold_in(key, j), eps,
                                  norm=norm, n_iter=n_iter, oscillation=oscillation)
    newly = fooled_run & ~fooled
    return jnp.where(projections.per_example(newly, x), x_adv, x_out), fooled | fooled_run

  fooled = ~objectives.is_correct(clean_logits, y)
  attempts = n_restarts * max(n_targets, 1)
  if attempts == 1:
    return attempt(0, (x, fooled))
  return jax.lax.fori_loop(0, attempts, attempt, (x, fooled))


# The early-exit programs take the loss (an index into `objectives.LOSSES`) and `targeted` as traced values:
# APGD-CE and APGD-T of one model then share their compiled programs at each batch size (AutoAttack's first
# two stages; on the quickstart 7 APGD compilations became 4).
@inference.jit_over_model(static_argnames=("norm", "n_iter"))
def _start_run(logits_fn, x, y, key, eps, target_rank, loss_index, targeted, *, norm, n_iter):
  """State of the single run `apgd_attack` makes for (n_restarts=1, n_targets ≤ 1) — same keys — and the
  mask of clean-misclassified points."""
  clean_key, key = jax.random.split(key)
  clean_logits = objectives.with_key(logits_fn)(x, clean_key)
  value_and_grad = objectives.eot_value_and_grad(logits_fn, objectives.switched_loss(loss_index))
  y_target = _target(clean_logits, y, target_rank, targeted)
  state = init_state(value_and_grad, x, y, y_target, jax.random.fold_in(key, 0), eps, norm=norm, n_iter=n_iter)
  return state, ~objectives.is_correct(clean_logits, y)


@inference.jit_over_model(static_argnames=("norm", "n_iter", "oscillation"))
def _continue_run(logits_fn, state, start, stop, eps, loss_index, *, norm, n_iter, oscillation):
  value_and_grad = objectives.eot_value_and_grad(logits_fn, objectives.switched_loss(loss_index))
  return iterate(value_and_grad, state, start, stop, eps, norm=norm, n_iter=n_iter, oscillation=oscillation)


def _take_rows(state, rows, sharding):
  """The state restricted to `rows` (host gather), placed like the attack's input batch."""
  def take(name, value):
    if name in SHARED_STATE:
      return value
    picked = np.asarray(value)[rows]
    return jnp.asarray(picked) if sharding is None else jax.device_put(picked, sharding)
  return {name: take(name, value) for name, value in state.items()}


def apgd_early_exit(logits_fn, x, y, key, eps, target_rank=2, *, norm, loss, targeted, n_iter=100, oscillation=0.75,
                    chunk=10, batch_rows=None, log=None):
  """One APGD run (one restart, at most one target) that stops working on points once they are fooled.

  The run advances `chunk` iterations per jitted call; after each call the rows already fooled are
  set aside and, once the still-robust rows fit in `batch_rows(n)` ≤ half the current rows, the state
  is cut down to them (padded by repeating rows). Rows are independent, so every point follows
  exactly the trajectory of the full run until it is fooled, and the set of fooled points equals
  `apgd_attack`'s for the same key — AutoAttack only needs that set — while a non-robust model costs
  a few iterations per point instead of n_iter. x_adv of a fooled point is its last misclassified
  iterate before it was set aside.

  Args mirror `apgd_attack` (n_restarts = 1); batch_rows(n) -> padded row count for n points (default:
  `evaluate.bucket_size`, a multiple of the mesh size for sharded x); log: optional list that receives
  (iteration, rows) per call.
  Returns:
    (x_adv f32[B, ...] placed like x, fooled bool[B] numpy).
  """
  sharding = x.sharding if isinstance(getattr(x, "sharding", None), NamedSharding) else None
  sharding = None if sharding is None else NamedSharding(sharding.mesh, P(*sharding.spec[:1]))
  if batch_rows is None:
    mesh = sharding.mesh if sharding is not None and "data" in sharding.mesh.shape else None
    batch_rows = lambda n: evaluate.bucket_size(n, x.shape[0], mesh)  # noqa: E731
  options = dict(norm=norm, n_iter=int(n_iter))
  objectives.get_loss(loss, validation.logits_shape(logits_fn, x)[1])  # an unknown loss or too few classes raise
  index = jnp.int32(objectives.loss_index(loss))
  state, wrong_clean = _start_run(logits_fn, x, y, key, eps, target_rank, index, jnp.bool_(targeted), **options)
  wrong_clean = np.asarray(wrong_clean)
  x_clean = np.asarray(x, np.float32)
  x_adv = x_clean.copy()
  fooled = np.zeros(x_adv.shape[0], bool)
  origin = np.arange(x_adv.shape[0])  # state row -> example

  def set_aside(rows):
    fooled[origin[rows]] = True
    x_adv[origin[rows]] = np.asarray(state["x_best_adv"])[rows]

  for start in range(0, int(n_iter), int(chunk)):
    stop = min(start + int(chunk), int(n_iter))
    state = _continue_run(logits_fn, state, start, stop, eps, index, oscillation=float(oscillation), **options)
    if log is not None:
      log.append((stop, len(origin)))
    row_fooled = np.array(state["fooled"])
    if stop == n_iter:
      break
    _, first = np.unique(origin, return_index=True)  # one row per example (padding repeats rows)
    still = first[~row_fooled[first]]
    if still.size == 0:
      row_fooled[:] = True
      break
    rows = batch_rows(still.size)
    if rows <= len(origin) // 2:
      set_aside(np.flatnonzero(row_fooled))
      keep = np.resize(still, rows)
      state, origin = _take_rows(state, keep, sharding), origin[keep]
  set_aside(np.flatnonzero(row_fooled))
  fooled &= ~wrong_clean  # as apgd_attack: points misclassified from the start stay x
  x_adv[wrong_clean] = x_clean[wrong_clean]
  x_adv = jnp.asarray(x_adv) if sharding is None else jax.device_put(x_adv, sharding)
  return x_adv, fooled


def apgd(logits_fn, x, y, *, eps, norm="linf", loss="ce", targeted=False, n_iter=100, n_restarts=1, key=None,
         n_target_classes=9, oscillation=0.75, eot_iter=1, use_larger_eps=False):
  """Auto-PGD; APGD-CE (loss="ce"), APGD-DLR (loss="dlr") or APGD-T (targeted=True, loss="dlr").

  Args:
    logits_fn: jittable f32[B, ...] in [0, 1] -> f32[B, K] (static: reuse the same object across calls).
      A randomised model may take a `key` keyword; then use eot_iter > 1 (EOT).
    x: f32[B, ...] clean images in [0, 1]; y: int[B] true labels.
    eps: radius; norm: "linf", "l2" or "l1" (APGD-ℓ1 of Croce & Hein 2021).
    loss: "ce" or "dlr" (targeted=True turns them into "ce-targeted" / "dlr-targeted").
    targeted: attack toward the n_target_classes most likely wrong classes, one after the other.
    n_iter: iterations per run; n_restarts: runs per target (each only on points not yet fooled).
    key: PRNG key (default PRNGKey(0)).
    oscillation: the step size is halved at a checkpoint when the loss increased in at most this
      fraction of the steps since the previous one (ρ = 0.75 in Croce & Hein 2020; renamed from `rho`,
      which in this library is the Adaptive FNC threshold).
    eot_iter: gradient samples per step for randomised models.
    use_larger_eps: ℓ1 only, the 3·eps → 2·eps → eps schedule of AutoAttack-ℓ1.
  Returns:
    f32[B, ...]: an adversarial example where one was found, else x (always within the threat model).
  Raises:
    ValueError: bad inputs (`validation.check_attack_inputs`: shapes, ranges, labels outside [0, K), a
      model output that is not [B, K]), counts < 1, or a model with non-finite logits on x.
  """
  x, y = validation.check_attack_inputs(x, y, eps=eps, norm=norm, attack="apgd", logits_fn=logits_fn)
  base_loss = loss.replace("-targeted", "")
  if base_loss not in ("ce", "dlr"):
    raise ValueError(f"apgd: loss={loss!r} is not supported; choose 'ce' or 'dlr'.")
  if use_larger_eps and norm != "l1":
    raise ValueError("apgd: use_larger_eps is the ℓ1 schedule of AutoAttack; use it with norm='l1'.")
  n_iter, n_restarts, eot_iter = (validation.check_count(value, name, attack="apgd") for value, name in
                                  ((n_iter, "n_iter"), (n_restarts, "n_restarts"), (eot_iter, "eot_iter")))
  if not 0.0 <= float(oscillation) <= 1.0:
    raise ValueError(f"apgd: oscillation is a fraction of steps in [0, 1], got {oscillation}.")
  key = jax.random.PRNGKey(0) if key is None else key
  # One forward pass (APGD makes n_iter forward-backward passes), dispatched before the attack and read after.
  clean_finite = validation.clean_logits_finite(logits_fn, x)
  x_adv, _ = apgd_attack(
      logits_fn, x, y, key, eps, 2, norm=norm, loss=base_loss + ("-targeted" if targeted else ""),
      n_iter=n_iter, n_restarts=n_restarts, n_targets=int(n_target_classes) if targeted else 0,
      oscillation=float(oscillation), eot_iter=eot_iter, use_larger_eps=bool(use_larger_eps))
  validation.check_finite_logits(clean_finite, attack="apgd")
  return x_adv

"""Can this robustness evaluation be trusted? The automatic checks fra31/auto-attack runs (its `checks.py`,
documented in its `flags_doc.md`), for a JAX `logits_fn`.

Each check is cheap (a few forward passes or one input gradient on one batch) and returns a list of `Flag`s:
an empty list means nothing suspicious. The robustness stage runs them by default, logs each flag as a warning
and stores it in robustness.json; the report shows them.

- randomized:      logits (or predictions) differ between calls — a random defence; use AutoAttack "rand" (EOT).
- probabilities:   the outputs lie in [0, 1] and sum to 1 — softmax outputs instead of logits (CE and DLR lose
                   their gradient signal; attacks look weaker than they are).
- zero_gradient:   points whose cross-entropy input gradient is exactly zero — gradient masking (a quantised or
                   stop_gradient input) makes gradient attacks fail silently.
- square_success:  the black-box Square attack fooled points every white-box AutoAttack stage before it failed on —
                   a sign the gradients were misleading (masking again).
- num_classes:     too few classes for DLR (needs ≥ 3) / targeted DLR (needs ≥ 4), or more target classes asked
                   than the model has.
"""
import dataclasses
from typing import Callable, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from csl_jax.attacks import objectives
from csl_jax.models import inference


@dataclasses.dataclass(frozen=True)
class Flag:
  check: str
  message: str

  def to_json(self) -> dict:
    return {"check": self.check, "message": self.message}


def check_randomized(logits_fn: Callable, x, y, *, calls: int = 5, tolerance: float = 1e-4) -> List[Flag]:
  """Flags a model whose L2-normalised logits (or number of correct predictions) change between calls.

  A `logits_fn(x, key=...)` is called with `calls` different keys; a deterministic-looking one `calls` times
  as it is (Python-side randomness shows up there).
  """
  if objectives.takes_key(logits_fn):
    outputs = [np.asarray(logits_fn(x, key=jax.random.PRNGKey(i)), np.float64) for i in range(calls)]
  else:
    outputs = [np.asarray(logits_fn(x), np.float64) for _ in range(calls)]
  unit = [o / (np.linalg.norm(o, axis=-1, keepdims=True) + 1e-10) for o in outputs]
  spread = max(float(np.max(np.linalg.norm(a - b, axis=-1))) for a in unit for b in unit)
  correct = {int(np.sum(np.argmax(o, -1) == np.asarray(y))) for o in outputs}
  if spread <= tolerance and len(correct) == 1:
    return []
  return [Flag("randomized", f"the model's outputs change between calls on the same inputs (normalised logits "
                             f"differ by up to {spread:.2g}; correct predictions {sorted(correct)}): it looks like "
                             "a randomised defence. Evaluate it with AutoAttack version='rand' (EOT) and a "
                             "logits_fn(x, key=...) that draws its randomness from the key.")]


def check_probabilities(logits: np.ndarray, *, tolerance: float = 1e-5) -> List[Flag]:
  """Flags outputs that are a probability distribution (in [0, 1], rows summing to 1) instead of logits."""
  logits = np.asarray(logits, np.float64)
  if logits.max() < 1 + tolerance and logits.min() > -tolerance and np.all(np.abs(logits.sum(-1) - 1) < tolerance):
    return [Flag("probabilities", "the model outputs probabilities (in [0, 1], summing to 1), not logits: the "
                                  "attacks' losses saturate and robustness is over-estimated. Pass the pre-softmax "
                                  "logits.")]
  return []


@inference.jit_over_model
def _zero_gradient_rows(logits_fn, x, y):
  """bool[B]: rows of x whose cross-entropy input gradient is exactly zero (one program per architecture)."""
  loss = lambda images: jnp.sum(objectives.cross_entropy(objectives.with_key(logits_fn)(images, jax.random.PRNGKey(0)),
                                                         y))
  grads = jax.grad(loss)(x)
  return jnp.sum(jnp.abs(grads.reshape(grads.shape[0], -1)), axis=-1) == 0


def zero_gradient_count(logits_fn: Callable, x, y) -> int:
  """Number of points whose cross-entropy gradient with respect to the input is exactly zero."""
  return int(jnp.sum(_zero_gradient_rows(logits_fn, jnp.asarray(x, jnp.float32), jnp.asarray(y))))


def check_zero_gradients(logits_fn: Callable, x, y) -> List[Flag]:
  count = zero_gradient_count(logits_fn, x, y)
  if not count:
    return []
  return [Flag("zero_gradient", f"{count} of {len(y)} points have an exactly zero input gradient: gradient-based "
                                "attacks cannot move them, so their robustness may be an artefact (gradient "
                                "masking, e.g. a quantised or stop_gradient input). Check with black-box attacks "
                                "(Square) or an adaptive attack.")]


def check_square_success(stage_accuracy: Dict[str, float], *, tolerance: float = 0.002) -> List[Flag]:
  """Flags a Square stage that lowered the robust accuracy left by the white-box stages before it.

  stage_accuracy: AutoAttack's robust accuracy after the clean pass and after each stage, in order
  (`AutoAttackResult.robust_accuracy`); Square runs only on points every earlier stage failed on.
  """
  names = list(stage_accuracy)
  if "square" not in names or names.index("square") < 2:
    return []
  before = min(stage_accuracy[n] for n in names[:names.index("square")])
  after = stage_accuracy["square"]
  if after < before - tolerance:
    return [Flag("square_success", f"the black-box Square attack lowered the robust accuracy by "
                                   f"{100 * (before - after):.2f} points on points every white-box stage failed on: "
                                   "the gradients may be masked and the evaluation unreliable. Consider more "
                                   "Square queries and restarts, or an adaptive attack.")]
  return []


def check_num_classes(num_classes: int, *, apgd_targets: int = 9, fab_targets: int = 9,
                      uses_dlr: bool = True) -> List[Flag]:
  """Flags class counts too small for the DLR losses or the requested numbers of target classes."""
  problems = []
  if uses_dlr and num_classes <= 2:
    problems.append(f"with {num_classes} classes the DLR loss is undefined (it needs at least 3)")
  elif uses_dlr and num_classes == 3:
    problems.append("with 3 classes the targeted DLR loss is undefined (it needs at least 4)")
  if apgd_targets > num_classes - 1 or fab_targets > num_classes - 1:
    problems.append(f"{max(apgd_targets, fab_targets)} target classes were asked for but only {num_classes - 1} "
                    "exist, so fewer are used")
  return [Flag("num_classes", "; ".join(problems) + ".")] if problems else []


def run_model_checks(logits_fn: Callable, x, y, *, num_autoattack: int = 0) -> List[Flag]:
  """The per-model checks on one batch (x f32[B, ...] in [0, 1], y int[B]): randomized, probabilities,
  zero_gradient, and num_classes when an AutoAttack evaluation follows (num_autoattack > 0)."""
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.int32)
  logits = np.asarray(objectives.with_key(logits_fn)(x, jax.random.PRNGKey(0)))
  flags = check_randomized(logits_fn, x, y) + check_probabilities(logits) + check_zero_gradients(logits_fn, x, y)
  if num_autoattack:
    flags += check_num_classes(int(logits.shape[-1]))
  return flags


def unique(flags: List[Flag]) -> List[Flag]:
  """Flags without repeats (the same check on several batches), first occurrence kept."""
  seen, out = set(), []
  for flag in flags:
    if (flag.check, flag.message) not in seen:
      seen.add((flag.check, flag.message))
      out.append(flag)
  return out


def from_json(entries: Optional[list]) -> List[Flag]:
  return [Flag(e["check"], e["message"]) for e in entries or []]

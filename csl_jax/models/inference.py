"""A trained model as a callable pytree: `bind(module, variables)(x) = module.apply(variables, x, train=False)`.

The result is a `jax.tree_util.Partial` whose leaves are the weights and whose static part is the module
definition (flax modules compare and hash by their fields). Attacks and evaluators jit their kernels with the
model as a *traced* argument (`jit_over_model`), so every model of the same architecture
and shapes — the runs of a study, the seeds of a method, a checkpoint evaluated again after more training —
reuses one compiled program per kernel instead of compiling a new one with the weights baked in as constants.
Called directly, a bound model runs one module-level jitted apply, shared the same way.
"""
import dataclasses
import functools
from typing import Callable, Optional

import flax.linen as nn
import jax


@functools.partial(jax.jit, static_argnames=("module", "method", "output"))
def _apply(module, variables, x, *, method, output):
  out = module.apply(variables, x, train=False, method=method)
  return out if output is None else out[output]


@dataclasses.dataclass(frozen=True)
class Inference:
  """Static part of a bound model: which module, which of its methods, which element of a tuple output."""
  module: nn.Module
  method: Optional[Callable] = None
  output: Optional[int] = None

  def __call__(self, variables, x):
    return _apply(self.module, variables, x, method=self.method, output=self.output)


def bind(module: nn.Module, variables, *, method: Optional[Callable] = None,
         output: Optional[int] = None) -> jax.tree_util.Partial:
  """f(x) -> module.apply(variables, x, train=False, method=method)[output] as a pytree (weights as leaves)."""
  return jax.tree_util.Partial(Inference(module, method, output), variables)


def as_pytree(logits_fn: Callable) -> jax.tree_util.Partial:
  """The model as a pytree argument for `jax.jit`.

  A `jax.tree_util.Partial` (e.g. `bind(module, variables)`) is returned as is: its
  weights are leaves, so models that differ only in their weights share compiled programs. Any other callable
  becomes a leafless Partial — a static part compared by identity, as a static argument would be.
  """
  return logits_fn if isinstance(logits_fn, jax.tree_util.Partial) else jax.tree_util.Partial(logits_fn)


def jit_over_model(fun: Optional[Callable] = None, *, static_argnames=()):
  """`jax.jit` for a kernel (an attack, an accuracy count) whose first argument is the model (see `as_pytree`).

  The model travels as a traced pytree argument, not as a static one: a study's runs, a method's seeds or
  one encoder under two heads compile each kernel once, and no weights are baked into a program as constants.
  """
  if fun is None:
    return functools.partial(jit_over_model, static_argnames=static_argnames)
  jitted = jax.jit(fun, static_argnames=static_argnames)

  @functools.wraps(fun)
  def call(logits_fn, *args, **kwargs):
    return jitted(as_pytree(logits_fn), *args, **kwargs)

  return call

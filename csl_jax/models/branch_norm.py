"""Dual-stream BatchNorm (ACL(DS), Jiang et al. 2020): one set of BN modules per input stream.

A model built with `dual_bn=True` holds, next to each BatchNorm `<name>`, a second one `<name>_adv` with its own
scale/bias and running statistics; `adversarial=True` at call time routes the input through the second set. All
convolution / dense weights are shared. With `dual_bn=False` (every existing model) nothing changes: same
parameter names, same outputs. At initialisation both branches are run so that both get variables.
"""
import flax.linen as nn

ADV_SUFFIX = "_adv"


def batch_norm(parent: nn.Module, make_bn, name: str, x, *, dual: bool, adversarial: bool):
  """make_bn(name) -> nn.BatchNorm; applies the clean (`name`) or adversarial (`name_adv`) branch to x.

  Call from inside `parent`'s compact method. adversarial=True on a single-BN model is an error (it would
  silently share the statistics ACL(DS) keeps apart).
  """
  if not dual:
    if adversarial:
      raise ValueError(f"{type(parent).__name__}: adversarial=True needs a model built with dual_bn=True.")
    return make_bn(name)(x)
  clean, adv = make_bn(name), make_bn(name + ADV_SUFFIX)
  if parent.is_initializing():
    y_clean, y_adv = clean(x), adv(x)
    return y_adv if adversarial else y_clean
  return (adv if adversarial else clean)(x)

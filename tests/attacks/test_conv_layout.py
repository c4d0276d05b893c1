"""conv_layout: the CPU kernel-layout rewrite changes how gradients are computed, never what they are."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from csl_jax.attacks.conv_layout import canonical_conv_kernels, canonical_kernel_order

_rng = np.random.default_rng(0)
K1 = jnp.asarray(_rng.normal(size=(3, 3, 3, 8)) * 0.3, jnp.float32)
K2 = jnp.asarray(_rng.normal(size=(3, 3, 8, 16)) * 0.2, jnp.float32)
K3 = jnp.asarray(_rng.normal(size=(1, 1, 16, 16)) * 0.2, jnp.float32)
KG = jnp.asarray(_rng.normal(size=(3, 3, 4, 16)) * 0.2, jnp.float32)  # 4 groups of 4 input channels
NHWC = ("NHWC", "HWIO", "NHWC")


@jax.jit  # a user's jitted model: its body must be inlined and rewritten too
def model(x):
  """NHWC net with stride 1 and 2, a dilated kernel, a 1×1 conv and a grouped conv."""
  h = jnp.tanh(lax.conv_general_dilated(x, K1, (1, 1), "SAME", dimension_numbers=NHWC))
  h = jnp.tanh(lax.conv_general_dilated(h, K2, (2, 2), "SAME", dimension_numbers=NHWC))
  h = jnp.tanh(lax.conv_general_dilated(h, K3, (1, 1), "SAME", rhs_dilation=(1, 1), dimension_numbers=NHWC))
  h = jnp.tanh(lax.conv_general_dilated(h, KG, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=NHWC,
                                        feature_group_count=4))
  return jnp.mean(h, axis=(1, 2))


def nchw_model(x):
  k = jnp.transpose(K1, (3, 2, 0, 1))  # OIHW
  h = lax.conv_general_dilated(jnp.transpose(x, (0, 3, 1, 2)), k, (2, 2), "SAME",
                               dimension_numbers=("NCHW", "OIHW", "NCHW"))
  return jnp.mean(jnp.tanh(h), axis=(2, 3))


def _objective(fn):
  def objective(x):
    out = fn(x)
    return jnp.sum(jnp.sin(out) * jnp.arange(1.0, out.shape[1] + 1.0))
  return objective


@pytest.mark.parametrize("fn", [model, nchw_model], ids=["nhwc", "nchw"])
def test_gradient_and_value_are_unchanged(fn):
  x = jnp.asarray(_rng.uniform(size=(4, 9, 9, 3)), jnp.float32)
  plain = jax.value_and_grad(_objective(fn))
  rewritten = canonical_conv_kernels(plain, backend="cpu")
  value, grad = jax.jit(rewritten)(x)
  value_ref, grad_ref = plain(x)
  np.testing.assert_allclose(value, value_ref, rtol=1e-5)
  np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-6)
  assert float(jnp.max(jnp.abs(grad_ref))) > 1e-3  # a gradient that actually depends on the convs


def test_pytrees_in_and_out():
  fn = lambda inputs: {"sum": jnp.sum(model(inputs["x"])), "grad": jax.grad(lambda v: jnp.sum(model(v)))(inputs["x"])}
  x = jnp.asarray(_rng.uniform(size=(2, 8, 8, 3)), jnp.float32)
  out = canonical_conv_kernels(fn, backend="cpu")({"x": x, "unused": None})
  ref = fn({"x": x})
  np.testing.assert_allclose(out["sum"], ref["sum"], rtol=1e-5)
  np.testing.assert_allclose(out["grad"], ref["grad"], rtol=1e-4, atol=1e-6)


def _kernel_layouts_in_loop(grad_fn):
  """dim_labels of the convolutions XLA:CPU compiles for ten gradient steps in a rolled fori_loop."""
  def run(x):
    return lax.fori_loop(0, 10, lambda i, v: v + 1e-3 * jnp.sign(grad_fn(v)), x)
  text = jax.jit(run).lower(jnp.zeros((2, 8, 8, 3))).compile().as_text()
  return re.findall(r"dim_labels=b01f_(\w+)->b01f", text)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rewrite only runs on CPU")
def test_loop_body_convolutions_use_canonical_kernels():
  grad_fn = jax.grad(lambda v: jnp.sum(model(v)))
  rewritten = _kernel_layouts_in_loop(canonical_conv_kernels(grad_fn))
  plain = _kernel_layouts_in_loop(grad_fn)
  assert set(rewritten) <= {"01io", "01oi"} and "01io" in rewritten
  # Only the grouped conv's backward (left as is) may keep a swapped kernel; without the rewrite
  # XLA:CPU keeps one for each of the ungrouped convolutions' input gradients too.
  assert rewritten.count("01oi") <= 1
  assert plain.count("01oi") > rewritten.count("01oi")


def test_other_backends_get_the_function_unchanged():
  fn = lambda x: x
  assert canonical_conv_kernels(fn, backend="gpu") is fn


def test_canonical_kernel_order():
  assert canonical_kernel_order((3, 2, 0, 1)) == (0, 1, 2, 3)  # HWIO already canonical
  assert canonical_kernel_order((2, 3, 0, 1)) == (0, 1, 3, 2)  # swapped in/out: transpose the last two
  assert canonical_kernel_order((0, 1, 2, 3)) == (2, 3, 1, 0)  # OIHW

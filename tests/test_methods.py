"""The method registry: every contrastive method's global-batch loss equals its public single-device loss
(value and gradient) on 8 devices — generated from the registry, so a new method is covered by adding it —
and no code outside the registry branches on a method's name."""
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from csl_jax import methods
from csl_jax.train import sharding

CONTRASTIVE = [name for name, m in methods.REGISTRY.items() if m.loss is not None]


@pytest.mark.parametrize("name", CONTRASTIVE)
def test_sharded_loss_equals_public_loss(name):
  method = methods.get(name)
  config = quickstart.get_config()
  config.methods.fnc.top_k = 3  # a few cancellations per anchor at this batch size
  config.methods.fnc.threshold = 0.0
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  n, dim = 16, 6
  z1, z2 = (jnp.asarray(rng.normal(size=(n, dim)).astype(np.float32)) for _ in range(2))
  labels = jnp.asarray(rng.integers(0, 3, n).astype(np.int32))
  scheduled = method.schedule_fn(config, total_steps=10)(jnp.asarray(7))
  # Losses with per-image inputs beside the views (e.g. IFND's pseudo-labels) get example ones from the entry.
  scheduled.update(method.sample_inputs(rng, n) if method.sample_inputs else {})
  sharded, single = method.loss_fn(config, mesh), method.loss_fn(config)

  def value_and_grad(fn):
    return jax.jit(jax.value_and_grad(lambda a, b: fn(a, b, labels, **scheduled)[0], argnums=(0, 1)))(z1, z2)

  (value, grads), (expected, expected_grads) = value_and_grad(sharded), value_and_grad(single)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  for g, e in zip(grads, expected_grads):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)
  stats = jax.jit(lambda a, b: sharded(a, b, labels, **scheduled)[1])(z1, z2)
  expected_stats = single(z1, z2, labels, **scheduled)[1]
  assert set(stats) == set(expected_stats)
  for key in stats:
    np.testing.assert_allclose(stats[key], expected_stats[key], rtol=1e-5, err_msg=key)


def test_scheduled_values_are_the_methods_own():
  config = quickstart.get_config()
  assert methods.get("simclr").schedule_fn(config, 10)(0) == {}
  rho = methods.get("afnc").schedule_fn(config, 10)
  assert float(rho(0)["rho"]) == pytest.approx(config.methods.afnc.rho_initial)
  assert float(rho(10)["rho"]) == pytest.approx(config.methods.afnc.rho_final)


def test_no_method_name_branches_outside_the_registry():
  root = pathlib.Path(methods.__file__).parent
  pattern = re.compile(r"""method(_name)?\s*(==|!=)\s*["']|["']\s*(==|!=)\s*(run\.)?method\b""")
  offenders = [f"{path.relative_to(root)}:{number}: {line.strip()}"
               for path in root.rglob("*.py") if path.name != "methods.py"
               for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
  assert not offenders, offenders

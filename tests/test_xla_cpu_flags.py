"""The XLA:CPU flag csl_jax sets at import: added once, never over a user's choice or to old jaxlibs."""
import os
import subprocess
import sys

from csl_jax import xla_cpu_flags


def test_appends_to_existing_flags_once():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_cpu_flags.use_fast_cpu_convolutions(env, jaxlib_version=(0, 10))
  assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8 " + xla_cpu_flags.FAST_CPU_CONVOLUTIONS
  assert not xla_cpu_flags.use_fast_cpu_convolutions(env, jaxlib_version=(0, 10))  # already there
  assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1


def test_respects_user_choice_opt_out_and_old_jaxlib():
  user = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"}
  assert not xla_cpu_flags.use_fast_cpu_convolutions(user, jaxlib_version=(0, 10))
  assert user["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"
  opted_out = {"CSL_JAX_KEEP_XLA_FLAGS": "1"}
  assert not xla_cpu_flags.use_fast_cpu_convolutions(opted_out, jaxlib_version=(0, 10))
  assert "XLA_FLAGS" not in opted_out
  old = {}
  assert not xla_cpu_flags.use_fast_cpu_convolutions(old, jaxlib_version=(0, 6))
  assert "XLA_FLAGS" not in old


def test_importing_csl_jax_first_sets_the_flag_for_a_working_backend():
  """In a fresh process: the import sets the flag, and this jaxlib accepts it (a conv runs)."""
  code = ("import os, csl_jax, jax, jax.numpy as jnp; "
          "print(os.environ['XLA_FLAGS']); "
          "print(float(jax.lax.conv(jnp.ones((1, 1, 4, 4)), jnp.ones((1, 1, 3, 3)), (1, 1), 'VALID').sum()))")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "CSL_JAX_KEEP_XLA_FLAGS")}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
  assert xla_cpu_flags.FAST_CPU_CONVOLUTIONS in out.splitlines()[0]
  assert out.splitlines()[1] == "36.0"

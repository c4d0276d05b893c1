"""The XLA:CPU flag csl_jax applies at import and the opt-in malloc setting: once, never over a user's choice."""
import os
import platform
import subprocess
import sys

import pytest

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


class _FakeLibc:
  def __init__(self):
    self.calls = []

  def mallopt(self, param, value):
    self.calls.append((param, value))
    return 1


def test_malloc_settings_applied_once_requested_never_over_a_users_choice():
  libc = _FakeLibc()
  assert xla_cpu_flags.reuse_freed_host_memory({}, libc=libc)
  assert libc.calls == [(-8, 1), (-4, 0), (-1, 1 << 30)]  # M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB
  for env in ({"CSL_JAX_KEEP_MALLOC": "1"}, {"MALLOC_ARENA_MAX": "4"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=8"}):
    libc = _FakeLibc()
    assert not xla_cpu_flags.reuse_freed_host_memory(env, libc=libc)
    assert not libc.calls


def test_reusing_freed_host_memory_stops_per_step_page_faults():
  """In a fresh process on glibc, with the setting applied before JAX starts: once the heap has grown to the steady state, an XLA computation with a
  64 MiB result runs without page faults (without the setting, every call faults in all 16,384 pages)."""
  if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
    pytest.skip("glibc malloc only")
  code = ("import resource, csl_jax, jax, jax.numpy as jnp\n"
          "assert csl_jax.xla_cpu_flags.reuse_freed_host_memory()\n"
          "x = jnp.ones((1024, 128, 128)); f = jax.jit(lambda x: x * 2.0)\n"
          "faults = []\n"
          "for _ in range(20):\n"
          "  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
          "  jax.block_until_ready(f(x))\n"
          "  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
          "print(min(faults[10:]))\n")
  env = {k: v for k, v in os.environ.items() if k != "CSL_JAX_KEEP_MALLOC" and not k.startswith("MALLOC_")}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
  assert int(out.split()[-1]) < 1000

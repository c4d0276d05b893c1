"""The command line's persistent compilation cache: where it goes, when it stays off, and that it is read back."""
import os
import subprocess
import sys

from csl_jax import compilation_cache


def test_cache_dir_per_user_and_machine_respects_the_users_choice(tmp_path):
  path = compilation_cache.cache_dir({"XDG_CACHE_HOME": str(tmp_path)})
  assert path.parent == tmp_path / "csl_jax" / "xla"
  assert compilation_cache.cache_dir({"XDG_CACHE_HOME": str(tmp_path), "CSL_JAX_COMPILATION_CACHE": "0"}) is None
  assert compilation_cache.cache_dir({"JAX_COMPILATION_CACHE_DIR": "/elsewhere"}) is None  # JAX's own setting wins


def test_machine_tag_separates_instruction_sets():
  avx512 = "model name : EPYC\nflags : sse avx2 avx512f\n" * 2
  avx2 = "model name : EPYC\nflags : sse avx2\n"
  assert compilation_cache.machine_tag(avx512) == compilation_cache.machine_tag(avx512 + "processor : 7\n")
  assert compilation_cache.machine_tag(avx512) != compilation_cache.machine_tag(avx2)


def test_a_second_process_loads_the_program_instead_of_compiling(tmp_path):
  code = ("import jax, jax.numpy as jnp\n"
          "from csl_jax import compilation_cache\n"
          "print(compilation_cache.enable())\n"
          "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
          "print(float(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).sum()))\n")
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "CSL_JAX_COMPILATION_CACHE")}
  env.update(XDG_CACHE_HOME=str(tmp_path), JAX_LOG_COMPILES="1")
  runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
          for _ in range(2)]
  assert runs[0].stdout.splitlines()[0].startswith(str(tmp_path / "csl_jax" / "xla"))
  assert runs[0].stdout.splitlines()[1] == runs[1].stdout.splitlines()[1]
  assert "cache hit" not in runs[0].stderr
  assert "Persistent compilation cache hit" in runs[1].stderr

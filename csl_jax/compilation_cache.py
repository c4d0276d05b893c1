"""A per-user persistent XLA compilation cache for the command-line runs (`python -m csl_jax.main`).

Every run of a config compiles the same programs again — the train step, the attacks, the evaluators — and on a
CPU that is a large share of a short run (the quickstart's first run spends about a minute compiling). With the
cache, a re-run, a resumed study or the next config with the same model loads them from disk instead.

Where: $JAX_COMPILATION_CACHE_DIR if the user set it (JAX reads it itself; left alone), else
$XDG_CACHE_HOME/csl_jax/xla/<machine> (default ~/.cache/...). <machine> is a digest of the processor model and
its feature flags, because XLA:CPU executables are built for the host's instruction set: a home directory shared
by machines of different CPUs keeps one cache per kind instead of entries the other kind rejects.
CSL_JAX_COMPILATION_CACHE=0 turns it off. Only programs that took at least a second to compile are stored
(JAX's default threshold), so the cache holds the few dozen that matter.

The cache is trusted input (JAX's documentation: whoever can write it can run code in your process), so it
lives under the user's own cache directory, never in a shared or world-writable place by default.
"""
import hashlib
import os
import pathlib
import platform
from typing import Optional

OFF_VALUES = ("0", "false", "off", "no")


def machine_tag(cpuinfo_text: Optional[str] = None) -> str:
  """A short digest of the CPU model and feature flags (/proc/cpuinfo on Linux; platform strings elsewhere)."""
  if cpuinfo_text is None:
    try:
      cpuinfo_text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
      cpuinfo_text = ""
  keep = ("model name", "flags", "features", "cpu model", "isa")
  lines = sorted({line.strip() for line in cpuinfo_text.splitlines()
                  if line.split(":")[0].strip().lower() in keep})
  text = "\n".join([platform.machine(), platform.processor(), *lines])
  return f"{platform.machine()}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def cache_dir(environ=None) -> Optional[pathlib.Path]:
  """The directory `enable` would use, or None when the cache is off or the user chose JAX's own setting."""
  environ = os.environ if environ is None else environ
  if environ.get("CSL_JAX_COMPILATION_CACHE", "").strip().lower() in OFF_VALUES:
    return None
  if environ.get("JAX_COMPILATION_CACHE_DIR"):
    return None
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "csl_jax" / "xla" / machine_tag()


def enable(environ=None) -> Optional[pathlib.Path]:
  """Points JAX's persistent compilation cache at `cache_dir()`; returns it (None: nothing changed).

  Call before the first compilation. A directory that cannot be created leaves the cache off (with no error:
  it only saves time).
  """
  path = cache_dir(environ)
  if path is None:
    return None
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError:
    return None
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", str(path))
  return path

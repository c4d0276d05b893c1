"""XLA:CPU settings: the one csl_jax applies at import, and an opt-in malloc setting.

jaxlib 0.10 routes CPU convolutions through YNNPACK fusions by default. On the CIFAR-sized layers this
library trains and attacks, XLA's Eigen convolutions are markedly faster (2-core AMD EPYC, jaxlib
0.10.2, batch 32: a 3×3 64→64 conv on 32×32 maps 25.8 → 14.4 ms; SmallCNN forward + input gradient
20.1 → 13.8 ms; ResNet-18 490 → 378 ms; see benchmarks/ATTACKS.md), so `use_fast_cpu_convolutions`
turns the YNNPACK fusions off through XLA_FLAGS.

XLA reads XLA_FLAGS once, when the first computation starts the backend: `import csl_jax` before running
anything with JAX for the setting to apply. A user's own `xla_cpu_experimental_ynn_fusion_type` in
XLA_FLAGS is left alone, and CSL_JAX_KEEP_XLA_FLAGS=1 disables the change altogether. Older jaxlibs,
which do not know the flag (and would abort on it), are never given it.

`reuse_freed_host_memory` (opt-in: nothing calls it at import; `benchmarks/train_step_throughput.py --vs-torch`
does, for both frameworks) keeps a process's large buffers in the process heap between steps. Every execution
allocates its temporaries afresh (268 MB for the small-CNN SimCLR step at batch 256, 2.4 GB for CIFAR
ResNet-18), and XLA's threads get them from glibc malloc's per-thread arenas, which serve anything that
large with a fresh mmap and unmap it on free — so every step page-faults and zero-fills all of it again
(~68,000 faults and ~0.2 s of kernel time per small-CNN step). With one arena, no mmap, and the heap
trimmed only when more than 1 GiB is free at its top, a freed block is reused as is: ReLU + 2x2 max-pool
backward at batch 512, 32x32x32 went from 166 to 42 ms and a 64 MiB elementwise op from ~70 to 13 ms
(2-core AMD EPYC, glibc 2.36). Blocks over 1 GiB (ResNet-18's) are still given back and faulted in again,
so the process holds at most ~1 GiB of freed memory beyond its live data (and whatever holes the heap
keeps); all threads share one malloc arena. Measured effect on csl_jax's own training steps: within noise
(small-CNN SimCLR at batch 256: 346 vs 356 img/s; CIFAR ResNet-18: 12.3 vs 11.7 img/s), which is why the
library leaves the user's malloc alone; PyTorch's eager CPU step gains far more (small CNN, 2 threads: 220 →
340 img/s), so the benchmark sets it for a fair race. glibc only; call it before JAX starts its threads;
skipped when the user set MALLOC_* or GLIBC_TUNABLES malloc settings, and disabled altogether by
CSL_JAX_KEEP_MALLOC=1.
"""
import ctypes
import os
import platform
import sys

FAST_CPU_CONVOLUTIONS = "--xla_cpu_experimental_ynn_fusion_type="
# First jaxlib release this was measured on (the flag exists there; older ones may reject it).
_MIN_JAXLIB = (0, 10)


def _jaxlib_version():
  try:
    from jaxlib import version  # noqa: PLC0415 (does not start a backend)
    return tuple(int(p) for p in version.__version__.split(".")[:2])
  except (ImportError, ValueError):
    return (0, 0)


def use_fast_cpu_convolutions(environ=None, jaxlib_version=None) -> bool:
  """Adds FAST_CPU_CONVOLUTIONS to XLA_FLAGS in `environ` (default os.environ); True if it did."""
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "")
  if environ.get("CSL_JAX_KEEP_XLA_FLAGS", "") not in ("", "0") or "ynn_fusion_type" in flags:
    return False
  if (jaxlib_version or _jaxlib_version()) < _MIN_JAXLIB:
    return False
  environ["XLA_FLAGS"] = f"{flags} {FAST_CPU_CONVOLUTIONS}".strip()
  return True


# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_TRIM_THRESHOLD = 1 << 30  # bytes free at the top of the heap before glibc gives them back to the OS
_USER_MALLOC_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def reuse_freed_host_memory(environ=None, libc=None) -> bool:
  """Sets glibc malloc to one arena, no mmap, trimming above 1 GiB (see module docstring); True if it did.

  libc: the C library to configure (default: this process's, when it is glibc on Linux).
  """
  environ = os.environ if environ is None else environ
  if environ.get("CSL_JAX_KEEP_MALLOC", "") not in ("", "0"):
    return False
  if any(name in environ for name in _USER_MALLOC_SETTINGS) or "malloc" in environ.get("GLIBC_TUNABLES", ""):
    return False
  if libc is None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
      return False
    try:
      libc = ctypes.CDLL(None)
      libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    except (OSError, AttributeError):
      return False
  return all(libc.mallopt(param, value) == 1
             for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))

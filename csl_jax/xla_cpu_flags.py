"""XLA:CPU settings that csl_jax applies before JAX starts its CPU backend.

jaxlib 0.10 routes CPU convolutions through YNNPACK fusions by default. On the CIFAR-sized layers this
library trains and attacks, XLA's Eigen convolutions are markedly faster (2-core AMD EPYC, jaxlib
0.10.2, batch 32: a 3×3 64→64 conv on 32×32 maps 25.8 → 14.4 ms; SmallCNN forward + input gradient
20.1 → 13.8 ms; ResNet-18 490 → 378 ms; see benchmarks/ATTACKS.md), so `use_fast_cpu_convolutions`
turns the YNNPACK fusions off through XLA_FLAGS.

XLA reads XLA_FLAGS once, when the first computation starts the backend: `import csl_jax` before running
anything with JAX for the setting to apply. A user's own `xla_cpu_experimental_ynn_fusion_type` in
XLA_FLAGS is left alone, and CSL_JAX_KEEP_XLA_FLAGS=1 disables the change altogether. Older jaxlibs,
which do not know the flag (and would abort on it), are never given it.
"""
import os

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

"""csl_jax: contrastive self-supervised learning, Adaptive FNC and adversarial robustness in JAX."""
from csl_jax import xla_cpu_flags as _xla_cpu_flags

_xla_cpu_flags.use_fast_cpu_convolutions()

"""csl_jax: contrastive self-supervised learning, Adaptive FNC and adversarial robustness in JAX."""

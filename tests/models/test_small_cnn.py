"""SmallCNN's single-input-channel convolution (inference on CPU) equals lax's convolution, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax import models
from csl_jax.models import small_cnn

DIMS = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("kernel,padding", [((3, 3), "SAME"), ((3, 3), "VALID"), ((2, 4), "SAME"),
                                            ((3, 3), ((2, 0), (1, 3)))])
def test_patches_conv_equals_lax_conv(kernel, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(5, 9, 7, 1)), jnp.float32)
  k = jnp.asarray(rng.normal(size=kernel + (1, 6)), jnp.float32)
  reference = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DIMS)  # noqa: E731
  ours = lambda x, k: small_cnn.single_channel_conv(x, k, (1, 1), padding)  # noqa: E731
  np.testing.assert_allclose(ours(x, k), reference(x, k), rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.normal(size=reference(x, k).shape), jnp.float32)
  loss = lambda conv: lambda x, k: jnp.sum(conv(x, k) * cotangent)  # noqa: E731
  for ours_grad, reference_grad in zip(jax.grad(loss(ours), (0, 1))(x, k), jax.grad(loss(reference), (0, 1))(x, k)):
    np.testing.assert_allclose(ours_grad, reference_grad, rtol=1e-5, atol=1e-5)


def test_grayscale_model_gives_the_same_logits_and_input_gradients_with_either_first_layer(monkeypatch):
  model = models.ImageClassifier(encoder=small_cnn.SmallCNN(widths=(8, 16)), num_classes=4, mean=(0.5,), std=(0.25,))
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(6, 12, 12, 1)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  # Give BatchNorm non-trivial statistics so inference mode is a real affine map.
  stats = jax.tree.map(lambda v: v + 0.3, variables["batch_stats"])
  variables = {**variables, "batch_stats": stats}

  def logits_and_grad():
    f = lambda images: model.apply(variables, images, train=False)  # noqa: E731
    return f(x), jax.grad(lambda images: jnp.sum(f(images)[:, 1]))(x)

  used = []
  patches = small_cnn.single_channel_conv
  monkeypatch.setattr(small_cnn, "single_channel_conv", lambda *a, **k: used.append(1) or patches(*a, **k))
  fast = logits_and_grad()
  assert used, "inference on CPU should use the patches form for the one-channel first layer"
  monkeypatch.setattr(small_cnn, "single_channel_conv", None)  # SmallCNN then falls back to lax's convolution
  slow = logits_and_grad()
  for a, b in zip(fast, slow):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

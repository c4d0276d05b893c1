"""Weighted k-nearest-neighbour classifier on cosine similarity (Wu et al. 2018), the SSL monitor."""
import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_votes(query, bank, bank_labels, *, k: int, num_classes: int, temperature: float):
  """query f32[q, D], bank f32[M, D] (both L2-normalised) -> class scores f32[q, num_classes]."""
  similarity = query @ bank.T
  top_similarity, top_index = jax.lax.top_k(similarity, k)
  weights = jnp.exp(top_similarity / temperature)
  one_hot = jax.nn.one_hot(bank_labels[top_index], num_classes)
  return jnp.sum(one_hot * weights[..., None], axis=1)


def knn_accuracy(train_features, train_labels, test_features, test_labels, *, num_classes: int,
                 k: int = 200, temperature: float = 0.1, block_size: int = 1024) -> float:
  """Top-1 accuracy of the kNN classifier; test rows are processed in blocks of `block_size`."""
  normalise = lambda f: f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
  bank = jnp.asarray(normalise(np.asarray(train_features, np.float32)))
  bank_labels = jnp.asarray(train_labels)
  test_features = normalise(np.asarray(test_features, np.float32))
  k = min(k, len(bank))
  correct = 0
  for start in range(0, len(test_features), block_size):
    block = test_features[start:start + block_size]
    valid = len(block)
    block = np.pad(block, ((0, block_size - valid), (0, 0))) if len(test_features) > block_size else block
    scores = _knn_votes(jnp.asarray(block), bank, bank_labels, k=k, num_classes=num_classes,
                        temperature=temperature)
    predictions = np.asarray(jnp.argmax(scores, -1))[:valid]
    correct += int(np.sum(predictions == np.asarray(test_labels[start:start + valid])))
  return correct / max(len(test_features), 1)

"""Weighted k-nearest-neighbour classifier on cosine similarity (Wu et al. 2018), the SSL monitor.

The bank (training features, L2-normalised) lives on the devices, replicated; each evaluation batch's votes
are computed inside the same jitted function as its features (`LinearEvaluator`), so there is no second pass.
"""
import flax.struct

import jax
import jax.numpy as jnp
import numpy as np


def l2_normalize(features):
  return features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


@flax.struct.dataclass
class Bank:
  """features f32[M, D] (L2-normalised), labels i32[M], the classes and the vote parameters.

  A pytree: the arrays are leaves, the rest static, so one compiled evaluation serves every run's bank."""
  features: jax.Array
  labels: jax.Array
  num_classes: int = flax.struct.field(pytree_node=False)
  k: int = flax.struct.field(pytree_node=False)
  temperature: float = flax.struct.field(pytree_node=False)


def make_bank(train_features, train_labels, *, num_classes: int, k: int = 200, temperature: float = 0.1,
              sharding=None) -> Bank:
  """A Bank from host features f32[M, D] and labels int[M]; k is capped at M."""
  features = l2_normalize(jnp.asarray(np.asarray(train_features, np.float32)))
  labels = jnp.asarray(np.asarray(train_labels, np.int32))
  if sharding is not None:
    features, labels = jax.device_put((features, labels), sharding)
  return Bank(features, labels, num_classes, min(int(k), len(train_labels)), float(temperature))


def predict(bank: Bank, query):
  """Class predictions i32[q] for query features f32[q, D]: sum of exp(similarity / T) over the top-k neighbours."""
  similarity = l2_normalize(query.astype(jnp.float32)) @ bank.features.T
  top_similarity, top_index = jax.lax.top_k(similarity, bank.k)
  weights = jnp.exp(top_similarity / bank.temperature)
  scores = jnp.sum(jax.nn.one_hot(bank.labels[top_index], bank.num_classes) * weights[..., None], axis=1)
  return jnp.argmax(scores, axis=-1)

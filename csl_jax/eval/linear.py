"""Linear evaluation: a linear classifier trained on frozen encoder features (standard protocol).

Features are extracted once (eval-mode encoder, no augmentation), standardised with the training
statistics, and a softmax regression is trained with SGD + Nesterov momentum and a cosine schedule,
all inside one jitted `lax.fori_loop`. The standardisation is folded back into the weights, so the
returned head is a plain Dense layer on raw features and drops into `models.ImageClassifier`.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size"))
def _fit(features, labels, key, *, num_classes, epochs, batch_size, lr, weight_decay):
  n, dim = features.shape
  steps_per_epoch = max(n // batch_size, 1)
  total_steps = epochs * steps_per_epoch
  tx = optax.sgd(optax.cosine_decay_schedule(lr, total_steps), momentum=0.9, nesterov=True)
  params = {"kernel": jnp.zeros((dim, num_classes)), "bias": jnp.zeros((num_classes,))}

  def loss_fn(params, x, y):
    logits = x @ params["kernel"] + params["bias"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + 0.5 * weight_decay * jnp.sum(params["kernel"] ** 2)

  def body(step, carry):
    params, opt_state = carry
    epoch, offset = step // steps_per_epoch, (step % steps_per_epoch) * batch_size
    order = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    index = jax.lax.dynamic_slice_in_dim(order, offset, batch_size)
    grads = jax.grad(loss_fn)(params, features[index], labels[index])
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, _ = jax.lax.fori_loop(0, total_steps, body, (params, tx.init(params)))
  return params


def train_linear_head(features, labels, num_classes: int, *, epochs: int = 100, batch_size: int = 512,
                      lr: float = 0.1, weight_decay: float = 0.0, seed: int = 0) -> dict:
  """features f32[N, D], labels i32[N] -> {"kernel": f32[D, C], "bias": f32[C]} for raw features."""
  features = np.asarray(features, np.float32)
  if not np.all(np.isfinite(features)):
    raise FloatingPointError("Encoder features contain NaN/Inf; the pretrained encoder diverged. "
                             "Check pretrain_metrics.jsonl and lower optim.lr.")
  mean, std = features.mean(0), features.std(0) + 1e-6
  batch_size = min(batch_size, len(features))
  head = _fit(jnp.asarray((features - mean) / std), jnp.asarray(labels, jnp.int32), jax.random.PRNGKey(seed),
              num_classes=num_classes, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay)
  kernel = np.asarray(head["kernel"]) / std[:, None]
  bias = np.asarray(head["bias"]) - mean @ kernel
  return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}


def head_accuracy(head, features, labels) -> float:
  logits = np.asarray(features, np.float32) @ head["kernel"] + head["bias"]
  return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))

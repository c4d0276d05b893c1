"""The adversarial linear protocol: a linear head on the frozen encoder, trained on PGD examples.

RoCL (Kim et al. 2020, "robust linear evaluation") and ACL (Jiang et al. 2020) also report a linear classifier
trained adversarially on top of the frozen encoder: every step attacks the current encoder + head with PGD-ℓ∞
and updates the head on the adversarial images' features. Selected by `linear_eval.protocol = "adversarial"`;
the attack is `linear_eval.adversarial_{eps,step_size,steps}` (default ε 8/255, step 2/255, 10 steps).

The PGD loop is the in-training attack's (`train.adversarial.contrastive_pgd`, the same loop body as
`attacks.pgd`) on the scalar objective Σ CE(head(features(x_adv)), y); with BatchNorm in eval mode every example's
gradient depends on that example only, so summing over the batch attacks each example independently.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from csl_jax.eval import batches
from csl_jax.train import sharding
from csl_jax.train.adversarial import contrastive_pgd


def _head_logits(head, features):
  return features @ head["kernel"] + head["bias"]


def make_step(features_fn, tx, *, eps: float, step_size: float, steps: int, weight_decay: float):
  """(head, opt_state, images u8[B, ...], labels, key) -> (head, opt_state, loss): one adversarial head step."""

  def step(head, opt_state, images, labels, key):
    x = batches.to_unit_floats(images)
    attack_objective = lambda x_adv: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
        _head_logits(head, features_fn(x_adv)), labels))
    x_adv = contrastive_pgd(attack_objective, x, key, eps=eps, step_size=step_size, steps=steps)
    features = jax.lax.stop_gradient(features_fn(x_adv))

    def loss_fn(head):
      ce = optax.softmax_cross_entropy_with_integer_labels(_head_logits(head, features), labels).mean()
      return ce + 0.5 * weight_decay * jnp.sum(head["kernel"] ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(head)
    updates, opt_state = tx.update(grads, opt_state, head)
    return optax.apply_updates(head, updates), opt_state, loss

  return step


def fit_adversarial_head(features_fn, train_ds, num_classes: int, *, feature_dim: int, epochs: int, batch_size: int,
                         lr: float, weight_decay: float, seed: int, eps: float, step_size: float, steps: int,
                         mesh) -> dict:
  """{"kernel": f32[D, C], "bias": f32[C]} trained on PGD examples of the frozen `features_fn` (f32 [0, 1] -> f32[B, D])."""
  global_batch = batches.global_batch_size(min(batch_size, train_ds.num_examples), mesh)
  steps_per_epoch = max(train_ds.num_examples // global_batch, 1)
  total = epochs * steps_per_epoch
  tx = optax.sgd(optax.cosine_decay_schedule(lr, total), momentum=0.9, nesterov=True)
  head = {"kernel": jnp.zeros((feature_dim, num_classes)), "bias": jnp.zeros((num_classes,))}
  repl = sharding.replicated(mesh)
  head, opt_state = jax.device_put((head, tx.init(head)), repl)
  step = jax.jit(make_step(features_fn, tx, eps=eps, step_size=step_size, steps=steps, weight_decay=weight_decay),
                 donate_argnums=(0, 1))
  key = jax.random.PRNGKey(seed)
  stream = train_ds.batches(global_batch, seed=seed)
  progress = batches.Progress("adversarial linear probe", total)
  loss = None
  for index in range(total):
    batch = sharding.shard_batch(next(stream), mesh)
    head, opt_state, loss = step(head, opt_state, batch["image"], batch["label"], jax.random.fold_in(key, index))
    progress.update(index + 1)
  logging.info("adversarial linear probe: %d steps, last loss %.4f", total, float(loss))
  return {name: np.asarray(value, np.float32) for name, value in jax.device_get(head).items()}


def feature_dim(features_fn, image_shape) -> int:
  return int(jax.eval_shape(features_fn, jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)).shape[-1])


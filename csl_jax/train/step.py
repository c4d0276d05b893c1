"""Pure training steps: (state, batch, key) -> (new state, metrics).

Randomness is `fold_in(key, state.step)`, so a resumed run replays exactly the same augmentations.
Both views of an example are interleaved as rows (2i, 2i+1) before the encoder: merging the
sharded batch axis with the view axis keeps every device's rows local (no resharding), and
BatchNorm sees both views, as in SimCLR.
"""
import functools

import jax
import jax.numpy as jnp
import optax

from csl_jax.data import augment
from csl_jax.losses import cross_entropy


def two_views(key, images, augment_fn):
  """u8[B, H, W, C] -> f32[2B, H', W', C] with rows (2i, 2i+1) the two views of image i."""
  key1, key2 = jax.random.split(key)
  views = jnp.stack([augment_fn(key1, images), augment_fn(key2, images)], axis=1)
  return views.reshape((-1,) + views.shape[2:])


def simclr_augment_fn(config, out_size: int):
  return functools.partial(
      augment.simclr, out_size=out_size, crop_scale=(config.augment.crop_scale_min, 1.0),
      jitter_strength=config.augment.jitter_strength, grayscale_prob=config.augment.grayscale_prob,
      blur=config.augment.blur)


def _apply_updates(state, tx, grads, batch_stats):
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state, batch_stats=batch_stats)


def contrastive_step(state, batch, key, *, model, tx, loss_fn, augment_fn, rho_fn, lr_fn):
  """One pretraining step for SimCLR / SupCon / FNC / Adaptive FNC.

  loss_fn(z1, z2, labels, rho) -> (loss, stats): a (sharded) loss from `csl_jax.losses`.
  """
  step_key = jax.random.fold_in(key, state.step)
  views = two_views(step_key, batch["image"], augment_fn)
  rho = rho_fn(state.step)

  def objective(params):
    (_, z), mutated = model.apply({"params": params, "batch_stats": state.batch_stats}, views,
                                  train=True, mutable=["batch_stats"])
    z = z.astype(jnp.float32).reshape((-1, 2, z.shape[-1]))
    loss, stats = loss_fn(z[:, 0], z[:, 1], batch["label"], rho)
    return loss, (mutated["batch_stats"], stats)

  (loss, (batch_stats, stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  new_state = _apply_updates(state, tx, grads, batch_stats)
  metrics = {"loss": loss, "lr": lr_fn(state.step), "rho": rho, "grad_norm": optax.global_norm(grads), **stats}
  return new_state, metrics


def supervised_step(state, batch, key, *, model, tx, augment_fn, lr_fn):
  """One cross-entropy step of encoder + linear head (`models.ImageClassifier`)."""
  images = augment_fn(jax.random.fold_in(key, state.step), batch["image"])

  def objective(params):
    logits, mutated = model.apply({"params": params, "batch_stats": state.batch_stats}, images,
                                  train=True, mutable=["batch_stats"])
    return cross_entropy(logits, batch["label"]), (mutated["batch_stats"], logits)

  (loss, (batch_stats, logits)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  new_state = _apply_updates(state, tx, grads, batch_stats)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  return new_state, {"loss": loss, "lr": lr_fn(state.step), "train_accuracy": accuracy,
                     "grad_norm": optax.global_norm(grads)}

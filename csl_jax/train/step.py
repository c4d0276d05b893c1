"""Pure training steps: (state, batch, key) -> (new state, metrics).

Randomness is `fold_in(key, state.step)`, so a resumed run replays exactly the same augmentations.
Both views of an example are interleaved as rows (2i, 2i+1) before the encoder: merging the
sharded batch axis with the view axis keeps every device's rows local (no resharding), and
BatchNorm sees both views, as in SimCLR.
"""
import jax
import jax.numpy as jnp
import optax

from csl_jax.losses import cross_entropy


def two_views(key, images, augment_fn):
  """u8[B, H, W, C] -> f32[2B, H', W', C] with rows (2i, 2i+1) the two views of image i."""
  key1, key2 = jax.random.split(key)
  views = jnp.stack([augment_fn(key1, images), augment_fn(key2, images)], axis=1)
  return views.reshape((-1,) + views.shape[2:])


def _apply_updates(state, tx, grads, batch_stats):
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state, batch_stats=batch_stats)


def contrastive_step(state, batch, key, *, model, tx, loss_fn, augment_fn, schedule_fn, lr_fn, inputs_fn=None):
  """One contrastive pretraining step (SimCLR, SupCon, FNC, Adaptive FNC, IFND, ...): two views, then
  `contrastive_update`.

  loss_fn(z1, z2, labels, **scheduled, **inputs) -> (loss, stats): a (sharded) loss from `csl_jax.losses`.
  schedule_fn(step) -> {loss keyword: f32[]}: the method's scheduled hyper-parameters (e.g. {"rho": ρ(step)}),
  passed to the loss and logged with the step's metrics.
  inputs_fn(state, batch) -> {loss keyword: per-image array}: extra loss inputs read from the method's state
  (e.g. IFND's pseudo-labels of the batch's examples); None for most methods. Not logged.
  """
  views = two_views(jax.random.fold_in(key, state.step), batch["image"], augment_fn)
  return contrastive_update(state, batch, views, model=model, tx=tx, loss_fn=loss_fn, schedule_fn=schedule_fn,
                            lr_fn=lr_fn, inputs_fn=inputs_fn)


def contrastive_update(state, batch, views, *, model, tx, loss_fn, schedule_fn, lr_fn, inputs_fn=None):
  """The model half of `contrastive_step`: encoder + loss + optimiser on given views f32[2B, H, W, C]
  (rows 2i, 2i+1 from image i, as `two_views` makes them). Both views go through the encoder as one batch."""
  scheduled = schedule_fn(state.step)
  inputs = {} if inputs_fn is None else inputs_fn(state, batch)

  def objective(params):
    (_, z), mutated = model.apply({"params": params, "batch_stats": state.batch_stats}, views,
                                  train=True, mutable=["batch_stats"])
    z = z.astype(jnp.float32).reshape((-1, 2, z.shape[-1]))
    loss, stats = loss_fn(z[:, 0], z[:, 1], batch["label"], **scheduled, **inputs)
    return loss, (mutated["batch_stats"], stats)

  (loss, (batch_stats, stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  new_state = _apply_updates(state, tx, grads, batch_stats)
  metrics = {"loss": loss, "lr": lr_fn(state.step), "grad_norm": optax.global_norm(grads), **scheduled, **stats}
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

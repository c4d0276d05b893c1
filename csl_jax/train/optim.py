"""Optimisers and learning-rate schedules from the config (SimCLR recipe: LARS, warmup + cosine)."""
import jax
import optax


def scaled_learning_rate(config, batch_size: int) -> float:
  """Base lr for a batch of 256 scaled to `batch_size` (SimCLR: linear for LARS, sqrt for small batches)."""
  scale = {"linear": batch_size / 256, "sqrt": (batch_size / 256) ** 0.5, "none": 1.0}[config.optim.lr_scaling]
  return config.optim.lr * scale


def learning_rate_schedule(config, batch_size: int, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """Linear warmup for `warmup_epochs`, then cosine decay to 0 at `total_steps`."""
  peak = scaled_learning_rate(config, batch_size)
  warmup = min(int(config.optim.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1))


def _decay_mask(params):
  """True for kernels; biases and BatchNorm scales are neither decayed nor LARS-adapted (SimCLR)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) not in ("bias", "scale"), params)


def make_optimizer(config, learning_rate: optax.Schedule) -> optax.GradientTransformation:
  """The optimiser named by `config.optim.name`, with optional global-norm clipping."""
  name = config.optim.name
  if name == "lars":
    tx = optax.lars(learning_rate, weight_decay=config.optim.weight_decay, weight_decay_mask=_decay_mask,
                    trust_ratio_mask=_decay_mask, momentum=config.optim.momentum)
  elif name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(config.optim.weight_decay, mask=_decay_mask),
                     optax.sgd(learning_rate, momentum=config.optim.momentum, nesterov=True))
  elif name == "adamw":
    tx = optax.adamw(learning_rate, weight_decay=config.optim.weight_decay, mask=_decay_mask)
  else:
    raise ValueError(f"config.optim.name={name!r}; choose 'lars', 'sgd' or 'adamw'.")
  if config.optim.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.optim.grad_clip), tx)
  return tx

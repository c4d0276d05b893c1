"""The pretraining loop: build, restore, step, log, checkpoint. Reads top to bottom.

`pretrain` trains one run (SimCLR / SupCon / FNC / Adaptive FNC / cross-entropy) in `run_dir` and
returns the trained model and variables. Re-running it resumes from the newest readable checkpoint;
a finished run returns immediately.
"""
import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions

from csl_jax import data, losses, models
from csl_jax.data import augment
from csl_jax.train import checkpoint, optim, sharding, step as step_lib
from csl_jax.train.state import create_train_state

_LOSS_NAMES = {"simclr": "nt_xent", "supcon": "supcon", "fnc": "fnc", "afnc": "adaptive_fnc"}


class PreemptedForTest(RuntimeError):
  """Raised by `pretrain(..., interrupt_at=s)`: simulates a kill after step s (tests only)."""


def build_model(config, method: str, num_classes: int, mean, std):
  """ContrastiveModel for contrastive methods, ImageClassifier for cross-entropy."""
  encoder = models.get_encoder(config.model.encoder, dtype=jnp.dtype(config.model.dtype))
  if method == "ce":
    return models.ImageClassifier(encoder=encoder, num_classes=num_classes, mean=mean, std=std)
  head = models.ProjectionHead(hidden_dim=config.model.projection_hidden_dim, out_dim=config.model.projection_dim)
  return models.ContrastiveModel(encoder=encoder, projection=head, mean=mean, std=std)


def make_loss_fn(config, method: str, mesh):
  """(z1, z2, labels, rho) -> (loss, stats), negatives from the global batch."""
  kwargs = {"temperature": config.loss.supcon_temperature if method == "supcon" else config.loss.temperature}
  if method == "fnc":
    kwargs.update(threshold=config.loss.fnc_threshold, top_k=config.loss.fnc_top_k)
  sharded = losses.make_sharded_loss(_LOSS_NAMES[method], mesh, axis_name=sharding.DATA_AXIS, **kwargs)
  if method == "afnc":
    return lambda z1, z2, labels, rho: sharded(z1, z2, labels=labels, rho=rho)
  return lambda z1, z2, labels, rho: sharded(z1, z2, labels=labels)


def training_length(config, num_examples: int):
  """(steps_per_epoch, total_steps) for the configured epochs or num_steps."""
  steps_per_epoch = max(num_examples // config.pretrain.batch_size, 1)
  total = config.pretrain.num_steps or int(config.pretrain.epochs * steps_per_epoch)
  return steps_per_epoch, total


def make_train_step(config, method, model, tx, lr_fn, mesh, image_size, total_steps):
  if method == "ce":
    augment_fn = functools.partial(augment.supervised, out_size=image_size)
    fn = functools.partial(step_lib.supervised_step, model=model, tx=tx, augment_fn=augment_fn, lr_fn=lr_fn)
  else:
    if method == "afnc":
      rho_fn = losses.rho_schedule(rho_initial=config.loss.rho_initial, rho_final=config.loss.rho_final,
                                   total_steps=total_steps, kind=config.loss.rho_schedule)
    else:
      rho_fn = lambda step: jnp.zeros((), jnp.float32)
    fn = functools.partial(step_lib.contrastive_step, model=model, tx=tx, loss_fn=make_loss_fn(config, method, mesh),
                           augment_fn=step_lib.simclr_augment_fn(config, image_size), rho_fn=rho_fn, lr_fn=lr_fn)
  repl, batch_sharding = sharding.replicated(mesh), sharding.data_sharding(mesh)
  return jax.jit(fn, in_shardings=(repl, batch_sharding, repl), out_shardings=(repl, repl), donate_argnums=(0,))


def summarise(metric_sums, count: int, method: str) -> dict:
  """Interval means of the step metrics; cancellation precision/recall as ratios of summed counts."""
  sums = {k: float(v) for k, v in jax.device_get(metric_sums).items()}
  out = {k: v / count for k, v in sums.items() if not k.startswith("num_") and not k.startswith("cancel_")}
  if "num_cancelled" in sums and "num_true_cancelled" in sums:
    out["cancel_precision"] = sums["num_true_cancelled"] / max(sums["num_cancelled"], 1e-12)
    out["cancel_recall"] = sums["num_true_cancelled"] / max(sums.get("num_same_class_negatives", 0.0), 1e-12)
  if method != "afnc":
    out.pop("rho", None)
  return out


def _append_jsonl(path, record):
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def _truncate_jsonl(path, *, after_step: int):
  """Drops records of steps after the resumed checkpoint: those steps are replayed."""
  if not path.exists():
    return
  kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= after_step]
  path.write_text("".join(line + "\n" for line in kept))


def pretrain(config, method: str, run_dir, train_ds, *, mesh=None, interrupt_at=None):
  """Trains `method` on `train_ds` (a `data` dataset) in `run_dir`; returns (model, variables)."""
  run_dir = pathlib.Path(run_dir)
  mesh = mesh or sharding.make_mesh()
  sharding.check_batch_size(config.pretrain.batch_size, mesh)
  image_size = train_ds.image_shape[0]
  mean, std = data.channel_stats(config.dataset.source)
  model = build_model(config, method, train_ds.num_classes, mean, std)
  steps_per_epoch, total_steps = training_length(config, train_ds.num_examples)
  lr_fn = optim.learning_rate_schedule(config, config.pretrain.batch_size, steps_per_epoch, total_steps)
  tx = optim.make_optimizer(config, lr_fn)

  init_key, step_key = jax.random.split(jax.random.PRNGKey(config.seed))
  sample = jnp.zeros((2,) + tuple(train_ds.image_shape), jnp.float32)
  state = jax.jit(functools.partial(create_train_state, model, tx), out_shardings=sharding.replicated(mesh))(
      init_key, sample)
  mngr = checkpoint.manager(run_dir / "checkpoints", max_to_keep=config.pretrain.keep_checkpoints)
  restored, start_step = checkpoint.restore_latest(mngr, checkpoint.abstract_like(state))
  if restored is not None:
    state = restored
    logging.info("%s: resumed from checkpoint at step %d / %d.", run_dir.name, start_step, total_steps)
  else:
    parameter_overview.log_parameter_overview(state.params)

  variables = lambda s: {"params": s.params, "batch_stats": s.batch_stats}
  if start_step >= total_steps:
    return model, variables(state)

  train_step = make_train_step(config, method, model, tx, lr_fn, mesh, image_size, total_steps)
  step_key = sharding.replicate(step_key, mesh)
  writer = metric_writers.create_default_writer(str(run_dir / "tensorboard"), just_logging=jax.process_index() > 0)
  report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer, every_secs=30.0)
  batches = train_ds.batches(config.pretrain.batch_size, seed=config.seed, start_step=start_step)
  metrics_path = run_dir / "pretrain_metrics.jsonl"
  _truncate_jsonl(metrics_path, after_step=start_step)
  last_saved, metric_sums, count, t0 = start_step, None, 0, time.time()
  logging.info("%s: training %s for %d steps (%d per epoch), global batch %d on %d devices.", run_dir.name,
               method, total_steps, steps_per_epoch, config.pretrain.batch_size, mesh.size)

  for step in range(start_step + 1, total_steps + 1):
    batch = sharding.shard_batch(next(batches), mesh)
    state, metrics = train_step(state, batch, step_key)
    metric_sums = metrics if metric_sums is None else jax.tree.map(jnp.add, metric_sums, metrics)
    count += 1
    report(step)
    is_last = step == total_steps
    if step % config.pretrain.log_every == 0 or is_last or step % config.pretrain.checkpoint_every == 0:
      summary = summarise(metric_sums, count, method)
      if not np.isfinite(summary["loss"]):
        raise FloatingPointError(
            f"{run_dir.name}: loss is {summary['loss']} at step {step}. The last good checkpoint (step {last_saved}) "
            f"is kept in {run_dir / 'checkpoints'}; lower --config.optim.lr or enable --config.optim.grad_clip and "
            "re-run to resume from it.")
      if step % config.pretrain.log_every == 0 or is_last:
        writer.write_scalars(step, summary)
        if jax.process_index() == 0:
          _append_jsonl(metrics_path, {"step": step, **{k: summary.get(k) for k in (
              "loss", "lr", "rho", "cancelled_per_anchor", "cancel_precision", "cancel_recall")}})
        metric_sums, count = None, 0
      if step % config.pretrain.checkpoint_every == 0 or is_last:
        checkpoint.save(mngr, step, state)
        last_saved = step
    if interrupt_at is not None and step == interrupt_at:
      raise PreemptedForTest(f"simulated preemption after step {step}")
  writer.flush()
  logging.info("%s: pretraining done in %.1fs.", run_dir.name, time.time() - t0)
  return model, variables(state)

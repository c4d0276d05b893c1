"""The pretraining loop: build, restore, step, log, checkpoint. Reads top to bottom.

`pretrain` trains one run of any registry method (`csl_jax.methods`) in `run_dir` and returns the trained
model, its variables and the step they belong to. Re-running it resumes from the newest readable checkpoint;
a finished run returns immediately. Nothing here knows a method by name: the registry entry builds the model
and the step.
"""
import dataclasses
import functools
import json
import pathlib
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import parameter_overview

from csl_jax.train import checkpoint, metric_writer, optim, progress, sharding
from csl_jax.train.state import create_train_state


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """The result of `pretrain`: the model, its {"params", "batch_stats"} and the training step they are from.

  has_classifier: the variables hold a trained classifier head, evaluated end to end (CE; a converted release with
  its own classifier) instead of a linear probe. source: where weights not trained here came from (a converted
  checkpoint's digests, `csl_jax.pretrained`), recorded in every result's provenance; None for trained ones.
  """
  model: Any
  variables: dict
  step: int
  has_classifier: bool = False
  source: Optional[dict] = None


def training_length(config, num_examples: int):
  """(steps_per_epoch, total_steps) for the configured epochs or num_steps."""
  steps_per_epoch = max(num_examples // config.pretrain.batch_size, 1)
  total = config.pretrain.num_steps or int(round(config.pretrain.epochs * steps_per_epoch))
  if total <= 0:
    raise ValueError(f"No training steps: pretrain.epochs={config.pretrain.epochs} x {steps_per_epoch} steps per "
                     f"epoch rounds to {total}. Raise --config.pretrain.epochs or set --config.pretrain.num_steps.")
  return steps_per_epoch, total


def make_train_step(method, config, model, tx, lr_fn, mesh, image_size: int, total_steps: int):
  """The registry method's pure step, jitted with the batch sharded over the mesh and the state donated."""
  fn = method.family.train_step(method, config, model, tx, lr_fn, mesh, image_size, total_steps)
  repl, batch_sharding = sharding.replicated(mesh), sharding.data_sharding(mesh)
  return jax.jit(fn, in_shardings=(repl, batch_sharding, repl), out_shardings=(repl, repl), donate_argnums=(0,))


def summarise(metric_sums, count: int) -> dict:
  """Interval means of the step metrics; cancellation precision/recall as ratios of summed counts."""
  sums = {k: float(v) for k, v in jax.device_get(metric_sums).items()}
  out = {k: v / count for k, v in sums.items() if not k.startswith("num_") and not k.startswith("cancel_")}
  if "num_cancelled" in sums and "num_true_cancelled" in sums:
    out["cancel_precision"] = sums["num_true_cancelled"] / max(sums["num_cancelled"], 1e-12)
    out["cancel_recall"] = sums["num_true_cancelled"] / max(sums.get("num_same_class_negatives", 0.0), 1e-12)
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


def _diverged(run_dir, step: int, what: str, last_saved: int) -> FloatingPointError:
  kept = (f"The newest finite checkpoint (step {last_saved}) is kept in {run_dir / 'checkpoints'}"
          if last_saved else "No checkpoint was written")
  return FloatingPointError(
      f"{run_dir.name}: {what} at step {step}; nothing from that state was saved. {kept}. Lower --config.optim.lr "
      "or enable --config.optim.grad_clip and re-run to resume from it.")


def pretrain(config, method, run_dir, train_ds, *, mean, std, mesh=None,
             on_step: Optional[Callable[[int], None]] = None, stored_config: Optional[dict] = None) -> Pretrained:
  """Trains registry `method` on `train_ds` (a `data` dataset) in `run_dir`.

  mean, std: per-channel input statistics the model normalises with (`data.channel_stats`).
  on_step: called with each finished step number after its checkpoint (if any) is written — e.g. to
    stop a run at a given step (tests simulate preemption by raising from it).
  stored_config: the config this run directory was trained with (run.json), so a checkpoint that does not fit
    the model is reported as "trained with model.x=a, the config says b" rather than as corruption.
  """
  run_dir = pathlib.Path(run_dir)
  mesh = mesh or sharding.make_mesh()
  sharding.check_batch_size(config.pretrain.batch_size, mesh)
  image_size = train_ds.image_shape[0]
  model = method.family.build_model(config, train_ds.num_classes, mean, std)
  steps_per_epoch, total_steps = training_length(config, train_ds.num_examples)
  lr_fn = optim.learning_rate_schedule(config, config.pretrain.batch_size, steps_per_epoch, total_steps)
  tx = optim.make_optimizer(config, lr_fn)

  init_key, step_key = jax.random.split(jax.random.PRNGKey(config.seed))
  sample = jnp.zeros((2,) + tuple(train_ds.image_shape), jnp.float32)
  method_state = method.family.initial_method_state(method, config, train_ds.num_examples)
  state = jax.jit(functools.partial(create_train_state, model, tx), out_shardings=sharding.replicated(mesh))(
      init_key, sample, method_state)
  mngr = checkpoint.manager(run_dir / "checkpoints", max_to_keep=config.pretrain.keep_checkpoints)
  describe = lambda: checkpoint.describe_config_change(stored_config, config.to_dict())
  restored, start_step = checkpoint.restore_latest(mngr, checkpoint.abstract_like(state), describe_mismatch=describe)
  if restored is not None:
    state = restored
    logging.info("%s: resumed from checkpoint at step %d / %d.", run_dir.name, start_step, total_steps)
  else:
    parameter_overview.log_parameter_overview(state.params)

  variables = lambda s: {"params": s.params, "batch_stats": s.batch_stats}
  if start_step >= total_steps:
    if start_step > total_steps:
      logging.warning("%s: the newest checkpoint is at step %d, past the configured %d steps; using it as is "
                      "(use a fresh workdir to train a shorter run).", run_dir.name, start_step, total_steps)
    return Pretrained(model, variables(state), start_step, has_classifier=method.trains_classifier)

  train_step = make_train_step(method, config, model, tx, lr_fn, mesh, image_size, total_steps)
  step_key = sharding.replicate(step_key, mesh)
  writer = metric_writer.MetricWriter(str(run_dir / "tensorboard") if jax.process_index() == 0 else None,
                                      prefix=f"{run_dir.name} ")
  report = progress.StepProgress(run_dir.name, total_steps, writer=writer, every_secs=30.0)
  batches = train_ds.batches(config.pretrain.batch_size, seed=config.seed, start_step=start_step)
  metrics_path = run_dir / "pretrain_metrics.jsonl"
  if jax.process_index() == 0:
    _truncate_jsonl(metrics_path, after_step=start_step)
  last_saved, metric_sums, count, t0 = start_step, None, 0, time.time()
  logging.info("%s: training %s for %d steps (%d per epoch), global batch %d on %d devices.", run_dir.name,
               method.name, total_steps, steps_per_epoch, config.pretrain.batch_size, mesh.size)

  for step in range(start_step + 1, total_steps + 1):
    state = method.family.refresh(method, config, state, step - 1, model=model, train_ds=train_ds, mesh=mesh)
    batch = sharding.shard_batch(next(batches), mesh)
    state, metrics = train_step(state, batch, step_key)
    metric_sums = metrics if metric_sums is None else jax.tree.map(jnp.add, metric_sums, metrics)
    count += 1
    report(step)
    is_last = step == total_steps
    log_now = step % config.pretrain.log_every == 0 or is_last
    save_now = step % config.pretrain.checkpoint_every == 0 or is_last
    if log_now or save_now:
      summary = summarise(metric_sums, count)
      if not np.isfinite(summary["loss"]):
        raise _diverged(run_dir, step, f"the loss is {summary['loss']}", last_saved)
      if log_now:
        writer.write_scalars(step, summary)
        if jax.process_index() == 0:
          _append_jsonl(metrics_path, {"step": step, **summary})
        metric_sums, count = None, 0
      if save_now:
        # The loss above was computed before this step's update; the state saved is after it.
        if not checkpoint.all_finite(state):
          raise _diverged(run_dir, step, "the parameters or optimiser state became non-finite", last_saved)
        checkpoint.save(mngr, step, state, check_finite=False)
        last_saved = step
    if on_step is not None:
      on_step(step)
  writer.close()
  logging.info("%s: pretraining done in %.1fs.", run_dir.name, time.time() - t0)
  return Pretrained(model, variables(state), total_steps, has_classifier=method.trains_classifier)

"""Train-step throughput (images/s) of SimCLR: with and without Adaptive FNC, and against PyTorch.

Default mode: same model, batch, data and compiled step structure, SimCLR vs Adaptive FNC (only the loss
differs). The step functions are timed in alternation (ABAB...) so machine noise hits both equally; medians.

  python benchmarks/train_step_throughput.py --encoder resnet18_cifar --batch 256 --repeats 7
  python benchmarks/train_step_throughput.py --loss-only --batch 256

--vs-torch: for each of --encoders, csl_jax's SimCLR step against the same step in PyTorch on the same CPU
(`torch_simclr.py`: the encoder's PyTorch twin + projection head, the SimCLR augmentation in batched torch ops,
NT-Xent, LARS), each also split into its augmentation (two views) and its model update (encoder + loss +
optimiser on ready views). All six are timed in alternation within each repeat; a Markdown table gives median
images/s (min-max), the augmentation's share of the step and the JAX/PyTorch ratio.

  python benchmarks/train_step_throughput.py --vs-torch --encoders small_cnn,resnet18_cifar --batch 256
  python benchmarks/train_step_throughput.py --vs-torch --torch-threads 1,2 ...   # race PyTorch at 1 and 2 threads

PyTorch runs with os.cpu_count() threads unless --torch-threads lists others; the ratio is against the fastest.
On a machine shared with other jobs, PyTorch's per-op fork/join can make 1 thread faster than 2 (the 2-core
build box under load: small-CNN update 0.84 s with 1 thread, 1.8 s with 2); race both there.
"""
import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from csl_jax import config as config_lib
from csl_jax import methods
from csl_jax import xla_cpu_flags
from csl_jax.train import loop, optim, sharding
from csl_jax.train import step as step_lib
from csl_jax.train.state import create_train_state


def setup(method_name: str, encoder: str, args, mesh):
  """(method, config, model, tx, lr_fn, a fresh replicated train state) for the benchmark's settings."""
  config = config_lib.base_config()
  config.model.encoder = encoder
  config.model.dtype = args.dtype
  config.pretrain.batch_size = args.batch
  method = methods.get(method_name)
  model = method.family.build_model(config, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
  lr_fn = optim.learning_rate_schedule(config, args.batch, 100, 10_000)
  tx = optim.make_optimizer(config, lr_fn)
  init = jax.jit(functools.partial(create_train_state, model, tx), out_shardings=sharding.replicated(mesh))
  new_state = lambda: init(jax.random.PRNGKey(0), jnp.zeros((2, args.size, args.size, 3)))
  return method, config, model, tx, lr_fn, new_state


def build(method, args, mesh):
  method, config, model, tx, lr_fn, new_state = setup(method, args.encoder, args, mesh)
  step = loop.make_train_step(method, config, model, tx, lr_fn, mesh, args.size, 10_000)
  return new_state(), step


def loss_only_overhead(batch: int, dim: int = 128, repeats: int = 200) -> dict:
  """Value+grad time of the loss alone (the only part Adaptive FNC changes), NT-Xent vs Adaptive FNC."""
  from csl_jax import losses  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  z1, z2 = (jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32) for _ in range(2))
  fns = {"nt_xent": jax.jit(jax.grad(lambda a, b: losses.nt_xent(a, b, temperature=0.5), argnums=(0, 1))),
         "adaptive_fnc": jax.jit(jax.grad(lambda a, b: losses.adaptive_fnc(a, b, temperature=0.5, rho=0.7)[0],
                                          argnums=(0, 1)))}
  times = {name: [] for name in fns}
  for fn in fns.values():
    jax.block_until_ready(fn(z1, z2))
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(z1, z2))
      times[name].append(time.perf_counter() - t0)
  medians = {name: statistics.median(ts) for name, ts in times.items()}
  return {"median_ms": {k: 1e3 * v for k, v in medians.items()},
          "overhead_percent": 100 * (medians["adaptive_fnc"] / medians["nt_xent"] - 1)}


def _timed(fn):
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def jax_pieces(encoder: str, args, mesh, batch):
  """{"step", "augment", "update"}: callables running csl_jax's jitted SimCLR step (`loop.make_train_step`, the
  trainer's) and its two halves, `step.two_views` and `step.contrastive_update` (jitted alike, state donated)."""
  method, config, model, tx, lr_fn, new_state = setup("simclr", encoder, args, mesh)
  step = loop.make_train_step(method, config, model, tx, lr_fn, mesh, args.size, 10_000)
  augment_fn = method.augment(config, args.size)
  augment = jax.jit(lambda key, images: step_lib.two_views(key, images, augment_fn))
  update_fn = functools.partial(step_lib.contrastive_update, model=model, tx=tx, lr_fn=lr_fn,
                                loss_fn=method.loss_fn(config, mesh), schedule_fn=method.schedule_fn(config, 10_000))
  update = jax.jit(update_fn, donate_argnums=(0,))
  key = sharding.replicate(jax.random.PRNGKey(1), mesh)
  views = augment(key, batch["image"])
  states = {"step": new_state(), "update": new_state()}

  def run(name, fn, *inputs):
    states[name], metrics = fn(states[name], *inputs)
    jax.block_until_ready(metrics)

  return {"step": lambda: run("step", step, batch, key),
          "augment": lambda: jax.block_until_ready(augment(key, batch["image"])),
          "update": lambda: run("update", update, batch, views)}


def torch_pieces(encoder: str, images_u8, threads: int):
  """Like `jax_pieces`, for `torch_simclr.SimCLRStep` with `threads` intra-op threads (its augmentation uses 1)."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_simclr  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  step = torch_simclr.SimCLRStep(encoder, image_size=images_u8.shape[1])
  images = torch.from_numpy(images_u8)
  views = step.views(images)

  def with_threads(fn):
    def run():
      torch.set_num_threads(threads)
      return fn()
    return run

  return {"step": with_threads(lambda: step(images)), "augment": with_threads(lambda: step.views(images)),
          "update": with_threads(lambda: step.update(views))}


def vs_torch(args) -> dict:
  """Per encoder: median/min/max seconds of {jax, torch at each thread count} x {step, augment, update}, all
  timed in alternation (each repeat runs every piece once)."""
  import torch  # pylint: disable=g-import-not-at-top
  thread_counts = [int(t) for t in args.torch_threads.split(",")] if args.torch_threads else [os.cpu_count()]
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  images_u8 = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (args.batch,), dtype=np.int32)
  batch = sharding.shard_batch({"image": images_u8, "label": labels}, mesh)
  result = {"device": jax.devices()[0].device_kind, "platform": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": thread_counts, "torch": torch.__version__, "jax": jax.__version__,
            "batch": args.batch, "size": args.size, "repeats": args.repeats, "load_before": os.getloadavg(),
            "encoders": {}}
  for encoder in args.encoders.split(","):
    pieces = {("jax", k): fn for k, fn in jax_pieces(encoder, args, mesh, batch).items()}
    for threads in thread_counts:
      pieces.update({(f"torch{threads}", k): fn for k, fn in torch_pieces(encoder, images_u8, threads).items()})
    for fn in pieces.values():  # compile + warm up
      fn()
      fn()
    times = {name: [] for name in pieces}
    for _ in range(args.repeats):
      for name, fn in pieces.items():
        times[name].append(_timed(fn))
    result["encoders"][encoder] = {f"{impl}_{part}": {"median_s": statistics.median(ts), "min_s": min(ts),
                                                      "max_s": max(ts)}
                                   for (impl, part), ts in times.items()}
  result["load_after"] = os.getloadavg()
  return result


def markdown_table(result: dict) -> str:
  """One row per encoder and implementation; the ratio is against the fastest PyTorch thread count."""
  batch = result["batch"]
  rate = lambda t: batch / t
  lines = [f"| encoder, batch {batch} | implementation | full step img/s (min-max) | augmentation img/s | "
           "model update img/s | augmentation share of step | JAX / PyTorch (step) |", "|---|---|---|---|---|---|---|"]
  for encoder, r in result["encoders"].items():
    impls = ["jax"] + [f"torch{t}" for t in result["torch_threads"]]
    best_torch = min(r[f"{impl}_step"]["median_s"] for impl in impls[1:])
    for impl in impls:
      step, aug, upd = r[f"{impl}_step"], r[f"{impl}_augment"], r[f"{impl}_update"]
      name = "csl_jax" if impl == "jax" else f"PyTorch {result['torch']}, {impl[5:]} thread(s)"
      ratio = f"**{best_torch / step['median_s']:.2f}x**" if impl == "jax" else ""
      lines.append(f"| {encoder} | {name} | {rate(step['median_s']):.1f} ({rate(step['max_s']):.1f}-"
                   f"{rate(step['min_s']):.1f}) | {rate(aug['median_s']):.0f} | {rate(upd['median_s']):.1f} | "
                   f"{100 * aug['median_s'] / step['median_s']:.1f} % | {ratio} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--encoder", default="resnet18_cifar")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--json", default="")
  parser.add_argument("--loss-only", action="store_true", help="time only the loss value+grad (fast)")
  parser.add_argument("--vs-torch", action="store_true",
                      help="SimCLR step, augmentation, model update: csl_jax vs PyTorch (benchmarks/torch_simclr.py)")
  parser.add_argument("--encoders", default="small_cnn,resnet18_cifar", help="with --vs-torch: comma-separated")
  parser.add_argument("--torch-threads", default="",
                      help="with --vs-torch: comma-separated PyTorch thread counts to race (default: os.cpu_count())")
  args = parser.parse_args()
  if args.loss_only:
    print(json.dumps(loss_only_overhead(args.batch), indent=2))
    return
  if args.vs_torch:
    # One malloc arena, no mmap: PyTorch's eager step gains ~1.5x from it on glibc (csl_jax's step: within noise);
    # set for both before either starts its threads, so each runs its fastest (xla_cpu_flags docstring).
    xla_cpu_flags.reuse_freed_host_memory()
    result = vs_torch(args)
    print(json.dumps(result, indent=2))
    print(markdown_table(result))
    if args.json:
      with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    return
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch({"image": rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8),
                                "label": rng.integers(0, 10, (args.batch,), dtype=np.int32)}, mesh)
  key = sharding.replicate(jax.random.PRNGKey(1), mesh)
  runs = {m: build(m, args, mesh) for m in ("simclr", "afnc")}
  times = {m: [] for m in runs}
  for method, (state, step) in runs.items():  # compile + warm up
    for _ in range(2):
      state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    runs[method] = (state, step)
  for _ in range(args.repeats):
    for method, (state, step) in runs.items():
      t0 = time.perf_counter()
      state, metrics = step(state, batch, key)
      jax.block_until_ready(metrics)
      times[method].append(time.perf_counter() - t0)
      runs[method] = (state, step)
  result = {"device": jax.devices()[0].device_kind, "num_devices": jax.device_count(), "platform": platform.machine(),
            "encoder": args.encoder, "batch": args.batch, "dtype": args.dtype, "repeats": args.repeats}
  for method, ts in times.items():
    median = statistics.median(ts)
    result[method] = {"median_step_s": median, "min_step_s": min(ts), "max_step_s": max(ts),
                      "images_per_s": args.batch / median}
  result["afnc_overhead_percent"] = 100 * (result["afnc"]["median_step_s"] / result["simclr"]["median_step_s"] - 1)
  result["loss_only"] = loss_only_overhead(args.batch)
  print(json.dumps(result, indent=2))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()

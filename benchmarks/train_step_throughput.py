"""Train-step throughput (images/s) of SimCLR with and without Adaptive FNC, side by side.

Same model, batch, data and compiled step structure; only the loss differs. The two step functions
are timed in alternation (ABAB...) so machine noise hits both equally; medians are reported.

  python benchmarks/train_step_throughput.py --encoder resnet18_cifar --batch 256 --repeats 7
"""
import argparse
import functools
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from csl_jax import config as config_lib
from csl_jax import methods
from csl_jax.train import loop, optim, sharding
from csl_jax.train.state import create_train_state


def build(method, args, mesh):
  config = config_lib.base_config()
  config.model.encoder = args.encoder
  config.model.dtype = args.dtype
  config.pretrain.batch_size = args.batch
  method = methods.get(method)
  model = method.family.build_model(config, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
  lr_fn = optim.learning_rate_schedule(config, args.batch, 100, 10_000)
  tx = optim.make_optimizer(config, lr_fn)
  state = jax.jit(functools.partial(create_train_state, model, tx), out_shardings=sharding.replicated(mesh))(
      jax.random.PRNGKey(0), jnp.zeros((2, args.size, args.size, 3)))
  step = loop.make_train_step(method, config, model, tx, lr_fn, mesh, args.size, 10_000)
  return state, step


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


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--encoder", default="resnet18_cifar")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--json", default="")
  parser.add_argument("--loss-only", action="store_true", help="time only the loss value+grad (fast)")
  args = parser.parse_args()
  if args.loss_only:
    print(json.dumps(loss_only_overhead(args.batch), indent=2))
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

"""Share of the RoCL / ACL(DS) train step spent in the in-step PGD attack (csl_jax/train/adversarial.py).

The same registry step is compiled twice: with the recipe's attack steps (RoCL 7, ACL 5) and with 0 steps
(random start only, everything else identical). The attack's share is (T_k − T_0) / T_k; the rest is the model
update on the (clean and adversarial) views. The same model's SimCLR step is timed alongside, for the cost of
adversarial pretraining (T_k / T_SimCLR). All three are timed in alternation (ABCABC...) so machine noise hits
them alike; medians are reported.

  python benchmarks/adversarial_step_share.py --encoder resnet18_cifar --batch 64 --repeats 5
  python benchmarks/adversarial_step_share.py --encoder small_cnn --batch 256 --repeats 7
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


def build(name, args, mesh, steps):
  config = config_lib.base_config()
  config.model.encoder = args.encoder
  config.model.projection_hidden_dim = args.hidden
  config.pretrain.batch_size = args.batch
  if steps is not None:
    config.methods[name].steps = steps
  method = methods.get(name)
  model = method.family.build_model(config, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
  lr_fn = optim.learning_rate_schedule(config, args.batch, 100, 10_000)
  tx = optim.make_optimizer(config, lr_fn)
  state = jax.jit(functools.partial(create_train_state, model, tx), out_shardings=sharding.replicated(mesh))(
      jax.random.PRNGKey(0), jnp.zeros((2, args.size, args.size, 3)))
  step = loop.make_train_step(method, config, model, tx, lr_fn, mesh, args.size, 10_000)
  return state, step, config.methods[name].get("steps")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--encoder", default="resnet18_cifar")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--hidden", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--methods", default="rocl,acl")
  args = parser.parse_args()
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch({"image": rng.integers(0, 256, (args.batch, args.size, args.size, 3), np.uint8),
                                "label": rng.integers(0, 10, args.batch).astype(np.int32)}, mesh)
  key = sharding.replicate(jax.random.PRNGKey(1), mesh)
  results = []
  for name in args.methods.split(","):
    runs = {label: build(name, args, mesh, steps) for label, steps in (("attack", None), ("no_attack", 0))}
    runs["simclr"] = build("simclr", args, mesh, None)  # the same model's plain SimCLR step, timed alongside
    states = {label: run[0] for label, run in runs.items()}  # the step donates its state: carry it
    times = {label: [] for label in runs}
    for repeat in range(args.repeats + 1):  # the first round compiles and warms up
      for label, (_, step, _) in runs.items():
        t0 = time.perf_counter()
        states[label] = jax.block_until_ready(step(states[label], batch, key))[0]
        if repeat:
          times[label].append(time.perf_counter() - t0)
    t_k, t_0, t_s = (statistics.median(times[label]) for label in ("attack", "no_attack", "simclr"))
    results.append({"method": name, "attack_steps": runs["attack"][2], "step_ms": 1e3 * t_k,
                    "step_without_attack_ms": 1e3 * t_0, "attack_share": (t_k - t_0) / t_k,
                    "simclr_step_ms": 1e3 * t_s, "cost_vs_simclr": t_k / t_s})
  print(json.dumps({"encoder": args.encoder, "batch": args.batch, "size": args.size, "devices": mesh.size,
                    "backend": jax.default_backend(), "machine": platform.processor() or platform.machine(),
                    "results": results}, indent=2))


if __name__ == "__main__":
  main()

"""Forward and PGD-40 (ℓ∞) throughput of the release architectures: JAX (this library) vs the PyTorch twin.

For ResNet-50, ViT-B/16 and R(2+1)D-18 the torch twin gets seeded random weights in its release layout
(torchvision / timm names, random BatchNorm statistics, a 1000- / 400-class classifier), and the flax model gets
*the same weights* through `models.convert_release` — the path a published checkpoint takes. Both take inputs in
[0, 1] and normalise inside the model. Timed per batch, JAX and torch in alternation (JAX, torch, JAX, ...) so
that machine noise hits both alike; medians reported as images/s (clips/s for video) in a Markdown table.

* forward: logits of one batch (JAX: `inference.bind`, one jitted apply; torch: `torch.inference_mode()`).
* PGD-40: `csl_jax.attacks.pgd` (ℓ∞, eps 4/255, α = 2.5·eps/40, random start, cross-entropy) vs the same
  attack in ~10 lines of torch (`torch_pgd` below; gradients for the input only).

  python benchmarks/pretrained_models_throughput.py --batch 32 --repeats 5
  python benchmarks/pretrained_models_throughput.py --batch 2 --repeats 1 --steps 2   # smoke run on a CPU
  python benchmarks/pretrained_models_throughput.py --batch 32 --repeats 2 --timed-steps 2   # a 2-core CPU

--timed-steps K (CPU, where one PGD-40 batch of ViT-B/16 or R(2+1)D-18 takes many minutes): both frameworks run
the same attack with K and with 2K steps; the difference gives the time of one step (one forward + input-gradient
pass over the batch), the rest is the attack's fixed cost (random start; csl_jax's PGD also makes one more forward
pass to keep the first iterate that fooled the model), and PGD-40 time = fixed + 40 · step. (Scaling the K-step
time by 40 / K instead would charge the fixed cost 40 / K times: at K = 1 it made JAX's ViT-B/16 look 0.57x
PyTorch when its step is 0.8x.) The table says when it is extrapolated.

JAX runs on its default backend; torch on CUDA when available, else the CPU (set the thread count with
--torch-threads for a fair CPU comparison).
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
import torch
import torch.nn.functional as F

from csl_jax import convert as convert_cli
from csl_jax import attacks
from csl_jax.models import convert, convert_release, inference, torch_twins

MODELS = ("resnet50", "vit_b16", "r2plus1d_18")
FORWARD_CALLS = 3


def random_twin(arch: str, seed: int = 0):
  """(torch classifier, its state dict in the release layout) with seeded random weights and BN statistics."""
  torch.manual_seed(seed)
  if arch == "resnet50":
    encoder, fc = convert.build_torch_encoder("resnet50_imagenet"), torch.nn.Linear(2048, 1000)
    model = torch.nn.Sequential(encoder, fc)
    release_state = lambda: {**encoder.state_dict(), **{f"fc.{k}": v for k, v in fc.state_dict().items()}}
  else:
    model = (torch_twins.vision_transformer(arch, num_classes=1000) if arch.startswith("vit")
             else torch_twins.r2plus1d_18(num_classes=400))
    release_state = model.state_dict
  generator = torch.Generator().manual_seed(seed)
  for module in model.modules():
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):  # pylint: disable=protected-access
      module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
      module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
  return model.eval(), release_state()


def build(arch: str, device):
  """(JAX logits_fn, torch model on `device`, input shape, num_classes) sharing one set of weights."""
  twin, state = random_twin(arch)
  fmt = "torchvision" if arch in ("resnet50", "r2plus1d_18") else "mocov3"  # torchvision / timm key layouts
  variables, info = convert_release.convert_release(state, arch, fmt)
  model = convert_cli.converted_model(info)
  logits_fn = inference.bind(model, jax.device_put(variables))
  torch_model = torch_twins.normalized(twin, info["mean"], info["std"]).to(device).eval()
  for parameter in torch_model.parameters():
    parameter.requires_grad_(False)
  return logits_fn, torch_model, tuple(info["input_shape"]), info["num_classes"]


def torch_pgd(model, x, y, *, eps: float, steps: int, step_size: float):
  """ℓ∞ PGD, uniform random start: x ← Π_{‖x' − x‖∞ ≤ eps, [0, 1]}(x + α·sign(∇ CE)), `steps` times."""
  x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
  for _ in range(steps):
    x_adv.requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
    x_adv = torch.minimum(torch.maximum(x_adv.detach() + step_size * grad.sign(), x - eps), x + eps).clamp(0, 1)
  return x_adv


def _sync(device):
  if device.type == "cuda":
    torch.cuda.synchronize()


def time_model(arch: str, args, device) -> dict:
  logits_fn, torch_model, shape, num_classes = build(arch, device)
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (args.batch, *shape)).astype(np.float32)
  y = rng.integers(0, num_classes, args.batch).astype(np.int32)
  x_jax, y_jax = jax.device_put(jnp.asarray(x)), jax.device_put(jnp.asarray(y))
  x_torch = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).to(device)
  y_torch = torch.from_numpy(y.astype(np.int64)).to(device)
  step_size = 2.5 * args.eps / args.steps
  timed = args.timed_steps or args.steps  # PGD steps actually run (also 2 * timed with --timed-steps)

  def jax_forward():
    jax.block_until_ready(logits_fn(x_jax))

  def jax_attack(steps=timed):
    jax.block_until_ready(attacks.pgd(logits_fn, x_jax, y_jax, eps=args.eps, norm="linf", steps=steps,
                                      step_size=step_size, key=jax.random.PRNGKey(1)))

  def torch_forward():
    with torch.inference_mode():
      torch_model(x_torch)
    _sync(device)

  def torch_attack(steps=timed):
    torch_pgd(torch_model, x_torch, y_torch, eps=args.eps, steps=steps, step_size=step_size)
    _sync(device)

  runs = {("forward", "jax"): jax_forward, ("forward", "torch"): torch_forward,
          ("pgd", "jax"): jax_attack, ("pgd", "torch"): torch_attack}
  if args.timed_steps:
    runs[("pgd2", "jax")] = functools.partial(jax_attack, 2 * timed)
    runs[("pgd2", "torch")] = functools.partial(torch_attack, 2 * timed)
  times = {key: [] for key in runs}
  for fn in runs.values():  # compile / warm up
    fn()
  for _ in range(args.repeats):
    for key, fn in runs.items():
      # A forward pass is short next to the attacks around it: time FORWARD_CALLS back-to-back calls per repeat
      # so that one call disturbed by the previous attack's freed memory does not set the median.
      for _ in range(FORWARD_CALLS if key[0] == "forward" else 1):
        start = time.perf_counter()
        fn()
        times[key].append(time.perf_counter() - start)
  median = {key: statistics.median(ts) for key, ts in times.items()}
  result = {}
  for framework in ("jax", "torch"):
    result[f"forward_{framework}_per_s"] = args.batch / median[("forward", framework)]
    pgd_time = median[("pgd", framework)]
    if args.timed_steps:
      per_step = (median[("pgd2", framework)] - pgd_time) / timed
      pgd_time = (pgd_time - timed * per_step) + args.steps * per_step
      result[f"pgd_step_{framework}_s"] = per_step
    result[f"pgd_{framework}_per_s"] = args.batch / pgd_time
  return result


def markdown(results: dict, args) -> str:
  unit = lambda arch: "clips/s" if arch == "r2plus1d_18" else "images/s"
  lines = [f"batch {args.batch}, medians of {args.repeats} repeats ({FORWARD_CALLS} forward calls each); PGD-{args.steps} ℓ∞ eps {args.eps:.4g}; "
           f"JAX on {jax.devices()[0].device_kind} ({jax.default_backend()}), torch on {args.device_name}"
           + (f"; PGD throughput extrapolated from {args.timed_steps} timed steps" if args.timed_steps else ""), "",
           "| model | input | forward JAX | forward torch | PGD JAX | PGD torch | unit |",
           "|---|---|---|---|---|---|---|"]
  for arch, r in results.items():
    shape = "x".join(map(str, convert_release.ARCHS[arch].input_shape))
    lines.append(f"| {arch} | {shape} | {r['forward_jax_per_s']:.1f} | {r['forward_torch_per_s']:.1f} | "
                 f"{r['pgd_jax_per_s']:.3g} | {r['pgd_torch_per_s']:.3g} | {unit(arch)} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {MODELS}")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=40, help="PGD steps")
  parser.add_argument("--timed-steps", type=int, default=0,
                      help="run PGD with this many steps and scale its throughput to --steps (0: run all --steps)")
  parser.add_argument("--eps", type=float, default=4 / 255)
  parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
  parser.add_argument("--json", default="", help="also write the results here")
  args = parser.parse_args()
  models = args.models.split(",")
  unknown = sorted(set(models) - set(MODELS))
  if unknown:
    parser.error(f"unknown models {unknown}; choose from {MODELS}")
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  args.device_name = (torch.cuda.get_device_name() if device.type == "cuda"
                      else f"CPU ({torch.get_num_threads()} threads)")
  results = {}
  for arch in models:  # Each model's row as soon as it is measured: a CPU run of all three takes over half an hour.
    start = time.perf_counter()
    results[arch] = time_model(arch, args, device)
    print(f"{arch}: measured in {time.perf_counter() - start:.0f}s: {results[arch]}", flush=True)
    if args.json:
      with open(args.json, "w") as f:
        json.dump({"platform": platform.machine(), "batch": args.batch, "repeats": args.repeats, "steps": args.steps,
                   "timed_steps": args.timed_steps, "eps": args.eps, "jax_device": jax.devices()[0].device_kind,
                   "torch_device": args.device_name, "results": results}, f, indent=2)
  print(markdown(results, args))


if __name__ == "__main__":
  main()

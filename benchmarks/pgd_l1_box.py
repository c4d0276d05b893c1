"""PGD-ℓ1 where the [0, 1] box binds: robust accuracy against the exact optimum, and on an image model.

Claims measured (results: ATTACKS.md, "PGD-ℓ1 and the box"):
  1. Linear case. A dense linear classifier f(x) = Wᵀx + b on inputs spread over [0, 1]^d: the exact
     minimal ℓ1 distance with the box is a fractional knapsack per wrong class (`knapsack_l1_distance`),
     so the exact robust accuracy at any eps is known. Reported: exact, PGD-ℓ1 (40 and 100 steps),
     APGD-ℓ1 (100 iterations) and FGSM-ℓ1, at eps between the distances' 30/50/70% quantiles.
  2. Image model. `ImageClassifier(small_cnn)` trained for --train_seconds on CIFAR-10 training images
     (as in attacks_vs_reference.py), PGD-ℓ1 at the paper's eps = 8 and 12 (Table 4) with the default
     schedule (40 steps, α = 2.5·eps/40) and with 100 steps; APGD-ℓ1 (100 iterations) as the strength
     reference. Robust accuracy on --images test images and seconds per batch (median of --repeats
     timed calls after a compiling one).

  3. (--pgd10_repeats > 0) Seconds per batch of PGD-ℓ∞ (10 steps, eps 8/255, α 2/255) on the same
     images: the cost of the attacks' input checks (run under the old and the new code to compare).

The trained weights are cached (--cache), so runs before and after a change attack the same model.

Run (2-core CPU, ~8 min with a cached model, plus 60 s of training without one):
  python benchmarks/pgd_l1_box.py --images 256 --train_seconds 60 --cache /tmp/pgd_l1_small_cnn.msgpack
"""
import argparse
import functools
import os
import statistics
import sys
import time

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from csl_jax import attacks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attacks_vs_reference import load_cifar, train_small_cnn  # noqa: E402


def knapsack_l1_distance(w, b, x, y):
  """Exact minimal ‖δ‖₁ with x + δ ∈ [0, 1]^d that makes some class j ≠ y score at least z_y, f64[N].

  For each j the margin z_y − z_j falls by |w_y,p − w_j,p| per unit of ℓ1 spent on pixel p, and pixel p
  can move at most to the box face that lowers the margin: a fractional knapsack, filled in decreasing
  order of |w_y,p − w_j,p|. inf where no class can be reached inside the box.
  """
  z = (x @ w + b).astype(np.float64)
  out = np.full(len(y), np.inf)
  for i, label in enumerate(y):
    for j in range(w.shape[1]):
      if j == label:
        continue
      diff = (w[:, j] - w[:, label]).astype(np.float64)
      order = np.argsort(-np.abs(diff))
      rate = np.abs(diff[order])
      room = np.where(diff > 0, 1.0 - x[i], x[i]).astype(np.float64)[order]
      gained = np.cumsum(rate * room)
      needed = z[i, label] - z[i, j]
      m = int(np.searchsorted(gained, needed))
      if m < len(order):
        out[i] = min(out[i], room[:m].sum() + (needed - (gained[m - 1] if m else 0.0)) / rate[m])
  return out


def linear_problem(n=400, dim=200, num_classes=10, seed=0):
  """Dense Gaussian weights, inputs uniform on [0, 1]^dim, labels = the model's own predictions."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(dim, num_classes)).astype(np.float32)
  b = rng.normal(size=num_classes).astype(np.float32)
  x = rng.uniform(0.0, 1.0, (n, dim)).astype(np.float32)
  return w, b, x, np.argmax(x @ w + b, axis=1).astype(np.int32)


def accuracy(logits_fn, x, y):
  return float(np.mean(np.argmax(np.asarray(logits_fn(x)), axis=1) == y))


def timed(fn, repeats):
  """(median seconds over `repeats` calls after one compiling call, compile-call seconds, last result)."""
  start = time.perf_counter()
  result = jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times), first, result


def l1_attacks():
  return {
      "pgd-40": functools.partial(attacks.pgd, steps=40),
      "pgd-100": functools.partial(attacks.pgd, steps=100),
      "apgd-100": functools.partial(attacks.apgd, n_iter=100),
      "fgsm": attacks.fgsm,
  }


def linear_rows(repeats):
  w, b, x, y = linear_problem()
  logits_fn = jax.jit(lambda v: v @ w + b)
  dist = knapsack_l1_distance(w, b, x, y)
  finite = np.sort(dist[np.isfinite(dist)])
  rows = []
  for q in (0.3, 0.5, 0.7):
    k = int(q * len(finite))
    eps = float((finite[k] + finite[k + 1]) / 2)
    row = {"case": "linear d=200 K=10", "eps": round(eps, 3), "exact": float(np.mean(dist > eps))}
    for name, attack in l1_attacks().items():
      seconds, _, x_adv = timed(lambda: attack(logits_fn, x, y, eps=eps, norm="l1"), repeats)  # noqa: B023
      row[name] = accuracy(logits_fn, x_adv, y)
      row[name + " s"] = seconds
    rows.append(row)
    print(row, flush=True)
  return rows


def image_model(args):
  """jitted logits_fn of a (cached) briefly trained ImageClassifier(small_cnn)."""
  from attacks_vs_reference import CIFAR_MEAN, CIFAR_STD  # noqa: PLC0415
  from csl_jax.models import ImageClassifier, get_encoder  # noqa: PLC0415
  model = ImageClassifier(get_encoder("small_cnn"), num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD)
  if args.cache and os.path.exists(args.cache):
    template = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    with open(args.cache, "rb") as f:
      variables = flax.serialization.from_bytes(template, f.read())
    print(f"loaded {args.cache}")
  else:
    x_train, y_train = load_cifar(args.zip, "train", args.train_images, seed=1)
    model, variables, _ = train_small_cnn(x_train, y_train, args.train_seconds)
    if args.cache:
      with open(args.cache, "wb") as f:
        f.write(flax.serialization.to_bytes(variables))
  return jax.jit(lambda v: model.apply(variables, v, train=False))


def image_rows(args):
  logits_fn = image_model(args)
  x_u8, y = load_cifar(args.zip, "test", args.images, seed=0)
  x = jnp.asarray(x_u8.astype(np.float32) / 255.0)
  clean = accuracy(logits_fn, x, y)
  rows = []
  for eps in (8.0, 12.0):
    row = {"case": f"small_cnn {args.images} CIFAR-10 test images (clean {100 * clean:.1f}%)", "eps": eps}
    for name, attack in l1_attacks().items():
      if name == "fgsm":
        continue
      seconds, first, x_adv = timed(lambda: attack(logits_fn, x, y, eps=eps, norm="l1"), args.repeats)  # noqa: B023
      row[name] = accuracy(logits_fn, x_adv, y)
      row[name + " s"] = seconds
      row[name + " compile s"] = first - seconds
    rows.append(row)
    print(row, flush=True)
  return rows


def pgd10_seconds(args):
  """Median seconds of PGD-ℓ∞-10 on the --images batch (after a compiling call), and all the timings."""
  logits_fn = image_model(args)
  x_u8, y = load_cifar(args.zip, "test", args.images, seed=0)
  x = jnp.asarray(x_u8.astype(np.float32) / 255.0)
  y = jnp.asarray(y)
  run = lambda: attacks.pgd(logits_fn, x, y, eps=8 / 255, norm="linf", steps=10, step_size=2 / 255)  # noqa: E731
  jax.block_until_ready(run())
  times = []
  for _ in range(args.pgd10_repeats):
    start = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - start)
  print(f"PGD-linf-10, {args.images} images: median {statistics.median(times):.3f}s, "
        f"all {[round(t, 3) for t in times]}", flush=True)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--zip", default="/work/shared/data/cifar10_jpg.zip")
  parser.add_argument("--images", type=int, default=256)
  parser.add_argument("--train_images", type=int, default=10000)
  parser.add_argument("--train_seconds", type=float, default=60)
  parser.add_argument("--cache", default="", help="where the trained weights are kept (reused if present)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip_images", action="store_true")
  parser.add_argument("--skip_l1", action="store_true", help="only the PGD-ℓ∞-10 timing")
  parser.add_argument("--pgd10_repeats", type=int, default=0)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
  if args.pgd10_repeats:
    pgd10_seconds(args)
  if args.skip_l1:
    return
  rows = linear_rows(args.repeats)
  if not args.skip_images:
    rows += image_rows(args)
  print("\n| Case | eps | exact | PGD-40 | PGD-100 | APGD-100 | FGSM | s/batch PGD-40 | PGD-100 | APGD-100 |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  pct = lambda row, k: f"{100 * row[k]:.2f}" if k in row else "–"  # noqa: E731
  for r in rows:
    print(f"| {r['case']} | {r['eps']} | {pct(r, 'exact')} | {pct(r, 'pgd-40')} | {pct(r, 'pgd-100')} | "
          f"{pct(r, 'apgd-100')} | {pct(r, 'fgsm')} | {r['pgd-40 s']:.3f} | {r['pgd-100 s']:.3f} | "
          f"{r['apgd-100 s']:.3f} |")


if __name__ == "__main__":
  main()

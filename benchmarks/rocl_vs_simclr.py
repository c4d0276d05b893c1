"""Is RoCL's linear probe more robust than SimCLR's at the same training budget? (digits, small CNN, CPU)

Both runs go through the normal pipeline (`csl_jax.pipeline.run`) with one config that differs only in the method
(quickstart's data and model: sklearn digits at 16x16, small CNN, AdamW; the same epochs, batch, seed and
augmentation): pretrain -> standard linear probe on clean features -> PGD-ℓ∞ (`pgd:linf:<eps>:steps=20`, one random
start) on the fixed test subset (the first --test-images test images, by default the whole 360-image split).
Nothing is tuned on the test images: RoCL keeps the registry's recipe (`config.methods.rocl`: ε 8/255, α 0.007,
7 steps, 1/λ = 1/256).

Bar, fixed before running: RoCL is "clearly more robust" when its robust accuracy under PGD-ℓ∞ ε = 8/255 is at least
5 points above SimCLR's (with 360 test images the binomial standard error of one accuracy is ≈ 2.6 points, and one
pretraining seed per method adds its own spread, so smaller gaps are not called). Clean accuracy should stay within
a few points.

  python benchmarks/rocl_vs_simclr.py --workdir /tmp/rocl_vs_simclr            # prints a Markdown table
  python benchmarks/rocl_vs_simclr.py --epochs 20 --workdir /tmp/rocl_vs_simclr_20

Results (machine, load and numbers): benchmarks/ROCL_VS_SIMCLR.md.
"""
import argparse
import json
import os
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repository root: configs/
from configs import quickstart  # noqa: E402
from csl_jax import pipeline  # noqa: E402

BAR_POINTS = 5.0  # robust accuracy at the first --eps, RoCL − SimCLR, to call RoCL clearly more robust


def make_config(args, method: str):
  c = quickstart.get_config()
  c.runs = method
  c.seed = args.seed
  c.pretrain.epochs = float(args.epochs)
  c.pretrain.batch_size = args.batch
  c.pretrain.checkpoint_every = 10_000  # the final step is always saved
  c.optim.warmup_epochs = min(c.optim.warmup_epochs, args.epochs / 10)
  c.evaluators = "linear_eval,robustness"
  c.robustness.attacks = ",".join(f"pgd:linf:{eps}:steps={args.pgd_steps}" for eps in args.eps.split(","))
  c.robustness.num_examples = args.test_images
  c.robustness.batch_size = 120
  return c


def run(args, method: str) -> dict:
  config = make_config(args, method)
  workdir = pathlib.Path(args.workdir) / method
  steps = []
  t0 = time.time()
  result = pipeline.run(config, workdir, on_step=lambda step: steps.append((step, time.time())))[method]
  total = time.time() - t0
  robustness = result["robustness"]
  return {"method": method, "clean": robustness["clean_accuracy"], "linear_top1": result["linear_eval"]["top1"],
          "robust": {a["eps_label"]: a["robust_accuracy"] for a in robustness["attacks"]},
          "pretrain_steps": steps[-1][0] if steps else 0,
          "pretrain_seconds": steps[-1][1] - t0 if steps else float("nan"), "total_seconds": total,
          "test_images": robustness["num_examples"]}


def markdown(rows, args) -> str:
  eps_labels = list(rows[0]["robust"])
  head = (["method", "clean (attack subset)", "linear top-1 (test)"]
          + [f"PGD-ℓ∞ {e} ({args.pgd_steps} steps)" for e in eps_labels]
          + ["pretrain steps", "pretrain + compile s", "total s"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["method"], f"{100 * r['clean']:.1f}", f"{100 * r['linear_top1']:.1f}"]
    cells += [f"{100 * r['robust'][e]:.1f}" for e in eps_labels]
    cells += [str(r["pretrain_steps"]), f"{r['pretrain_seconds']:.0f}", f"{r['total_seconds']:.0f}"]
    lines.append("| " + " | ".join(cells) + " |")
  by = {r["method"]: r for r in rows}
  gap = 100 * (by["rocl"]["robust"][eps_labels[0]] - by["simclr"]["robust"][eps_labels[0]])
  verdict = "clearly more robust" if gap >= BAR_POINTS else "NOT clearly more robust"
  lines += ["", f"RoCL − SimCLR robust accuracy at {eps_labels[0]}: {gap:+.1f} points (bar: ≥ {BAR_POINTS:g}) → RoCL "
            f"is {verdict}. {rows[0]['test_images']} test images, {args.epochs:g} epochs, batch {args.batch}, "
            f"seed {args.seed}; {platform.machine()}, {os.cpu_count()} CPUs, load average "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end."]
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/rocl_vs_simclr")
  parser.add_argument("--epochs", type=float, default=10.0)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--eps", default="8/255,16/255", help="comma-separated ℓ∞ budgets; the first one is judged")
  parser.add_argument("--pgd-steps", type=int, default=20)
  parser.add_argument("--test-images", type=int, default=360, help="first N test images (digits: 360 = all)")
  parser.add_argument("--methods", default="simclr,rocl")
  args = parser.parse_args()
  rows = [run(args, method) for method in args.methods.split(",")]
  print(json.dumps(rows, indent=1))
  print(markdown(rows, args))


if __name__ == "__main__":
  main()

"""How much do PGD and AutoAttack results move between attack seeds? (README, ATTACKS.md "Seed spread")

Trains the attack benchmark's model (`ImageClassifier(small_cnn)`, CIFAR-10 JPEG zip, `attacks_vs_reference`)
and evaluates it through the robustness stage with `num_seeds` seeds — every seed draws its own random
starts (PGD) and its own keys for each AutoAttack stage — on a fixed set of test images.

  python benchmarks/seed_spread.py --zip ../shared/data/cifar10_jpg.zip --images 200 --seeds 5 --train_seconds 60
"""
import argparse
import json
import sys
import pathlib

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from attacks_vs_reference import load_cifar, train_small_cnn  # noqa: E402

from csl_jax.data import ArrayDataset  # noqa: E402
from csl_jax.eval import robustness  # noqa: E402
from csl_jax.train import sharding  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--zip", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared/data/cifar10_jpg.zip"))
  parser.add_argument("--images", type=int, default=200)
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--train_seconds", type=float, default=60)
  parser.add_argument("--attacks", default="pgd:linf:8/255:steps=10,pgd:linf:2/255:steps=10,autoattack:linf:2/255")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  train_x, train_y = load_cifar(args.zip, "train", 20000, seed=0)
  test_x, test_y = load_cifar(args.zip, "test", args.images, seed=1)
  model, variables, steps = train_small_cnn(train_x, train_y, args.train_seconds)
  logits_fn = jax.jit(lambda x: model.apply(variables, x, train=False))
  dataset = ArrayDataset(images=test_x, labels=test_y, class_names=[str(i) for i in range(10)])
  result = robustness.evaluate(logits_fn, dataset, attacks_spec=args.attacks, batch_size=100, seed=0,
                               mesh=sharding.make_mesh(), num_seeds=args.seeds, chunk_size=args.images)
  print(f"model: small CNN, {steps} SGD steps; {args.images} CIFAR-10 test images; clean "
        f"{100 * result['clean_accuracy']:.1f}%")
  print("| attack | mean robust acc. (%) | per seed (%) | spread max−min (points) | spread (of the images) |")
  print("|---|---|---|---|---|")
  for row in result["attacks"]:
    seeds = row["robust_accuracy_seeds"]
    print(f"| {row['spec']} | {100 * row['robust_accuracy']:.2f} | {', '.join(f'{100 * s:.1f}' for s in seeds)} | "
          f"{100 * row['spread']:.1f} | {round(row['spread'] * args.images)} of {args.images} |")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()

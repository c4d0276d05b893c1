"""csl_jax attacks vs the PyTorch references, side by side on the same weights (results: ATTACKS.md).

Claims measured:
  1. PGD-ℓ∞ (10 steps, eps 8/255, step 2/255, random start) throughput in images/s, csl_jax vs
     torchattacks.PGD, median of --repeats timed runs after one warm-up, the two interleaved
     (compilation excluded and reported separately).
  2. AutoAttack "standard" ℓ∞ (eps --aa_eps, default 2/255 as in paper Table 4) wall time and robust
     accuracy, csl_jax vs fra31/auto-attack.
  3. (optional, --resnet_images > 0) PGD throughput on ResNet-18 (CIFAR stem), random init.

The model is `ImageClassifier(small_cnn)` trained here for --train_seconds on CIFAR-10 training images
(plain SGD+momentum, no augmentation); its PyTorch twin comes from `csl_jax.models.convert`, and the
two are checked to give the same logits before anything is timed.

Run (2-core CPU, < 10 min):
  python benchmarks/attacks_vs_reference.py --images 512 --train_seconds 60 --repeats 3 --resnet_images 16 \
      --aa_images 128
Needs torch, torchattacks and autoattack (pip install --no-deps git+https://github.com/fra31/auto-attack).
On a GPU machine: jax[cuda] and a CUDA torch, then add --torch_device cuda.
"""
import argparse
import io
import os
import statistics
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from csl_jax import attacks
from csl_jax.eval.robustness import parse_eps
from csl_jax.models import ImageClassifier, get_encoder
from csl_jax.models.convert import to_torch_classifier

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
EPS = 8 / 255
PGD_STEP = 2 / 255
PGD_STEPS = 10


def load_cifar(zip_path, split, limit, seed):
  """uint8[N, 32, 32, 3] images and int32 labels of a random (seeded) subset of `split` in the JPEG zip."""
  with zipfile.ZipFile(zip_path) as archive:
    names = sorted(n for n in archive.namelist() if n.startswith(f"{split}/") and n.endswith(".jpg"))
    classes = sorted({n.split("/")[1] for n in names})
    chosen = np.random.default_rng(seed).permutation(len(names))[:limit]
    images = np.stack([np.asarray(Image.open(io.BytesIO(archive.read(names[i]))).convert("RGB")) for i in chosen])
    labels = np.array([classes.index(names[i].split("/")[1]) for i in chosen], np.int32)
  return images, labels


def train_small_cnn(images, labels, seconds, seed=0):
  """Briefly trains ImageClassifier(small_cnn) with SGD; returns (model, variables, steps)."""
  model = ImageClassifier(get_encoder("small_cnn"), num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD)
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3)), train=False)
  optimizer = optax.sgd(optax.cosine_decay_schedule(0.05, 2000), momentum=0.9)
  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, batch_stats, opt_state, x, y):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates["batch_stats"]
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  rng = np.random.default_rng(seed)
  x_all = images.astype(np.float32) / 255.0
  start, steps = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    batch = rng.integers(0, len(images), 128)
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, x_all[batch], labels[batch])
    steps += 1
  print(f"trained {steps} steps in {time.perf_counter() - start:.0f}s, last loss {float(loss):.3f}")
  return model, {"params": params, "batch_stats": batch_stats}, steps


def accuracy_jax(logits_fn, x, y):
  return float(np.mean(np.argmax(np.asarray(logits_fn(x)), 1) == y))


# Where the PyTorch side runs ("cpu" or e.g. "cuda"; set from --torch_device in main).
TORCH_DEVICE = "cpu"


def to_torch(torch, x, y):
  """NHWC float images and labels -> NCHW tensor and long tensor on TORCH_DEVICE."""
  return (torch.tensor(x).permute(0, 3, 1, 2).contiguous().to(TORCH_DEVICE),
          torch.tensor(y).long().to(TORCH_DEVICE))


def torch_synced(torch, fn):
  """fn followed by a device synchronisation, so GPU timings include the work."""
  def run():
    out = fn()
    if TORCH_DEVICE != "cpu":
      torch.cuda.synchronize()
    return out
  return run


def accuracy_torch(torch, model, x_nchw, y):
  with torch.no_grad():
    return float((model(x_nchw).argmax(1) == y).float().mean())


def interleaved(fns, repeats):
  """Median seconds of each fn over `repeats` rounds, alternating fns within a round so that both see
  the same load on a shared machine; also returns each fn's last result. Callers warm up first."""
  times, results = [[] for _ in fns], [None] * len(fns)
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      start = time.perf_counter()
      results[i] = fn()
      times[i].append(time.perf_counter() - start)
  return [statistics.median(t) for t in times], results


def pgd_comparison(torch, torchattacks, logits_fn, torch_model, x, y, repeats, label):
  """Throughput and robust accuracy of 10-step PGD-ℓ∞, csl_jax vs torchattacks."""
  x_t, y_t = to_torch(torch, x, y)

  def ours():
    return jax.block_until_ready(attacks.pgd(logits_fn, x, y, eps=EPS, norm="linf", steps=PGD_STEPS,
                                             step_size=PGD_STEP, key=jax.random.PRNGKey(0)))

  reference = torchattacks.PGD(torch_model, eps=EPS, alpha=PGD_STEP, steps=PGD_STEPS, random_start=True)
  start = time.perf_counter()
  ours()  # compiles
  first_call_s = time.perf_counter() - start
  reference(x_t[:8], y_t[:8])  # warm-up
  (ours_s, ref_s), (x_adv, x_adv_ref) = interleaved([ours, torch_synced(torch, lambda: reference(x_t, y_t))],
                                                     repeats)
  row = {"model": label, "images": len(x), "ours_img_s": len(x) / ours_s, "ref_img_s": len(x) / ref_s,
         "ours_compile_s": first_call_s - ours_s, "ours_robust": accuracy_jax(logits_fn, x_adv, y),
         "ref_robust": accuracy_torch(torch, torch_model, x_adv_ref, y_t)}
  print(row)
  return row


def autoattack_comparison(torch, logits_fn, torch_model, x, y, batch_size, eps):
  """AutoAttack standard ℓ∞, one run each (csl_jax's time includes compilation)."""
  from autoattack import AutoAttack  # noqa: PLC0415 (optional reference dependency)
  start = time.perf_counter()
  result = attacks.run_autoattack(logits_fn, x, y, eps=eps, norm="linf", version="standard",
                                  key=jax.random.PRNGKey(0), batch_size=batch_size, progress=False)
  ours_s = time.perf_counter() - start
  x_t, y_t = to_torch(torch, x, y)
  reference = AutoAttack(torch_model, norm="Linf", eps=eps, version="standard", device=TORCH_DEVICE, seed=0,
                         verbose=False)
  start = time.perf_counter()
  x_adv_ref = torch_synced(torch, lambda: reference.run_standard_evaluation(x_t, y_t, bs=batch_size))()
  ref_s = time.perf_counter() - start
  row = {"ours_s": ours_s, "ref_s": ref_s, "ours_robust": float(np.mean(result.robust)),
         "ref_robust": accuracy_torch(torch, torch_model, x_adv_ref, y_t), "ours_stages": result.robust_accuracy,
         "ours_stage_seconds": {k: round(v, 1) for k, v in result.stage_seconds.items()}}
  print(row)
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--zip", default="/work/shared/data/cifar10_jpg.zip")
  parser.add_argument("--images", type=int, default=512)
  parser.add_argument("--train_images", type=int, default=10000)
  parser.add_argument("--train_seconds", type=float, default=60)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=512)
  parser.add_argument("--resnet_images", type=int, default=16)
  parser.add_argument("--aa_images", type=int, default=128,
                      help="AutoAttack runs on the first N test images (the reference needs ~1 s/image here)")
  parser.add_argument("--aa_eps", default="2/255", help="AutoAttack ℓ∞ radius (paper Table 4 uses 1/255 and 2/255)")
  parser.add_argument("--skip_autoattack", action="store_true")
  parser.add_argument("--torch_device", default="cpu", help="PyTorch side: cpu or cuda (jax uses its default backend)")
  args = parser.parse_args()
  global TORCH_DEVICE
  TORCH_DEVICE = args.torch_device
  run_start = time.perf_counter()

  import torch  # noqa: PLC0415
  import torchattacks  # noqa: PLC0415
  torch.set_num_threads(os.cpu_count() or 1)  # XLA's CPU backend also uses every core
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} on {TORCH_DEVICE} "
        f"({torch.get_num_threads()} threads)")

  x_test_u8, y_test = load_cifar(args.zip, "test", args.images, seed=0)
  x_train_u8, y_train = load_cifar(args.zip, "train", args.train_images, seed=1)
  model, variables, _ = train_small_cnn(x_train_u8, y_train, args.train_seconds)
  logits_fn = jax.jit(lambda v: model.apply(variables, v, train=False))
  torch_model = to_torch_classifier("small_cnn", variables, num_classes=10, mean=CIFAR_MEAN,
                                    std=CIFAR_STD).to(TORCH_DEVICE)
  x_test = x_test_u8.astype(np.float32) / 255.0
  with torch.no_grad():
    twin = torch_model(to_torch(torch, x_test[:64], y_test[:64])[0]).cpu().numpy()
  gap = float(np.abs(twin - np.asarray(logits_fn(x_test[:64]))).max())
  print(f"twin max |logit diff| = {gap:.2e}; clean accuracy {accuracy_jax(logits_fn, x_test, y_test):.4f}")

  rows = [pgd_comparison(torch, torchattacks, logits_fn, torch_model, x_test, y_test, args.repeats, "small_cnn")]
  if args.resnet_images:
    resnet = ImageClassifier(get_encoder("resnet18_cifar"), num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD)
    resnet_vars = resnet.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    resnet_fn = jax.jit(lambda v: resnet.apply(resnet_vars, v, train=False))
    resnet_torch = to_torch_classifier("resnet18_cifar", resnet_vars, num_classes=10, mean=CIFAR_MEAN,
                                       std=CIFAR_STD).to(TORCH_DEVICE)
    n = args.resnet_images
    rows.append(pgd_comparison(torch, torchattacks, resnet_fn, resnet_torch, x_test[:n], y_test[:n], args.repeats,
                               "resnet18_cifar (random init)"))
  n_aa = min(args.aa_images, len(x_test))
  aa_eps = parse_eps(args.aa_eps)
  aa = None if args.skip_autoattack else autoattack_comparison(torch, logits_fn, torch_model, x_test[:n_aa],
                                                               y_test[:n_aa], args.batch_size, aa_eps)

  print("\n| Model | Images | csl_jax img/s | torchattacks img/s | Speed-up | csl_jax compile (s) | "
        "Robust acc. csl_jax | Robust acc. torchattacks |\n|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['model']} | {r['images']} | {r['ours_img_s']:.1f} | {r['ref_img_s']:.1f} | "
          f"{r['ours_img_s'] / r['ref_img_s']:.2f}× | {r['ours_compile_s']:.1f} | {100 * r['ours_robust']:.2f}% | "
          f"{100 * r['ref_robust']:.2f}% |")
  if aa:
    print(f"\nAutoAttack standard ℓ∞ {args.aa_eps}, {n_aa} images: csl_jax {aa['ours_s']:.0f}s "
          f"(incl. compilation), robust {100 * aa['ours_robust']:.2f}% | fra31/auto-attack {aa['ref_s']:.0f}s, "
          f"robust {100 * aa['ref_robust']:.2f}%\ncsl_jax per stage: {aa['ours_stages']}\n"
          f"csl_jax seconds per stage: {aa['ours_stage_seconds']}")
  print(f"total wall time {time.perf_counter() - run_start:.0f}s")


if __name__ == "__main__":
  main()

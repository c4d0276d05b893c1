"""Corruption-robustness stage: accuracy under the 15 common corruptions (paper Sec. 4, Fig. 3).

For every corruption x severity the test images are corrupted on the fly (`corruptions.apply`,
CIFAR-10-C or ImageNet-C parameters by image size) or read from a prepared TFDS
`cifar10_corrupted`, classified by the model, and compared with the clean accuracy through the
relative drop (clean - corrupted) / clean, the quantity of paper Fig. 3 (and P_drop, Eq. 3).

Writes <out_dir>/corruptions.json, corruptions.md and corruption_drop.png.
"""
import json
import pathlib
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from csl_jax.analysis.report_tables import p_drop
from csl_jax.eval import corruptions as corruption_lib
from csl_jax.eval.corruptions import params

SOURCES = ("on_the_fly", "tfds")
# tfds's cifar10_corrupted names two corruptions differently from the scripts and the paper.
_TFDS_CORRUPTION_NAMES = {"glass_blur": "frosted_glass_blur", "elastic_transform": "elastic"}


def tfds_config_name(corruption: str, severity: int) -> str:
  """TFDS config of `corruption` at `severity`, e.g. "gaussian_noise_1", "frosted_glass_blur_3"."""
  corruption = corruption_lib.check_name(corruption)
  severity = corruption_lib.check_severity(severity)
  return f"{_TFDS_CORRUPTION_NAMES.get(corruption, corruption)}_{severity}"


def load_tfds_corrupted(corruption: str, severity: int, *, name: str = "cifar10_corrupted",
                        data_dir: Optional[str] = None, split: str = "test"):
  """The prepared TFDS corrupted test set as (u8[N, H, W, 3] images, int32[N] labels); never downloads.

  Raises:
    FileNotFoundError: the dataset is not prepared under `data_dir`, with the command that prepares it.
  """
  import tensorflow_datasets as tfds  # Lazy: importing TensorFlow takes seconds.
  full_name = f"{name}/{tfds_config_name(corruption, severity)}"
  builder = tfds.builder(full_name, data_dir=data_dir)
  try:
    dataset = builder.as_dataset(split=split, as_supervised=True)
  except AssertionError as error:  # What tfds raises for a dataset that was never prepared.
    raise FileNotFoundError(
        f"TFDS dataset {full_name!r} is not prepared (looked in {builder.data_dir}), and this stage "
        f"never downloads. Prepare it once on a machine with internet access: "
        f"`tfds build {name} --config {tfds_config_name(corruption, severity)} --data_dir <dir>` (or "
        f"`tfds.builder({full_name!r}, data_dir=<dir>).download_and_prepare()`), copy <dir> here and pass "
        f"it as data_dir; or use source='on_the_fly'.") from error
  batches = list(tfds.as_numpy(dataset.batch(1024)))
  if not batches:
    raise ValueError(f"TFDS dataset {full_name!r} split {split!r} is empty.")
  images = np.concatenate([b[0] for b in batches]).astype(np.uint8)
  return images, np.concatenate([b[1] for b in batches]).astype(np.int32)


def _correct_counter(logits_fn: Callable) -> Callable:
  """jit(u8[B, H, W, C], int[B], bool[B]) → number of valid examples whose argmax logit is the label."""

  @jax.jit
  def count_correct(images_uint8, labels, valid):
    logits = logits_fn(images_uint8.astype(jnp.float32) / 255.0)
    return jnp.sum((jnp.argmax(logits, axis=-1) == labels) & valid)

  return count_correct


def _accuracy(count_correct: Callable, images: np.ndarray, labels: np.ndarray, batch_size: int,
              corrupt: Optional[Callable] = None) -> float:
  """Top-1 accuracy over `images`, corrupting each batch with `corrupt(batch, start)` on the host.

  Every batch is padded to one shape so the model compiles once; counts stay on the device until
  the end, so the host corrupts batch k + 1 while the device classifies batch k.
  """
  num_examples = len(images)
  batch_size = min(batch_size, num_examples)
  counts = []
  for start in range(0, num_examples, batch_size):
    batch = images[start:start + batch_size]
    if corrupt is not None:
      batch = corrupt(batch, start)
    pad = batch_size - len(batch)
    valid = np.arange(batch_size) < len(batch)
    batch = np.pad(batch, ((0, pad), (0, 0), (0, 0), (0, 0)))
    batch_labels = np.pad(labels[start:start + batch_size], (0, pad))
    counts.append(count_correct(batch, batch_labels, valid))
  return float(sum(int(c) for c in jax.device_get(counts))) / num_examples


def _batch_seed(seed: int, corruption: str, severity: int, start: int) -> int:
  """Independent, reproducible seed for each (corruption, severity, batch)."""
  entropy = [seed, corruption_lib.CORRUPTIONS.index(corruption), severity, start]
  return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def summarise(clean_accuracy: float, results: dict, severities: Sequence[int], num_examples: int) -> dict:
  """The corruptions.json dict from {corruption: {severity: accuracy}} (severities as ints)."""
  # Undefined (None) without clean accuracy; otherwise P_drop, paper Eq. 3.
  relative = {name: {str(s): None if clean_accuracy <= 0 else p_drop(clean_accuracy, acc)
                     for s, acc in by_severity.items()}
              for name, by_severity in results.items()}
  mean_drop = {name: (None if clean_accuracy <= 0 else float(np.mean(list(drops.values()))))
               for name, drops in relative.items()}
  return {
      "clean_accuracy": clean_accuracy,
      "severities": list(severities),
      "results": {name: {str(s): acc for s, acc in by_severity.items()} for name, by_severity in results.items()},
      "relative_drop": relative,
      "mean_relative_drop_by_corruption": mean_drop,
      "num_examples": num_examples,
  }


def _markdown(report: dict) -> str:
  severities = [str(s) for s in report["severities"]]
  lines = [
      "# Corruption robustness",
      "",
      f"Clean accuracy {100 * report['clean_accuracy']:.2f}% on {report['num_examples']} test examples "
      f"(corruptions: {report.get('source', 'on_the_fly')}, parameters: {report.get('parameter_table', '?')}). "
      "Cells: accuracy (%) per severity; relative drop = (clean − corrupted) / clean.",
      "",
      "| corruption | " + " | ".join(f"severity {s}" for s in severities) + " | mean accuracy | mean relative drop |",
      "|---|" + "---:|" * (len(severities) + 2),
  ]
  for name, by_severity in report["results"].items():
    accuracies = [by_severity[s] for s in severities]
    drop = report["mean_relative_drop_by_corruption"][name]
    drop_text = "n/a" if drop is None else f"{100 * drop:.1f}%"
    lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(f"{100 * a:.2f}" for a in accuracies)
                 + f" | {100 * np.mean(accuracies):.2f} | {drop_text} |")
  return "\n".join(lines) + "\n"


def plot_drops(report: dict, path) -> pathlib.Path:
  """Bar plot of the relative drop (%) per corruption: lowest severity and mean over severities."""
  from matplotlib.figure import Figure  # Lazy: matplotlib is slow to import.
  names = list(report["results"])
  lowest = str(report["severities"][0])
  first = [100 * (report["relative_drop"][n][lowest] or 0.0) for n in names]
  mean = [100 * (report["mean_relative_drop_by_corruption"][n] or 0.0) for n in names]
  figure = Figure(figsize=(max(6.0, 0.6 * len(names) + 2), 4.0), layout="constrained")
  axes = figure.add_subplot()
  positions = np.arange(len(names))
  axes.bar(positions - 0.2, first, 0.4, label=f"severity {lowest}")
  axes.bar(positions + 0.2, mean, 0.4, label="mean over severities")
  axes.axhline(0, color="black", linewidth=0.8)
  axes.set_xticks(positions, [n.replace("_", " ") for n in names], rotation=40, ha="right")
  axes.set_ylabel("relative accuracy drop (%)")
  axes.set_title(f"Corruption robustness (clean accuracy {100 * report['clean_accuracy']:.1f}%)")
  axes.legend()
  path = pathlib.Path(path)
  figure.savefig(path, dpi=120)
  return path


def run_corruption_stage(logits_fn: Callable, images_uint8, labels, out_dir, *,
                         corruptions: Sequence[str] = corruption_lib.CORRUPTIONS,
                         severities: Sequence[int] = corruption_lib.SEVERITIES, batch_size: int = 256,
                         seed: int = 0, max_examples: Optional[int] = None, source: str = "on_the_fly",
                         tfds_name: str = "cifar10_corrupted", data_dir: Optional[str] = None,
                         progress: bool = True) -> dict:
  """Accuracy under each corruption x severity; writes corruptions.json / .md / corruption_drop.png.

  Args:
    logits_fn: jittable f32[B, H, W, C] in [0, 1] → logits f32[B, K] (jitted once here).
    images_uint8: clean test images u8[N, H, W, C] (C = 1 or 3).
    labels: int[N].
    out_dir: the run directory (created if missing).
    corruptions: names from `corruptions.CORRUPTIONS`.
    severities: subset of 1..5.
    batch_size: examples per model call (and per corruption call).
    seed: corruption randomness; every (corruption, severity, batch) gets its own derived seed.
    max_examples: evaluate only the first `max_examples` examples (clean and corrupted).
    source: "on_the_fly" (corrupt `images_uint8`) or "tfds" (read the prepared `tfds_name`
      configs from `data_dir`; `images_uint8` then only gives the clean accuracy).

  Returns:
    The corruptions.json dict: clean_accuracy, severities, results, relative_drop,
    mean_relative_drop_by_corruption, num_examples (plus source and parameter_table).
  """
  if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
  names = [corruption_lib.check_name(n) for n in corruptions]
  severities = sorted({corruption_lib.check_severity(s) for s in severities})
  if not names or not severities:
    raise ValueError("run_corruption_stage: need at least one corruption and one severity.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")
  images = corruption_lib.check_images(images_uint8)
  labels = np.asarray(labels)
  if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers of shape [{len(images)}] (one per image), got "
                     f"{labels.dtype} {labels.shape}.")
  if len(images) == 0:
    raise ValueError("run_corruption_stage: no test images.")
  if max_examples is not None:
    images, labels = images[:max_examples], labels[:max_examples]
  labels = labels.astype(np.int32)

  count_correct = _correct_counter(logits_fn)
  clean_accuracy = _accuracy(count_correct, images, labels, batch_size)
  results = {name: {} for name in names}
  combinations = [(name, s) for name in names for s in severities]
  bar = tqdm.tqdm(combinations, desc="corruptions", unit="set", disable=not progress)
  for name, severity in bar:
    bar.set_postfix_str(f"{name} s{severity}")
    if source == "on_the_fly":
      def corrupt(batch, start, name=name, severity=severity):
        return corruption_lib.apply(name, batch, severity, seed=_batch_seed(seed, name, severity, start))
      accuracy = _accuracy(count_correct, images, labels, batch_size, corrupt)
    else:
      corrupted, corrupted_labels = load_tfds_corrupted(name, severity, name=tfds_name, data_dir=data_dir)
      if max_examples is not None:
        corrupted, corrupted_labels = corrupted[:max_examples], corrupted_labels[:max_examples]
      accuracy = _accuracy(count_correct, corrupted, corrupted_labels, batch_size)
    results[name][severity] = accuracy

  report = summarise(clean_accuracy, results, severities, len(images))
  report["source"] = source if source == "on_the_fly" else f"tfds:{tfds_name}"
  report["parameter_table"] = params.table_for_size(*images.shape[1:3])
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "corruptions.json").write_text(json.dumps(report, indent=2) + "\n")
  (out_dir / "corruptions.md").write_text(_markdown(report))
  plot_drops(report, out_dir / "corruption_drop.png")
  return report

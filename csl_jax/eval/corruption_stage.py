"""Corruption-robustness stage: accuracy under the 15 common corruptions (paper Sec. 4, Fig. 3).

For every corruption x severity the test images are corrupted on the fly (`corruptions.apply`,
CIFAR-10-C or ImageNet-C parameters by image size) or read from a prepared TFDS
`cifar10_corrupted`, classified by the model, and compared with the clean accuracy through the
relative drop (clean - corrupted) / clean, the quantity of paper Fig. 3 (and P_drop, Eq. 3).

Writes <out_dir>/corruptions.json, corruptions.md and corruption_drop.png.
"""
import functools
import json
import pathlib
from typing import Callable, Optional, Sequence

import jax
import numpy as np
import tqdm

from csl_jax.analysis import plots
from csl_jax.analysis.report_tables import p_drop
from csl_jax.data.dataset import ArrayDataset
from csl_jax.eval import batches
from csl_jax.eval import corruptions as corruption_lib
from csl_jax.eval.corruptions import params
from csl_jax.train import sharding

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
  from csl_jax.data import tfds_source  # noqa: PLC0415 (lazy: importing TensorFlow takes seconds)
  _, tfds = tfds_source.import_tfds()
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
  """Bars of the relative drop (%) per corruption: lowest severity and mean over severities (`plots.corruption_bars`)."""
  lowest = str(report["severities"][0])
  label = f"clean accuracy {100 * report['clean_accuracy']:.1f}%"
  first = {n: d[lowest] for n, d in report["relative_drop"].items() if d.get(lowest) is not None}
  mean = {n: d for n, d in report["mean_relative_drop_by_corruption"].items() if d is not None}
  return plots.corruption_bars(path, {f"severity {lowest}": {label: first}, "mean over severities": {label: mean}})


def _check_settings(corruptions, severities, source: str):
  if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
  names = [corruption_lib.check_name(n) for n in corruptions]
  severities = sorted({corruption_lib.check_severity(s) for s in severities})
  if not names or not severities:
    raise ValueError("corruptions: need at least one corruption and one severity.")
  return names, severities


def evaluate(logits_fn: Callable, dataset, *, mesh, corruptions: Sequence[str] = corruption_lib.CORRUPTIONS,
             severities: Sequence[int] = corruption_lib.SEVERITIES, batch_size: int = 256, seed: int = 0,
             num_examples: int = 0, source: str = "on_the_fly", tfds_name: str = "cifar10_corrupted",
             data_dir: Optional[str] = None, progress: bool = True) -> dict:
  """The corruptions.json dict for `logits_fn` on the first `num_examples` (0 = all) of `dataset`.

  on_the_fly: each batch is corrupted on the host as it streams (`eval.batches` transform), with its own seed
  from (seed, corruption, severity, batch offset); tfds: the prepared `tfds_name` configs are read instead.
  """
  names, severities = _check_settings(corruptions, severities, source)
  if batch_size < 1:
    raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")
  accuracy = functools.partial(batches.accuracy, logits_fn, batch_size=batch_size, mesh=mesh)
  clean_accuracy = accuracy(dataset, num_examples=num_examples)
  num_evaluated = len(batches.subset(dataset, num_examples))
  size = batches.global_batch_size(batch_size, mesh, num_evaluated)
  offset = jax.process_index() * (size // jax.process_count())
  results = {name: {} for name in names}
  combinations = [(name, s) for name in names for s in severities]
  bar = tqdm.tqdm(combinations, desc="corruptions", unit="set", disable=not progress or jax.process_index() > 0)
  for name, severity in bar:
    bar.set_postfix_str(f"{name} s{severity}")
    if source == "on_the_fly":
      def corrupt(images, index, name=name, severity=severity):
        return corruption_lib.apply(name, images, severity,
                                    seed=_batch_seed(seed, name, severity, index * size + offset))
      results[name][severity] = accuracy(dataset, num_examples=num_examples, transform=corrupt)
    else:
      images, labels = load_tfds_corrupted(name, severity, name=tfds_name, data_dir=data_dir)
      corrupted = ArrayDataset(images=images, labels=labels, class_names=[str(i) for i in range(int(labels.max()) + 1)],
                               name=f"tfds:{tfds_name}/{tfds_config_name(name, severity)}")
      results[name][severity] = accuracy(corrupted, num_examples=num_examples)
  report = summarise(clean_accuracy, results, severities, num_evaluated)
  report["source"] = source if source == "on_the_fly" else f"tfds:{tfds_name}"
  report["parameter_table"] = params.table_for_size(*dataset.image_shape[:2])
  return report


def write_outputs(out_dir, report: dict) -> None:
  """corruptions.md and corruption_drop.png beside corruptions.json (process 0 only)."""
  if jax.process_index() != 0:
    return
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "corruptions.md").write_text(_markdown(report))
  plot_drops(report, out_dir / "corruption_drop.png")


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
  _check_settings(corruptions, severities, source)
  images = corruption_lib.check_images(images_uint8)
  labels = np.asarray(labels)
  if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers of shape [{len(images)}] (one per image), got "
                     f"{labels.dtype} {labels.shape}.")
  if len(images) == 0:
    raise ValueError("run_corruption_stage: no test images.")
  dataset = ArrayDataset(images=images, labels=labels, class_names=[str(i) for i in range(int(labels.max()) + 1)],
                         name="arrays")
  report = evaluate(logits_fn, dataset, mesh=sharding.make_mesh(), corruptions=corruptions, severities=severities,
                    batch_size=batch_size, seed=seed, num_examples=int(max_examples or 0), source=source,
                    tfds_name=tfds_name, data_dir=data_dir, progress=progress)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "corruptions.json").write_text(json.dumps(report, indent=2) + "\n")
  write_outputs(out_dir, report)
  return report


class CorruptionEvaluator:
  """corruptions.json (+ .md, corruption_drop.png): accuracy per corruption and severity (paper Fig. 3)."""
  name = "corruptions"

  def __init__(self, config, *, mesh, **unused):
    del unused
    self.config, self.mesh = config, mesh

  @staticmethod
  def settings(config) -> dict:
    c = config.corruptions
    names = corruption_lib.CORRUPTIONS if c.names == "all" else tuple(
        n.strip() for n in c.names.split(",") if n.strip())
    kind, _, tfds_name = c.source.partition(":")
    if kind not in ("on_the_fly", "tfds") or (kind == "tfds") != bool(tfds_name):
      raise ValueError(f"config.corruptions.source={c.source!r}; use 'on_the_fly' or 'tfds:<name>' "
                       "(e.g. 'tfds:cifar10_corrupted', prepared with `tfds build`).")
    try:
      severities = tuple(int(s) for s in c.severities.split(",") if s.strip())
    except ValueError:
      raise ValueError(f"config.corruptions.severities={c.severities!r}: comma-separated integers 1..5.") from None
    _check_settings(names, severities, kind)
    return {"corruptions": list(names), "severities": list(severities), "source": kind,
            "tfds_name": tfds_name or "cifar10_corrupted", "num_examples": c.num_examples}

  @classmethod
  def check(cls, config) -> None:
    if config.dataset.clip_frames:
      raise ValueError("config.corruptions: the common corruptions (ImageNet-C / CIFAR-10-C) are defined for images, "
                       "and config.dataset.clip_frames > 0 gives clips; set --config.corruptions.enabled=False.")
    cls.settings(config)

  def spec(self) -> dict:
    return {**self.settings(self.config), "seed": self.config.seed}

  def run(self, classifier, dataset, run_dir) -> dict:
    s = self.settings(self.config)
    report = evaluate(classifier.logits, dataset, mesh=self.mesh, corruptions=s["corruptions"],
                      severities=s["severities"], batch_size=self.config.eval_batch_size, seed=self.config.seed,
                      num_examples=s["num_examples"], source=s["source"], tfds_name=s["tfds_name"],
                      data_dir=self.config.dataset.data_dir or None)
    write_outputs(run_dir, report)
    return report

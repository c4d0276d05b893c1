"""Figures for the geometry stage and the comparison report (PNG files, matplotlib's Agg canvas).

Built on `matplotlib.figure.Figure` rather than pyplot, so no global figure state or GUI backend is
touched and the functions are safe to call from tests and background processes.
"""
import math
import pathlib
from typing import Mapping, Optional, Sequence

import matplotlib
from matplotlib.figure import Figure
import numpy as np

_DPI = 110
_METRIC_TITLES = {"rho": "threshold ρ", "cancel_precision": "cancellation precision",
                  "cancel_recall": "cancellation recall", "cancelled_per_anchor": "cancelled negatives per anchor"}


def _save(fig: Figure, path) -> pathlib.Path:
  path = pathlib.Path(path)
  fig.savefig(path, dpi=_DPI, bbox_inches="tight")
  return path


def _class_colors(num_classes: int) -> list:
  cmap = matplotlib.colormaps["tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo"]
  return [cmap(i if num_classes <= 20 else i / max(num_classes - 1, 1)) for i in range(num_classes)]


def _name(class_names: Sequence[str], label: int) -> str:
  return class_names[label] if 0 <= label < len(class_names) else str(label)


def class_distance_heatmap(matrix, class_names: Sequence[str], path, *, title: str = "") -> pathlib.Path:
  """Heatmap of the class×class mean pairwise distance matrix f[C, C] (paper Fig. 2), numbers shown if C ≤ 20."""
  matrix = np.asarray(matrix, np.float64)
  size = len(matrix)
  fig = Figure(layout="constrained", figsize=(1.2 + 0.55 * max(size, 4), 0.8 + 0.5 * max(size, 4)))
  ax = fig.add_subplot()
  image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="mean distance")
  names = [_name(class_names, i) for i in range(size)]
  ax.set_xticks(range(size), names, rotation=60, ha="right", fontsize=8)
  ax.set_yticks(range(size), names, fontsize=8)
  if size <= 20:
    finite = matrix[np.isfinite(matrix)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (row, col), value in np.ndenumerate(matrix):
      if np.isfinite(value):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=6,
                color="black" if value > middle else "white")
  ax.set_title(title, fontsize=10)
  return _save(fig, path)


def draw_tsne(ax, points, labels, class_names: Sequence[str], *, title: str = "", legend: bool = True) -> None:
  """Scatter of t-SNE points f32[M, 2] coloured by labels int[M] onto a matplotlib Axes."""
  labels = np.asarray(labels)
  num_classes = max(len(class_names), int(labels.max()) + 1 if labels.size else 0)
  colors = _class_colors(num_classes)
  for label in np.unique(labels):
    mask = labels == label
    ax.scatter(points[mask, 0], points[mask, 1], s=3, color=colors[int(label)], label=_name(class_names, int(label)),
               rasterized=True)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title, fontsize=10)
  if legend and num_classes <= 20:
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=3, frameon=False)


def tsne_figure(path, points, labels, class_names: Sequence[str], *, title: str = "") -> pathlib.Path:
  """One t-SNE panel (tsne.png of the geometry stage)."""
  fig = Figure(layout="constrained", figsize=(6.5, 5))
  draw_tsne(fig.add_subplot(), points, labels, class_names, title=title)
  return _save(fig, path)


def tsne_panels(path, panels: Sequence[tuple]) -> pathlib.Path:
  """Side-by-side t-SNE panels, one per (title, points, labels, class_names); legend on the last one only."""
  cols = min(len(panels), 4)
  rows = math.ceil(len(panels) / cols)
  fig = Figure(layout="constrained", figsize=(4.2 * cols + 1.5, 4.0 * rows))
  for i, (title, points, labels, class_names) in enumerate(panels):
    draw_tsne(fig.add_subplot(rows, cols, i + 1), points, labels, class_names, title=title,
              legend=i == len(panels) - 1)
  return _save(fig, path)


def robustness_curves(path, families: Mapping[str, Mapping[str, Sequence[tuple]]],
                      xlabels: Optional[Mapping[str, str]] = None) -> pathlib.Path:
  """Robust accuracy (%) vs ε, one panel per attack family, one line per model.

  families: {"FGSM-ℓ∞": {"simclr": [(eps, accuracy in [0, 1]), ...], ...}, ...}; ε = 0 is the clean accuracy.
  xlabels: optional x-axis label per family (default "ε").
  """
  fig = Figure(layout="constrained", figsize=(4.5 * len(families), 3.6))
  for i, (family, models) in enumerate(families.items()):
    ax = fig.add_subplot(1, len(families), i + 1)
    for model, points in models.items():
      eps, acc = zip(*sorted(points))
      ax.plot(eps, 100 * np.asarray(acc), marker="o", markersize=3, label=model)
    ax.set_title(family, fontsize=10)
    ax.set_xlabel((xlabels or {}).get(family, "ε"))
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
  fig.axes[-1].legend(fontsize=7, loc="upper right")
  return _save(fig, path)


def corruption_bars(path, panels: Mapping[str, Mapping[str, Mapping[str, float]]]) -> pathlib.Path:
  """Grouped bars of relative accuracy drop (%) per corruption and model, like paper Fig. 3.

  panels: {"severity 1": {model: {corruption: drop in [0, 1]}}, "mean over severities": {...}}.
  """
  fig = Figure(layout="constrained", figsize=(11, 3.4 * len(panels)))
  for i, (panel_title, models) in enumerate(panels.items()):
    ax = fig.add_subplot(len(panels), 1, i + 1)
    corruptions = sorted({name for drops in models.values() for name in drops})
    width = 0.8 / max(len(models), 1)
    for j, (model, drops) in enumerate(models.items()):
      values = [100 * drops.get(name, np.nan) for name in corruptions]
      ax.bar(np.arange(len(corruptions)) + (j - (len(models) - 1) / 2) * width, values, width, label=model)
    ax.set_xticks(range(len(corruptions)), [c.replace("_", " ") for c in corruptions], rotation=35, ha="right",
                  fontsize=8)
    ax.set_ylabel("relative drop (%)")
    ax.set_title(panel_title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=min(len(models), 6))
  return _save(fig, path)


def training_curves(path, metrics: Sequence[str], runs: Mapping[str, Mapping[str, tuple]]) -> pathlib.Path:
  """One panel per metric, one line per run; runs: {run: {metric: (steps int[T], values f[T])}}."""
  cols = min(len(metrics), 2)
  rows = math.ceil(len(metrics) / cols)
  fig = Figure(layout="constrained", figsize=(5.5 * cols, 3.2 * rows))
  for i, metric in enumerate(metrics):
    ax = fig.add_subplot(rows, cols, i + 1)
    for run, series in runs.items():
      if metric in series:
        steps, values = series[metric]
        ax.plot(steps, values, label=run)
    ax.set_title(_METRIC_TITLES.get(metric, metric.replace("_", " ")), fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=7)
  return _save(fig, path)

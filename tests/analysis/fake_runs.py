"""Fake but schema-valid run directories (the workdir/JSON contract) for the report tests."""
import json
import pathlib

import numpy as np

from csl_jax.analysis import tsne

CLASS_NAMES = ["zero", "one", "two"]
# method -> (clean accuracy, {(attack, norm, eps, eps_label): robust accuracy}, geometry ratio)
FAKE_RESULTS = {
    "supcon": (0.955, {("fgsm", "linf", 8 / 255, "8/255"): 0.388, ("fgsm", "linf", 16 / 255, "16/255"): 0.318,
                       ("pgd", "l2", 0.25, "0.25"): 0.184}, 1.98),
    "simclr": (0.927, {("fgsm", "linf", 8 / 255, "8/255"): 0.268, ("fgsm", "linf", 16 / 255, "16/255"): 0.134,
                       ("pgd", "l2", 0.25, "0.25"): 0.083}, 1.19),
    "afnc": (0.935, {("fgsm", "linf", 8 / 255, "8/255"): 0.336, ("fgsm", "linf", 16 / 255, "16/255"): 0.249,
                     ("pgd", "l2", 0.25, "0.25"): 0.120}, 1.5),
}
PGD8, PGD16 = ("pgd", "linf", 8 / 255, "8/255"), ("pgd", "linf", 16 / 255, "16/255")
# Table 5-style runs (adversarial contrastive pretraining and their Adaptive FNC versions), all numbers distinct.
FAKE_TABLE5 = {
    "rocl": (0.830, {PGD8: 0.400, PGD16: 0.150}, 1.3),
    "arocl": (0.845, {PGD8: 0.452, PGD16: 0.191}, 1.4),
    "acl": (0.800, {PGD8: 0.430, PGD16: 0.170}, 1.3),
    "aacl": (0.812, {PGD8: 0.461, PGD16: 0.205}, 1.4),
}
CORRUPTIONS = ("gaussian_noise", "fog", "brightness")


def _write_json(path: pathlib.Path, value) -> None:
  path.write_text(json.dumps(value))


def write_fake_run(root: pathlib.Path, method: str, seed: int = 0, *, name: str = None,
                   results: tuple = None, config: dict = None, title: str = None) -> pathlib.Path:
  """A run directory root/<name, default the method> with every stage output the report reads; results
  (clean, {attack key: robust accuracy}, geometry ratio) default to FAKE_RESULTS / FAKE_TABLE5[method].
  run.json's config is `config` (e.g. a real run's `config.to_dict()`), by default just {"seed": seed}."""
  rng = np.random.default_rng(seed)
  clean, attacks, ratio = results or {**FAKE_RESULTS, **FAKE_TABLE5}[method]
  name = name or method
  run = root / name
  run.mkdir(parents=True)
  _write_json(run / "run.json", {"name": name, "method": method, "dataset": "digits", "encoder": "small_cnn",
                                 "num_classes": 3, "class_names": CLASS_NAMES,
                                 "config": {"seed": seed} if config is None else config,
                                 **({"title": title} if title else {})})
  _write_json(run / "linear_eval.json", {"top1": clean, "knn_top1": clean - 0.01, "protocol": "linear",
                                         "num_test": 100})
  _write_json(run / "robustness.json", {"clean_accuracy": clean, "num_examples": 100, "attacks": [
      {"attack": a, "norm": n, "eps": e, "eps_label": label, "robust_accuracy": acc,
       "p_drop": (clean - acc) / clean, "seconds": 1.0, "spec": f"{a}:{n}:{label}"}
      for (a, n, e, label), acc in attacks.items()]})
  intra = 0.5
  _write_json(run / "geometry.json", {"inter_class": ratio * intra, "intra_class": intra, "ratio": ratio,
                                      "alignment": None, "uniformity": -3.0,
                                      "class_distance_matrix": [[intra, 1.0, 1.0], [1.0, intra, 1.0],
                                                                [1.0, 1.0, intra]], "num_examples": 100})
  labels = rng.integers(0, 3, 60)
  tsne.save_tsne(run / "tsne.npz", {"points": rng.normal(size=(60, 2)).astype(np.float32) + 4 * labels[:, None],
                                    "labels": labels, "indices": np.arange(60)}, CLASS_NAMES)
  severities = [1, 2, 3, 4, 5]
  results = {c: {str(s): clean * (1 - 0.05 * s * (i + 1) * (1.5 if method == "simclr" else 1.0))
                 for s in severities} for i, c in enumerate(CORRUPTIONS)}
  relative = {c: {s: (clean - acc) / clean for s, acc in by_s.items()} for c, by_s in results.items()}
  _write_json(run / "corruptions.json", {
      "clean_accuracy": clean, "severities": severities, "results": results, "relative_drop": relative,
      "mean_relative_drop_by_corruption": {c: float(np.mean(list(d.values()))) for c, d in relative.items()}})
  fnc = method == "afnc"
  with open(run / "pretrain_metrics.jsonl", "w") as f:
    for step in range(0, 100, 10):
      f.write(json.dumps({"step": step, "loss": 5.0 - step / 50, "lr": 0.1,
                          "rho": 0.99 - 0.003 * step if fnc else None,
                          "cancelled_per_anchor": 0.1 * step if fnc else None,
                          "cancel_precision": 0.5 + 0.004 * step if fnc else None,
                          "cancel_recall": 0.2 + 0.005 * step if fnc else None}) + "\n")
  return run

"""The robustness-evaluation stage (csl_jax/eval/robustness.py): spec parsing and its output files."""
import functools
import json

import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax import attacks
from csl_jax.eval import robustness

CIFAR_DEFAULT = ("fgsm:linf:8/255,fgsm:linf:16/255,pgd:l2:0.1,pgd:l2:0.25,pgd:l1:8.0,autoattack:linf:1/255,"
                 "autoattack:linf:2/255,pgd:linf:8/255")

RNG = np.random.default_rng(0)
W = (RNG.normal(size=(48, 10)) * 3).astype(np.float32)
IMAGES = RNG.integers(0, 256, (30, 4, 4, 3)).astype(np.uint8)


def logits_fn(x):
  return jnp.reshape(x, (x.shape[0], -1)) @ W


LABELS = np.argmax(np.asarray(logits_fn(IMAGES / 255.0)), axis=1).astype(np.int32)
LABELS[:3] = (LABELS[:3] + 1) % 10  # a few clean mistakes, so clean accuracy < 1


def test_parses_the_cifar_default():
  specs = robustness.parse_attacks(CIFAR_DEFAULT)
  assert [(s.name, s.norm) for s in specs][:3] == [("fgsm", "linf"), ("fgsm", "linf"), ("pgd", "l2")]
  assert specs[0].eps == pytest.approx(8 / 255) and specs[0].eps_label == "8/255"
  assert specs[4].eps == 8.0 and specs[4].norm == "l1"


def test_parses_options():
  (spec,) = robustness.parse_attacks("pgd:linf:8/255:steps=10:random_start=false:step_size=1/255")
  assert spec.options == {"steps": 10, "random_start": False, "step_size": pytest.approx(1 / 255)}


@pytest.mark.parametrize("spec, message", [
    ("cw:linf:8/255", "unknown attack"),
    ("pgd:l3:0.1", "supports norms"),
    ("square:l1:1.0", "supports norms"),
    ("pgd:linf", "expected 'name:norm:eps"),
    ("pgd:linf:eight", "not a number"),
    ("pgd:linf:8/255:stepz=3", "no option 'stepz'"),
    ("pgd:linf:0", "eps must be > 0"),
    ("", "empty"),
])
def test_bad_specs_fail_clearly(spec, message):
  with pytest.raises(ValueError, match=message):
    robustness.parse_attacks(spec)


def test_stage_writes_json_markdown_and_plot(tmp_path):
  spec = "fgsm:linf:8/255,pgd:linf:8/255:steps=5,pgd:l2:0.3:steps=5,pgd:l1:2.0:steps=5,apgd:linf:16/255:n_iter=10"
  result = robustness.run_robustness_stage(logits_fn, IMAGES, LABELS, tmp_path, attacks_spec=spec, batch_size=8,
                                           seed=0, max_examples=28)
  on_disk = json.loads((tmp_path / "robustness.json").read_text())
  assert on_disk == json.loads(json.dumps(result))
  assert result["num_examples"] == 28
  clean = result["clean_accuracy"]
  assert clean == pytest.approx(np.mean(LABELS[:28] == np.argmax(np.asarray(logits_fn(IMAGES[:28] / 255.0)), 1)))
  assert len(result["attacks"]) == 5
  for row in result["attacks"]:
    assert set(row) >= {"attack", "norm", "eps", "eps_label", "robust_accuracy", "p_drop", "seconds"}
    assert 0.0 <= row["robust_accuracy"] <= clean
    assert row["p_drop"] == pytest.approx((clean - row["robust_accuracy"]) / clean)
  # The stage reports exactly what the batch loop measures for the same attack.
  fgsm = functools.partial(attacks.fgsm, logits_fn, eps=8 / 255, norm="linf")
  direct, _ = attacks.robust_accuracy(fgsm, logits_fn, IMAGES[:28], LABELS[:28], batch_size=8, progress=False)
  assert result["attacks"][0]["robust_accuracy"] == pytest.approx(direct)
  table = (tmp_path / "robustness.md").read_text()
  assert sum(line.startswith("| ") for line in table.splitlines()) == 7  # header, clean, 5 attacks
  assert "pgd:l1:2.0:steps=5" in table
  assert (tmp_path / "robustness_vs_eps.png").stat().st_size > 1000


def test_stage_runs_autoattack_from_a_spec(tmp_path):
  result = robustness.run_robustness_stage(logits_fn, IMAGES, LABELS, tmp_path, attacks_spec="autoattack:l2:0.3",
                                           batch_size=16, seed=1)
  (row,) = result["attacks"]
  assert row["attack"] == "autoattack" and row["norm"] == "l2"
  assert row["robust_accuracy"] < result["clean_accuracy"]

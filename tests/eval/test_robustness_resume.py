"""A robustness evaluation interrupted after a chunk resumes to the numbers of an uninterrupted run; seeds."""
import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax.data import ArrayDataset
from csl_jax.eval import robustness, robustness_progress
from csl_jax.train import sharding

RNG = np.random.default_rng(1)
W = jnp.asarray(RNG.normal(size=(48, 10)).astype(np.float32) * 3)
IMAGES = RNG.integers(0, 256, (40, 4, 4, 3)).astype(np.uint8)


def logits_fn(x):
  return jnp.reshape(x, (x.shape[0], -1)) @ W


LABELS = np.asarray(jnp.argmax(logits_fn(IMAGES / 255.0), -1)).astype(np.int32)
DATASET = ArrayDataset(images=IMAGES, labels=LABELS, class_names=[str(i) for i in range(10)])
SPEC = "pgd:linf:4/255:steps=5,autoattack:linf:4/255"


class Interrupted(RuntimeError):
  pass


def _evaluate(run_dir, **kwargs):
  result = robustness.evaluate(logits_fn, DATASET, attacks_spec=SPEC, batch_size=8, chunk_size=16, seed=3,
                               mesh=sharding.make_mesh(), progress_dir=run_dir, provenance={"model": "w"}, **kwargs)
  for row in result["attacks"]:
    row.pop("seconds")
  return result


def test_interrupted_evaluation_resumes_to_identical_numbers(tmp_path):
  expected = _evaluate(tmp_path / "a")
  calls = []

  def interrupt(seed, attack, chunk):
    calls.append((seed, attack, chunk))
    if (attack, chunk) == (1, 1):  # after AutoAttack finished the second chunk
      raise Interrupted

  with pytest.raises(Interrupted):
    _evaluate(tmp_path / "b", on_unit=interrupt)
  units = sorted(p.name for p in (tmp_path / "b" / robustness_progress.DIRNAME).glob("unit-*.npz"))
  assert units == ["unit-s0-a0-c0.npz", "unit-s0-a0-c1.npz", "unit-s0-a1-c0.npz", "unit-s0-a1-c1.npz"]
  resumed_units = []
  resumed = _evaluate(tmp_path / "b", on_unit=lambda *unit: resumed_units.append(unit))
  assert resumed == expected
  assert not (tmp_path / "b" / robustness_progress.DIRNAME).exists(), "progress is removed once the result exists"
  points = np.load(tmp_path / "b" / "robustness_points.npz")
  assert points["robust"].shape == (1, 2, 40) and points["broken_by"].shape == (1, 2, 40)
  # Which stage broke each point: AutoAttack's per-stage shares add up to clean minus robust accuracy.
  row = expected["attacks"][1]
  assert sum(row["broken_by_stage"].values()) == pytest.approx(expected["clean_accuracy"] - row["robust_accuracy"])


def test_changed_inputs_discard_partial_progress(tmp_path):
  with pytest.raises(Interrupted):
    _evaluate(tmp_path, on_unit=lambda *unit: (_ for _ in ()).throw(Interrupted()))
  assert list((tmp_path / robustness_progress.DIRNAME).glob("unit-*.npz"))
  store = robustness_progress.Progress(tmp_path, {"provenance": {"model": "other"}})
  assert not list(store.dir.glob("unit-*.npz"))


def test_several_seeds_give_mean_and_spread(tmp_path):
  result = _evaluate(tmp_path, num_seeds=3)
  row = result["attacks"][0]
  assert len(row["robust_accuracy_seeds"]) == 3 and result["num_seeds"] == 3
  assert row["robust_accuracy"] == pytest.approx(np.mean(row["robust_accuracy_seeds"]))
  assert row["spread"] == pytest.approx(max(row["robust_accuracy_seeds"]) - min(row["robust_accuracy_seeds"]))

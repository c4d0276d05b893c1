"""IFND in the training loop on digits: re-clustering state in checkpoints, exact resume, the streamed-data error."""
import json

import jax
import numpy as np
import pytest

from csl_jax import ifnd
from csl_jax.train import checkpoint
from tests.train.test_loop import Preempted, digits_train, preempt_after, pretrain, tiny_config  # noqa: F401

# 1437 digits / batch 64 = 22 steps per epoch; 1/22 epochs = a re-clustering before every step but the first
# (refresh at steps 1, 2, 3); 4 steps, checkpoints after steps 2 and 4.
OVERRIDES = {"methods.ifnd.num_clusters": "20,5", "methods.ifnd.recluster_every_epochs": 1 / 22,
             "methods.ifnd.kmeans_iters": 5, "eval_batch_size": 1440, "pretrain.num_steps": 4,
             "pretrain.checkpoint_every": 2, "pretrain.log_every": 1}


def _restore(run_dir, step):
  restored = checkpoint.manager(run_dir / "checkpoints").restore(step)
  return jax.tree.map(np.asarray, {"params": restored["params"], "method_state": restored["method_state"]})


def test_interrupted_after_reclustering_resumes_exactly(tmp_path, digits_train):
  config = tiny_config(**OVERRIDES)
  pretrain(config, "ifnd", tmp_path / "a", digits_train)
  with pytest.raises(Preempted):
    pretrain(config, "ifnd", tmp_path / "b", digits_train, on_step=preempt_after(3))
  saved = _restore(tmp_path / "b", 2)  # the checkpoint resumed from holds the step-1 clustering
  assert int(saved["method_state"]["clustered_at"]) == 1
  pretrain(config, "ifnd", tmp_path / "b", digits_train)
  uninterrupted, resumed = _restore(tmp_path / "a", 4), _restore(tmp_path / "b", 4)
  jax.tree.map(np.testing.assert_array_equal, uninterrupted, resumed)

  state = resumed["method_state"]
  assert int(state["clustered_at"]) == 3
  assert float(state["acceptance"]) == pytest.approx(3 / 4)
  labels = state["pseudo_labels"]
  assert labels.shape == (digits_train.num_examples, 2)
  assert np.mean(labels >= 0, axis=0) == pytest.approx([3 / 4, 3 / 4], abs=1e-3)
  assert np.all(labels.max(axis=0) == [19, 4])
  cancelled = [json.loads(line)["cancelled_per_anchor"]
               for line in (tmp_path / "a" / "pretrain_metrics.jsonl").read_text().splitlines()]
  assert cancelled[0] == 0.0 and 0.0 < cancelled[1] < cancelled[-1]  # nothing before the first clustering


def test_acceptance_schedule_and_confidence_ranking():
  config = tiny_config()
  sub = config.methods.ifnd
  assert ifnd.acceptance_rate(sub, 0, 10) == sub.acceptance_initial
  assert ifnd.acceptance_rate(sub, 10, 10) == sub.acceptance_final
  similarity = np.array([[0.1, 0.9, 0.5, 0.9], [0.3, 0.2, 0.1, 0.0]], np.float32)
  np.testing.assert_array_equal(ifnd.accepted(similarity, 0.5), [[False, True, False, True], [True, True, False, False]])
  assert not np.any(ifnd.accepted(similarity, 0.0)) and np.all(ifnd.accepted(similarity, 1.0))


def test_streamed_training_split_is_refused():
  config = tiny_config()

  class Streamed:
    num_examples = 128

  from csl_jax import methods
  method = methods.get("ifnd")
  with pytest.raises(ValueError, match="in-memory"):
    method.family.refresh(method, config, None, 2, model=None, train_ds=Streamed(), mesh=None)

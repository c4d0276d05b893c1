"""The adversarial linear protocol: a head trained on PGD examples is more robust than the standard head on the
same frozen features, and the pipeline selects it from the config (with its own provenance)."""
import functools

import jax.numpy as jnp
import numpy as np

from configs import quickstart
from csl_jax import attacks, data, pipeline
from csl_jax.eval import adversarial_probe, linear
from csl_jax.train import sharding


def _features(x):  # a frozen "encoder": the pixels themselves
  return jnp.reshape(x, (x.shape[0], -1))


def test_adversarial_head_is_more_robust_than_the_standard_one():
  train, test = data.load("digits", "train"), data.load("digits", "test")
  mesh = sharding.make_mesh()
  common = dict(epochs=8, batch_size=128, lr=0.5, weight_decay=0.0, seed=0)
  standard = linear.train_linear_head(np.asarray(_features(train.images / 255.0)), train.labels, 10, **common)
  robust = adversarial_probe.fit_adversarial_head(_features, train, 10, feature_dim=64, eps=0.1, step_size=0.03,
                                                  steps=5, mesh=mesh, **common)
  x, y = test.images / 255.0, test.labels

  def robust_accuracy(head):
    logits_fn = lambda images: _features(images) @ head["kernel"] + head["bias"]
    attack = functools.partial(attacks.pgd, logits_fn, eps=0.1, norm="linf", steps=20)
    return attacks.robust_accuracy(attack, logits_fn, x.astype(np.float32), y, batch_size=360, progress=False)[0]

  clean = lambda head: float(np.mean(np.argmax(np.asarray(_features(x)) @ head["kernel"] + head["bias"], -1) == y))
  assert clean(robust) > 0.6, clean(robust)
  assert robust_accuracy(robust) > robust_accuracy(standard) + 0.1, (robust_accuracy(robust), robust_accuracy(standard))


def test_pipeline_selects_the_protocol_and_records_it(tmp_path):
  c = quickstart.get_config("smoke")
  c.runs = "simclr"
  c.evaluators = "linear_eval"
  c.pretrain.num_steps = 2
  c.linear_eval.epochs = 2
  c.linear_eval.adversarial_steps = 2
  standard = pipeline.run(c, tmp_path)["simclr"]["linear_eval"]
  c.linear_eval.protocol = "adversarial"
  adversarial = pipeline.run(c, tmp_path)["simclr"]["linear_eval"]
  assert standard["protocol"] == "linear_probe" and adversarial["protocol"] == "adversarial_linear_probe"
  assert adversarial["provenance"]["model"]["head_sha256"] != standard["provenance"]["model"]["head_sha256"]
  spec = (tmp_path / "linear_head.json").read_text()
  assert '"protocol": "adversarial"' in spec and '"steps": 2' in spec

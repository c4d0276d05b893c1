"""Linear evaluation: a linear probe on frozen encoder features (standard protocol) and the evaluator that
reports its top-1 accuracy next to the kNN monitor's.

Features are extracted once (eval-mode encoder, no augmentation), standardised with the training
statistics, and a softmax regression is trained with SGD + Nesterov momentum and a cosine schedule,
all inside one jitted `lax.fori_loop`. The standardisation is folded back into the weights, so the
returned head is a plain Dense layer on raw features and drops into `models.ImageClassifier`.
`fit_or_load_head` keeps the head in <run_dir>/linear_head.npz with its provenance beside it.
"""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from csl_jax.eval import batches, knn
from csl_jax.eval import registry
from csl_jax.models import inference


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size"))
def _fit(features, labels, key, *, num_classes, epochs, batch_size, lr, weight_decay):
  n, dim = features.shape
  steps_per_epoch = max(n // batch_size, 1)
  total_steps = epochs * steps_per_epoch
  tx = optax.sgd(optax.cosine_decay_schedule(lr, total_steps), momentum=0.9, nesterov=True)
  params = {"kernel": jnp.zeros((dim, num_classes)), "bias": jnp.zeros((num_classes,))}

  def loss_fn(params, x, y):
    logits = x @ params["kernel"] + params["bias"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + 0.5 * weight_decay * jnp.sum(params["kernel"] ** 2)

  def body(step, carry):
    params, opt_state = carry
    epoch, offset = step // steps_per_epoch, (step % steps_per_epoch) * batch_size
    order = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    index = jax.lax.dynamic_slice_in_dim(order, offset, batch_size)
    grads = jax.grad(loss_fn)(params, features[index], labels[index])
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, _ = jax.lax.fori_loop(0, total_steps, body, (params, tx.init(params)))
  return params


def train_linear_head(features, labels, num_classes: int, *, epochs: int = 100, batch_size: int = 512,
                      lr: float = 0.1, weight_decay: float = 0.0, seed: int = 0) -> dict:
  """features f32[N, D], labels i32[N] -> {"kernel": f32[D, C], "bias": f32[C]} for raw features."""
  features = np.asarray(features, np.float32)
  if not np.all(np.isfinite(features)):
    raise FloatingPointError("Encoder features contain NaN/Inf; the pretrained encoder diverged. "
                             "Check pretrain_metrics.jsonl and lower optim.lr.")
  mean, std = features.mean(0), features.std(0) + 1e-6
  batch_size = min(batch_size, len(features))
  head = _fit(jnp.asarray((features - mean) / std), jnp.asarray(labels, jnp.int32), jax.random.PRNGKey(seed),
              num_classes=num_classes, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay)
  kernel = np.asarray(head["kernel"]) / std[:, None]
  bias = np.asarray(head["bias"]) - mean @ kernel
  return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}


def _head_spec(config, model_fingerprint: dict) -> dict:
  c = config.linear_eval
  spec = {"model": model_fingerprint, "train_split": config.dataset.train_split, "seed": config.seed,
          "epochs": c.epochs, "batch_size": c.batch_size, "lr": c.lr, "weight_decay": c.weight_decay,
          "protocol": c.protocol}
  if c.protocol == "adversarial":
    spec.update(eps=c.adversarial_eps, step_size=c.adversarial_step_size, steps=c.adversarial_steps)
  return spec


def fit_or_load_head(config, train_features, run_dir, *, num_classes: int, model_fingerprint: dict,
                     features_fn=None, train_ds=None, mesh=None) -> dict:
  """The linear probe of this run's encoder: loaded from linear_head.npz when it was fitted on the same
  weights with the same settings, else fitted and saved. Standard protocol: on `train_features()`
  (-> (f32[N, D], i32[N])); adversarial protocol (`linear_eval.protocol`): on PGD examples of the frozen
  encoder `features_fn` (f32 [0, 1] images -> f32[B, D]) over `train_ds` (`eval.adversarial_probe`)."""
  run_dir = pathlib.Path(run_dir)
  head_path, meta_path = run_dir / "linear_head.npz", run_dir / "linear_head.json"
  spec = json.loads(json.dumps(_head_spec(config, model_fingerprint)))
  if head_path.exists() and meta_path.exists():
    try:
      if json.loads(meta_path.read_text()) == spec:
        return dict(np.load(head_path))
    except ValueError:
      pass
    logging.info("%s: refitting the linear probe (the encoder or linear_eval settings changed).", run_dir.name)
  c = config.linear_eval
  if c.protocol == "adversarial":
    from csl_jax.eval import adversarial_probe  # pylint: disable=g-import-not-at-top (imports the train package)
    head = adversarial_probe.fit_adversarial_head(
        features_fn, train_ds, num_classes, feature_dim=adversarial_probe.feature_dim(features_fn, train_ds.image_shape),
        epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay, seed=config.seed,
        eps=c.adversarial_eps, step_size=c.adversarial_step_size, steps=c.adversarial_steps, mesh=mesh)
  else:
    features, labels = train_features()
    head = train_linear_head(features, labels, num_classes, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
                             weight_decay=c.weight_decay, seed=config.seed)
  if jax.process_index() == 0:
    tmp = run_dir / "linear_head.tmp.npz"
    np.savez(tmp, **head)
    tmp.replace(head_path)
    registry.write_json(meta_path, spec)
  return head


@jax.jit
def _counts(features_fn, logits_fn, bank, images, labels, mask):
  """i32[3]: linear top-1 correct, kNN top-1 correct, real rows of one batch (models and bank as traced pytrees)."""
  x = batches.to_unit_floats(images)
  knn_ok = (knn.predict(bank, features_fn(x)) == labels) & mask
  return jnp.stack([batches.count_correct(logits_fn(x), labels, mask), jnp.sum(knn_ok, dtype=jnp.int32),
                    jnp.sum(mask, dtype=jnp.int32)])


class LinearEvaluator:
  """linear_eval.json: top-1 of the classifier (linear probe, or the end-to-end head of CE) and kNN top-1,
  both from one pass over the test split."""
  name = "linear_eval"

  def __init__(self, config, *, train_features, mesh, **unused):
    del unused
    self.config, self.train_features, self.mesh = config, train_features, mesh

  def spec(self) -> dict:
    c = self.config.linear_eval
    return {"knn_k": c.knn_k, "knn_temperature": c.knn_temperature, "train_split": self.config.dataset.train_split}

  def run(self, classifier, dataset, run_dir) -> dict:
    features, labels = self.train_features()
    bank = knn.make_bank(features, labels, num_classes=classifier.num_classes, k=self.config.linear_eval.knn_k,
                         temperature=self.config.linear_eval.knn_temperature)

    totals = np.zeros(3, np.int64)
    for batch in batches.eval_batches(dataset, self.config.eval_batch_size, mesh=self.mesh):
      totals += np.asarray(jax.device_get(_counts(inference.as_pytree(classifier.features),
                                                  inference.as_pytree(classifier.logits), bank, batch.images,
                                                  batch.labels, batch.mask)))
    top1, knn_top1 = totals[0] / totals[2], totals[1] / totals[2]
    logging.info("%s: linear top-1 %.2f%%, kNN top-1 %.2f%%", pathlib.Path(run_dir).name, 100 * top1, 100 * knn_top1)
    protocol = classifier.fingerprint.get("head", "linear_probe")
    if protocol == "linear_probe" and self.config.linear_eval.protocol == "adversarial":
      protocol = "adversarial_linear_probe"
    return {"top1": float(top1), "knn_top1": float(knn_top1), "protocol": protocol,
            "num_test": int(totals[2])}

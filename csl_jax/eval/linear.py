"""Linear evaluation: a linear probe on frozen encoder features (standard protocol) and the evaluator that
reports its top-1 accuracy next to the kNN monitor's.

Features come from the eval-mode encoder (no augmentation) and are standardised with the training statistics; a
softmax regression is trained with SGD + Nesterov momentum and a cosine schedule, epoch e visiting the training
examples in the order `data.epoch_permutation(N, seed, e)` (the order of `dataset.batches(shuffle=True)`). The
standardisation is folded back into the weights, so the returned head is a plain Dense layer on raw features and
drops into `models.ImageClassifier`. Two ways to get there, chosen by `train_features` (linear_eval.feature_cache_gb):

  held       the features of the training examples are extracted once and kept in memory; the whole fit is one
             jitted `lax.fori_loop` (`train_linear_head`), and the kNN monitor uses them as its bank. CIFAR, and
             ImageNet subsets (linear_eval.num_train_examples) or ViT-B/16's 768-d features of all 1.28M images
             (3.9 GB).
  streamed   when N x D x 4 bytes exceed the limit (ResNet-50's 2048-d features of all ImageNet images: 10.5 GB),
             nothing is held: one pass over the split gives the standardisation statistics, then every SGD step
             reads its batch from the (streamed) split and computes its features on the fly
             (`fit_streamed_head`) — epochs + 1 encoder passes instead of one, but memory stays one batch, and
             the same examples in the same order give the head `train_linear_head` gives (up to float rounding).
             kNN is skipped (its bank would be the features that do not fit).
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

from csl_jax.data import dataset
from csl_jax.eval import adversarial_probe, batches, knn
from csl_jax.eval import registry
from csl_jax.models import inference
from csl_jax.train import sharding


def _optimizer(lr: float, total_steps: int):
  return optax.sgd(optax.cosine_decay_schedule(lr, total_steps), momentum=0.9, nesterov=True)


def _loss(params, x, y, weight_decay):
  """Softmax cross-entropy of the probe on standardised features x f32[B, D] + L2 on the kernel."""
  logits = x @ params["kernel"] + params["bias"]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return ce + 0.5 * weight_decay * jnp.sum(params["kernel"] ** 2)


def _init_head(dim: int, num_classes: int) -> dict:
  return {"kernel": jnp.zeros((dim, num_classes)), "bias": jnp.zeros((num_classes,))}


def _epoch_orders(num_examples: int, epochs: int, seed: int) -> np.ndarray:
  """i32[epochs, N]: the visiting order of every epoch, `dataset.batches(shuffle=True)`'s."""
  return np.stack([dataset.epoch_permutation(num_examples, seed, e) for e in range(epochs)]).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("num_classes", "batch_size"))
def _fit(features, labels, orders, *, num_classes, batch_size, lr, weight_decay):
  n, dim = features.shape
  epochs = orders.shape[0]
  steps_per_epoch = max(n // batch_size, 1)
  total_steps = epochs * steps_per_epoch
  tx = _optimizer(lr, total_steps)
  params = _init_head(dim, num_classes)

  def body(step, carry):
    params, opt_state = carry
    epoch, offset = step // steps_per_epoch, (step % steps_per_epoch) * batch_size
    index = jax.lax.dynamic_slice_in_dim(orders[epoch], offset, batch_size)
    grads = jax.grad(_loss)(params, features[index], labels[index], weight_decay)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, _ = jax.lax.fori_loop(0, total_steps, body, (params, tx.init(params)))
  return params


def _check_finite(values):
  if not np.all(np.isfinite(values)):
    raise FloatingPointError("Encoder features contain NaN/Inf; the pretrained encoder diverged. "
                             "Check pretrain_metrics.jsonl and lower optim.lr.")


def _unstandardised(head, mean, std) -> dict:
  """A head trained on (features - mean) / std as a head on raw features."""
  kernel = np.asarray(head["kernel"]) / std[:, None]
  bias = np.asarray(head["bias"]) - mean @ kernel
  return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}


def train_linear_head(features, labels, num_classes: int, *, epochs: int = 100, batch_size: int = 512,
                      lr: float = 0.1, weight_decay: float = 0.0, seed: int = 0) -> dict:
  """features f32[N, D], labels i32[N] -> {"kernel": f32[D, C], "bias": f32[C]} for raw features."""
  features = np.asarray(features, np.float32)
  _check_finite(features)
  mean, std = features.mean(0), features.std(0) + 1e-6
  batch_size = min(batch_size, len(features))
  head = _fit(jnp.asarray((features - mean) / std), jnp.asarray(labels, jnp.int32),
              jnp.asarray(_epoch_orders(len(features), epochs, seed)), num_classes=num_classes,
              batch_size=batch_size, lr=lr, weight_decay=weight_decay)
  return _unstandardised(head, mean, std)


@inference.jit_over_model
def _feature_moments(features_fn, images, mask):
  """(i32[] n, f32[D] mean, f32[D] sum of squared deviations from that mean) of one batch's real rows' features:
  the within-batch two-pass form, so nearly constant features keep their small variance in float32."""
  f = features_fn(batches.to_unit_floats(images))
  weight = mask[:, None].astype(f.dtype)
  n = jnp.sum(mask, dtype=jnp.int32)
  mean = jnp.sum(f * weight, axis=0) / jnp.maximum(n, 1)
  return n, mean, jnp.sum(jnp.square(f - mean) * weight, axis=0)


def _combine_moments(a: tuple, b: tuple) -> tuple:
  """(n, mean, M2) of two sets from theirs (Chan et al.'s parallel update), in float64 on the host."""
  (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
  n = n_a + n_b
  if n_b == 0:
    return a
  delta = mean_b - mean_a
  return n, mean_a + delta * (n_b / n), m2_a + m2_b + np.square(delta) * (n_a * n_b / n)


@functools.partial(inference.jit_over_model, static_argnames=("lr", "total_steps", "weight_decay"))
def _streamed_step(features_fn, params, opt_state, images, labels, mean, std, *, lr, total_steps, weight_decay):
  """One SGD step of the probe on a global batch of u8 images: features on the fly (frozen encoder)."""
  x = (jax.lax.stop_gradient(features_fn(batches.to_unit_floats(images))) - mean) / std
  grads = jax.grad(_loss)(params, x, labels, weight_decay)
  updates, opt_state = _optimizer(lr, total_steps).update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def streamed_batch_size(batch_size: int, num_examples: int, mesh) -> int:
  """The probe's global batch on a streamed split: batch_size capped at the split, rounded down to a multiple of
  the data axis and process count (at least one such multiple), as every step's batch is sharded."""
  granule = batches.global_batch_size(1, mesh)
  if num_examples < granule:
    raise ValueError(f"The streamed linear probe needs at least {granule} training examples (one per device and "
                     f"process in every batch), the split has {num_examples}; raise linear_eval.feature_cache_gb to "
                     "hold the features instead.")
  return max(min(int(batch_size), int(num_examples)) // granule, 1) * granule


def fit_streamed_head(features_fn, train_ds, num_classes: int, *, mesh, epochs: int = 100, batch_size: int = 512,
                      lr: float = 0.1, weight_decay: float = 0.0, seed: int = 0, eval_batch_size: int = 512,
                      desc: str = "linear probe") -> dict:
  """The probe of `train_linear_head`, trained without holding the features (see the module docstring).

  features_fn: f32 [0, 1] images -> f32[B, D] (frozen encoder); train_ds: any split (streamed or not), read
  through `eval.batches` for the statistics and `train_ds.batches(shuffle=True)` for the SGD steps.
  """
  moments = (0, 0.0, 0.0)
  for batch in batches.eval_batches(train_ds, eval_batch_size, mesh=mesh):
    n, batch_mean, m2 = jax.device_get(_feature_moments(features_fn, batch.images, batch.mask))
    moments = _combine_moments(moments, (int(n), np.asarray(batch_mean, np.float64), np.asarray(m2, np.float64)))
  total, mean, m2 = moments
  _check_finite(mean)
  std = np.sqrt(m2 / total) + 1e-6
  size = streamed_batch_size(batch_size, len(train_ds), mesh)
  steps_per_epoch = max(len(train_ds) // size, 1)
  total_steps = epochs * steps_per_epoch
  params = _init_head(len(mean), num_classes)
  opt_state = _optimizer(lr, total_steps).init(params)
  stream = train_ds.batches(size, seed=seed, shuffle=True)
  mean32, std32 = (sharding.replicate(jnp.asarray(a, jnp.float32), mesh) for a in (mean, std))
  progress = batches.Progress(desc, total_steps)
  for step in range(total_steps):
    batch = sharding.shard_batch({k: v for k, v in next(stream).items() if k in ("image", "label")}, mesh)
    params, opt_state = _streamed_step(features_fn, params, opt_state, batch["image"], batch["label"], mean32, std32,
                                       lr=float(lr), total_steps=total_steps, weight_decay=float(weight_decay))
    progress.update(step + 1)
  return _unstandardised(jax.device_get(params), mean.astype(np.float32), std.astype(np.float32))


def train_features(config, features_fn, train_ds, mesh):
  """Memoised thunk: (f32[N, D], i32[N]) features and labels of the first linear_eval.num_train_examples of
  `train_ds` when they fit in linear_eval.feature_cache_gb, else None (the probe then streams, kNN is skipped).
  Also None without a training split."""
  if train_ds is None:
    return lambda: None
  subset = batches.subset(train_ds, config.linear_eval.num_train_examples)
  dim = adversarial_probe.feature_dim(features_fn, train_ds.image_shape)
  if len(subset) * dim * 4 > config.linear_eval.feature_cache_gb * (1 << 30):
    logging.info("Train features (%d x %d) exceed linear_eval.feature_cache_gb=%g: the linear probe streams and "
                 "kNN is skipped.", len(subset), dim, config.linear_eval.feature_cache_gb)
    return lambda: None

  @functools.cache
  def held():
    return batches.map_batches(lambda b: batches.apply_to_uint8(features_fn, b.images), subset,
                               config.eval_batch_size, mesh=mesh, desc="train features")
  return held


def _head_spec(config, model_fingerprint: dict) -> dict:
  c = config.linear_eval
  spec = {"model": model_fingerprint, "train_split": config.dataset.train_split, "seed": config.seed,
          "epochs": c.epochs, "batch_size": c.batch_size, "lr": c.lr, "weight_decay": c.weight_decay,
          "protocol": c.protocol, "num_train_examples": c.num_train_examples}
  if c.protocol == "adversarial":
    spec.update(eps=c.adversarial_eps, step_size=c.adversarial_step_size, steps=c.adversarial_steps)
  return spec


def fit_or_load_head(config, train_features, run_dir, *, num_classes: int, model_fingerprint: dict,
                     features_fn=None, train_ds=None, mesh=None) -> dict:
  """The linear probe of this run's encoder: loaded from linear_head.npz when it was fitted on the same
  weights with the same settings, else fitted and saved. Standard protocol: on `train_features()`
  (-> (f32[N, D], i32[N]), see `train_features`), or — when that is None — by `fit_streamed_head` over the
  first linear_eval.num_train_examples of `train_ds`; adversarial protocol (`linear_eval.protocol`): on PGD
  examples of the frozen encoder `features_fn` (f32 [0, 1] images -> f32[B, D]) over `train_ds`
  (`eval.adversarial_probe`)."""
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
  if train_ds is None:
    raise ValueError("A linear probe needs a training split; set config.dataset.train_split.")
  common = dict(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay, seed=config.seed)
  if c.protocol == "adversarial":
    subset = batches.subset(train_ds, c.num_train_examples)
    head = adversarial_probe.fit_adversarial_head(
        features_fn, subset, num_classes, feature_dim=adversarial_probe.feature_dim(features_fn, train_ds.image_shape),
        eps=c.adversarial_eps, step_size=c.adversarial_step_size, steps=c.adversarial_steps, mesh=mesh, **common)
  elif train_features() is not None:
    features, labels = train_features()
    head = train_linear_head(features, labels, num_classes, **common)
  else:
    head = fit_streamed_head(features_fn, batches.subset(train_ds, c.num_train_examples), num_classes, mesh=mesh,
                             eval_batch_size=config.eval_batch_size, **common)
  if jax.process_index() == 0:
    tmp = run_dir / "linear_head.tmp.npz"
    np.savez(tmp, **head)
    tmp.replace(head_path)
    registry.write_json(meta_path, spec)
  return head


@jax.jit
def _counts(features_fn, logits_fn, bank, images, labels, mask):
  """i32[3]: linear top-1 correct, kNN top-1 correct (0 without a bank), real rows of one batch (models and bank
  as traced pytrees)."""
  x = batches.to_unit_floats(images)
  knn_correct = jnp.zeros((), jnp.int32)
  if bank is not None:
    knn_correct = jnp.sum((knn.predict(bank, features_fn(x)) == labels) & mask, dtype=jnp.int32)
  return jnp.stack([batches.count_correct(logits_fn(x), labels, mask), knn_correct, jnp.sum(mask, dtype=jnp.int32)])


class LinearEvaluator:
  """linear_eval.json: top-1 of the classifier (linear probe, or the end-to-end head of CE or of a release) and
  kNN top-1 (None when the train features are not held, see `train_features`), from one pass over the test split."""
  name = "linear_eval"

  def __init__(self, config, *, train_features, mesh, **unused):
    del unused
    self.config, self.train_features, self.mesh = config, train_features, mesh

  def spec(self) -> dict:
    c = self.config.linear_eval
    return {"knn_k": c.knn_k, "knn_temperature": c.knn_temperature, "train_split": self.config.dataset.train_split,
            "num_train_examples": c.num_train_examples}

  def run(self, classifier, dataset, run_dir) -> dict:
    held, bank = self.train_features(), None
    if held is not None:
      bank = knn.make_bank(*held, num_classes=classifier.num_classes, k=self.config.linear_eval.knn_k,
                           temperature=self.config.linear_eval.knn_temperature)

    features_fn, logits_fn = inference.as_pytree(classifier.features), inference.as_pytree(classifier.logits)
    counts = [_counts(features_fn, logits_fn, bank, batch.images, batch.labels, batch.mask)  # one sync, at the end
              for batch in batches.eval_batches(dataset, self.config.eval_batch_size, mesh=self.mesh)]
    totals = np.sum(np.asarray(jax.device_get(counts), np.int64), axis=0)
    top1 = totals[0] / totals[2]
    knn_top1 = None if bank is None else float(totals[1] / totals[2])
    knn_text = "skipped (train features not held)" if knn_top1 is None else f"{100 * knn_top1:.2f}%"
    logging.info("%s: linear top-1 %.2f%%, kNN top-1 %s", pathlib.Path(run_dir).name, 100 * top1, knn_text)
    protocol = classifier.fingerprint.get("head", "linear_probe")
    if protocol == "linear_probe" and self.config.linear_eval.protocol == "adversarial":
      protocol = "adversarial_linear_probe"
    return {"top1": float(top1), "knn_top1": knn_top1, "protocol": protocol, "num_test": int(totals[2])}

"""Published checkpoints as a run's model (`--config.init_from`): the paper's Tables 2 and 3 and Fig. 3.

A run of method "pretrained" trains nothing. The pipeline loads the checkpoint that `python -m csl_jax.convert`
wrote (<dir>/variables + meta.json) where other runs pretrain (`load`), and the evaluators see it as they see any
trained model. It is evaluated
  - with the release's own classifier, end to end, when meta.json says it has one (has_head) for as many classes as
    the dataset has and `linear_eval.release_head` is on (ImageNet classifiers on ImageNet: the class order of
    torchvision / TFDS, sorted WordNet ids, is the folder order of class directories named by WordNet id);
  - otherwise with a linear probe on its frozen features, fitted on the training split (`eval/linear.py`; a
    streamed split trains it by SGD over streamed batches).
Every result records the checkpoint's source sha256 and variables digest (from meta.json, checked on loading), so
another checkpoint evaluated in the same workdir recomputes everything, and run.json's title names the release
("DINO ViT-B/16"), which is what the report prints.

`init_from="random"`: an untrained `config.model.encoder` (seeded by config.seed) — a control (what a linear probe
gets from random features) and what the `:smoke` variants of the pretrained configs run without any download.
"""
import pathlib

import jax
import jax.numpy as jnp
from absl import logging

from csl_jax import convert, methods, models
from csl_jax.models import inference
from csl_jax.train import loop
from csl_jax.train.state import NoMethodState

RANDOM = "random"
# How the report names a release: "<method> <architecture>" from meta.json's format and arch.
FORMAT_TITLES = {"torchvision": "Supervised", "simclr": "SimCLR", "swav": "SwAV", "byol": "BYOL", "dino": "DINO",
                 "mocov3": "MoCo v3", "tclr": "TCLR", "cvrl": "CVRL"}
ARCH_TITLES = {"resnet50": "ResNet-50", "vit_b16": "ViT-B/16", "vit_s16": "ViT-S/16", "r2plus1d_18": "R(2+1)D-18"}


def _dtype(config):
  return jnp.dtype(config.model.dtype)


class Release(NoMethodState):
  """The family of method "pretrained": an `ImageClassifier` (encoder [+ the release's classifier]) that is
  loaded, not trained. Whether it brings a classifier is the checkpoint's (`loop.Pretrained.has_classifier`)."""
  trains_classifier = False

  @staticmethod
  def build_model(config, num_classes: int, mean, std):
    """The untrained model of `init_from="random"` (a converted checkpoint's model comes from its meta.json)."""
    return models.ImageClassifier(encoder=models.get_encoder(config.model.encoder, dtype=_dtype(config)),
                                  num_classes=num_classes, mean=mean, std=std)

  @staticmethod
  def train_step(method, config, model, tx, lr_fn, mesh, image_size: int, total_steps: int):
    raise ValueError("Method 'pretrained' trains nothing: it evaluates the checkpoint in config.init_from.")

  @staticmethod
  def features(model, variables):
    return inference.bind(model, variables, method=models.ImageClassifier.features)

  @staticmethod
  def classifier(model, variables, head, num_classes: int):
    """The release's classifier (head None), or its encoder under the linear probe `head`."""
    if head is None:
      return model, variables
    return methods.linear_probe_classifier(model, variables, head, num_classes)


def _uses_release_head(config, meta: dict, num_classes: int) -> bool:
  return bool(meta["has_head"] and config.linear_eval.release_head and meta["num_classes"] == num_classes)


def _read_meta(config, where: str = "") -> dict:
  """meta.json of config.init_from, with the variables directory present; ValueError for people otherwise."""
  path = pathlib.Path(config.init_from).expanduser()
  try:
    meta = convert.read_meta(path)
  except convert.ConvertedCheckpointError as error:
    raise ValueError(f"{where}config.init_from={config.init_from!r}: {error} Convert a release first, e.g. "
                     "`python -m csl_jax.convert --arch vit_b16 --format dino dino_vitbase16_pretrain.pth "
                     "<dir>` (`--list-formats` lists the releases), or pass 'random' for an untrained "
                     "model.encoder.") from None
  if not (path / convert.VARIABLES).is_dir():
    raise ValueError(f"{where}config.init_from={config.init_from!r}: {path} has meta.json but no "
                     f"{convert.VARIABLES}/ directory (an interrupted copy?); re-run the conversion.")
  return meta


def check(config, method_name: str, *, where: str = "") -> None:
  """Validation of one run: init_from goes with method "pretrained" (both ways) and names a converted checkpoint."""
  is_release = methods.get(method_name).family is Release
  if config.init_from and not is_release:
    raise ValueError(f"{where}config.init_from={config.init_from!r} evaluates a published checkpoint, but method "
                     f"{method_name!r} pretrains; set --config.runs=pretrained, or clear init_from to pretrain.")
  if is_release and not config.init_from:
    raise ValueError(f"{where}method 'pretrained' evaluates a converted checkpoint: set --config.init_from=<dir> "
                     "(written by `python -m csl_jax.convert`; README, 'Published checkpoints'), or 'random' for "
                     f"an untrained {config.model.encoder}.")
  if not config.dataset.train_split:
    if not config.init_from:
      raise ValueError(f"{where}config.dataset.train_split='' leaves nothing to pretrain on; name the split.")
    if config.init_from == RANDOM or not (_read_meta(config, where)["has_head"] and config.linear_eval.release_head):
      raise ValueError(f"{where}config.dataset.train_split='': this model has no classifier of its own to evaluate "
                       "(or linear_eval.release_head is off), so a linear probe needs a training split.")
  if config.init_from and config.init_from != RANDOM:
    _read_meta(config, where)


def title(config) -> str:
  """How the report names the run's model: "DINO ViT-B/16", "Supervised ResNet-50", "Random small_cnn"."""
  if config.init_from == RANDOM:
    return f"Random {config.model.encoder}"
  meta = convert.read_meta(pathlib.Path(config.init_from).expanduser())
  return f"{FORMAT_TITLES.get(meta['format'], meta['format'])} {ARCH_TITLES.get(meta['arch'], meta['arch'])}"


def describe(config) -> dict:
  """run.json's record of the checkpoint: where it was read from and what it is."""
  if config.init_from == RANDOM:
    return {"init_from": RANDOM, "encoder": config.model.encoder, "seed": config.seed}
  meta = convert.read_meta(pathlib.Path(config.init_from).expanduser())
  return {"init_from": str(pathlib.Path(config.init_from).expanduser().resolve()), "arch": meta["arch"],
          "format": meta["format"], "encoder": meta["encoder"], "has_head": meta["has_head"],
          "num_classes": meta["num_classes"], "source": meta.get("source"),
          "variables_sha256": meta["variables_sha256"]}


def load(config, *, num_classes: int, image_shape, mean=None, std=None) -> loop.Pretrained:
  """The run's model, in place of `loop.pretrain`: step 0, `has_classifier` when the release's head is used, and
  `source` = what the evaluators' provenance records of it (checkpoint digests; for "random" the encoder and seed).

  mean, std: input statistics, read only for init_from="random" (a converted checkpoint normalises as its release).
  """
  if config.init_from == RANDOM:
    model = Release.build_model(config, num_classes, mean, std)
    sample = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    variables = jax.jit(lambda key: model.init(key, sample, train=False))(jax.random.PRNGKey(config.seed))
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    return loop.Pretrained(model, variables, 0, has_classifier=False, source=describe(config))
  meta, variables = convert.load_converted(pathlib.Path(config.init_from).expanduser())
  use_head = _uses_release_head(config, meta, num_classes)
  if meta["has_head"] and not use_head:
    why = ("linear_eval.release_head is off" if not config.linear_eval.release_head else
           f"its classifier has {meta['num_classes']} classes, the dataset {num_classes}")
    logging.warning("%s: %s; training a linear probe on its features instead.", config.init_from, why)
    variables = {**variables, "params": {k: v for k, v in variables["params"].items() if k != "head"}}
  if tuple(image_shape) != tuple(meta["input_shape"]):
    logging.warning("%s: the release takes inputs %s, the dataset gives %s.", config.init_from,
                    tuple(meta["input_shape"]), tuple(image_shape))
  model = convert.converted_model({**meta, "has_head": use_head}, num_classes=num_classes, dtype=_dtype(config))
  source = {"source_sha256": (meta.get("source") or {}).get("sha256"), "variables_sha256": meta["variables_sha256"],
            "arch": meta["arch"], "format": meta["format"]}
  return loop.Pretrained(model, variables, 0, has_classifier=use_head, source=source)


PRETRAINED = methods.register(methods.Method("pretrained", "Published checkpoint", Release))

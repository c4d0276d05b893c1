"""The training methods: one registry entry each, the only place that knows what a method is.

An entry says which loss it trains with (a name of `losses.sharded.LOSSES`, run on the global batch),
which config sub-tree holds its hyper-parameters (`config.methods.<name>`), which of them change over
training (schedules, e.g. Adaptive FNC's ρ), whether it needs labels, its augmentation, and — through its
family — how its model is built, how one training step runs, and how its features and classifier are read
for evaluation. The training loop, the step, the sharded loss and the pipeline ask the registry; none of
them branches on a method's name.

Adding a method = one `Method(...)` below plus its loss (in `csl_jax.losses`), or a new family when the
step itself differs (e.g. adversarial views).

    method = methods.get("afnc")
    model = method.family.build_model(config, num_classes, mean, std)
"""
import dataclasses
import functools
import inspect
from typing import Callable, Dict, Optional, Tuple

import jax.numpy as jnp

from csl_jax import losses, models
from csl_jax.models import inference
from csl_jax.data import augment
from csl_jax.losses import sharded as sharded_losses
from csl_jax.train import sharding
from csl_jax.train import adversarial
from csl_jax.train import step as step_lib
from csl_jax.train.state import NoMethodState

# ----------------------------------------------------------------------------------------------------
# Families: what differs between contrastive pretraining and supervised training.


def _encoder(config):
  return models.get_encoder(config.model.encoder, dtype=jnp.dtype(config.model.dtype))


def linear_probe_classifier(model, variables, head, num_classes: int):
  """(ImageClassifier, its variables): the encoder of `model` (any model with an `encoder` submodule and mean/std)
  with its weights from `variables`, under the linear probe `head` ({"kernel": f32[D, C], "bias": f32[C]})."""
  clf = models.ImageClassifier(encoder=model.encoder, num_classes=num_classes, mean=model.mean, std=model.std)
  batch_stats = variables.get("batch_stats", {})
  clf_vars = {"params": {"encoder": variables["params"]["encoder"],
                         "head": {"kernel": jnp.asarray(head["kernel"]), "bias": jnp.asarray(head["bias"])}},
              "batch_stats": {"encoder": batch_stats["encoder"]} if "encoder" in batch_stats else {}}
  return clf, clf_vars


class Contrastive(NoMethodState):
  """Encoder + projection head trained on two views with a contrastive loss; evaluated by a linear probe."""
  trains_classifier = False

  @staticmethod
  def build_model(config, num_classes: int, mean, std):
    del num_classes
    head = models.ProjectionHead(hidden_dim=config.model.projection_hidden_dim, out_dim=config.model.projection_dim)
    return models.ContrastiveModel(encoder=_encoder(config), projection=head, mean=mean, std=std)

  @staticmethod
  def train_step(method, config, model, tx, lr_fn, mesh, image_size: int, total_steps: int):
    """The pure step (state, batch, key) -> (state, metrics) with the loss over the mesh's global batch."""
    return functools.partial(step_lib.contrastive_step, model=model, tx=tx, loss_fn=method.loss_fn(config, mesh),
                             augment_fn=method.augment(config, image_size),
                             schedule_fn=method.schedule_fn(config, total_steps), lr_fn=lr_fn)

  @staticmethod
  def features(model, variables) -> Callable:
    return inference.bind(model, variables, output=0)

  @staticmethod
  def classifier(model, variables, head, num_classes: int):
    return linear_probe_classifier(model, variables, head, num_classes)


class Supervised(NoMethodState):
  """Encoder + linear head trained end to end with cross-entropy; the trained head is the classifier."""
  trains_classifier = True

  @staticmethod
  def build_model(config, num_classes: int, mean, std):
    return models.ImageClassifier(encoder=_encoder(config), num_classes=num_classes, mean=mean, std=std)

  @staticmethod
  def train_step(method, config, model, tx, lr_fn, mesh, image_size: int, total_steps: int):
    del mesh, total_steps
    return functools.partial(step_lib.supervised_step, model=model, tx=tx, augment_fn=method.augment(config, image_size),
                             lr_fn=lr_fn)

  @staticmethod
  def features(model, variables) -> Callable:
    return inference.bind(model, variables, method=models.ImageClassifier.features)

  @staticmethod
  def classifier(model, variables, head, num_classes: int):
    del head, num_classes
    return model, variables


# ----------------------------------------------------------------------------------------------------
# Augmentations and schedules the entries refer to.


def simclr_augment(config, image_size: int, *, jitter_strength: Optional[float] = None):
  """SimCLR's view augmentation (`augment.simclr`) with the config's crop/jitter/grayscale/blur settings."""
  strength = config.augment.jitter_strength if jitter_strength is None else jitter_strength
  return functools.partial(augment.simclr, out_size=image_size, crop_scale=(config.augment.crop_scale_min, 1.0),
                           jitter_strength=strength, grayscale_prob=config.augment.grayscale_prob,
                           blur=config.augment.blur)


def _ce_augment(config, image_size: int):
  """The paper's CE recipe: SimCLR augmentation with weaker colour jitter; or classic pad-crop-flip."""
  if config.methods.ce.augment == "pad_crop_flip":
    return functools.partial(augment.supervised, out_size=image_size)
  return simclr_augment(config, image_size, jitter_strength=config.methods.ce.jitter_strength)


def _rho_schedule(sub, total_steps: int) -> Dict[str, Callable]:
  return {"rho": losses.rho_schedule(rho_initial=sub.rho_initial, rho_final=sub.rho_final, total_steps=total_steps,
                                     kind=sub.rho_schedule)}


# ----------------------------------------------------------------------------------------------------
# The registry.


@dataclasses.dataclass(frozen=True)
class Method:
  """One training method. See the module docstring.

  name: registry key and config sub-tree (`config.methods.<name>`). title: how reports name it.
  family: `Contrastive`, `Supervised` or `adversarial.RoCL` / `adversarial.ACL`. loss: key of `losses.sharded.LOSSES` (None: the family's own loss).
  loss_fields: fields of the sub-tree passed to the loss as keyword arguments.
  schedules: (sub-tree, total_steps) -> {loss keyword: optax schedule}, values traced per step.
  needs_labels: training reads labels (SupCon, CE); other methods only use them for logged statistics.
  augment_fn: (config, image_size) -> augment(key, u8 images) -> f32 views in [0, 1].
  sample_inputs: for losses with per-image inputs beside the views (`LossSpec.per_image`, e.g. IFND's
    pseudo-labels): (numpy Generator, N) -> {name: array[N, ...]} of valid example inputs, so checks generated
    from the registry (tests/test_methods.py) can call the loss; None when the loss takes none.
  base: the registry name of the method this one is a version of with Adaptive FNC added (afnc -> simclr,
    arocl -> rocl, aacl -> acl); the report prints each such run's improvement over a run of its base. None: none.
  """
  name: str
  title: str
  family: type
  loss: Optional[str] = None
  loss_fields: Tuple[str, ...] = ()
  schedules: Optional[Callable] = None
  needs_labels: bool = False
  augment_fn: Callable = simclr_augment
  sample_inputs: Optional[Callable] = None
  base: Optional[str] = None

  def settings(self, config):
    """The method's config sub-tree, `config.methods.<name>`."""
    return config.methods[self.name]

  def loss_kwargs(self, config) -> dict:
    sub = self.settings(config)
    return {field: sub[field] for field in self.loss_fields}

  def schedule_fn(self, config, total_steps: int) -> Callable:
    """step -> {loss keyword: value} (e.g. {"rho": ρ(step)}); {} for methods without schedules."""
    schedules = self.schedules(self.settings(config), total_steps) if self.schedules else {}
    return lambda step: {name: jnp.asarray(fn(step), jnp.float32) for name, fn in schedules.items()}

  def augment(self, config, image_size: int):
    return self.augment_fn(config, image_size)

  def loss_fn(self, config, mesh=None) -> Callable:
    """(z1, z2, labels, **schedule values, **per-image inputs) -> (loss, stats): over the mesh's global batch,
    or — without a mesh — the public single-device loss of `csl_jax.losses` (the reference the sharded one must
    equal)."""
    kwargs = self.loss_kwargs(config)
    if mesh is not None:
      fn = losses.make_sharded_loss(self.loss, mesh, axis_name=sharding.DATA_AXIS, **kwargs)
      return lambda z1, z2, labels, **inputs: fn(z1, z2, labels=labels, **inputs)
    public = sharded_losses.LOSSES[self.loss].public
    takes_labels = "labels" in inspect.signature(public).parameters

    def single_device(z1, z2, labels, **inputs):
      out = public(z1, z2, **kwargs, **inputs, **({"labels": labels} if takes_labels else {}))
      return out if isinstance(out, tuple) else (out, {})

    return single_device

  @property
  def trains_classifier(self) -> bool:
    return self.family.trains_classifier


REGISTRY: Dict[str, Method] = {m.name: m for m in (
    Method("ce", "Cross-entropy", Supervised, needs_labels=True, augment_fn=_ce_augment),
    Method("supcon", "SupCon", Contrastive, loss="supcon", loss_fields=("temperature",), needs_labels=True),
    Method("simclr", "SimCLR", Contrastive, loss="nt_xent", loss_fields=("temperature",)),
    Method("fnc", "SimCLR + FNC", Contrastive, loss="fnc", loss_fields=("temperature", "threshold", "top_k")),
    Method("afnc", "SimCLR + Adaptive FNC", Contrastive, loss="adaptive_fnc", loss_fields=("temperature",),
           schedules=_rho_schedule, base="simclr"),
    # Adversarial contrastive pretraining (paper Table 5; csl_jax/train/adversarial.py) and its Adaptive FNC versions.
    Method("rocl", "RoCL", adversarial.RoCL, loss="nt_xent", loss_fields=("temperature",)),
    Method("arocl", "A-RoCL (RoCL + Adaptive FNC)", adversarial.RoCL, loss="adaptive_fnc",
           loss_fields=("temperature",), schedules=_rho_schedule, base="rocl"),
    Method("acl", "ACL(DS)", adversarial.ACL, loss="nt_xent", loss_fields=("temperature",)),
    Method("aacl", "A-ACL (ACL(DS) + Adaptive FNC)", adversarial.ACL, loss="adaptive_fnc",
           loss_fields=("temperature",), schedules=_rho_schedule, base="acl"),
)}


def register(method: Method) -> Method:
  """Adds an entry defined beside its own family module (e.g. `csl_jax.ifnd`, imported at the end of this file)."""
  if method.name in REGISTRY:
    raise ValueError(f"Method {method.name!r} is already registered.")
  REGISTRY[method.name] = method
  return method


def get(name: str) -> Method:
  if name not in REGISTRY:
    raise ValueError(f"Unknown method {name!r}; valid methods: {sorted(REGISTRY)}.")
  return REGISTRY[name]


def classifier_logits(method: Method, model, variables, head, num_classes: int):
  """Logits of a trained model (its own head, or the linear probe `head`): f32[B, H, W, C] in [0, 1] -> f32[B, K].

  A bound model (`models.inference`): jitted when called, and a pytree that attacks trace, so runs of the same
  architecture share compiled attacks."""
  clf, clf_vars = method.family.classifier(model, variables, head, num_classes)
  return inference.bind(clf, clf_vars)


# Methods whose family lives in its own module register themselves there (IFND's family subclasses one above;
# "pretrained" evaluates published checkpoints, `--config.init_from`).
from csl_jax import ifnd as _ifnd  # noqa: E402,F401  pylint: disable=wrong-import-position
from csl_jax import pretrained as _pretrained  # noqa: E402,F401  pylint: disable=wrong-import-position

"""Shared configuration: the defaults every configs/*.py starts from, run resolution and validation.

The config is the interface: a user changes behaviour with `--config.x=y`, never by editing code.
`base_config()` returns a *locked* ConfigDict, so a typo in an override fails with the list of valid keys
instead of silently creating a new field.

Runs. `config.runs` lists run names (comma-separated). A name is either a method of the registry
(`csl_jax.methods`, e.g. "simclr") or a key of `config.run_overrides`, which gives that run its method and
its own config overrides — so one config file can describe a whole paper table:

    c.runs = "simclr,afnc_fixed"
    c.run_overrides = {"afnc_fixed": run_spec("afnc", {"methods.afnc.rho_initial": 0.9, ...})}

Variants. Config files take big_vision's `get_config(arg)`: `--config configs/x.py:smoke,resnet18`.
`parse_arg` rejects unknown variants with the valid ones; `apply_variants` implements the shared ones.
"""
import copy
import math

import ml_collections

# Table 1 + Table 4 columns of the paper (CIFAR), plus PGD-linf 8/255.
CIFAR_ATTACKS = ("fgsm:linf:8/255,fgsm:linf:16/255,pgd:l2:0.1,pgd:l2:0.25,pgd:l1:8.0,"
                 "autoattack:linf:1/255,autoattack:linf:2/255,pgd:linf:8/255")

# Variants every CIFAR config accepts after its path (`configs/cifar10_simclr.py:smoke`).
VARIANTS = {
    "paper": "the paper's recipe (the default): CIFAR ResNet-50, 1,000 epochs",
    "resnet18": "CIFAR ResNet-18 instead of ResNet-50 (same schedule)",
    "short": "20 epochs (2 warm-up), for a first look",
    "cifar100": "CIFAR-100 instead of CIFAR-10 (tfds:cifar100)",
    "smoke": "sklearn digits, small CNN, a few steps and a tiny evaluation: about a minute per run on a CPU",
}


def base_config() -> ml_collections.ConfigDict:
  """Defaults for a CIFAR-10 run with the paper's CIFAR ResNet-50 (overridden per experiment)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Comma-separated run names; each becomes <workdir>/<name> when more than one is listed.
  c.runs = "simclr"
  # {run name: {"method": <registry name>, <section>: {<field>: value}}}; see `run_spec`.
  c.run_overrides = ml_collections.ConfigDict()
  # A published checkpoint to evaluate instead of pretraining (runs of method "pretrained", `csl_jax/pretrained.py`):
  # a directory written by `python -m csl_jax.convert`, or "random" for an untrained model.encoder. "" = pretrain.
  c.init_from = ""

  c.dataset = ml_collections.ConfigDict()
  c.dataset.source = "tfds:cifar10"   # "digits" | "tfds:<name>" | "folder:<path or .zip>" | "frames:<path>" (videos)
  c.dataset.train_split = "train"     # "" = none (only with init_from: the checkpoint's own classifier is evaluated)
  c.dataset.test_split = "test"
  c.dataset.data_dir = ""             # TFDS data_dir, or where folder caches go ("" = default)
  c.dataset.image_size = 0            # 0 = native size of the dataset
  # "fit": shorter side to image_size, centre crop image_size (when image_size > 0); "resize_crop": shorter side to
  # resize_size, centre crop image_size (ImageNet evaluation: 256 / 224), images decoded per batch.
  c.dataset.preprocess = "fit"
  c.dataset.resize_size = 0
  c.dataset.clip_frames = 0           # frames per clip of a "frames:" source (16 for the R(2+1)D releases)

  c.model = ml_collections.ConfigDict()
  c.model.encoder = "resnet50_cifar"  # the paper's CIFAR encoder; ":resnet18" -> resnet18_cifar
  c.model.projection_hidden_dim = 2048
  c.model.projection_dim = 128
  c.model.dtype = "float32"           # "bfloat16" on accelerators

  # Hyper-parameters of each training method (the sub-tree its registry entry reads).
  c.methods = ml_collections.ConfigDict()
  c.methods.simclr = ml_collections.ConfigDict({"temperature": 0.5})       # SimCLR CIFAR recipe
  c.methods.supcon = ml_collections.ConfigDict({"temperature": 0.1})       # Khosla et al. 2020
  # FNC (Huynh et al. 2022, google-research/fnc): a negative is cancelled when it is among the anchor's
  # top_k most similar AND above threshold (elimination only).
  c.methods.fnc = ml_collections.ConfigDict({"temperature": 0.5, "threshold": 0.7, "top_k": 10})
  # Adaptive FNC (paper Eq. 4): threshold rho scheduled rho_initial -> rho_final (Table 4's best: 0.99 -> 0.7).
  c.methods.afnc = ml_collections.ConfigDict({"temperature": 0.5, "rho_initial": 0.99, "rho_final": 0.7,
                                              "rho_schedule": "cosine"})
  # Cross-entropy: the SimCLR augmentation with weaker colour jitter (paper, after Chen et al. 2020a), or the
  # classic "pad_crop_flip" recipe.
  c.methods.ce = ml_collections.ConfigDict({"augment": "simclr", "jitter_strength": 0.25})
  # IFND (Chen et al. ICLR 2022; csl_jax/ifnd.py): hierarchical k-means of the training set (finest level first,
  # each level clusters the size-weighted centroids of the one below) every recluster_every_epochs epochs; the
  # share of samples (most similar to their centroid first) given a pseudo-label grows linearly from
  # acceptance_initial to acceptance_final over training; negatives sharing the anchor's accepted label at any
  # level are eliminated.
  c.methods.ifnd = ml_collections.ConfigDict({"temperature": 0.5, "num_clusters": "100,30,10",
                                              "recluster_every_epochs": 1.0, "kmeans_iters": 20,
                                              "acceptance_initial": 0.0, "acceptance_final": 1.0})
  # Adversarial contrastive pretraining (paper Table 5; csl_jax/train/adversarial.py), PGD-ℓ∞ on the contrastive loss.
  # RoCL (Kim et al. 2020, github.com/Kim-Minseon/RoCL defaults): eps 0.0314 (8/255), step 0.007, 7 steps, random
  # start, T = 0.5, adversarial term weight 1/lambda = 1/256. A-RoCL adds Adaptive FNC's rho schedule.
  rocl = {"temperature": 0.5, "epsilon": 8 / 255, "step_size": 0.007, "steps": 7, "random_start": True,
          "reg_weight": 1 / 256}
  # ACL(DS) (Jiang et al. 2020, github.com/VITA-Group/Adversarial-Contrastive-Learning): PGD-5, eps 8/255, step
  # 2/255, random start, T = 0.5, dual BatchNorm. A-ACL adds Adaptive FNC's rho schedule.
  acl = {"temperature": 0.5, "epsilon": 8 / 255, "step_size": 2 / 255, "steps": 5, "random_start": True}
  rho = {"rho_initial": 0.99, "rho_final": 0.7, "rho_schedule": "cosine"}
  c.methods.rocl = ml_collections.ConfigDict(rocl)
  c.methods.arocl = ml_collections.ConfigDict({**rocl, **rho})
  c.methods.acl = ml_collections.ConfigDict(acl)
  c.methods.aacl = ml_collections.ConfigDict({**acl, **rho})

  c.augment = ml_collections.ConfigDict()
  c.augment.crop_scale_min = 0.08
  c.augment.jitter_strength = 0.5     # 0.5 on CIFAR, 1.0 on ImageNet
  c.augment.grayscale_prob = 0.2
  c.augment.blur = False              # only for ImageNet-size images

  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.epochs = 1000.0
  c.pretrain.num_steps = 0            # > 0 overrides epochs
  c.pretrain.batch_size = 512
  c.pretrain.log_every = 50
  c.pretrain.checkpoint_every = 1000
  c.pretrain.keep_checkpoints = 3

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "lars"               # "lars" | "sgd" | "adamw"
  c.optim.lr = 1.0                    # base learning rate for a batch of 256 (scaled by lr_scaling)
  c.optim.lr_scaling = "linear"       # "linear" | "sqrt" | "none"
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-6
  c.optim.warmup_epochs = 10.0
  c.optim.grad_clip = 0.0             # global-norm clip, 0 = off

  # Evaluators run after pretraining, in this order (names in `csl_jax.eval.registry`).
  c.evaluators = "linear_eval,robustness,geometry,corruptions"

  c.linear_eval = ml_collections.ConfigDict()
  c.linear_eval.epochs = 100
  c.linear_eval.batch_size = 512
  c.linear_eval.lr = 0.1
  c.linear_eval.weight_decay = 0.0
  c.linear_eval.knn_k = 200
  c.linear_eval.knn_temperature = 0.1
  c.linear_eval.num_train_examples = 0  # fit the probe (and the kNN bank) on the first N training examples; 0 = all
  # Train features are held in memory up to this size (one encoder pass, then the probe trains in memory and the
  # kNN monitor runs); beyond it the probe trains by SGD over streamed batches, features computed on the fly, and
  # kNN is skipped (eval/linear.py).
  c.linear_eval.feature_cache_gb = 4.0
  # A converted checkpoint with a classifier for the dataset's classes is evaluated with it (end to end); False:
  # a linear probe on its features instead, as for releases without one.
  c.linear_eval.release_head = True
  # "standard": head on clean features; "adversarial": head trained on PGD-ℓ∞ examples of the frozen encoder
  # (RoCL's robust linear evaluation, also reported by ACL).
  c.linear_eval.protocol = "standard"
  c.linear_eval.adversarial_eps = 8 / 255
  c.linear_eval.adversarial_step_size = 2 / 255
  c.linear_eval.adversarial_steps = 10

  c.robustness = ml_collections.ConfigDict()
  c.robustness.enabled = True
  c.robustness.attacks = CIFAR_ATTACKS
  c.robustness.num_examples = 1000    # first N test images (0 = all)
  c.robustness.batch_size = 256
  c.robustness.num_seeds = 1          # > 1: every attack with that many seeds, reported as mean ± spread
  c.robustness.checks = True          # fra31's evaluation checks (randomized, softmax, zero gradient, Square, ...)

  c.geometry = ml_collections.ConfigDict()
  c.geometry.enabled = True
  c.geometry.num_examples = 0         # first N test images (0 = all)
  c.geometry.tsne_max_points = 5000

  c.corruptions = ml_collections.ConfigDict()
  c.corruptions.enabled = False
  c.corruptions.names = "all"         # "all" or comma-separated corruption names
  c.corruptions.severities = "1,2,3,4,5"
  c.corruptions.num_examples = 1000
  c.corruptions.source = "on_the_fly"  # or "tfds:<name>", e.g. "tfds:cifar10_corrupted" (prepared by the user)

  c.eval_batch_size = 512
  c.lock()
  return c


# ----------------------------------------------------------------------------------------------------
# Config-file arguments (variants).


def parse_arg(arg, valid=None) -> set:
  """`get_config(arg)`'s argument "smoke,resnet18" -> {"smoke", "resnet18"}; unknown variants raise."""
  valid = VARIANTS if valid is None else valid
  variants = {part.strip() for part in (arg or "").split(",") if part.strip()}
  unknown = sorted(variants - set(valid))
  if unknown:
    choices = "; ".join(f"{name}: {text}" for name, text in valid.items())
    raise ValueError(f"Unknown config argument(s) {unknown} (after ':' in --config). Valid ones: {choices}.")
  return variants


def smoke(c) -> None:
  """Shrinks any config to a CPU smoke run on sklearn digits: a few steps, a tiny evaluation."""
  c.dataset.source = "digits"
  c.dataset.image_size = 16
  c.dataset.data_dir = ""
  c.model.encoder = "small_cnn"
  c.model.projection_hidden_dim = 64
  c.model.projection_dim = 32
  c.model.dtype = "float32"
  c.augment.crop_scale_min = 0.3
  c.pretrain.epochs = 0.0
  c.pretrain.num_steps = 12
  c.pretrain.batch_size = 128
  c.pretrain.log_every = 4
  c.pretrain.checkpoint_every = 6
  c.optim.name = "adamw"
  c.optim.lr = 2e-3
  c.optim.lr_scaling = "none"
  c.optim.weight_decay = 1e-4
  c.optim.warmup_epochs = 0.0
  for sub in c.methods.values():  # adversarial pretraining (RoCL, ACL): a 3-step PGD still attacks, ~half the step
    if "steps" in sub:
      sub.steps = min(sub.steps, 3)
  c.linear_eval.epochs = 10
  c.linear_eval.batch_size = 256
  c.linear_eval.knn_k = 20
  c.robustness.attacks = "fgsm:linf:8/255,pgd:linf:8/255:steps=3"
  c.robustness.num_examples = 32
  c.robustness.batch_size = 32
  c.geometry.num_examples = 120
  c.geometry.tsne_max_points = 0
  c.corruptions.enabled = True
  c.corruptions.names = "gaussian_noise"
  c.corruptions.severities = "1"
  c.corruptions.num_examples = 64
  c.corruptions.source = "on_the_fly"
  c.eval_batch_size = 120


def apply_variants(c, variants: set) -> ml_collections.ConfigDict:
  """Applies the shared VARIANTS to a CIFAR config (smoke last, so it wins)."""
  if "resnet18" in variants:
    c.model.encoder = "resnet18_cifar"
    c.model.projection_hidden_dim = 512
  if "short" in variants:
    c.pretrain.epochs = 20.0
    c.optim.warmup_epochs = 2.0
  if "cifar100" in variants:
    c.dataset.source = "tfds:cifar100"
  if "smoke" in variants:
    smoke(c)
  return c


# ----------------------------------------------------------------------------------------------------
# Runs.


def _nested(dotted: dict) -> dict:
  """{"methods.afnc.rho_initial": 0.9} -> {"methods": {"afnc": {"rho_initial": 0.9}}}."""
  out = {}
  for key, value in dotted.items():
    *parents, leaf = key.split(".")
    node = out
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return out


def run_spec(method: str, overrides: dict = None, *, methods_only: bool = False) -> ml_collections.ConfigDict:
  """One entry of `config.run_overrides`: its method and dotted-key overrides of the config.

  methods_only keeps only the `methods.*` overrides (a `:smoke` study keeps its own CPU optimiser settings).
  """
  overrides = {k: v for k, v in (overrides or {}).items() if k.startswith("methods.") or not methods_only}
  return ml_collections.ConfigDict({"method": method, **_nested(overrides)})


def run_names(config) -> list:
  """The run names of `config.runs` (not yet validated against the registry; see `resolve_runs`)."""
  names = [n.strip() for n in config.runs.split(",") if n.strip()]
  if not names:
    raise ValueError("config.runs is empty; list at least one run, e.g. 'simclr,afnc'.")
  if len(set(names)) != len(names):
    raise ValueError(f"config.runs={config.runs!r} lists a run twice.")
  return names


def _merge(target, overrides: dict, path: str) -> None:
  for key, value in overrides.items():
    where = f"{path}.{key}" if path else key
    if key not in target:
      raise ValueError(f"Run override {where!r}: no such config field; valid fields here: {sorted(target.keys())}.")
    if isinstance(value, dict):
      if not isinstance(target[key], ml_collections.ConfigDict):
        raise ValueError(f"Run override {where!r}: {where} is a value, not a section.")
      _merge(target[key], value, where)
    else:
      target[key] = value


def method_of(config, run_name: str) -> str:
  """The registry method of run `run_name`: its run_overrides entry's method, else the name itself."""
  from csl_jax import methods  # Lazy: the registry imports JAX.
  spec = config.run_overrides.get(run_name)
  method = spec.method if spec is not None else run_name
  if method not in methods.REGISTRY:
    where = f"run_overrides.{run_name}.method" if spec is not None else "config.runs"
    raise ValueError(f"Run {run_name!r} ({where}): unknown method {method!r}. Valid methods: "
                     f"{sorted(methods.REGISTRY)}; other run names need an entry in config.run_overrides "
                     f"(defined: {sorted(config.run_overrides.keys()) or 'none'}).")
  return method


def run_config(config, run_name: str) -> ml_collections.ConfigDict:
  """A locked copy of `config` for one run: its overrides applied, `runs` set to the run's name."""
  c = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  spec = config.run_overrides.get(run_name)
  if spec is not None:
    overrides = spec.to_dict()
    overrides.pop("method", None)
    _merge(c, overrides, "")
  c.runs = run_name
  c.lock()
  return c


def resolve_runs(config) -> list:
  """[(run name, method name, run config)] for every run of `config`, validated."""
  return [(name, method_of(config, name), run_config(config, name)) for name in run_names(config)]


# ----------------------------------------------------------------------------------------------------
# Validation, before any data loading or compilation.

_CHOICES = {
    "optim.name": ("lars", "sgd", "adamw"),
    "optim.lr_scaling": ("linear", "sqrt", "none"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "methods.afnc.rho_schedule": ("cosine", "linear", "constant"),
    "methods.arocl.rho_schedule": ("cosine", "linear", "constant"),
    "methods.aacl.rho_schedule": ("cosine", "linear", "constant"),
    "methods.rocl.random_start": (True, False), "methods.arocl.random_start": (True, False),
    "methods.acl.random_start": (True, False), "methods.aacl.random_start": (True, False),
    "methods.ce.augment": ("simclr", "pad_crop_flip"),
    "linear_eval.protocol": ("standard", "adversarial"),
    "linear_eval.release_head": (True, False),
    "dataset.preprocess": ("fit", "resize_crop"),
}
# field -> (lowest allowed, highest allowed, what it means); None = unbounded.
_RANGES = {
    "pretrain.epochs": (0, None), "pretrain.num_steps": (0, None), "pretrain.batch_size": (1, None),
    "pretrain.log_every": (1, None), "pretrain.checkpoint_every": (1, None), "pretrain.keep_checkpoints": (1, None),
    "optim.lr": (0, None), "optim.momentum": (0, 1), "optim.weight_decay": (0, None),
    "optim.warmup_epochs": (0, None), "optim.grad_clip": (0, None),
    "linear_eval.epochs": (1, None), "linear_eval.batch_size": (1, None), "linear_eval.lr": (0, None),
    "linear_eval.weight_decay": (0, None),
    "linear_eval.adversarial_eps": (0, None), "linear_eval.adversarial_step_size": (0, None),
    "linear_eval.adversarial_steps": (0, None), "linear_eval.knn_k": (1, None), "linear_eval.knn_temperature": (1e-9, None),
    "robustness.num_examples": (0, None), "robustness.batch_size": (1, None), "robustness.num_seeds": (1, None),
    "geometry.num_examples": (0, None), "geometry.tsne_max_points": (0, None),
    "corruptions.num_examples": (0, None), "eval_batch_size": (1, None), "dataset.image_size": (0, None),
    "dataset.resize_size": (0, None), "dataset.clip_frames": (0, None), "linear_eval.num_train_examples": (0, None),
    "linear_eval.feature_cache_gb": (0, None),
    "augment.crop_scale_min": (1e-6, 1), "augment.jitter_strength": (0, None), "augment.grayscale_prob": (0, 1),
    "methods.simclr.temperature": (1e-6, None), "methods.supcon.temperature": (1e-6, None),
    "methods.fnc.temperature": (1e-6, None), "methods.fnc.threshold": (-1, 1), "methods.fnc.top_k": (1, None),
    "methods.afnc.temperature": (1e-6, None), "methods.afnc.rho_initial": (-1, 2), "methods.afnc.rho_final": (-1, 2),
    "methods.ce.jitter_strength": (0, None), "model.projection_dim": (1, None),
    "methods.ifnd.temperature": (1e-6, None), "methods.ifnd.recluster_every_epochs": (1e-9, None),
    "methods.ifnd.kmeans_iters": (1, None), "methods.ifnd.acceptance_initial": (0, 1),
    "methods.ifnd.acceptance_final": (0, 1),
    "methods.rocl.temperature": (1e-6, None), "methods.rocl.epsilon": (1e-9, 1), "methods.rocl.step_size": (1e-9, 1),
    "methods.rocl.steps": (1, None),
    "methods.arocl.temperature": (1e-6, None), "methods.arocl.epsilon": (1e-9, 1), "methods.arocl.step_size": (1e-9, 1),
    "methods.arocl.steps": (1, None),
    "methods.acl.temperature": (1e-6, None), "methods.acl.epsilon": (1e-9, 1), "methods.acl.step_size": (1e-9, 1),
    "methods.acl.steps": (1, None),
    "methods.aacl.temperature": (1e-6, None), "methods.aacl.epsilon": (1e-9, 1), "methods.aacl.step_size": (1e-9, 1),
    "methods.aacl.steps": (1, None),
    "methods.rocl.reg_weight": (0, None), "methods.arocl.reg_weight": (0, None),
    "methods.arocl.rho_initial": (-1, 2), "methods.arocl.rho_final": (-1, 2),
    "methods.aacl.rho_initial": (-1, 2), "methods.aacl.rho_final": (-1, 2),
    "model.projection_hidden_dim": (1, None),
}


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _check_cluster_levels(spec, where: str) -> None:
  """methods.ifnd.num_clusters: comma-separated, strictly decreasing cluster counts >= 1 ("100,30,10")."""
  try:
    ks = [int(part) for part in str(spec).split(",") if part.strip()]
  except ValueError:
    ks = []
  if not ks or min(ks) < 1 or any(a <= b for a, b in zip(ks, ks[1:])):
    raise ValueError(f"{where}config.methods.ifnd.num_clusters={spec!r}: expected comma-separated, strictly "
                     "decreasing cluster counts >= 1, finest level first (e.g. '100,30,10').")


def _check_dataset(d, where: str) -> None:
  """The dataset section's combinations: resize_crop sizes, clips only from frame folders."""
  if d.preprocess == "resize_crop" and not 0 < d.image_size <= d.resize_size:
    raise ValueError(f"{where}config.dataset.preprocess='resize_crop' needs 0 < image_size <= resize_size (got "
                     f"image_size={d.image_size}, resize_size={d.resize_size}), e.g. 224 and 256.")
  if d.preprocess == "fit" and d.resize_size:
    raise ValueError(f"{where}config.dataset.resize_size={d.resize_size} is only read with preprocess='resize_crop'.")
  is_frames = d.source.startswith("frames:")
  if is_frames and not (d.clip_frames >= 1 and d.image_size > 0):
    raise ValueError(f"{where}config.dataset.source={d.source!r} (video frames) needs clip_frames >= 1 and "
                     f"image_size > 0 (got {d.clip_frames} and {d.image_size}), e.g. 16 and 112.")
  if d.clip_frames and not is_frames:
    raise ValueError(f"{where}config.dataset.clip_frames={d.clip_frames} needs a video source "
                     f"'frames:<root>' (<root>/<split>/<class>/<video>/<frame>.jpg), not {d.source!r}.")


def _check_run(config, run_name: str) -> None:
  where = f"run {run_name!r}: " if run_name else ""
  for field, choices in _CHOICES.items():
    if _get(config, field) not in choices:
      raise ValueError(f"{where}config.{field}={_get(config, field)!r}; choose one of {choices}.")
  for field, (low, high) in _RANGES.items():
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
        low is not None and value < low) or (high is not None and value > high):
      bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
      raise ValueError(f"{where}config.{field}={value!r} is out of range; it must be a finite number {bounds}.")
  _check_dataset(config.dataset, where)
  if not config.init_from and config.pretrain.num_steps == 0 and config.pretrain.epochs <= 0:
    raise ValueError(f"{where}no training: config.pretrain.epochs={config.pretrain.epochs} and num_steps=0. Set "
                     "--config.pretrain.epochs > 0 or --config.pretrain.num_steps > 0.")
  for name in ("arocl", "aacl"):
    sub = config.methods[name]
    if sub.rho_schedule == "constant" and sub.rho_initial != sub.rho_final:
      raise ValueError(f"{where}methods.{name}.rho_schedule='constant' needs rho_initial == rho_final "
                       f"(got {sub.rho_initial} and {sub.rho_final}).")
  _check_cluster_levels(config.methods.ifnd.num_clusters, where)
  if config.methods.afnc.rho_schedule == "constant" and (
      config.methods.afnc.rho_initial != config.methods.afnc.rho_final):
    raise ValueError(f"{where}methods.afnc.rho_schedule='constant' needs rho_initial == rho_final "
                     f"(got {config.methods.afnc.rho_initial} and {config.methods.afnc.rho_final}).")


def validate(config, *, num_devices: int = None) -> list:
  """Checks every run's config before any work; returns `resolve_runs(config)`. Raises ValueError with the fix."""
  from csl_jax import pretrained  # Lazy: imports JAX.
  from csl_jax.eval import registry as eval_registry
  runs = resolve_runs(config)
  for name, method, c in runs:
    if c.dataset.to_dict() != config.dataset.to_dict():
      raise ValueError(f"run_overrides.{name} changes config.dataset; all runs of one config share the data. "
                       "Put runs on other data in their own config / workdir.")
    pretrained.check(c, method, where=f"run {name!r}: " if len(runs) > 1 else "")
    _check_run(c, name if len(runs) > 1 else "")
    eval_registry.check(c)
    if num_devices and not c.init_from and c.pretrain.batch_size % num_devices:
      raise ValueError(f"config.pretrain.batch_size={c.pretrain.batch_size} is not divisible by the {num_devices} "
                       f"devices; choose a multiple of {num_devices}.")
  return runs

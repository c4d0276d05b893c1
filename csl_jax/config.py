"""Shared configuration defaults: every file in configs/ starts from `base_config()`.

The config is the interface: a user changes behaviour with `--config.x=y`, never by editing code.
`base_config()` returns a *locked* ConfigDict, so a typo in an override fails with the list of valid
keys instead of silently creating a new field.
"""
import ml_collections

METHODS = ("simclr", "supcon", "ce", "fnc", "afnc")
CONTRASTIVE_METHODS = ("simclr", "supcon", "fnc", "afnc")

# Table 1 + Table 4 columns of the paper (CIFAR), plus PGD-linf 8/255.
CIFAR_ATTACKS = ("fgsm:linf:8/255,fgsm:linf:16/255,pgd:l2:0.1,pgd:l2:0.25,pgd:l1:8.0,"
                 "autoattack:linf:1/255,autoattack:linf:2/255,pgd:linf:8/255")


def base_config() -> ml_collections.ConfigDict:
  """Defaults for a CIFAR-10 SimCLR run with a CIFAR ResNet-18 (overridden per experiment)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Comma-separated run names; each becomes <workdir>/<name> when more than one is listed.
  # A run name is a method (see METHODS) optionally suffixed, e.g. "afnc" or "afnc_fixed".
  c.runs = "simclr"

  c.dataset = ml_collections.ConfigDict()
  c.dataset.source = "tfds:cifar10"   # "digits" | "tfds:<name>" | "folder:<path or .zip>"
  c.dataset.train_split = "train"
  c.dataset.test_split = "test"
  c.dataset.data_dir = ""             # TFDS data_dir, or where folder caches go ("" = default)
  c.dataset.image_size = 0            # 0 = native size of the dataset

  c.model = ml_collections.ConfigDict()
  c.model.encoder = "resnet18_cifar"
  c.model.projection_hidden_dim = 512
  c.model.projection_dim = 128
  c.model.dtype = "float32"           # "bfloat16" on accelerators

  c.loss = ml_collections.ConfigDict()
  c.loss.temperature = 0.5            # NT-Xent / FNC / Adaptive FNC (SimCLR CIFAR recipe)
  c.loss.supcon_temperature = 0.1     # SupCon (Khosla et al. 2020)
  c.loss.rho_initial = 0.99           # Adaptive FNC threshold schedule (paper: 0.99 -> 0.7)
  c.loss.rho_final = 0.7
  c.loss.rho_schedule = "cosine"      # "cosine" | "linear" | "constant"
  c.loss.fnc_threshold = 0.9          # FNC (Huynh et al. 2022)
  c.loss.fnc_top_k = 1

  c.augment = ml_collections.ConfigDict()
  c.augment.crop_scale_min = 0.08
  c.augment.jitter_strength = 0.5     # 0.5 on CIFAR, 1.0 on ImageNet
  c.augment.grayscale_prob = 0.2
  c.augment.blur = False              # only for ImageNet-size images
  c.augment.ce_jitter_strength = 0.0  # CE uses the weaker pad-crop-flip recipe (Chen et al. 2020a)

  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.epochs = 1000
  c.pretrain.num_steps = 0            # > 0 overrides epochs
  c.pretrain.batch_size = 512
  c.pretrain.log_every = 50
  c.pretrain.checkpoint_every = 1000
  c.pretrain.keep_checkpoints = 3
  c.pretrain.knn_every = 0            # steps between kNN monitors (0 = only at the end)
  c.pretrain.knn_k = 200
  c.pretrain.knn_temperature = 0.1

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "lars"               # "lars" | "sgd" | "adamw"
  c.optim.lr = 1.0                    # base learning rate for a batch of 256 (scaled by lr_scaling)
  c.optim.lr_scaling = "linear"       # "linear" | "sqrt" | "none"
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-6
  c.optim.warmup_epochs = 10
  c.optim.grad_clip = 0.0             # global-norm clip, 0 = off

  c.linear_eval = ml_collections.ConfigDict()
  c.linear_eval.epochs = 100
  c.linear_eval.batch_size = 512
  c.linear_eval.lr = 0.1
  c.linear_eval.weight_decay = 0.0

  c.robustness = ml_collections.ConfigDict()
  c.robustness.enabled = True
  c.robustness.attacks = CIFAR_ATTACKS
  c.robustness.num_examples = 1000    # first N test images (0 = all)
  c.robustness.batch_size = 256

  c.geometry = ml_collections.ConfigDict()
  c.geometry.enabled = True
  c.geometry.tsne_max_points = 5000

  c.corruptions = ml_collections.ConfigDict()
  c.corruptions.enabled = False
  c.corruptions.names = "all"         # "all" or comma-separated corruption names
  c.corruptions.severities = "1,2,3,4,5"
  c.corruptions.num_examples = 1000
  c.corruptions.source = "on_the_fly"  # or "tfds" (cifar10_corrupted prepared by the user)

  c.eval_batch_size = 512
  c.lock()
  return c


def run_names(config) -> list:
  """The run names of `config.runs`, validated."""
  names = [n.strip() for n in config.runs.split(",") if n.strip()]
  if not names:
    raise ValueError("config.runs is empty; list at least one run, e.g. 'simclr,afnc'.")
  for name in names:
    method_of(name)
  return names


def method_of(run_name: str) -> str:
  """'afnc_fixed' -> 'afnc'; raises for names that do not start with a known method."""
  method = run_name.split("_")[0]
  if method not in METHODS:
    raise ValueError(f"Run {run_name!r}: unknown method {method!r}; valid methods are {METHODS} "
                     "(a run name is a method optionally followed by _suffix).")
  return method


def validate(config) -> None:
  """Checks values a locked ConfigDict cannot check by itself; raises ValueError with the fix."""
  run_names(config)
  if config.optim.name not in ("lars", "sgd", "adamw"):
    raise ValueError(f"config.optim.name={config.optim.name!r}; choose 'lars', 'sgd' or 'adamw'.")
  if config.optim.lr_scaling not in ("linear", "sqrt", "none"):
    raise ValueError(f"config.optim.lr_scaling={config.optim.lr_scaling!r}; choose linear, sqrt or none.")
  if config.pretrain.batch_size <= 0 or config.eval_batch_size <= 0:
    raise ValueError("Batch sizes must be positive.")
  if config.loss.rho_schedule not in ("cosine", "linear", "constant"):
    raise ValueError(f"config.loss.rho_schedule={config.loss.rho_schedule!r}; choose cosine, linear or constant.")
  if config.model.dtype not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"config.model.dtype={config.model.dtype!r}; choose float32 or bfloat16.")

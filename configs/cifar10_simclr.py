"""SimCLR on CIFAR-10, the paper's recipe (Table 1): CIFAR ResNet-50, LARS, batch 512, T = 0.5, 1,000 epochs.

Variants after the path (comma-separated, see `csl_jax.config.VARIANTS`): `:resnet18` (CIFAR ResNet-18),
`:short` (20 epochs), `:cifar100`, `:smoke` (digits, a minute on a CPU). Image folder instead of TFDS:
--config.dataset.source=folder:/path/to/cifar10_jpg.zip
"""
from csl_jax import config as config_lib

# What this method's runs change from the shared defaults (also used by the table configs).
OVERRIDES = {
    "optim.name": "lars",
    "optim.lr": 1.0,               # x batch/256 (linear scaling) -> 2.0 at batch 512
    "optim.weight_decay": 1e-6,
    "methods.simclr.temperature": 0.5,
}


def cifar10(arg=None, *, runs: str, overrides=None):
  """The shared CIFAR-10 recipe with `runs` and dotted `overrides`, then the variants named in `arg`."""
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.runs = runs
  c.dataset.source = "tfds:cifar10"
  c.model.encoder = "resnet50_cifar"
  c.pretrain.batch_size = 512
  c.pretrain.epochs = 1000.0
  for key, value in (overrides or {}).items():
    section, *rest = key.split(".")
    node = c[section]
    for part in rest[:-1]:
      node = node[part]
    node[rest[-1]] = value
  return config_lib.apply_variants(c, variants)


def get_config(arg=None):
  return cifar10(arg, runs="simclr", overrides=OVERRIDES)

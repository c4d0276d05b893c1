"""Every file in configs/ builds, validates, and its `:smoke` variant trains a first step (or, for the configs that
evaluate a published checkpoint, loads its model and classifies a batch); bad arguments fail."""
import functools
import importlib
import pathlib

import jax
import numpy as np
import pytest

from csl_jax import config as config_lib
from csl_jax import data, methods, pretrained
from csl_jax.train import loop, optim, sharding
from csl_jax.train.state import create_train_state

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem != "__init__")


def _evaluates_a_checkpoint(name: str) -> bool:
  config = importlib.import_module(f"configs.{name}").get_config()
  return any(methods.get(method).family is pretrained.Release for _, method, _ in config_lib.resolve_runs(config))


CHECKPOINT_CONFIGS = [name for name in CONFIGS if _evaluates_a_checkpoint(name)]
TRAINING_CONFIGS = [name for name in CONFIGS if name not in CHECKPOINT_CONFIGS]


@functools.cache
def _digits(image_size):
  return data.load("digits", "train", image_size=image_size)


@pytest.mark.parametrize("name", TRAINING_CONFIGS)
def test_config_builds_validates_and_trains_a_smoke_step(name):
  module = importlib.import_module(f"configs.{name}")
  config_lib.validate(module.get_config())  # the full recipe is valid too
  config = module.get_config("smoke")
  runs = config_lib.validate(config, num_devices=jax.device_count())
  assert config.dataset.source == "digits" and config.pretrain.num_steps <= 20
  run_name, method_name, run_config = runs[0]
  method = methods.get(method_name)
  train = _digits(run_config.dataset.image_size)
  mesh = sharding.make_mesh()
  model = method.family.build_model(run_config, train.num_classes, (0.3,), (0.4,))
  steps_per_epoch, total = loop.training_length(run_config, train.num_examples)
  lr_fn = optim.learning_rate_schedule(run_config, run_config.pretrain.batch_size, steps_per_epoch, total)
  tx = optim.make_optimizer(run_config, lr_fn)
  method_state = method.family.initial_method_state(method, run_config, train.num_examples)
  state = jax.jit(functools.partial(create_train_state, model, tx), out_shardings=sharding.replicated(mesh))(
      jax.random.PRNGKey(0), np.zeros((2,) + train.image_shape, np.float32), method_state)
  before = jax.device_get(state.params)
  step = loop.make_train_step(method, run_config, model, tx, lr_fn, mesh, train.image_shape[0], total)
  batch = sharding.shard_batch(next(train.batches(run_config.pretrain.batch_size, seed=0)), mesh)
  state, metrics = step(state, batch, sharding.replicate(jax.random.PRNGKey(1), mesh))
  assert np.isfinite(float(metrics["loss"])), (name, run_name)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, jax.device_get(state.params))
  assert any(jax.tree.leaves(changed)), f"{name}: the first step did not update the parameters"


@pytest.mark.parametrize("name", CHECKPOINT_CONFIGS)
def test_checkpoint_config_needs_init_from_and_its_smoke_model_classifies(name):
  module = importlib.import_module(f"configs.{name}")
  full = module.get_config()
  with pytest.raises(ValueError, match=r"set --config\.init_from=<dir>"):  # the recipe needs the user's checkpoint
    config_lib.validate(full)
  full.init_from = pretrained.RANDOM
  config_lib.validate(full)
  config = module.get_config("smoke")
  (run_name, method_name, run_config), = config_lib.validate(config, num_devices=jax.device_count())
  assert config.dataset.source == "digits" and run_config.init_from == pretrained.RANDOM
  train = _digits(run_config.dataset.image_size)
  model = pretrained.load(run_config, num_classes=train.num_classes, image_shape=train.image_shape, mean=(0.3,),
                          std=(0.4,))
  assert model.step == 0 and not model.has_classifier  # nothing trained; a linear probe will be
  logits = methods.classifier_logits(methods.get(method_name), model.model, model.variables, None, train.num_classes)
  out = np.asarray(logits(train.images[:4] / 255.0))
  assert out.shape == (4, train.num_classes) and np.all(np.isfinite(out)), (name, run_name)


@pytest.mark.parametrize("name", CONFIGS)
def test_unknown_config_argument_names_the_valid_ones(name):
  module = importlib.import_module(f"configs.{name}")
  with pytest.raises(ValueError, match=r"Unknown config argument\(s\) \['shrot'\].*smoke"):
    module.get_config("shrot")


def test_variants_change_what_they_say():
  from configs import cifar10_afnc, cifar10_simclr, cifar10_table4
  paper = cifar10_simclr.get_config()
  assert paper.model.encoder == "resnet50_cifar" and paper.pretrain.epochs == 1000
  small = cifar10_simclr.get_config("resnet18,short,cifar100")
  assert (small.model.encoder, small.pretrain.epochs, small.dataset.source) == ("resnet18_cifar", 20,
                                                                                "tfds:cifar100")
  fixed = cifar10_afnc.get_config("fixed")
  assert (fixed.methods.afnc.rho_initial, fixed.methods.afnc.rho_final) == (0.9, 0.9)
  rho = {name: (c.methods.afnc.rho_initial, c.methods.afnc.rho_final, c.methods.afnc.rho_schedule)
         for name, _, c in config_lib.resolve_runs(cifar10_table4.get_config())}
  assert rho["afnc_fixed"] == (0.9, 0.9, "constant") and rho["afnc_09to05"] == (0.9, 0.5, "cosine")
  assert rho["afnc_099to07"] == (0.99, 0.7, "cosine")


@pytest.mark.parametrize("field, value, message", [
    ("pretrain.num_steps", -5, "pretrain.num_steps=-5 is out of range"),
    ("pretrain.epochs", 0.0, "no training"),
    ("linear_eval.batch_size", 0, "linear_eval.batch_size=0 is out of range"),
    ("optim.lr", float("nan"), "optim.lr=nan"),
    ("methods.fnc.top_k", 0, "methods.fnc.top_k=0"),
    ("robustness.attacks", "pgd:linf:eight", "not a number"),
    ("corruptions.names", "blur", "Unknown corruption"),
    ("evaluators", "linear_eval,knn", "unknown evaluator"),
    ("runs", "simclr,byol", "unknown method 'byol'"),
])
def test_validation_rejects_bad_values_before_any_work(field, value, message):
  from configs import quickstart
  c = quickstart.get_config()
  *sections, leaf = field.split(".")
  node = c
  for section in sections:
    node = node[section]
  node[leaf] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)


def test_run_override_of_an_unknown_field_names_the_valid_ones():
  from configs import quickstart
  c = quickstart.get_config()
  with c.unlocked():
    c.run_overrides = {"afnc_low": config_lib.run_spec("afnc", {"methods.afnc.rho_fnal": 0.5})}
  c.runs = "afnc_low"
  with pytest.raises(ValueError, match="methods.afnc.rho_fnal.*rho_final"):
    config_lib.validate(c)

"""Adversarial contrastive pretraining (RoCL, ACL(DS), A-RoCL, A-ACL; csl_jax/train/adversarial.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from csl_jax import config as config_lib
from csl_jax import data, losses, methods, models
from csl_jax.train import adversarial, loop, optim, sharding
from csl_jax.train import step as step_lib
from csl_jax.train.state import create_train_state


def tiny_config(**overrides):
  c = config_lib.base_config()
  c.dataset.source = "digits"
  c.model.encoder = "small_cnn"
  c.model.projection_hidden_dim = 32
  c.model.projection_dim = 16
  c.augment.crop_scale_min = 0.5
  c.pretrain.batch_size = 32
  c.pretrain.num_steps = 4
  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.lr_scaling = "none"
  c.optim.warmup_epochs = 0.0
  for name in ("rocl", "arocl", "acl", "aacl"):
    c.methods[name].steps = 3  # the recipes' 7 / 5 steps cost compile-free time only; keep the test quick
  for key, value in overrides.items():
    *sections, name = key.split(".")
    node = c
    for section in sections:
      node = node[section]
    node[name] = value
  return c


@pytest.fixture(scope="module")
def digits_train():
  return data.load("digits", "train")  # 8x8


def run_steps(method_name, config, train, mesh, num_steps=1):
  """(initial state, final state, last metrics) of `num_steps` jitted steps of a registry method on `mesh`."""
  method = methods.get(method_name)
  model = method.family.build_model(config, train.num_classes, (0.3,), (0.4,))
  steps_per_epoch, total = loop.training_length(config, train.num_examples)
  lr_fn = optim.learning_rate_schedule(config, config.pretrain.batch_size, steps_per_epoch, total)
  tx = optim.make_optimizer(config, lr_fn)
  init = jax.jit(functools.partial(create_train_state, model, tx), out_shardings=sharding.replicated(mesh))(
      jax.random.PRNGKey(0), np.zeros((2,) + train.image_shape, np.float32))
  initial = jax.device_get(init)
  step = loop.make_train_step(method, config, model, tx, lr_fn, mesh, train.image_shape[0], total)
  batches = train.batches(config.pretrain.batch_size, seed=0)
  state, key = init, sharding.replicate(jax.random.PRNGKey(1), mesh)
  for _ in range(num_steps):
    state, metrics = step(state, sharding.shard_batch(next(batches), mesh), key)
  return initial, jax.device_get(state), jax.device_get(metrics), model


def test_attack_increases_the_contrastive_loss_and_stays_in_the_ball(digits_train):
  config = tiny_config()
  mesh = sharding.make_mesh()
  method = methods.get("rocl")
  model = method.family.build_model(config, 10, (0.3,), (0.4,))
  x = jnp.asarray(digits_train.images[:32], jnp.float32) / 255.0
  variables = model.init(jax.random.PRNGKey(0), x[:2], train=False)
  target = jnp.flip(x, axis=2)  # a second "view"
  loss_fn = method.loss_fn(config, mesh)
  labels = jnp.asarray(digits_train.labels[:32])
  project = lambda v: model.apply(variables, v, train=False)[1]
  objective = lambda v: loss_fn(project(v), project(target), labels)[0]
  eps = 8 / 255
  attack = jax.jit(lambda v, k: adversarial.contrastive_pgd(objective, v, k, eps=eps, step_size=2 / 255, steps=7),
                   in_shardings=(sharding.data_sharding(mesh), sharding.replicated(mesh)))
  adv = attack(x, jax.random.PRNGKey(3))
  clean_loss, adv_loss = float(jax.jit(objective)(x)), float(jax.jit(objective)(adv))
  assert adv_loss > clean_loss + 1e-3, (clean_loss, adv_loss)
  delta = np.asarray(adv) - np.asarray(x)
  assert np.abs(delta).max() <= eps + 1e-6 and np.abs(delta).max() > eps / 2
  assert np.asarray(adv).min() >= 0.0 and np.asarray(adv).max() <= 1.0


def test_rocl_with_zero_epsilon_is_simclr_on_the_clean_view_duplicated(digits_train):
  """ε = 0: the attacked view is the clean view t itself, and RoCL's step is a plain gradient step on views
  [t, t', t] (BatchNorm statistics over those 3N rows) of

      (2/3)·(L(t, t') + L(t, t) + L(t', t)) + (1/λ)·L(t', t) = (4/3 + 1/λ)·L_SimCLR(t, t') + (2/3)·L(t, t),

  L = NT-Xent (symmetric in its two views). So it is *not* exactly a SimCLR step: it weighs SimCLR's loss by
  4/3 + 1/λ and adds (2/3)·L(t, t), whose positive similarity is constant (1/T) — a pure uniformity term over
  the 2N rows {t, t}. Checked with SGD (updates ∝ gradients, so a wrong weight shows) against a step written from
  the public NT-Xent, the same model and the same optimiser; then the plain SimCLR step is shown to differ."""
  config = tiny_config(**{"methods.rocl.epsilon": 0.0, "optim.name": "sgd", "optim.lr": 0.05,
                          "optim.weight_decay": 0.0})
  one_device = sharding.make_mesh(jax.devices()[:1])  # test_sharded_adversarial_step_... checks 8 devices
  initial, state, metrics, model = run_steps("rocl", config, digits_train, one_device)
  assert float(metrics["attack_linf"]) == 0.0

  # The reference: same batch, augmentation key and optimiser as run_steps' first step (step 0, key 1, seed 0).
  sub, size = config.methods.rocl, digits_train.image_shape[0]
  batch = next(digits_train.batches(config.pretrain.batch_size, seed=0))
  view_key, _ = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(1), 0))
  views = step_lib.two_views(view_key, jnp.asarray(batch["image"]), methods.get("rocl").augment(config, size))
  t, t_prime = views[0::2], views[1::2]
  nt_xent = functools.partial(losses.nt_xent, temperature=sub.temperature)
  steps_per_epoch, total = loop.training_length(config, digits_train.num_examples)
  tx = optim.make_optimizer(config, optim.learning_rate_schedule(config, config.pretrain.batch_size,
                                                                 steps_per_epoch, total))

  def reference_step(duplicate: bool):
    rows = [t, t_prime, t] if duplicate else [t, t_prime]

    def objective(params):
      (_, z), mutated = model.apply({"params": params, "batch_stats": initial.batch_stats}, jnp.concatenate(rows),
                                    train=True, mutable=["batch_stats"])
      z = z.reshape((len(rows), -1, z.shape[-1]))
      if not duplicate:  # SimCLR
        return nt_xent(z[0], z[1]), mutated["batch_stats"]
      return (4 / 3 + sub.reg_weight) * nt_xent(z[0], z[1]) + (2 / 3) * nt_xent(z[0], z[2]), mutated["batch_stats"]

    (loss, batch_stats), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(initial.params)
    updates, _ = tx.update(grads, initial.opt_state, initial.params)
    return float(loss), optax.apply_updates(initial.params, updates), batch_stats

  loss, params, batch_stats = reference_step(duplicate=True)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  jax.tree.map(close, state.params, params)
  jax.tree.map(close, state.batch_stats, batch_stats)
  # ... and that step is not SimCLR's.
  simclr_loss, simclr_params, _ = reference_step(duplicate=False)
  changed = lambda a, b: float(np.max(np.abs(a - b)))
  assert max(jax.tree.leaves(jax.tree.map(changed, params, simclr_params))) > 1e-4
  assert not np.isclose(loss, simclr_loss, rtol=1e-3)


@pytest.mark.parametrize("name", ["rocl", "acl"])
def test_sharded_adversarial_step_equals_single_device_step(digits_train, name):
  assert jax.device_count() == 8
  config = tiny_config()
  _, eight, m8, _ = run_steps(name, config, digits_train, sharding.make_mesh())
  _, one, m1, _ = run_steps(name, config, digits_train, sharding.make_mesh(jax.devices()[:1]))
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  assert m8["attack_linf"] <= config.methods[name].epsilon + 1e-6
  # PGD steps along sign(∇x): a gradient component within float noise of 0 may take the other sign on 8 devices
  # (another reduction order), moving one pixel by 2·α; so the tolerance is a little wider than test_loop's.
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-4)
  jax.tree.map(close, eight.params, one.params)
  jax.tree.map(close, eight.batch_stats, one.batch_stats)


def test_acl_keeps_separate_batchnorm_statistics(digits_train):
  config = tiny_config()
  initial, state, metrics, model = run_steps("acl", config, digits_train, sharding.make_mesh())
  stats = state.batch_stats["encoder"]
  assert set(stats) == {"bn0", "bn0_adv", "bn1", "bn1_adv", "bn2", "bn2_adv"}
  assert "bn0_adv" in state.batch_stats["projection"]
  for name in ("bn0", "bn1", "bn2"):
    for branch in (name, name + "_adv"):  # both streams updated their own running mean ...
      assert not np.allclose(stats[branch]["mean"], initial.batch_stats["encoder"][branch]["mean"]), branch
    # ... from different inputs (clean vs adversarial views).
    assert not np.allclose(stats[name]["mean"], stats[name + "_adv"]["mean"]), name
  # The clean branch (what evaluation uses) and the adversarial branch give different eval-mode features.
  x = jnp.asarray(digits_train.images[:8], jnp.float32) / 255.0
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  clean = model.apply(variables, x, train=False)[0]
  adv = model.apply(variables, x, train=False, adversarial=True)[0]
  features = methods.get("acl").family.features(model, variables)(x)
  np.testing.assert_allclose(features, clean, rtol=1e-5, atol=1e-6)  # jitted vs eager: same branch, float noise
  assert not np.allclose(clean, adv)


@pytest.mark.parametrize("plain, adaptive", [("rocl", "arocl")])
def test_adaptive_version_with_rho_above_one_equals_the_plain_method(digits_train, plain, adaptive):
  mesh = sharding.make_mesh()
  config = tiny_config(**{f"methods.{adaptive}.rho_initial": 1.5, f"methods.{adaptive}.rho_final": 1.5,
                          f"methods.{adaptive}.rho_schedule": "constant"})
  _, a, ma, _ = run_steps(plain, config, digits_train, mesh)
  _, b, mb, _ = run_steps(adaptive, config, digits_train, mesh)
  assert float(mb["num_cancelled"]) == 0.0
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a.params, b.params)
  # ... and a real schedule does cancel and changes the step.
  config = tiny_config(**{f"methods.{adaptive}.rho_initial": 0.0, f"methods.{adaptive}.rho_final": 0.0,
                          f"methods.{adaptive}.rho_schedule": "constant"})
  _, c, mc, _ = run_steps(adaptive, config, digits_train, mesh)
  assert float(mc["num_cancelled"]) > 0
  assert not np.allclose(float(mc["loss"]), float(ma["loss"]))


def test_dual_bn_clean_branch_equals_the_single_bn_model():
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1))
  strip = lambda tree: {k: strip(v) if isinstance(v, dict) else v for k, v in tree.items() if not k.endswith("_adv")}
  # ResNet: the same parameter tree plus the "_adv" BatchNorms (shapes only: no compile).
  shapes = lambda model: jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.PRNGKey(1))
  resnet_single = shapes(models.get_encoder("resnet18_cifar", width=4))
  resnet_dual = shapes(models.get_encoder("resnet18_cifar", width=4, dual_bn=True))
  assert jax.tree.structure(strip(resnet_dual)) == jax.tree.structure(resnet_single)
  assert "downsample_bn_adv" in resnet_dual["params"]["layer2_0"]
  for name, kwargs in [("small_cnn", {})]:
    single, dual = models.get_encoder(name, **kwargs), models.get_encoder(name, dual_bn=True, **kwargs)
    v_single = jax.jit(lambda k: single.init(k, x, train=False))(jax.random.PRNGKey(1))
    v_dual = jax.jit(lambda k: dual.init(k, x, train=False))(jax.random.PRNGKey(1))
    assert jax.tree.structure(strip(v_dual)) == jax.tree.structure(v_single)
    assert "bn1_adv" in v_dual["batch_stats"]
    train_out = lambda model, v: jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"])[0])(v)
    np.testing.assert_allclose(train_out(dual, v_dual), train_out(single, strip(v_dual)), rtol=1e-6)
  with pytest.raises(ValueError, match="dual_bn=True"):
    single.apply(v_single, x, train=False, adversarial=True)

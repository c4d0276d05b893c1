"""Adversarial contrastive pretraining: RoCL and ACL(DS), and their Adaptive-FNC versions (paper Table 5).

A new method family (same interface as `methods.Contrastive`): each step first attacks the augmented views
with PGD-ℓ∞ that *maximises the contrastive loss* (no labels), inside the jitted step, then trains on the clean
and adversarial views. The attack objective is the method's own loss over the global batch
(`method.loss_fn(config, mesh)` = `losses.make_sharded_loss`), so it runs under the step's mesh and sharding, and
for A-RoCL / A-ACL it is the Adaptive FNC loss with the scheduled ρ (false negatives leave every contrastive
term, the attack's included).

Why not `attacks.pgd(...)` itself: it ascends a per-example classification loss ("ce"/"dlr") of a
`logits_fn(x) -> [B, K]` against labels, validates concrete inputs eagerly and keeps the first *misclassified*
iterate — none of which exists for an instance-wise contrastive objective over the whole batch. So
`contrastive_pgd` is PGD's loop body with an arbitrary scalar objective: the same random start
(`projections.random_in_ball`), steepest-ascent direction (`attacks.pgd.ascent_direction`, sign for ℓ∞) and
projection onto ball ∩ [0, 1] (`projections.project`), in one `lax.fori_loop`; no second implementation of the
geometry. As in both reference codes, the model runs in eval mode (running BN statistics) during the attack.

Recipes followed (read, not copied):
- RoCL — Kim, Tack & Hwang, NeurIPS 2020; github.com/Kim-Minseon/RoCL, `src/argument.py` (parser defaults),
  `src/attack_lib.py` (`RepresentationAdv`), `src/rocl_train.py`, `src/loss.py`: ℓ∞ ε = 0.0314 (8/255), step
  α = 0.007, 7 steps, random start; the attack starts from view t(x) and maximises NT-Xent (T = 0.5) between it
  and the other view t'(x); training uses NT-Xent over {t(x), t'(x), t(x)^adv} with all three as mutual
  positives, plus (1/λ)·NT-Xent(t(x)^adv, t'(x)) with λ = 256. Differences here: the three-view loss is the
  sum of the three pairwise two-view losses scaled by 2/3 (the reference's 3N-way softmax has the same
  numerators and mean scale, but its denominators also hold the third view of every image); the regulariser
  reuses the same forward pass instead of a second one; the reference's similarity matrix detaches one side of
  the product, here gradients flow through both.
- ACL(DS) — Jiang et al., NeurIPS 2020; github.com/VITA-Group/Adversarial-Contrastive-Learning,
  `train_simCLR.py` (`PGD_contrastive`, `train`, `--ACL_DS`) and `models/resnet_multi_bn.py`: both views are
  attacked jointly, PGD-5, ε = 8/255, α = 2/255, uniform random start, through the adversarial ("pgd") BN
  branch; loss = (NT-Xent(clean views, clean BN) + NT-Xent(adversarial views, adversarial BN)) / 2, T = 0.5;
  encoder and projection head keep separate BatchNorms per stream (`models.branch_norm`). Evaluation uses the
  clean branch ("normal"), as the reference's linear evaluation does: `features` / `classifier` call the
  model without `adversarial=True`.
"""
import functools

import jax
import jax.numpy as jnp
import optax

from csl_jax import models
from csl_jax.attacks.pgd import ascent_direction
from csl_jax.attacks import projections
from csl_jax.train import step as step_lib
from csl_jax.train.state import NoMethodState

NORM = "linf"  # both recipes train against an ℓ∞ adversary (Table 5: "trained with PGD ℓ∞")


def contrastive_pgd(objective, x, key, *, eps, step_size, steps: int, random_start: bool = True):
  """PGD-ℓ∞ ascent of a scalar objective(x_adv) -> f32[] (e.g. a global-batch contrastive loss).

  x: f32[B, ...] clean views in [0, 1]. Returns stop_gradient(x_adv) with ‖x_adv − x‖∞ ≤ eps, in [0, 1].
  """
  grad_fn = jax.grad(objective)
  x_adv = projections.random_in_ball(key, x, eps, NORM) if random_start else x

  def body(_, x_adv):
    direction = ascent_direction(grad_fn(x_adv), x_adv, x=x, norm=NORM)
    return projections.project(x_adv + step_size * direction, x, eps, NORM)

  return jax.lax.stop_gradient(jax.lax.fori_loop(0, steps, body, x_adv))


def _attack_kwargs(sub):
  return dict(eps=float(sub.epsilon), step_size=float(sub.step_size), steps=int(sub.steps),
              random_start=bool(sub.random_start))


def _split_views(views, count):
  """f32[count·B, ...] interleaved rows -> tuple of `count` f32[B, ...] (rows stay on their device)."""
  views = views.reshape((-1, count) + views.shape[1:])
  return tuple(views[:, i] for i in range(count))


def _interleave(*views):
  return jnp.stack(views, axis=1).reshape((-1,) + views[0].shape[1:])


def rocl_step(state, batch, key, *, model, tx, loss_fn, augment_fn, schedule_fn, lr_fn, attack, reg_weight):
  """One RoCL step: attack view 1 against view 2, train on the three views (see the module docstring)."""
  step_key = jax.random.fold_in(key, state.step)
  view_key, attack_key = jax.random.split(step_key)
  t1, t2 = _split_views(step_lib.two_views(view_key, batch["image"], augment_fn), 2)
  scheduled = schedule_fn(state.step)
  labels = batch["label"]
  eval_vars = {"params": state.params, "batch_stats": state.batch_stats}
  project = lambda x: model.apply(eval_vars, x, train=False)[1].astype(jnp.float32)
  z_target = jax.lax.stop_gradient(project(t2))
  attack_loss = lambda x: loss_fn(project(x), z_target, labels, **scheduled)[0]
  adv = contrastive_pgd(attack_loss, t1, attack_key, **attack)

  def objective(params):
    (_, z), mutated = model.apply({"params": params, "batch_stats": state.batch_stats}, _interleave(t1, t2, adv),
                                  train=True, mutable=["batch_stats"])
    z1, z2, za = _split_views(z.astype(jnp.float32), 3)
    clean, stats = loss_fn(z1, z2, labels, **scheduled)
    adv_pair = loss_fn(z2, za, labels, **scheduled)[0]
    main = (2.0 / 3.0) * (clean + loss_fn(z1, za, labels, **scheduled)[0] + adv_pair)
    return main + reg_weight * adv_pair, (mutated["batch_stats"], stats, clean, adv_pair)

  (loss, (batch_stats, stats, clean, adv_pair)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  metrics = {"loss": loss, "lr": lr_fn(state.step), "grad_norm": optax.global_norm(grads), "loss_clean_pair": clean,
             "loss_adv_pair": adv_pair, "attack_linf": jnp.max(jnp.abs(adv - t1)), **scheduled, **stats}
  return step_lib._apply_updates(state, tx, grads, batch_stats), metrics


def acl_step(state, batch, key, *, model, tx, loss_fn, augment_fn, schedule_fn, lr_fn, attack):
  """One ACL(DS) step: attack both views through the adversarial BN branch, average the two streams' losses."""
  step_key = jax.random.fold_in(key, state.step)
  view_key, attack_key = jax.random.split(step_key)
  views = step_lib.two_views(view_key, batch["image"], augment_fn)
  scheduled = schedule_fn(state.step)
  labels = batch["label"]
  eval_vars = {"params": state.params, "batch_stats": state.batch_stats}

  def attack_loss(x):
    z = model.apply(eval_vars, x, train=False, adversarial=True)[1].astype(jnp.float32)
    return loss_fn(*_split_views(z, 2), labels, **scheduled)[0]

  adv = contrastive_pgd(attack_loss, views, attack_key, **attack)

  def objective(params):
    (_, z), bs = model.apply({"params": params, "batch_stats": state.batch_stats}, views, train=True,
                             mutable=["batch_stats"])
    (_, za), bs = model.apply({"params": params, "batch_stats": bs["batch_stats"]}, adv, train=True,
                              adversarial=True, mutable=["batch_stats"])
    clean, stats = loss_fn(*_split_views(z.astype(jnp.float32), 2), labels, **scheduled)
    adv_loss = loss_fn(*_split_views(za.astype(jnp.float32), 2), labels, **scheduled)[0]
    return 0.5 * (clean + adv_loss), (bs["batch_stats"], stats, clean, adv_loss)

  (loss, (batch_stats, stats, clean, adv_loss)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  metrics = {"loss": loss, "lr": lr_fn(state.step), "grad_norm": optax.global_norm(grads), "loss_clean": clean,
             "loss_adv": adv_loss, "attack_linf": jnp.max(jnp.abs(adv - views)), **scheduled, **stats}
  return step_lib._apply_updates(state, tx, grads, batch_stats), metrics


class AdversarialContrastive(NoMethodState):
  """Contrastive family whose step trains on PGD views of the contrastive loss; evaluated like `Contrastive`
  (linear probe on the clean encoder). Subclasses choose the recipe: `RoCL` or `ACL`."""
  trains_classifier = False
  dual_bn = False

  @classmethod
  def build_model(cls, config, num_classes: int, mean, std):
    del num_classes
    dual = {"dual_bn": True} if cls.dual_bn else {}
    encoder = models.get_encoder(config.model.encoder, dtype=jnp.dtype(config.model.dtype), **dual)
    head = models.ProjectionHead(hidden_dim=config.model.projection_hidden_dim, out_dim=config.model.projection_dim,
                                 **dual)
    return models.ContrastiveModel(encoder=encoder, projection=head, mean=mean, std=std)

  @staticmethod
  def features(model, variables):
    from csl_jax import methods  # Lazy: the registry imports this module.
    return methods.Contrastive.features(model, variables)

  @staticmethod
  def classifier(model, variables, head, num_classes: int):
    from csl_jax import methods
    return methods.Contrastive.classifier(model, variables, head, num_classes)


class RoCL(AdversarialContrastive):
  """RoCL (Kim et al. 2020): the attacked view is an extra positive, plus a weighted adversarial term."""

  @staticmethod
  def train_step(method, config, model, tx, lr_fn, mesh, image_size: int, total_steps: int):
    sub = method.settings(config)
    return functools.partial(rocl_step, model=model, tx=tx, loss_fn=method.loss_fn(config, mesh),
                             augment_fn=method.augment(config, image_size),
                             schedule_fn=method.schedule_fn(config, total_steps), lr_fn=lr_fn,
                             attack=_attack_kwargs(sub), reg_weight=float(sub.reg_weight))


class ACL(AdversarialContrastive):
  """ACL(DS) (Jiang et al. 2020): clean and adversarial streams with separate BatchNorms."""
  dual_bn = True

  @staticmethod
  def train_step(method, config, model, tx, lr_fn, mesh, image_size: int, total_steps: int):
    return functools.partial(acl_step, model=model, tx=tx, loss_fn=method.loss_fn(config, mesh),
                             augment_fn=method.augment(config, image_size),
                             schedule_fn=method.schedule_fn(config, total_steps), lr_fn=lr_fn,
                             attack=_attack_kwargs(method.settings(config)))

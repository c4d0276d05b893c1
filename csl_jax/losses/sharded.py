"""Contrastive losses over the global batch of a data-parallel mesh (SimCLR's cross-replica negatives).

With the batch sharded along the mesh axis "data", a loss computed per device would only see that device's
images as negatives. Here each device all-gathers z1, z2 (and labels), keeps only the rows of the 2N x 2N
similarity matrix that belong to its own anchors (local anchors vs all global views: O(n * N) work and
memory per device instead of O(N^2)), computes their per-anchor losses with the same row functions as the
single-device losses, and a psum of the per-anchor sums (and of the cancellation counts) gives the global
mean. The result equals the single-device loss on the gathered batch in value and gradient: the transpose
of all_gather is a reduce-scatter, so each device receives the gradient that other devices' anchors send
to its embeddings.
"""
import inspect
from typing import Callable
from typing import Literal
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from csl_jax.losses import cancellation
from csl_jax.losses import contrastive
from csl_jax.losses import pseudo_label


class LossSpec(NamedTuple):
  """What make_sharded_loss needs to know about one contrastive loss.

  public: the single-device loss (`csl_jax.losses.<name>`); its keyword-only arguments (labels excluded)
    and their defaults are the loss's hyper-parameters.
  rows: (AnchorRows, **hyper[, rho=]) -> (f32[B] per-anchor losses, dict of int32 counts, {} if none).
  labels: "required" (the loss uses them), "optional" (stats only) or "ignored" (dropped before the loss).
  takes_rho: whether the loss takes the (possibly traced) per-call threshold rho.
  check: optional check(hyper, num_images=None) raising ValueError for bad hyper-parameters; called once
    at build time without num_images and on every call with the global batch size N.
  per_image: names of extra required per-image inputs ([N, ...] arrays sharded like z1, e.g. IFND's
    "pseudo_labels"): the sharded loss takes them as keyword arguments, all-gathers them, and passes the row
    function `<name>_rows` (this device's images) and `<name>_all` (the global batch); the public loss takes
    them as keyword-able arguments of the same name.
  """
  public: Callable
  rows: Callable
  labels: Literal["required", "optional", "ignored"]
  takes_rho: bool
  check: Callable | None = None
  per_image: tuple = ()


def _without_counts(row_fn):
  """Wraps a row function returning f32[B] into one returning (f32[B], {}) (no cancellation stats)."""
  return lambda rows, **hyper: (row_fn(rows, **hyper), {})


def _check_fnc(hyper: dict, num_images: int | None = None):
  """FNC's threshold is a scalar, not NaN; top_k sets a static shape: a Python int in [1, 2N - 2]."""
  cancellation.check_rho(hyper["threshold"], name="threshold")
  cancellation.check_top_k(hyper["top_k"], num_images)


# Loss name -> LossSpec. Also the place to look up the public single-device function of a loss name.
LOSSES = {
    "nt_xent": LossSpec(contrastive.nt_xent, _without_counts(contrastive.nt_xent_rows), "ignored", False),
    "supcon": LossSpec(contrastive.supcon, _without_counts(contrastive.supcon_rows), "required", False),
    "adaptive_fnc": LossSpec(cancellation.adaptive_fnc, cancellation.adaptive_fnc_rows, "optional", True),
    "fnc": LossSpec(cancellation.fnc, cancellation.fnc_rows, "optional", False, _check_fnc),
    "ifnd": LossSpec(pseudo_label.ifnd, pseudo_label.ifnd_rows, "optional", False, per_image=("pseudo_labels",)),
}


def _loss_defaults(name: str) -> dict:
  """Keyword hyper-parameters of the public loss `name` with their defaults (labels excluded)."""
  parameters = inspect.signature(LOSSES[name].public).parameters.values()
  return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "labels"}


def _local_loss(z1, z2, labels, rho, per_image, *, name, hyper, axis_name, num_devices):
  """Per-device body: local views [n, D] -> (global mean loss, global stats), both replicated."""
  num_local = z1.shape[0]
  z1_all = jax.lax.all_gather(z1, axis_name, tiled=True)
  z2_all = jax.lax.all_gather(z2, axis_name, tiled=True)
  labels_all = None if labels is None else jax.lax.all_gather(labels, axis_name, tiled=True)
  offset = jax.lax.axis_index(axis_name) * num_local
  rows = contrastive.anchor_rows(z1, z2, z1_all, z2_all, row_offset=offset, labels_rows=labels,
                                 labels_all=labels_all)
  spec = LOSSES[name]
  for key, value in per_image.items():
    hyper = {**hyper, f"{key}_rows": value, f"{key}_all": jax.lax.all_gather(value, axis_name, tiled=True)}
  per_anchor, counts = spec.rows(rows, **hyper, rho=rho) if spec.takes_rho else spec.rows(rows, **hyper)
  num_anchors = 2 * num_local * num_devices
  loss = jax.lax.psum(jnp.sum(per_anchor), axis_name) / num_anchors
  if not counts:
    return loss, {}
  return loss, cancellation.cancellation_stats(jax.lax.psum(counts, axis_name), num_anchors)


def make_sharded_loss(name: str, mesh: jax.sharding.Mesh, *, axis_name: str = "data", **loss_kwargs):
  """Builds the global-batch version of a contrastive loss for a data-parallel mesh.

  Args:
    name: "nt_xent", "supcon", "adaptive_fnc", "fnc" or "ifnd" (the keys of LOSSES).
    mesh: a jax.sharding.Mesh with an axis `axis_name` over which the batch is sharded (other mesh axes,
      if any, see the batch replicated).
    axis_name: the data-parallel mesh axis.
    **loss_kwargs: the loss's keyword hyper-parameters (temperature; rho for adaptive_fnc; threshold and
      top_k for fnc); missing ones take the single-device function's defaults.

  Returns:
    fn(z1, z2, labels=None, rho=None, **per_image) -> (f32[] loss, dict of f32[] stats), replicated (per_image:
    the loss's `LossSpec.per_image` inputs, e.g. ifnd's pseudo_labels=int[N, L]). z1, z2:
    f32/bf16[N, D] global arrays (N divisible by the axis size), labels: int[N] or None. labels are needed
    by supcon, give precision/recall stats for the FNC losses and are ignored by nt_xent. rho (adaptive_fnc
    only; may be traced, e.g. rho_fn(step)) overrides loss_kwargs["rho"]. stats is {} for nt_xent and
    supcon, and the same dict as the single-device FNC losses otherwise. Call it inside jax.jit (the train
    step); on a mesh with Explicit axes, eager jax.grad of it also needs `with jax.set_mesh(mesh):`.
  """
  if name not in LOSSES:
    raise ValueError(f"make_sharded_loss: unknown loss {name!r}; expected one of {sorted(LOSSES)}.")
  if axis_name not in mesh.axis_names:
    raise ValueError(f"make_sharded_loss: mesh has axes {mesh.axis_names}, no data axis {axis_name!r}. "
                     "Build the mesh with that axis name or pass axis_name=.")
  spec = LOSSES[name]
  hyper = _loss_defaults(name)
  unknown = set(loss_kwargs) - set(hyper)
  if unknown:
    raise ValueError(f"make_sharded_loss: {name} takes {sorted(hyper)}, got unexpected {sorted(unknown)}.")
  hyper.update(loss_kwargs)
  contrastive.check_temperature(hyper["temperature"])
  if spec.check is not None:
    spec.check(hyper)
  default_rho = hyper.pop("rho", None)
  num_devices = mesh.shape[axis_name]
  explicit_axis = mesh.axis_types[mesh.axis_names.index(axis_name)] == AxisType.Explicit

  def loss_fn(z1, z2, labels=None, rho=None, **per_image):
    contrastive.check_views(z1, z2, labels, what=f"sharded {name}")
    if set(per_image) != set(spec.per_image):
      raise ValueError(f"sharded {name} takes the per-image inputs {sorted(spec.per_image)} as keyword "
                       f"arguments; got {sorted(per_image)}.")
    for key, value in per_image.items():
      if jnp.shape(value)[:1] != jnp.shape(z1)[:1]:
        raise ValueError(f"sharded {name}: {key} must have one row per image ({z1.shape[0]}), "
                         f"got shape {jnp.shape(value)}.")
    if z1.shape[0] % num_devices:
      raise ValueError(f"sharded {name}: batch size {z1.shape[0]} is not divisible by the {num_devices} "
                       f"devices of mesh axis {axis_name!r}; use a global batch that is a multiple of it.")
    if spec.check is not None:
      spec.check(hyper, z1.shape[0])
    if spec.labels == "required" and labels is None:
      raise ValueError(f"sharded {name} needs labels: call fn(z1, z2, labels).")
    if spec.labels == "ignored":
      labels = None  # e.g. SimCLR is self-supervised: labels in the batch are simply not used.
    if rho is not None and not spec.takes_rho:
      raise ValueError(f"sharded {name}: rho is the Adaptive FNC threshold; {name} takes no rho "
                       "(FNC's fixed threshold is make_sharded_loss('fnc', ..., threshold=...)).")
    rho = default_rho if rho is None else rho
    if spec.takes_rho:
      cancellation.check_rho(rho)
      rho = jnp.asarray(rho, jnp.float32)

    # shard_map takes no None leaves with a PartitionSpec, so the optional inputs travel in a dict.
    optional = {} if labels is None else {"labels": labels}
    if rho is not None:
      optional["rho"] = rho
    optional.update(per_image)
    args = (z1, z2, optional)
    specs = (P(axis_name), P(axis_name), {key: P() if key == "rho" else P(axis_name) for key in optional})
    if explicit_axis:
      # On an Explicit-axes mesh (jax.make_mesh's default) shard_map does not reshard its inputs itself.
      args = jax.tree.map(lambda a, s: jax.reshard(a, NamedSharding(mesh, s)), args, specs)

    def per_device(z1, z2, optional):
      extra = {key: optional[key] for key in spec.per_image}
      return _local_loss(z1, z2, optional.get("labels"), optional.get("rho"), extra, name=name, hyper=hyper,
                         axis_name=axis_name, num_devices=num_devices)

    return jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=P())(*args)

  return loss_fn

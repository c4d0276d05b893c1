"""IFND (Chen et al., ICLR 2022, "Incremental False Negative Detection for Contrastive Learning"): the family.

SimCLR whose negatives that share the anchor's pseudo-label are eliminated from the denominator
(`losses.ifnd`). The pseudo-labels come from hierarchical k-means of the whole training set's embeddings
(`csl_jax.clustering`), recomputed every `recluster_every_epochs` epochs with the current model, and only the most
confidently clustered share of the samples gets one; that share grows over training ("incremental").

How it plugs into the loop (`csl_jax.train.loop`): `IFND.refresh` runs before every step outside jit and, at every
re-clustering step, embeds the un-augmented training set (`eval.batches.map_batches`, projection-head output,
L2-normalised), clusters it on the mesh and stores the result in `TrainState.method_state`:

  pseudo_labels  int32[N, L]  cluster of each training example at each level, -1 where not (yet) accepted;
  clustered_at   int32[]      the step of the last re-clustering (-1: none yet, all labels -1);
  acceptance     f32[]        the accepted share of the samples at that re-clustering.

That state is in every checkpoint, and refresh depends only on (state, step), so a resumed run re-clusters exactly
when and as the uninterrupted one does. The train step looks up each batch example's labels by its dataset index
(`batch["index"]`), which only the in-memory `ArrayDataset` provides.

Sources and choices. The authors' code (github.com/tsaishien-chen/IFND) could not be retrieved here, so the details
follow the paper (arXiv 2106.03719): hierarchical clustering of the embeddings at several granularities, a negative
counts as false when it shares the anchor's pseudo-label, per-sample confidence from the distance to the assigned
centroid, an acceptance rate that grows with training, elimination rather than attraction. Chosen here
(configurable in `config.methods.ifnd`): the levels (`num_clusters`, default "100,30,10", each level clustering the
centroids of the one below, weighted by their sizes), confidence = cosine similarity to the assigned centroid
ranked per level, the acceptance rate linear in the training step from `acceptance_initial` to `acceptance_final`
(evaluated at each re-clustering), re-clustering every epoch, 20 Lloyd iterations from k-means++ initial centroids
(seeded by the run's seed and the step; uniformly drawn ones merged planted clusters, see
`clustering.initial_centroids`), and a false negative = same accepted label at any level.
"""
import jax
import jax.numpy as jnp
import numpy as np

from csl_jax import clustering
from csl_jax import methods
from csl_jax.data import dataset as dataset_lib
from csl_jax.eval import batches as eval_batches
from csl_jax.train import sharding

_EMBED_FNS = {}  # id(model) -> (model, jitted embedding fn): one compilation per model, however many refreshes


def cluster_levels(spec: str) -> tuple:
  """"100,30,10" -> (100, 30, 10): strictly decreasing cluster counts >= 1, finest first. Raises ValueError."""
  try:
    ks = tuple(int(part) for part in str(spec).split(",") if part.strip())
  except ValueError:
    ks = ()
  if not ks or any(k < 1 for k in ks) or any(a <= b for a, b in zip(ks, ks[1:])):
    raise ValueError(f"methods.ifnd.num_clusters={spec!r}: expected comma-separated, strictly decreasing cluster "
                     "counts >= 1, finest level first (e.g. '100,30,10').")
  return ks


def recluster_period(sub, steps_per_epoch: int) -> int:
  """Steps between re-clusterings: recluster_every_epochs epochs, at least one step."""
  return max(1, int(round(sub.recluster_every_epochs * steps_per_epoch)))


def acceptance_rate(sub, step: int, total_steps: int) -> float:
  """The share of samples given a pseudo-label at `step`: linear from acceptance_initial (step 0) to
  acceptance_final (the last step)."""
  progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
  return float(sub.acceptance_initial + (sub.acceptance_final - sub.acceptance_initial) * progress)


def accepted(similarity, rate: float) -> jax.Array:
  """bool[L, N]: at each level, the round(rate * N) samples most similar to their centroid (ties: lower index)."""
  num_points = similarity.shape[1]
  count = int(round(min(max(rate, 0.0), 1.0) * num_points))
  order = jnp.argsort(-similarity, axis=1, stable=True)
  rank = jnp.zeros_like(order).at[jnp.arange(similarity.shape[0])[:, None], order].set(
      jnp.arange(num_points)[None, :])
  return rank < count


def pseudo_labels(hierarchy: clustering.Hierarchy, rate: float) -> jax.Array:
  """int32[N, L]: each sample's cluster per level where accepted (`accepted`), else -1."""
  return jnp.where(accepted(hierarchy.similarity, rate), hierarchy.labels, -1).T.astype(jnp.int32)


def embed(model, variables, train_ds, *, batch_size: int, mesh) -> np.ndarray:
  """f32[N, D]: the L2-normalised projection-head outputs of the un-augmented training set, in dataset order."""
  cached = _EMBED_FNS.get(id(model))
  if cached is None or cached[0] is not model:
    fn = jax.jit(lambda v, images: model.apply(v, eval_batches.to_unit_floats(images), train=False)[1])
    cached = _EMBED_FNS[id(model)] = (model, fn)
  fn = cached[1]
  z, _ = eval_batches.map_batches(lambda batch: fn(variables, batch.images), train_ds, batch_size, mesh=mesh)
  z = z.astype(np.float32)
  return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


class IFND(methods.Contrastive):
  """Contrastive family with IFND's pseudo-label state: see the module docstring."""

  @staticmethod
  def initial_method_state(method, config, num_examples: int):
    levels = cluster_levels(method.settings(config).num_clusters)
    return {"pseudo_labels": jnp.full((num_examples, len(levels)), -1, jnp.int32),
            "clustered_at": jnp.asarray(-1, jnp.int32), "acceptance": jnp.asarray(0.0, jnp.float32)}

  @staticmethod
  def refresh(method, config, state, step: int, *, model, train_ds, mesh):
    if not isinstance(train_ds, dataset_lib.ArrayDataset):
      raise ValueError(f"IFND needs an in-memory training split (per-example pseudo-labels are looked up by dataset "
                       f"index); {train_ds!r} is streamed. Use a folder: source or a TFDS split small enough to "
                       "load into memory.")
    sub = method.settings(config)
    from csl_jax.train import loop  # Lazy: the loop imports the optimisers and metric writers.
    steps_per_epoch, total_steps = loop.training_length(config, train_ds.num_examples)
    if step == 0 or step % recluster_period(sub, steps_per_epoch):
      return state  # Step 0: nothing is accepted yet (acceptance_initial is meant for an untrained encoder).
    ks = cluster_levels(sub.num_clusters)
    if ks[0] > train_ds.num_examples:
      raise ValueError(f"methods.ifnd.num_clusters={sub.num_clusters!r}: {ks[0]} clusters at the finest level but "
                       f"the training split has only {train_ds.num_examples} examples.")
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    z = embed(model, variables, train_ds, batch_size=config.eval_batch_size, mesh=mesh)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x1F2D), step)
    hierarchy = clustering.hierarchical_kmeans(key, jnp.asarray(z), ks, num_iters=sub.kmeans_iters, mesh=mesh)
    rate = acceptance_rate(sub, step, total_steps)
    method_state = {"pseudo_labels": pseudo_labels(hierarchy, rate),
                    "clustered_at": jnp.asarray(step, jnp.int32), "acceptance": jnp.asarray(rate, jnp.float32)}
    return state.replace(method_state=jax.device_put(method_state, sharding.replicated(mesh)))

  @staticmethod
  def train_step(method, config, model, tx, lr_fn, mesh, image_size: int, total_steps: int):
    step = methods.Contrastive.train_step(method, config, model, tx, lr_fn, mesh, image_size, total_steps)
    return lambda state, batch, key: step(state, batch, key, inputs_fn=batch_pseudo_labels)


def batch_pseudo_labels(state, batch) -> dict:
  """The loss inputs of a batch: {"pseudo_labels": int32[B, L]} looked up by the examples' dataset indices."""
  if "index" not in batch:
    raise ValueError("IFND needs each batch example's dataset index (batch['index']), which only the in-memory "
                     "ArrayDataset provides.")
  return {"pseudo_labels": state.method_state["pseudo_labels"][batch["index"]]}


def sample_inputs(rng: np.random.Generator, num_images: int) -> dict:
  """Example loss inputs for registry-generated checks: int32[N, 2] labels with some -1 (unassigned)."""
  labels = rng.integers(-1, 3, size=(num_images, 2)).astype(np.int32)
  return {"pseudo_labels": jnp.asarray(labels)}


methods.register(methods.Method("ifnd", "SimCLR + IFND", IFND, loss="ifnd", loss_fields=("temperature",),
                                sample_inputs=sample_inputs))

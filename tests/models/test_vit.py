"""ViT-B/16 and ViT-S/16: DINO and MoCo v3 release layouts convert to flax models that equal the torch twins."""
import argparse

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax import convert as convert_cli
from csl_jax.models import convert_release, get_encoder, vit
from tests.models import release_checks as rc

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")
from csl_jax.models import torch_twins  # noqa: E402  pylint: disable=g-import-not-at-top

IMAGENET = (convert_release.IMAGENET_MEAN, convert_release.IMAGENET_STD)


def random_vit(name: str, seed: int, *, num_classes: int = 1000, **overrides):
  """A torch ViT twin with seeded random weights; cls_token / pos_embed large enough to matter."""
  torch.manual_seed(seed)
  twin = rc.randomize_norms(torch_twins.vision_transformer(name, num_classes=num_classes, **overrides), seed)
  with torch.no_grad():
    twin.cls_token.normal_(0.0, 0.5)
    twin.pos_embed.normal_(0.0, 0.5)
  return twin


def with_heads(twin, name: str, num_heads: int):
  """The same weights in a twin with another number of attention heads (same tensor shapes)."""
  other = torch_twins.vision_transformer(name, num_classes=twin.head.out_features, num_heads=num_heads)
  other.load_state_dict(twin.state_dict())
  return other.eval()


def encoder_state(twin) -> dict:
  return {k: v for k, v in twin.state_dict().items() if not k.startswith("head.")}


def dino_head(seed: int, width: int) -> dict:
  """DINOHead tensors (3-layer MLP, weight-normed prototypes layer), as stored next to the backbone."""
  generator = torch.Generator().manual_seed(seed)
  shapes = {"mlp.0.weight": (64, width), "mlp.0.bias": (64,), "mlp.2.weight": (64, 64), "mlp.2.bias": (64,),
            "mlp.4.weight": (32, 64), "mlp.4.bias": (32,), "last_layer.weight_g": (100, 1),
            "last_layer.weight_v": (100, 32)}
  return {f"head.{k}": torch.randn(s, generator=generator) for k, s in shapes.items()}


def mocov3_projector(seed: int, width: int) -> dict:
  """MoCo v3's 3-layer projection MLP (Linear-BN-ReLU x2, Linear-BN(affine=False)) in the head's place."""
  generator = torch.Generator().manual_seed(seed)
  out = {}
  for index, (fan_in, fan_out) in zip((0, 3, 6), ((width, 64), (64, 64), (64, 16))):
    out[f"head.{index}.weight"] = torch.randn(fan_out, fan_in, generator=generator)
    bn = f"head.{index + 1}"
    if index < 6:
      out[f"{bn}.weight"], out[f"{bn}.bias"] = torch.rand(fan_out, generator=generator), torch.zeros(fan_out)
    out[f"{bn}.running_mean"], out[f"{bn}.running_var"] = torch.zeros(fan_out), torch.ones(fan_out)
    out[f"{bn}.num_batches_tracked"] = torch.tensor(100)
  return out


@pytest.fixture(scope="module")
def images():
  return rc.photos(2)  # astronaut, chelsea


def dino_full_checkpoint(twin, width: int) -> dict:
  """DINO's *_full_checkpoint.pth: teacher (plain keys) and student (DDP `module.`, other weights), args, loss."""
  teacher = {**rc.prefixed(encoder_state(twin), "backbone."), **dino_head(1, width)}
  student = rc.prefixed(rc.perturbed(teacher, seed=2), "module.")
  return {"student": student, "teacher": teacher, "epoch": 100, "optimizer": {"state": {}, "param_groups": []},
          "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536),
          "dino_loss": {"center": torch.zeros(1, 100)}}


def mocov3_pretrain_checkpoint(twin, width: int) -> dict:
  """moco-v3 vit-*-300ep.pth.tar: DDP-wrapped MoCo with base/momentum encoders (projector as head.*) + predictor."""
  base = {**encoder_state(twin), **mocov3_projector(3, width)}
  predictor = {"0.weight": torch.randn(64, 16), "1.weight": torch.rand(64), "1.bias": torch.zeros(64),
               "1.running_mean": torch.zeros(64), "1.running_var": torch.ones(64), "3.weight": torch.randn(16, 64),
               "4.running_mean": torch.zeros(16), "4.running_var": torch.ones(16)}
  state = {**rc.prefixed(base, "module.base_encoder."),
           **rc.prefixed(rc.perturbed(base, seed=4), "module.momentum_encoder."),
           **rc.prefixed(predictor, "module.predictor.")}
  return {"epoch": 300, "arch": "vit_small", "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
          "scaler": {"scale": 65536.0, "growth_factor": 2.0}}


def test_vit_s16_dino_full_checkpoint_uses_teacher(tmp_path, images):
  twin = random_vit("vit_s16", seed=0, num_classes=0)
  features, logits, meta = rc.convert_and_run(tmp_path, "dino_s16", "vit_s16", "dino",
                                              dino_full_checkpoint(twin, 384), images)
  expected, _ = rc.torch_reference(twin.forward_features, None, images, *IMAGENET)
  rc.assert_close(features, expected, "ViT-S/16 DINO teacher features")
  assert logits is None and not meta["has_head"] and meta["needs_linear_probe"] and meta["num_classes"] is None
  assert meta["checkpoint_key"] == "teacher" and meta["prefix"] == "backbone."
  assert meta["encoder_kwargs"] == {} and meta["feature_dim"] == 384
  assert sorted(meta["ignored_keys"]) == sorted(dino_head(1, 384))
  # The student (DDP-wrapped, other weights) only on request.
  checkpoint = dino_full_checkpoint(twin, 384)
  student, info = convert_release.convert_release(checkpoint, "vit_s16", "dino", checkpoint_key="student")
  assert info["checkpoint_key"] == "student" and info["prefix"] == "backbone."
  qkv = checkpoint["student"]["module.backbone.blocks.0.attn.qkv.weight"].numpy()
  np.testing.assert_array_equal(student["params"]["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"], qkv.T)


def test_vit_s16_mocov3_pretrain_and_linear(tmp_path, images):
  twin = random_vit("vit_s16", seed=10, num_heads=12)  # MoCo v3's ViT-S has 12 heads
  expected = rc.torch_reference(twin.forward_features, twin.head, images, *IMAGENET)
  # The linear-probe release: module.* encoder + the trained classifier head.weight/bias.
  features, logits, meta = rc.convert_and_run(
      tmp_path, "linear", "vit_s16", "mocov3", {"state_dict": rc.prefixed(twin.state_dict(), "module.")}, images)
  rc.assert_close(features, expected[0], "ViT-S/16 MoCo v3 features")
  rc.assert_close(logits, expected[1], "ViT-S/16 MoCo v3 logits")
  assert meta["has_head"] and meta["num_classes"] == 1000 and meta["encoder_kwargs"] == {"num_heads": 12}
  # The pretraining release: base_encoder with the projector in head.*, momentum encoder, predictor.
  # Same encoder weights as the linear release: the converted encoder must be bit-identical (its numbers were
  # just checked), which spares a second compile.
  src = tmp_path / "pretrain.pth"
  torch.save(mocov3_pretrain_checkpoint(twin, 384), src)
  pretrain = convert_cli.convert_checkpoint("vit_s16", "mocov3", src, tmp_path / "pretrain")
  assert pretrain["prefix"] == "base_encoder." and not pretrain["has_head"] and pretrain["needs_linear_probe"]
  assert pretrain["encoder_kwargs"] == {"num_heads": 12}
  assert all(k.startswith(("base_encoder.head.", "momentum_encoder.", "predictor.")) for k in pretrain["ignored_keys"])
  num_keys = len(mocov3_pretrain_checkpoint(twin, 384)["state_dict"])
  assert len(pretrain["ignored_keys"]) == num_keys - len(encoder_state(twin))
  _, linear = convert_cli.load_converted(tmp_path / "linear_converted")
  _, converted = convert_cli.load_converted(tmp_path / "pretrain")
  chex.assert_trees_all_equal(converted["params"]["encoder"], linear["params"]["encoder"])
  assert "head" not in converted["params"]
  # With DINO's 6 heads the same weights give other features: num_heads matters and is recorded.
  six_heads, _ = rc.torch_reference(with_heads(twin, "vit_s16", 6).forward_features, None, images, *IMAGENET)
  assert np.abs(six_heads - expected[0]).max() > 100 * rc.ATOL


def test_vit_b16_mocov3_linear_and_dino(tmp_path, images):
  twin = random_vit("vit_b16", seed=20)
  expected = rc.torch_reference(twin.forward_features, twin.head, images, *IMAGENET)
  features, logits, meta = rc.convert_and_run(
      tmp_path, "moco_b16", "vit_b16", "mocov3", {"state_dict": rc.prefixed(twin.state_dict(), "module.")}, images)
  rc.assert_close(features, expected[0], "ViT-B/16 MoCo v3 features")
  rc.assert_close(logits, expected[1], "ViT-B/16 MoCo v3 logits")
  assert meta["num_classes"] == 1000 and meta["feature_dim"] == 768 and meta["encoder_kwargs"] == {}
  # DINO's plain ViT-B/16 release (no head): the layout handling is checked numerically on ViT-S above; here the
  # same weights must give bit-identical encoder variables (ViT-B has 12 heads in both releases), in memory to
  # spare the CPU a second 350 MB round trip.
  _, converted = convert_cli.load_converted(tmp_path / "moco_b16_converted")
  dino, info = convert_release.convert_release(encoder_state(twin), "vit_b16", "dino")
  assert not info["has_head"] and info["encoder_kwargs"] == meta["encoder_kwargs"]
  chex.assert_trees_all_equal(dino["params"]["encoder"], converted["params"]["encoder"])


@pytest.mark.parametrize("name", ["vit_s16", "vit_b16"])
def test_missing_and_unexpected_keys_are_listed(name):
  state = encoder_state(random_vit(name, seed=30, num_classes=0))
  missing = {k: v for k, v in state.items() if k != "blocks.3.attn.qkv.weight"}
  with pytest.raises(ValueError, match=r"missing keys \['blocks\.3\.attn\.qkv\.weight'\]"):
    convert_release.convert_release(missing, name, "dino")
  extra = {**state, "blocks.3.attn.rel_pos": torch.zeros(3)}
  with pytest.raises(ValueError, match=r"unexpected keys \['blocks\.3\.attn\.rel_pos'\]"):
    convert_release.convert_release(extra, name, "dino")
  # Outside the encoder prefix, only the listed heads/branches are ignored: a MoCo queue is not.
  moco = {"state_dict": {**rc.prefixed(state, "module.base_encoder."), "module.queue": torch.zeros(4, 2)}}
  with pytest.raises(ValueError, match=r"outside the encoder prefix 'base_encoder\.'.*\['queue'\]"):
    convert_release.convert_release(moco, name, "mocov3")


def test_vit_refuses_other_image_sizes_and_arch_format_pairs():
  model = get_encoder("vit_s16")
  with pytest.raises(ValueError, match=r"\[B, 224, 224, C\]"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 160, 160, 3)))
  with pytest.raises(ValueError, match=r"formats for 'vit_b16': \['dino', 'mocov3'\]"):
    convert_release.convert_release({}, "vit_b16", "swav")
  assert vit.ARCHITECTURES["vit_s16"]["num_heads"] == 6  # DINO / DeiT; MoCo v3 overrides it


def test_vit_parameter_counts_match_the_releases():
  """timm vit_base_patch16_224 / vit_small_patch16_224 (with a 1000-class head): 86,567,656 / 22,050,664."""
  for name, count in (("vit_b16", 86_567_656), ("vit_s16", 22_050_664)):
    shapes = jax.eval_shape(get_encoder(name).init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    width = vit.ARCHITECTURES[name]["width"]
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) + width * 1000 + 1000 == count


def _numpy_attention(q, k, v):
  scores = np.einsum("bnqd,bnkd->bnqk", q, k) / np.sqrt(q.shape[-1])
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  return np.einsum("bnqk,bnkd->bnqd", weights / weights.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("batch", [vit.ATTENTION_GROUP * 3, vit.ATTENTION_GROUP + 2, 1])
def test_attention_in_groups_equals_plain_softmax_attention(batch):
  """Grouped (batch a multiple of ATTENTION_GROUP) and ungrouped attention against float64 numpy, values and the
  input gradient (against the ungrouped block, which XLA differentiates without lax.map)."""
  rng = np.random.default_rng(batch)
  q, k, v = (rng.normal(size=(batch, 3, 7, 8)).astype(np.float32) * 3 for _ in range(3))
  out = vit._attention(q, k, v)
  np.testing.assert_allclose(out, _numpy_attention(*(t.astype(np.float64) for t in (q, k, v))), atol=2e-5)
  probe = rng.normal(size=out.shape).astype(np.float32)
  grads = jax.grad(lambda *t: jnp.sum(vit._attention(*t) * probe), argnums=(0, 1, 2))(q, k, v)
  plain = jax.grad(lambda *t: jnp.sum(vit._attention_block(*t) * probe), argnums=(0, 1, 2))(q, k, v)
  chex.assert_trees_all_close(grads, plain, atol=2e-5)


def test_class_token_block_equals_the_full_blocks_first_token():
  """Block(x, num_queries=1) — what the last block runs — is the full block's first output token."""
  x = jax.random.normal(jax.random.key(0), (vit.ATTENTION_GROUP * 2, 11, 48)) * 2
  block = vit.Block(num_heads=4)
  params = block.init(jax.random.key(1), x)
  first = block.apply(params, x, 1)
  assert first.shape == (x.shape[0], 1, 48)
  np.testing.assert_allclose(first, block.apply(params, x)[:, :1], atol=2e-5)
  grad_first = jax.grad(lambda x: jnp.sum(block.apply(params, x, 1) ** 2))(x)
  grad_full = jax.grad(lambda x: jnp.sum(block.apply(params, x)[:, :1] ** 2))(x)
  np.testing.assert_allclose(grad_first, grad_full, atol=1e-4)


def test_layer_norm_matches_float64_on_a_large_offset_residual_stream():
  """Two-pass statistics: features around 300 with unit spread (trained ViTs' residual streams) keep their digits,
  where one-pass E[x²] − E[x]² in f32 would not."""
  rng = np.random.default_rng(0)
  x = (300.0 + rng.normal(size=(2, 5, 64))).astype(np.float32)
  norm = vit.LayerNorm()
  params = {"params": {"scale": rng.normal(size=64).astype(np.float32), "bias": rng.normal(size=64).astype(np.float32)}}
  x64 = x.astype(np.float64)
  centred = x64 - x64.mean(-1, keepdims=True)
  want = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + vit.LAYER_NORM_EPS)
  want = want * params["params"]["scale"] + params["params"]["bias"]
  np.testing.assert_allclose(norm.apply(params, x), want, atol=2e-4)
  assert jax.tree.structure(norm.init(jax.random.key(0), x)) == jax.tree.structure(params)

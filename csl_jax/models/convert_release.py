"""Published PyTorch checkpoints (supervised and self-supervised) -> flax variables of `ImageClassifier`.

A release format says where the encoder sits inside a checkpoint and what else may sit next to it:

  branches   top-level keys holding copies of the whole model (DINO: "teacher", "student"); the first present
             is used unless the caller names one (`checkpoint_key`).
  wrappers   keys the state dict is nested under ("state_dict", ...; TCLR also "bb_state_dict").
  prefixes   candidate prefixes of the encoder's tensors, tried in order ("base_encoder." for MoCo v3); the
             first that some key starts with is used, else the keys are taken as they are. "module." and
             "_orig_mod." (DataParallel, torch.compile) are always stripped first.
  ignore     regexes (matched at the start of the key, relative to the checkpoint root for keys outside the
             encoder prefix, relative to the encoder inside it) of the tensors that are *not* the encoder or
             its classifier: projection heads, predictors, prototypes, the other branch of a two-branch method,
             MoCo queues. `{head}` stands for the architecture's classifier name ("fc" or "head"): `{head}\\.\\d+\\.`
             is an MLP (nn.Sequential) put in the classifier's place — a projector, not a classifier.
  renames    (root-relative prefix, encoder-relative prefix): a release's classifier under another name.

Everything else must be exactly the architecture's tensors, plus optionally the linear classifier
`fc.weight/bias` (ResNet, R(2+1)D) or `head.weight/bias` (ViT): any missing or unexpected key fails with the
lists of both. A converted classifier becomes `params["head"]` (has_head); without one a linear probe must be
trained on the features.

Input conventions are part of a format: mean/std of its preprocessing and the channel order (TCLR feeds BGR
frames; its first convolution's input channels are reversed here, so every converted model takes RGB).
"""
import dataclasses
import re
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from csl_jax.models import convert, get_encoder, r2plus1d

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# torchvision's video classification transforms (Kinetics-400).
KINETICS_MEAN, KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
UNNORMALISED = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # inputs fed as [0, 1] without mean/std


@dataclasses.dataclass(frozen=True)
class Arch:
  """An architecture of the releases: its encoder (registry name) and how its torch names map."""
  encoder: str
  input_shape: tuple  # one example, channels last: (H, W, C) or (T, H, W, C)
  feature_dim: int
  head: str  # torch name of the linear classifier
  renames: dict  # flax module name -> torch module name (see `convert._torch_name`)
  first_conv: tuple  # flax path of the input convolution's kernel (channel-order fixes)
  mean: tuple
  std: tuple


ARCHS = {
    "resnet50": Arch("resnet50_imagenet", (224, 224, 3), 2048, "fc", convert.RESNET_TORCH_NAMES,
                     ("conv1", "kernel"), IMAGENET_MEAN, IMAGENET_STD),
    "vit_b16": Arch("vit_b16", (224, 224, 3), 768, "head", {}, ("patch_embed", "proj", "kernel"),
                    IMAGENET_MEAN, IMAGENET_STD),
    "vit_s16": Arch("vit_s16", (224, 224, 3), 384, "head", {}, ("patch_embed", "proj", "kernel"),
                    IMAGENET_MEAN, IMAGENET_STD),
    "r2plus1d_18": Arch("r2plus1d_18", (16, 112, 112, 3), 512, "fc", r2plus1d.TORCH_NAMES,
                        ("stem_spatial", "kernel"), KINETICS_MEAN, KINETICS_STD),
}


@dataclasses.dataclass(frozen=True)
class ReleaseFormat:
  archs: tuple
  releases: str  # which published files this describes, and their layout
  branches: tuple = ()
  wrappers: tuple = convert._WRAPPER_KEYS  # pylint: disable=protected-access
  prefixes: tuple = ()
  ignore: tuple = ()
  renames: tuple = ()
  normalisation: Optional[tuple] = None  # (mean, std); None: the architecture's dataset statistics
  channel_order: str = "RGB"
  encoder_kwargs: dict = dataclasses.field(default_factory=dict)  # arch -> kwargs for get_encoder
  notes: str = ""


FORMATS = {
    "torchvision": ReleaseFormat(
        archs=("resnet50", "r2plus1d_18"),
        releases="torchvision.models resnet50 (IMAGENET1K_V1/V2) and video.r2plus1d_18 (KINETICS400_V1): plain "
                 "state dicts with the supervised classifier fc (1000 / 400 classes)."),
    "simclr": ReleaseFormat(
        archs=("resnet50",),
        releases="SimCLR v1 ResNet-50 (1x) converted from TF (tonylins/simclr-converter: {'state_dict': torchvision "
                 "keys + fc, the linear-evaluation head}); Spijkervet/SimCLR (encoder.* + projector.*); "
                 "sthalles/SimCLR (backbone.*, the projection MLP in backbone.fc.0/.2).",
        prefixes=("encoder.", "backbone."),
        ignore=(r"projector\.", r"{head}\.\d+\."),
        normalisation=UNNORMALISED,
        notes="SimCLR (TF) was trained on [0, 1] RGB without mean/std normalisation."),
    "swav": ReleaseFormat(
        archs=("resnet50",),
        releases="facebookresearch/swav swav_800ep_pretrain.pth.tar (torch.hub): module.* torchvision keys, "
                 "projection_head.* (MLP) and prototypes.weight; no fc (the hub model's fc is random).",
        ignore=(r"projection_head\.", r"prototypes\."),
        notes="Pad-then-conv stem of SwAV's own ResNet (ConstantPad2d(1) + 7x7 conv with padding 2) equals "
              "torchvision's padding 3."),
    "byol": ReleaseFormat(
        archs=("resnet50",),
        releases="BYOL ResNet-50 ports in torchvision layout: plain (e.g. converted DeepMind checkpoints), "
                 "solo-learn ({'state_dict': backbone.*, projector.*, predictor.*, momentum_backbone.*, "
                 "momentum_projector.*, classifier.* = the online linear probe}), mmselfsup (backbone.*, "
                 "online_net.*/target_net.* copies, neck.*, head.*).",
        prefixes=("backbone.", "encoder."),
        ignore=(r"projector\.", r"predictor\.", r"momentum_backbone\.", r"momentum_projector\.",
                r"online_net\.", r"target_net\.", r"neck\.", r"head\.", r"{head}\.\d+\."),
        renames=(("classifier.", "fc."),)),
    "dino": ReleaseFormat(
        archs=("vit_b16", "vit_s16"),
        releases="facebookresearch/dino dino_vitbase16_pretrain.pth / dino_deitsmall16_pretrain.pth (plain "
                 "backbone state dicts, no head) and *_full_checkpoint.pth ({'teacher', 'student', ...}: backbone.* "
                 "+ the DINO head head.mlp.*, head.last_layer.*). The teacher is used, as in DINO's evaluations.",
        branches=("teacher", "student"),
        prefixes=("backbone.",),
        ignore=(r"head\.mlp\.", r"head\.last_layer\.", r"head\.bn\."),
        notes="DINO's own ViT-S/16 linear probe reads the class tokens of the last 4 blocks (and ViT-B/16 the "
              "class token with the mean patch token); these features are the final class token only, so a probe "
              "must be trained here (the released linear weights do not apply)."),
    "mocov3": ReleaseFormat(
        archs=("vit_b16", "vit_s16"),
        releases="facebookresearch/moco-v3 vit-{s,b}-300ep.pth.tar ({'state_dict': module.base_encoder.* with the "
                 "3-layer projection MLP as head.0-7, module.momentum_encoder.*, module.predictor.*}) and "
                 "linear-vit-{s,b}-300ep.pth.tar (module.* with the linear classifier head.weight/bias).",
        prefixes=("base_encoder.",),
        ignore=(r"base_encoder\.", r"momentum_encoder\.", r"predictor\.", r"{head}\.\d+\."),
        encoder_kwargs={"vit_s16": {"num_heads": 12}},  # MoCo v3's vit_small: 12 heads (DINO/DeiT: 6)
        notes="pos_embed is MoCo v3's fixed 2-D sin-cos table, stored in the checkpoint like a learned one."),
    "tclr": ReleaseFormat(
        archs=("r2plus1d_18",),
        releases="DAVEISHAN/TCLR R(2+1)D-18 Kinetics-400: {'state_dict' | 'bb_state_dict': module.0.* = the "
                 "torchvision backbone, module.1.* = the projection MLP}; the backbone's fc is dropped (TCLR's "
                 "linear evaluation discards it: it was never trained).",
        wrappers=("state_dict", "bb_state_dict", "model"),
        prefixes=("0.",),
        ignore=(r"1\.", r"fc\."),
        normalisation=UNNORMALISED,
        channel_order="BGR",
        notes="TCLR feeds BGR frames in [0, 1] without mean/std; the first conv's input channels are reversed so "
              "the converted model takes RGB. TCLR's R3D-18 replaces layer4's temporal stride by a dilation; "
              "check the released R(2+1)D-18's code does not do the same (same weights, other features)."),
    "cvrl": ReleaseFormat(
        archs=("r2plus1d_18",),
        releases="CVRL R(2+1)D-18 PyTorch ports in torchvision layout under encoder_q. / base_encoder. / "
                 "backbone. / encoder., beside key encoders, projection heads and MoCo-style queues.",
        prefixes=("encoder_q.", "base_encoder.", "backbone.", "encoder."),
        ignore=(r"encoder_k\.", r"momentum_encoder\.", r"projector\.", r"projection_head\.", r"predictor\.",
                r"head\.", r"queue", r"{head}\.\d+\."),
        notes="CVRL's TF pipeline feeds [0, 1] frames without mean/std; a port may normalise with the Kinetics "
              "statistics (the default here): pass --mean/--std to match the port's preprocessing."),
}


def _check(arch: str, fmt: str):
  if arch not in ARCHS:
    raise ValueError(f"Unknown arch {arch!r}; choose one of {sorted(ARCHS)}.")
  if fmt not in FORMATS:
    raise ValueError(f"Unknown format {fmt!r}; choose one of {sorted(FORMATS)}.")
  if arch not in FORMATS[fmt].archs:
    raise ValueError(f"Format {fmt!r} has releases for {list(FORMATS[fmt].archs)}, not {arch!r}; formats for "
                     f"{arch!r}: {sorted(f for f, spec in FORMATS.items() if arch in spec.archs)}.")
  return ARCHS[arch], FORMATS[fmt]


def encoder_kwargs(arch: str, fmt: str) -> dict:
  """kwargs for `get_encoder(ARCHS[arch].encoder, ...)` that this release's architecture needs."""
  return dict(_check(arch, fmt)[1].encoder_kwargs.get(arch, {}))


def _select_branch(checkpoint, spec: ReleaseFormat, checkpoint_key: Optional[str]):
  if not isinstance(checkpoint, dict):
    raise ValueError(f"Expected the checkpoint to be a dict, got {type(checkpoint).__name__}.")
  if checkpoint_key is not None:
    if checkpoint_key not in checkpoint:
      raise ValueError(f"checkpoint_key {checkpoint_key!r} is not in the checkpoint; its top-level keys are "
                       f"{sorted(map(str, checkpoint))[:20]}.")
    return checkpoint[checkpoint_key], checkpoint_key
  branch = next((b for b in spec.branches if isinstance(checkpoint.get(b), dict)), None)
  return (checkpoint, None) if branch is None else (checkpoint[branch], branch)


def _select_prefix(keys, spec: ReleaseFormat, prefix: Optional[str]) -> str:
  if prefix is not None:
    if prefix and not any(k.startswith(prefix) for k in keys):
      tops = sorted({k.split(".")[0] + "." for k in keys})
      raise ValueError(f"No key starts with prefix {prefix!r}; top-level prefixes are {tops[:20]}.")
    return prefix
  return next((p for p in spec.prefixes if any(k.startswith(p) for k in keys)), "")


def convert_release(checkpoint, arch: str, fmt: str, *, checkpoint_key: Optional[str] = None,
                    prefix: Optional[str] = None):
  """A loaded release checkpoint (what torch.load returned) -> (variables, info).

  variables: {"params": {"encoder": ..., ["head": {"kernel", "bias"}]}, "batch_stats": {"encoder": ...}} of f32
    numpy arrays, for `ImageClassifier(get_encoder(ARCHS[arch].encoder, **info["encoder_kwargs"]), ...)`.
  info: how it was read — checkpoint_key, prefix, ignored keys, has_head, num_classes, encoder, encoder_kwargs,
    mean, std, channel_order, notes.
  checkpoint_key / prefix override the format's branch / prefix choice (e.g. "student", "momentum_encoder.").
  Raises ValueError listing the missing and unexpected keys when the tensors do not fit the architecture.
  """
  arch_spec, spec = _check(arch, fmt)
  branch, checkpoint_key = _select_branch(checkpoint, spec, checkpoint_key)
  state = convert.unwrap_state_dict(branch, wrapper_keys=spec.wrappers, what=f"{fmt} checkpoint")
  prefix = _select_prefix(state, spec, prefix)
  for old, new in spec.renames:
    state = {(prefix + new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
  ignore = [re.compile(p.format(head=re.escape(arch_spec.head))) for p in spec.ignore]
  inside, ignored, outside = {}, [], []
  for key, value in state.items():
    relative = key[len(prefix):] if key.startswith(prefix) else None
    if any(p.match(key if relative is None else relative) for p in ignore):
      ignored.append(key)
    elif relative is None:
      outside.append(key)
    else:
      inside[relative] = value
  kwargs = encoder_kwargs(arch, fmt)
  encoder = get_encoder(arch_spec.encoder, **kwargs)
  sample = jax.ShapeDtypeStruct((1, *arch_spec.input_shape), jnp.float32)
  problems = []
  if outside:
    problems.append(f"keys outside the encoder prefix {prefix!r} that are no known part of a {fmt} release "
                    f"{convert.describe_keys(outside)}")
  try:
    variables = convert.from_torch_state(inside, encoder, sample, renames=arch_spec.renames, head=arch_spec.head,
                                         what=f"{arch} encoder")
  except ValueError as e:
    problems.append(str(e))
  if problems:
    raise ValueError(f"{fmt} checkpoint for {arch} (branch {checkpoint_key!r}, prefix {prefix!r}, "
                     f"{len(ignored)} keys ignored as heads/other branches) does not convert: "
                     + "; ".join(problems) + ". Check --arch/--format, or pass --prefix / --checkpoint-key.")
  if spec.channel_order == "BGR":
    params = variables["params"]["encoder"]
    *path, leaf = arch_spec.first_conv
    node = params
    for part in path:
      node = node[part]
    node[leaf] = np.ascontiguousarray(node[leaf][..., ::-1, :])  # kernel [..., in, out]: in = B, G, R -> R, G, B
  mean, std = spec.normalisation or (arch_spec.mean, arch_spec.std)
  head = variables["params"].get("head")
  info = {
      "encoder": arch_spec.encoder, "encoder_kwargs": kwargs, "checkpoint_key": checkpoint_key, "prefix": prefix,
      "ignored_keys": sorted(ignored), "has_head": head is not None,
      "num_classes": None if head is None else int(head["bias"].shape[0]),
      "mean": list(mean), "std": list(std), "input_shape": list(arch_spec.input_shape),
      "release_channel_order": spec.channel_order, "releases": spec.releases, "notes": spec.notes,
  }
  return variables, info

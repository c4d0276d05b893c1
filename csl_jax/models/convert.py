"""PyTorch twins of the encoders and torchvision ResNet-50 checkpoint import.

The twins let PyTorch-only tools (fra31/auto-attack, torchattacks) attack exactly the model trained
here: `to_torch_classifier` rebuilds `models.ImageClassifier` as torch.nn modules (NCHW, inputs in
[0, 1]) with the flax weights copied in. ResNet twins use torchvision's module names, so a twin's
`state_dict()` *is* a torchvision state dict, and one name map (`_torch_name`) serves both directions.

Twins match flax outputs in eval mode and in train mode (both normalise with the biased batch
variance); only the running-variance *update* differs (torch stores the unbiased estimate).

PyTorch is an optional extra: it is imported inside functions only.
"""
import functools
import re
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np

from csl_jax.models import get_encoder
from csl_jax.models.resnet import ARCHITECTURES

# flax leaf name -> torch tensor name, for each variable collection.
_LEAF_NAMES = {"params": {"kernel": "weight", "scale": "weight", "bias": "bias"},
               "batch_stats": {"mean": "running_mean", "var": "running_var"}}


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("csl_jax.models.convert needs PyTorch: `pip install csl_jax[torch]`.") from e
  return torch


# flax module name -> torch module name (ResNet shortcuts); other archs pass their own table to `_torch_name`.
RESNET_TORCH_NAMES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}


def _torch_name(path, renames=RESNET_TORCH_NAMES) -> str:
  """flax module path ('encoder', 'layer1_0', 'downsample_conv') -> torch 'encoder.layer1.0.downsample.0'.

  Numbered blocks `layerN_M` / `blocks_M` become `layerN.M` / `blocks.M`; other parts go through `renames`.
  """
  names = []
  for part in path:
    block = re.fullmatch(r"(layer\d+|blocks)_(\d+)", part)
    if block:
      names += block.groups()
    else:
      names.append(renames.get(part, part))
  return ".".join(names)


def _to_torch_layout(collection, leaf, value):
  value = np.asarray(value, np.float32)
  if collection == "params" and leaf == "kernel":
    # Conv [*spatial, I, O] -> [O, I, *spatial] (HWIO -> OIHW, DHWIO -> OIDHW); Dense [in, out] -> [out, in].
    return value.transpose(value.ndim - 1, value.ndim - 2, *range(value.ndim - 2)) if value.ndim > 2 else value.T
  return value


def _from_torch_layout(collection, leaf, value):
  if collection == "params" and leaf == "kernel":
    return value.transpose(*range(2, value.ndim), 1, 0) if value.ndim > 2 else value.T
  return value


def flax_to_torch_state(variables) -> dict:
  """{"params": ..., "batch_stats": ...} -> {torch name: f32 ndarray} in the twins' (torchvision) layout."""
  state = {}
  for collection, leaves in _LEAF_NAMES.items():
    for path, value in flax.traverse_util.flatten_dict(variables.get(collection, {})).items():
      if path[-1] not in leaves:
        raise ValueError(f"{collection}/{'/'.join(path)}: no torch counterpart for a {path[-1]!r} leaf; "
                         f"twins know {sorted(leaves)}.")
      state[f"{_torch_name(path[:-1])}.{leaves[path[-1]]}"] = _to_torch_layout(collection, path[-1], value)
  return state


@functools.cache
def _twin_classes():
  """torch.nn twins, built on first use so importing this module never needs torch."""
  torch = _import_torch()
  tnn, F = torch.nn, torch.nn.functional

  def batch_norm(channels):
    return tnn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)  # == flax momentum 0.9

  def downsample(in_channels, out_channels, stride):
    if stride == 1 and in_channels == out_channels:
      return None
    return tnn.Sequential(tnn.Conv2d(in_channels, out_channels, 1, stride, bias=False), batch_norm(out_channels))

  class BasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, in_channels, width, stride):
      super().__init__()
      self.conv1 = tnn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
      self.bn1 = batch_norm(width)
      self.conv2 = tnn.Conv2d(width, width, 3, 1, 1, bias=False)
      self.bn2 = batch_norm(width)
      self.downsample = downsample(in_channels, width, stride)

    def forward(self, x):
      y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
      return F.relu(y + (x if self.downsample is None else self.downsample(x)))

  class Bottleneck(tnn.Module):
    expansion = 4

    def __init__(self, in_channels, width, stride):
      super().__init__()
      self.conv1 = tnn.Conv2d(in_channels, width, 1, bias=False)
      self.bn1 = batch_norm(width)
      self.conv2 = tnn.Conv2d(width, width, 3, stride, 1, bias=False)  # stride on the 3x3: v1.5
      self.bn2 = batch_norm(width)
      self.conv3 = tnn.Conv2d(width, 4 * width, 1, bias=False)
      self.bn3 = batch_norm(4 * width)
      self.downsample = downsample(in_channels, 4 * width, stride)

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = F.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      return F.relu(y + (x if self.downsample is None else self.downsample(x)))

  class ResNet(tnn.Module):
    """Twin of `resnet.ResNet`: NCHW -> [B, D]; torchvision names, no fc (that is the classifier's head)."""

    def __init__(self, stage_sizes, bottleneck, imagenet_stem, width=64, in_channels=3):
      super().__init__()
      self.imagenet_stem = imagenet_stem
      self.conv1 = (tnn.Conv2d(in_channels, width, 7, 2, 3, bias=False) if imagenet_stem
                    else tnn.Conv2d(in_channels, width, 3, 1, 1, bias=False))
      self.bn1 = batch_norm(width)
      block = Bottleneck if bottleneck else BasicBlock
      channels = width
      for stage, num_blocks in enumerate(stage_sizes):
        blocks = []
        for index in range(num_blocks):
          blocks.append(block(channels, width * 2**stage, 2 if stage > 0 and index == 0 else 1))
          channels = width * 2**stage * block.expansion
        self.add_module(f"layer{stage + 1}", tnn.Sequential(*blocks))
      self.num_stages = len(stage_sizes)
      self.feature_dim = channels

    def forward(self, x):
      x = F.relu(self.bn1(self.conv1(x)))
      if self.imagenet_stem:
        x = F.max_pool2d(x, 3, 2, 1)
      for stage in range(self.num_stages):
        x = getattr(self, f"layer{stage + 1}")(x)
      return x.mean(dim=(2, 3))

  class SmallCNN(tnn.Module):
    """Twin of `small_cnn.SmallCNN`, including its pooling rule."""

    def __init__(self, widths=(32, 64, 128), in_channels=3):
      super().__init__()
      self.num_stages = len(widths)
      self.feature_dim = widths[-1]
      for i, width in enumerate(widths):
        self.add_module(f"conv{i}", tnn.Conv2d(in_channels, width, 3, 1, 1, bias=False))
        self.add_module(f"bn{i}", batch_norm(width))
        in_channels = width

    def forward(self, x):
      for i in range(self.num_stages):
        x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        if i < self.num_stages - 1 and min(x.shape[2:]) >= 2:
          x = F.max_pool2d(x, 2, 2)
      return x.mean(dim=(2, 3))

  class Classifier(tnn.Module):
    """Twin of `ImageClassifier`: NCHW images in [0, 1] -> logits, normalisation inside."""

    def __init__(self, encoder, num_classes, mean, std):
      super().__init__()
      self.encoder = encoder
      self.head = tnn.Linear(encoder.feature_dim, num_classes)
      # Non-persistent: constants of the model, not weights, so state_dict() stays torchvision-like.
      self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
      self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images):
      return self.head(self.encoder((images - self.mean) / self.std))

  return types.SimpleNamespace(ResNet=ResNet, SmallCNN=SmallCNN, Classifier=Classifier)


# Encoder kwargs that only shape the flax computation or its initialisation; f32 twins ignore them.
_FLAX_ONLY_KWARGS = ("dtype", "zero_init_residual")


def build_torch_encoder(encoder_name: str, *, in_channels: int = 3, **encoder_kwargs):
  """Untrained torch twin of `get_encoder(encoder_name, **encoder_kwargs)` (NCHW -> [B, D])."""
  twins = _twin_classes()
  kwargs = {k: v for k, v in encoder_kwargs.items() if k not in _FLAX_ONLY_KWARGS}
  if encoder_name == "small_cnn":
    allowed, build = {"widths"}, twins.SmallCNN
  elif encoder_name in ARCHITECTURES:
    allowed, build = {"width"}, functools.partial(twins.ResNet, **ARCHITECTURES[encoder_name])
  else:
    raise ValueError(f"No PyTorch twin for encoder {encoder_name!r}; twins exist for "
                     f"{['small_cnn', *ARCHITECTURES]}.")
  unknown = sorted(set(kwargs) - allowed)
  if unknown:
    raise TypeError(f"{encoder_name} twin: unknown kwargs {unknown}; it accepts {sorted(allowed)} "
                    f"(and ignores {list(_FLAX_ONLY_KWARGS)}).")
  return build(in_channels=in_channels, **kwargs)


def _load_state(module, state: dict, what: str):
  """Copies {torch name: ndarray} into `module`, failing with the names/shapes that do not fit."""
  torch = _import_torch()
  expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
  missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
  wrong = [f"{k}: {state[k].shape} vs twin {expected[k]}" for k in sorted(set(expected) & set(state))
           if tuple(state[k].shape) != expected[k]]
  if missing or unexpected or wrong:
    raise ValueError(f"{what}: variables do not fit the twin — missing {missing[:6]}, unexpected "
                     f"{unexpected[:6]}, shape mismatches {wrong[:6]}. Pass the same encoder name and kwargs "
                     "(widths/width, num_classes) the model was built with.")
  module.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=False)
  return module.eval()


def _in_channels(encoder_params, encoder_name: str) -> int:
  first_conv = "conv0" if encoder_name == "small_cnn" else "conv1"
  if first_conv not in encoder_params:
    raise ValueError(f"{encoder_name}: encoder params have no {first_conv!r} (found {sorted(encoder_params)[:6]}); "
                     "are these variables of a different encoder?")
  return int(encoder_params[first_conv]["kernel"].shape[2])


def to_torch_encoder(encoder_name: str, variables, **encoder_kwargs):
  """torch twin of an encoder with its flax variables {"params", "batch_stats"} copied in; eval mode.

  Input NCHW f32 already normalised; output f32[B, D], equal to the flax encoder's features.
  """
  if "params" not in variables:
    raise ValueError(f"Expected flax variables {{'params', 'batch_stats'}}, got keys {sorted(variables)}.")
  module = build_torch_encoder(encoder_name, in_channels=_in_channels(variables["params"], encoder_name),
                               **encoder_kwargs)
  return _load_state(module, flax_to_torch_state(variables), f"to_torch_encoder({encoder_name!r})")


def to_torch_classifier(encoder_name: str, variables, *, num_classes: int, mean, std, **encoder_kwargs):
  """torch twin of `ImageClassifier` (NCHW images in [0, 1] -> logits f32[B, num_classes]); eval mode.

  `variables` = {"params": {"encoder": ..., "head": {"kernel", "bias"}}, "batch_stats": {"encoder": ...}},
  as `ImageClassifier.init` / the training state hold them. Normalisation by (mean, std) is inside.
  """
  params = variables.get("params", {})
  if "encoder" not in params or "head" not in params:
    raise ValueError(f"Expected ImageClassifier variables with params 'encoder' and 'head', got params keys "
                     f"{sorted(params)}.")
  in_channels = _in_channels(params["encoder"], encoder_name)
  if len(mean) != in_channels or len(std) != in_channels:
    raise ValueError(f"mean/std need {in_channels} entries (the encoder's input channels), got {mean}, {std}.")
  encoder = build_torch_encoder(encoder_name, in_channels=in_channels, **encoder_kwargs)
  module = _twin_classes().Classifier(encoder, num_classes, tuple(mean), tuple(std))
  return _load_state(module, flax_to_torch_state(variables), f"to_torch_classifier({encoder_name!r})")


def _numpy(value):
  return value.detach().cpu().float().numpy() if hasattr(value, "detach") else np.asarray(value, np.float32)


def torch_state_targets(encoder, sample_input, *, renames=RESNET_TORCH_NAMES) -> dict:
  """{torch tensor name: (collection, flax path under "encoder", flax shape)} for every variable of `encoder`.

  sample_input: an array (or ShapeDtypeStruct) of a valid input shape; only shapes are traced (eval_shape).
  Leaves other than kernel/scale/bias/mean/var (e.g. a ViT's `cls_token`) keep their own name and layout.
  """
  template = jax.eval_shape(functools.partial(encoder.init, train=False), jax.random.key(0), sample_input)
  targets = {}
  for collection in ("params", "batch_stats"):
    for path, leaf in flax.traverse_util.flatten_dict(template.get(collection, {})).items():
      module = _torch_name(path[:-1], renames)
      name = _LEAF_NAMES[collection].get(path[-1], path[-1])
      targets[f"{module}.{name}" if module else name] = (collection, ("encoder", *path), leaf.shape)
  return targets


def describe_keys(keys, limit: int = 20) -> str:
  """"['a', 'b'] (2)": the sorted keys, the first `limit` of them, and how many there are."""
  keys = sorted(keys)
  return f"{keys[:limit]}{f' and {len(keys) - limit} more' if len(keys) > limit else ''} ({len(keys)})"


def from_torch_state(state_dict, encoder, sample_input, *, renames=RESNET_TORCH_NAMES, head: str = "fc",
                     what: str = "state dict", hint: str = "") -> dict:
  """Torch state dict (encoder + optional linear classifier `<head>.weight/bias`) -> flax variables.

  Returns {"params": {"encoder": ..., "head": {"kernel", "bias"}}, "batch_stats": {"encoder": ...}} of f32 numpy
  arrays, the layout of `ImageClassifier(encoder, ...)`; "head" only when the state dict has `<head>.weight`.
  Every tensor must be used and every variable present: otherwise a ValueError lists the missing and unexpected
  keys ("num_batches_tracked" is ignored). `hint` is appended to that message.
  """
  arrays = {k: _numpy(v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  targets = torch_state_targets(encoder, sample_input, renames=renames)
  if f"{head}.weight" in arrays:
    num_classes, features = arrays[f"{head}.weight"].shape[0], arrays[f"{head}.weight"].shape[-1]
    targets[f"{head}.weight"] = ("params", ("head", "kernel"), (features, num_classes))
    targets[f"{head}.bias"] = ("params", ("head", "bias"), (num_classes,))
  missing, unexpected = set(targets) - set(arrays), set(arrays) - set(targets)
  if missing or unexpected:
    raise ValueError(f"Not a {what}: missing keys {describe_keys(missing)}, unexpected keys "
                     f"{describe_keys(unexpected)}.{hint}")
  flat = {"params": {}, "batch_stats": {}}
  for name, (collection, path, shape) in targets.items():
    value = _from_torch_layout(collection, path[-1], arrays[name])
    if value.shape != tuple(shape):
      raise ValueError(f"{name}: shape {arrays[name].shape} does not fit the {what} (flax {tuple(shape)}).")
    flat[collection][path] = value
  return {c: flax.traverse_util.unflatten_dict(f) for c, f in flat.items()}


def from_torchvision_resnet50(state_dict) -> dict:
  """torchvision-layout ResNet-50 state dict -> flax variables for `ImageClassifier(resnet50_imagenet())`.

  Returns {"params": {"encoder": ..., "head": {"kernel", "bias"}}, "batch_stats": {"encoder": ...}} of
  f32 numpy arrays; "head" (the fc) is left out when the checkpoint has no "fc.*" (many SSL checkpoints).
  Values may be torch tensors or arrays; "num_batches_tracked" is ignored.
  """
  encoder, sample = get_encoder("resnet50_imagenet"), jnp.zeros((1, 64, 64, 3))
  targets = torch_state_targets(encoder, sample)
  unknown = [k for k in state_dict if k not in targets and not k.startswith("fc.")]
  prefixes = sorted({k[:-len(t)] for k in unknown for t in targets if k.endswith("." + t)})
  hint = f" Keys look prefixed by {prefixes[:3]}: pass prefix= to load_torch_checkpoint." if prefixes else ""
  return from_torch_state(state_dict, encoder, sample, what="torchvision ResNet-50 state dict", hint=hint)


# Keys under which training scripts commonly nest the state dict.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
# Prefixes added by DataParallel/DistributedDataParallel and torch.compile.
_RUNTIME_PREFIXES = ("module.", "_orig_mod.")


def read_torch_file(path, *, allow_pickle: bool = False):
  """torch.load(path) on the CPU. weights_only=True (no code runs) unless allow_pickle, for trusted files only.

  argparse.Namespace (DINO's full checkpoints store their `args`) is allowed in weights-only mode: rebuilding
  one sets attributes and runs no code.
  """
  torch = _import_torch()
  import argparse  # pylint: disable=g-import-not-at-top
  try:
    if allow_pickle:
      return torch.load(path, map_location="cpu", weights_only=False)
    with torch.serialization.safe_globals([argparse.Namespace]):
      return torch.load(path, map_location="cpu", weights_only=True)
  except FileNotFoundError:
    raise
  except Exception as e:  # torch raises UnpicklingError/RuntimeError variants across versions.
    raise ValueError(f"{path}: cannot be read with torch.load(weights_only={not allow_pickle}) ({e}). If it "
                     "pickles whole objects, re-save only its state_dict() with torch.save, or, for a file you "
                     "trust, allow pickles (allow_pickle=True, `csl_jax.convert --allow-pickle`).") from e


def unwrap_state_dict(obj, *, wrapper_keys=_WRAPPER_KEYS, what: str = "checkpoint") -> dict:
  """The name -> tensor dict inside `obj`, descending through `wrapper_keys` (nested too); runtime prefixes
  ("module.", "_orig_mod.") stripped. Values are returned as they are (tensors or arrays)."""
  torch = _import_torch()
  while isinstance(obj, dict) and not all(torch.is_tensor(v) or isinstance(v, np.ndarray) for v in obj.values()):
    wrapper = next((k for k in wrapper_keys if isinstance(obj.get(k), dict)), None)
    if wrapper is None:
      raise ValueError(f"{what}: found no state dict; top-level keys {sorted(map(str, obj))[:10]}. Expected a "
                       f"name -> tensor dict, possibly under one of {tuple(wrapper_keys)}.")
    obj = obj[wrapper]
  if not isinstance(obj, dict) or not obj:
    raise ValueError(f"{what}: expected a non-empty name -> tensor dict, got {type(obj).__name__}.")
  state = {}
  for name, value in obj.items():
    for runtime_prefix in _RUNTIME_PREFIXES:
      name = name.removeprefix(runtime_prefix)
    state[name] = value
  return state


def load_torch_checkpoint(path, *, prefix: str = "") -> dict:
  """Reads a .pth/.pt/.tar checkpoint into {name: f32 ndarray}, unwrapping common wrappers.

  Unwraps {"state_dict" | "model" | "model_state_dict" | "net": ...} (nested too) and strips
  "module."/"_orig_mod." prefixes. `prefix` keeps only keys under it and strips it (e.g.
  "encoder_q." for MoCo, "backbone." for some BYOL ports). Loads with weights_only=True: no code runs.
  For the published SSL releases (heads, branches, per-release prefixes) see `models.convert_release`.
  """
  state = unwrap_state_dict(read_torch_file(path), what=str(path))
  if prefix:
    heads = sorted({k.split(".")[0] + "." for k in state})
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not state:
      raise ValueError(f"{path}: no key starts with prefix {prefix!r}; top-level prefixes are {heads[:10]}.")
  return {k: _numpy(v) for k, v in state.items()}

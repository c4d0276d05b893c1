"""Convert a published PyTorch checkpoint into a flax checkpoint this library loads.

  python -m csl_jax.convert --arch vit_b16 --format dino dino_vitbase16_pretrain.pth converted/dino_vitb16
  python -m csl_jax.convert --arch resnet50 --format torchvision resnet50-11ad3fa6.pth converted/rn50_sup
  python -m csl_jax.convert --arch r2plus1d_18 --format tclr tclr_r2p1d_k400.pth converted/tclr

Formats and what each ignores: `csl_jax.models.convert_release.FORMATS` (`--list-formats` prints them).
Writes
  <out_dir>/variables/  orbax checkpoint of {"params", "batch_stats"} for `ImageClassifier(encoder[, head])`:
                        params {"encoder", "head" when the release has a classifier}, batch_stats {"encoder"}
  <out_dir>/meta.json   arch, format, encoder name and kwargs, num_classes / has_head, mean, std, input shape,
                        the source file's sha256, the keys ignored, a digest of the variables
Both are written into a temporary directory renamed to <out_dir> at the end: an <out_dir> exists only complete.
`load_converted(out_dir)` reads it back (for `--config.init_from=<out_dir>`), checking shapes and the digest.
"""
import argparse
import hashlib
import json
import os
import pathlib
import shutil
import sys
from typing import Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from csl_jax.models import ImageClassifier, convert, convert_release, get_encoder

KIND = "csl_jax.converted_checkpoint"
FORMAT_VERSION = 1
META = "meta.json"
VARIABLES = "variables"


class ConvertedCheckpointError(ValueError):
  """A directory is not a converted checkpoint, or its contents are incomplete or corrupt."""


def sha256_file(path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      digest.update(chunk)
  return digest.hexdigest()


def variables_digest(variables) -> str:
  """sha256 over every leaf's path, dtype, shape and bytes, in path order: changes if any stored value does."""
  digest = hashlib.sha256()
  for path, leaf in sorted(flax.traverse_util.flatten_dict(variables, sep="/").items()):
    leaf = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{path}|{leaf.dtype.str}|{leaf.shape}|".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def converted_model(meta: dict, *, num_classes: Optional[int] = None, dtype=None) -> ImageClassifier:
  """The `ImageClassifier` a converted checkpoint is for: images (clips) in [0, 1] -> logits, normalised inside.

  With has_head, its head is the release's classifier; otherwise pass `num_classes` for a new head to train
  (`model.apply(variables, x, method=ImageClassifier.features)` needs no head at all). dtype: the encoder's
  computation dtype (default float32; the weights stay float32).
  """
  encoder = get_encoder(meta["encoder"], **meta.get("encoder_kwargs", {}), **({"dtype": dtype} if dtype else {}))
  num_classes = meta["num_classes"] if meta.get("has_head") else num_classes
  return ImageClassifier(encoder, num_classes=num_classes or 1, mean=tuple(meta["mean"]), std=tuple(meta["std"]))


def _expected_shapes(meta: dict) -> dict:
  model = converted_model(meta)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *meta["input_shape"]), jnp.float32))
  variables = {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}
  if not meta.get("has_head"):
    variables["params"] = {k: v for k, v in variables["params"].items() if k != "head"}
  return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(variables, sep="/").items()}


def convert_checkpoint(arch: str, fmt: str, src, out_dir, *, checkpoint_key: Optional[str] = None,
                       prefix: Optional[str] = None, mean: Optional[Sequence[float]] = None,
                       std: Optional[Sequence[float]] = None, allow_pickle: bool = False,
                       overwrite: bool = False) -> dict:
  """Reads the release `src` (.pth), converts it, writes <out_dir>/{variables/, meta.json}; returns the meta.

  checkpoint_key / prefix override the format's choice of branch / encoder prefix; mean / std override its
  normalisation. allow_pickle loads with torch.load(weights_only=False): only for files you trust.
  overwrite replaces an existing converted checkpoint (never any other non-empty directory).
  """
  src, out_dir = pathlib.Path(src), pathlib.Path(out_dir).absolute()
  if out_dir.exists() and not out_dir.is_dir():
    raise FileExistsError(f"{out_dir} exists and is not a directory.")
  if out_dir.exists() and any(out_dir.iterdir()):
    if not overwrite:
      raise FileExistsError(f"{out_dir} exists and is not empty; pass --overwrite to replace a converted checkpoint.")
    if not (out_dir / META).is_file():
      raise FileExistsError(f"{out_dir} is not a converted checkpoint (no {META}); refusing to replace it.")
  variables, info = convert_release.convert_release(convert.read_torch_file(src, allow_pickle=allow_pickle), arch,
                                                    fmt, checkpoint_key=checkpoint_key, prefix=prefix)
  for name, value in (("mean", mean), ("std", std)):
    if value is not None:
      if len(value) != len(info[name]):
        raise ValueError(f"--{name} needs {len(info[name])} values (one per channel), got {list(value)}.")
      info[name] = [float(v) for v in value]
  if min(info["std"]) <= 0:
    raise ValueError(f"std must be positive, got {info['std']}.")
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  meta = {"kind": KIND, "format_version": FORMAT_VERSION, "arch": arch, "format": fmt, **info,
          "needs_linear_probe": not info["has_head"],
          "feature_dim": convert_release.ARCHS[arch].feature_dim,
          "source": {"file": src.name, "sha256": sha256_file(src), "bytes": src.stat().st_size},
          "variables_sha256": variables_digest(variables)}

  tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(tmp / VARIABLES, variables)
      checkpointer.wait_until_finished()
    (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    if out_dir.exists():
      shutil.rmtree(out_dir)
    tmp.rename(out_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return meta


def read_meta(out_dir) -> dict:
  """meta.json of a `convert_checkpoint` directory, checked for the fields `load_converted` relies on (cheap:
  the variables are not read). Raises ConvertedCheckpointError when out_dir is not a converted checkpoint."""
  out_dir = pathlib.Path(out_dir)
  what = f"{out_dir}: not a converted checkpoint (made by `python -m csl_jax.convert`)"
  if not out_dir.is_dir():
    raise ConvertedCheckpointError(f"{what}: no such directory.")
  try:
    meta = json.loads((out_dir / META).read_text())
  except FileNotFoundError as e:
    raise ConvertedCheckpointError(f"{what}: it has no {META}.") from e
  except (OSError, ValueError) as e:
    raise ConvertedCheckpointError(f"{what}: {META} is unreadable ({e}).") from e
  required = ("kind", "format_version", "arch", "format", "encoder", "has_head", "num_classes", "mean", "std",
              "input_shape", "variables_sha256")
  if not isinstance(meta, dict) or meta.get("kind") != KIND or any(k not in meta for k in required):
    fields = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
    raise ConvertedCheckpointError(f"{what}: {META} lacks fields {required} (has {fields}).")
  if meta["format_version"] != FORMAT_VERSION:
    raise ConvertedCheckpointError(f"{out_dir}: format_version {meta['format_version']}, this code reads "
                                   f"{FORMAT_VERSION}; re-run the conversion.")
  return meta


def load_converted(out_dir):
  """(meta, variables) of a `convert_checkpoint` directory; variables as f32 numpy arrays.

  Raises ConvertedCheckpointError when out_dir is not one (no/invalid meta.json), is incomplete (no variables),
  holds variables of other shapes than meta.json describes, or fails its digest (corrupt data).
  """
  out_dir = pathlib.Path(out_dir)
  meta = read_meta(out_dir)
  path = (out_dir / VARIABLES).absolute()
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      stored = checkpointer.metadata(path).item_metadata.tree
      stored = {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(stored, sep="/").items()}
    except Exception as e:  # orbax raises many types for missing/damaged metadata.
      raise ConvertedCheckpointError(f"{out_dir}: the variables ({path}) are missing or unreadable "
                                     f"({type(e).__name__}: {str(e)[:300]}); re-run the conversion.") from e
    expected = _expected_shapes(meta)
    if stored != expected:
      differing = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
      raise ConvertedCheckpointError(
          f"{out_dir}: stored variables do not fit {meta['encoder']} as {META} describes it; differing leaves "
          + ", ".join(f"{k} (stored {stored.get(k)}, expected {expected.get(k)})" for k in differing[:10]) + ".")
    try:
      variables = checkpointer.restore(path)
    except Exception as e:  # pylint: disable=broad-except
      raise ConvertedCheckpointError(f"{out_dir}: the variables are corrupt ({type(e).__name__}: "
                                     f"{str(e)[:300]}); re-run the conversion.") from e
  variables = jax.tree.map(lambda x: np.asarray(x, np.float32), dict(variables))
  variables.setdefault("batch_stats", {})
  if variables_digest(variables) != meta["variables_sha256"]:
    raise ConvertedCheckpointError(f"{out_dir}: the variables do not match the digest in {META} (corrupt or "
                                   "modified data); re-run the conversion.")
  return meta, variables


def _floats(text: str):
  return [float(v) for v in text.split(",")]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m csl_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--arch", choices=sorted(convert_release.ARCHS))
  parser.add_argument("--format", dest="fmt", choices=sorted(convert_release.FORMATS))
  parser.add_argument("src", nargs="?", help="the release's .pth / .pth.tar file")
  parser.add_argument("out_dir", nargs="?", help="directory to write (variables/ and meta.json)")
  parser.add_argument("--checkpoint-key", help="top-level key to read (DINO: teacher (default) or student)")
  parser.add_argument("--prefix", help="encoder key prefix, overriding the format's (e.g. momentum_encoder.)")
  parser.add_argument("--mean", type=_floats, help="per-channel mean of inputs in [0, 1], RGB order, "
                      "comma-separated (default: the format's)")
  parser.add_argument("--std", type=_floats, help="per-channel std, RGB order, comma-separated (default: the format's)")
  parser.add_argument("--allow-pickle", action="store_true",
                      help="torch.load(weights_only=False): runs the file's pickled code; trusted files only")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing converted checkpoint")
  parser.add_argument("--list-formats", action="store_true", help="print the formats and exit")
  args = parser.parse_args(argv)
  if args.list_formats:
    for name, spec in convert_release.FORMATS.items():
      print(f"{name} ({', '.join(spec.archs)}): {spec.releases}\n  ignored: {list(spec.ignore) or 'nothing'}"
            + (f"\n  note: {spec.notes}" if spec.notes else ""))
    return 0
  missing = [name for name in ("arch", "fmt", "src", "out_dir") if getattr(args, name) is None]
  if missing:
    parser.error(f"missing {', '.join('--format' if m == 'fmt' else m for m in missing)}")
  try:
    meta = convert_checkpoint(args.arch, args.fmt, args.src, args.out_dir, checkpoint_key=args.checkpoint_key,
                              prefix=args.prefix, mean=args.mean, std=args.std, allow_pickle=args.allow_pickle,
                              overwrite=args.overwrite)
  except (ValueError, FileExistsError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  head = (f"classifier with {meta['num_classes']} classes" if meta["has_head"]
          else "no classifier: train a linear probe on the features")
  print(f"{args.out_dir}: {meta['arch']} ({meta['format']}), {meta['feature_dim']}-d features, {head}; "
        f"prefix {meta['prefix']!r}, {len(meta['ignored_keys'])} keys ignored; mean {meta['mean']}, std {meta['std']}.")
  return 0


if __name__ == "__main__":
  sys.exit(main())

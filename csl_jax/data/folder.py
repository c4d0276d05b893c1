"""Image-folder datasets: `<root>/<split>/<class>/<image>`, as a directory or a .zip of one.

The layout torchvision's ImageFolder and tfds.ImageFolder read. Labels follow the class-directory names
sorted alphabetically over all splits (so train and test agree even when a split lacks a class). A zip
whose entries sit under one top-level folder (`cifar10/train/...`) is read too.

Images are decoded once (PIL, in a thread pool) to u8[N, H, W, 3] (grayscale/RGBA -> RGB) and cached
as an .npz in `cache_dir` (default ~/.cache/csl_jax), keyed by the absolute path, the file size and
mtime (a zip) or every image's name, size and mtime (a directory), the split and image_size.
"""
import concurrent.futures
import contextlib
import hashlib
import io
import os
import pathlib
import zipfile

import numpy as np
from PIL import Image

from csl_jax.data import dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
DEFAULT_CACHE_DIR = "~/.cache/csl_jax"
_CACHE_VERSION = 3  # 2: torchvision's rounding in `dataset.fit_image`; 3: stored in `fixed_order`
# Splits are stored in a fixed shuffle of the sorted (class, file) list, as TFDS stores shuffled records: the
# "first N test images" an evaluation takes (robustness.num_examples, ...) then cover every class, not one.
ORDER_SEED = 0
# Below this many images, or this mean file size, a thread pool costs more than it saves.
_PARALLEL_MIN_IMAGES = 2048
_PARALLEL_MIN_BYTES = 16 << 10
_LAYOUT_HELP = "expected <root>/<split>/<class>/<image>.jpg (a directory or a .zip of one)"


def _is_image(rel_path: str) -> bool:
  name = rel_path.rsplit("/", 1)[-1]
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_entries(path: pathlib.Path):
  """(image files, directories) of a directory or zip, as '/'-separated paths relative to its top."""
  if path.is_dir():
    files, dirs = [], []
    for parent, subdirs, names in os.walk(path):
      rel = pathlib.Path(parent).relative_to(path).as_posix()
      prefix = "" if rel == "." else rel + "/"
      subdirs[:] = [d for d in subdirs if not d.startswith(".")]
      dirs += [prefix + d for d in subdirs]
      files += [prefix + n for n in names if _is_image(n)]
    return files, dirs
  with zipfile.ZipFile(path) as archive:
    names = [n for n in archive.namelist() if not n.startswith("__MACOSX/")]
  files = [n for n in names if not n.endswith("/") and _is_image(n)]
  # Zips need not store directory entries; rebuild them from the file paths as well.
  dirs = {n.rstrip("/") for n in names if n.endswith("/")}
  for n in names:
    parts = n.rstrip("/").split("/")
    dirs.update("/".join(parts[:k]) for k in range(1, len(parts)))
  return files, sorted(dirs)


def _splits_under(prefix: str, files, dirs) -> dict:
  """{split: {class: [files]}} for the tree under `prefix` ('' or 'top/'), empty class dirs included."""
  depth = prefix.count("/")
  tree = {}
  for d in dirs:
    parts = d.split("/")
    if d.startswith(prefix) and len(parts) == depth + 2:
      tree.setdefault(parts[depth], {}).setdefault(parts[depth + 1], [])
  for f in files:
    parts = f.split("/")
    if f.startswith(prefix) and len(parts) == depth + 3:
      tree.setdefault(parts[depth], {}).setdefault(parts[depth + 1], []).append(f)
  # A directory of images directly under a "split" is not a split of classes.
  return {split: classes for split, classes in tree.items() if any(classes.values())}


def index_split(path: pathlib.Path, split: str, source: str):
  """(sorted class names over all splits, [(file, label)] for `split`), with errors that say what to fix."""
  files, dirs = list_entries(path)
  tops = sorted({d.split("/")[0] for d in dirs})
  candidates = [""] + [top + "/" for top in tops]
  trees = {prefix: _splits_under(prefix, files, dirs) for prefix in candidates}
  roots = [prefix for prefix in candidates if split in trees[prefix]]
  if not roots:
    found = sorted({f"{prefix}{s}" for prefix, tree in trees.items() for s in tree})
    raise FileNotFoundError(f"{source}: no split {split!r} — expected <root>/{split}/<class>/*.jpg "
                            f"(a directory or a .zip of one); found splits: {found}. "
                            f"Save each {split} image as <root>/{split}/<class_name>/<name>.jpg.")
  tree = trees[roots[0]]
  class_names = sorted({c for classes in tree.values() for c, members in classes.items() if members})
  empty = sorted(c for c, members in tree[split].items() if not members)
  if empty:
    raise ValueError(f"{source}: class directories without images in split {split!r}: {empty} — expected "
                     f"<root>/{split}/<class>/<image> with extensions {IMAGE_EXTENSIONS}; remove them or add images.")
  label_of = {c: i for i, c in enumerate(class_names)}
  entries = [(f, label_of[c]) for c in sorted(tree[split]) for f in sorted(tree[split][c])]
  return class_names, entries


def _cache_file(path: pathlib.Path, split: str, image_size, cache_dir, entries=None) -> pathlib.Path:
  """The cache .npz for a split; a directory needs its `entries` (a zip is keyed by its own stat)."""
  parts = [f"v{_CACHE_VERSION}", str(path), split, str(image_size)]
  if path.is_dir():
    # A directory's own mtime misses edits to nested files, so key on every image's stat.
    for rel, _ in entries:
      st = (path / rel).stat()
      parts.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}")
  else:
    st = path.stat()
    parts.append(f"{st.st_size}:{st.st_mtime_ns}")
  key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
  cache_dir = pathlib.Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()
  return cache_dir / f"folder_{path.stem}_{split.replace('/', '_')}_{image_size or 'native'}_{key}.npz"


def cache_path(path, split: str, *, cache_dir=None, image_size=None) -> pathlib.Path:
  """Where `load` caches (or finds) the decoded split of `path`."""
  path = pathlib.Path(path).expanduser().resolve()
  entries = index_split(path, split, f"folder:{path}")[1] if path.is_dir() else None
  return _cache_file(path, split, image_size, cache_dir, entries)


def fixed_order(num_examples: int) -> np.ndarray:
  """The stored order of a folder split (in memory or streamed): positions into the sorted (class, file) list,
  a permutation fixed once and for all (seed ORDER_SEED)."""
  return np.random.default_rng(ORDER_SEED).permutation(num_examples)


class MixedSizesError(ValueError):
  """The images of a split differ in size and no image_size was given."""


def decode_image(raw: bytes, path: str, name: str, image_size=None, resize_size=None) -> np.ndarray:
  """Encoded image bytes (file `name` of the folder at `path`) -> u8[H, W, 3], resized by `dataset.fit_image`
  when image_size is given."""
  try:
    with Image.open(io.BytesIO(raw)) as image:
      image = image.convert("RGB")  # Grayscale, palette, RGBA, CMYK -> RGB.
  except OSError as error:
    raise OSError(f"{path}: cannot decode {name!r} ({error}); delete or replace the file.") from error
  if image_size is not None:
    image = dataset.fit_image(image, image_size, resize_size)
  return np.asarray(image, np.uint8)


def _decode_one(archive, path: str, name: str, image_size) -> np.ndarray:
  raw = archive.read(name) if archive else pathlib.Path(path, name).read_bytes()
  return decode_image(raw, path, name, image_size)


def decode_files(path: str, names, image_size, out: np.ndarray) -> None:
  """Decodes `names` (in the directory or zip at `path`) into out: u8[len(names), H, W, 3].

  One call per worker thread, each with its own zip handle. Raises MixedSizesError when an image's
  size differs from out's (images of varying size need image_size).
  """
  archive = zipfile.ZipFile(path) if zipfile.is_zipfile(path) else None
  try:
    for k, name in enumerate(names):
      pixels = _decode_one(archive, path, name, image_size)
      if pixels.shape != out.shape[1:]:
        raise MixedSizesError(f"images differ in size: {name!r} is {pixels.shape[1]}x{pixels.shape[0]}, "
                              f"others {out.shape[2]}x{out.shape[1]}")
      out[k] = pixels
  finally:
    if archive:
      archive.close()


def _mean_file_size(path: pathlib.Path, names, sample: int = 256) -> float:
  names = names[::max(1, len(names) // sample)]
  if path.is_dir():
    return float(np.mean([(path / n).stat().st_size for n in names]))
  with zipfile.ZipFile(path) as archive:
    return float(np.mean([archive.getinfo(n).file_size for n in names]))


def _decode_all(path: pathlib.Path, names, image_size, num_workers) -> np.ndarray:
  """u8[len(names), H, W, 3], written in place (no second copy of a large split)."""
  with zipfile.ZipFile(path) if not path.is_dir() else contextlib.nullcontext() as archive:
    first = _decode_one(archive, str(path), names[0], image_size)
  out = np.empty((len(names),) + first.shape, np.uint8)
  if num_workers is None:
    # Threads pay off only when decoding (which releases the GIL) outweighs the per-file Python work:
    # measured on 2 busy cores, 32x32 CIFAR JPEGs (~0.8 KB) decode fastest serially (50k in ~8 s).
    large = len(names) >= _PARALLEL_MIN_IMAGES and _mean_file_size(path, names) >= _PARALLEL_MIN_BYTES
    num_workers = min(os.cpu_count() or 1, 16) if large else 1
  if num_workers <= 1:
    decode_files(str(path), names, image_size, out)
    return out
  chunk = -(-len(names) // (4 * num_workers))  # A few chunks per worker balance uneven decode times.
  # Threads, not processes: PIL releases the GIL while decoding and resizing, and worker processes would
  # have to re-import the caller's __main__ (spawn) or fork a process running JAX/TF threads.
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    jobs = [pool.submit(decode_files, str(path), names[i:i + chunk], image_size, out[i:i + chunk])
            for i in range(0, len(names), chunk)]
    for job in jobs:
      job.result()  # Re-raises a worker's error.
  return out


def load(path: str, split: str, *, cache_dir: str | None = None, image_size: int | None = None,
         num_workers: int | None = None) -> dataset.ArrayDataset:
  """Loads `<path>/<split>/<class>/*` (a directory or .zip) as an ArrayDataset of u8[N, H, W, 3], in
  `fixed_order` (example k is entry fixed_order(N)[k] of the split sorted by class name, then file name).

  image_size: resize the shorter side and center-crop to image_size x image_size (required when the
  images differ in size). num_workers: decode threads (default: all cores, capped at 16, for splits of
  many large files; serial otherwise).
  """
  source = f"folder:{path}"
  resolved = pathlib.Path(path).expanduser().resolve()
  if not resolved.exists():
    raise FileNotFoundError(f"{source}: no such directory or zip file ({resolved}) — {_LAYOUT_HELP}. "
                            f"Prepare it by saving each image as <root>/<split>/<class_name>/<name>.jpg "
                            f"(optionally zipped), then pass folder:<root>.")
  if not resolved.is_dir() and not zipfile.is_zipfile(resolved):
    raise ValueError(f"{source}: {resolved} is neither a directory nor a zip file — {_LAYOUT_HELP}.")
  # A zip's cache key needs only its stat, so a cached split skips even listing the archive.
  class_names, entries = index_split(resolved, split, source) if resolved.is_dir() else (None, None)
  cache_file = _cache_file(resolved, split, image_size, cache_dir, entries)
  if cache_file.exists():
    with np.load(cache_file) as cached:
      return dataset.ArrayDataset(images=cached["images"], labels=cached["labels"],
                                  class_names=[str(c) for c in cached["class_names"]], name=f"{source}:{split}")
  if entries is None:
    class_names, entries = index_split(resolved, split, source)
  entries = [entries[i] for i in fixed_order(len(entries))]
  try:
    images = _decode_all(resolved, [f for f, _ in entries], image_size, num_workers)
  except MixedSizesError as error:
    raise MixedSizesError(f"{source}: split {split!r}: {error} — pass image_size=N to resize the shorter side "
                          f"to N and center-crop N x N.") from error
  labels = np.array([label for _, label in entries], np.int32)
  cache_file.parent.mkdir(parents=True, exist_ok=True)
  # Write-then-rename: concurrent hosts or an interrupted run never leave a truncated cache behind.
  partial = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.partial.npz")
  np.savez(partial, images=images, labels=labels, class_names=np.array(class_names))
  os.replace(partial, cache_file)
  return dataset.ArrayDataset(images=images, labels=labels, class_names=class_names, name=f"{source}:{split}")

"""Video datasets as folders of decoded frames ("frames:<path>"): `<root>/<split>/<class>/<video>/<frame>.jpg`.

The layout UCF101 and HMDB51 are usually prepared in for action recognition (one directory of JPEG frames per
video, e.g. extracted with ffmpeg; a directory or a .zip of one). Each video is one example: a clip of
`clip_frames` frames sampled uniformly over the whole video (frame indices round(linspace(0, n - 1, T)), so a
video shorter than T repeats frames) — the one-clip-per-video evaluation — each frame resized (shorter side to
resize_size) and centre-cropped to image_size x image_size exactly as images are (`dataset.fit_image`):
u8[T, S, S, 3], 16 x 112 x 112 from 128-pixel frames for the R(2+1)D releases. Frames sort in natural order
(frame_2 before frame_10). Clips are decoded per batch (`streamed_folder.StreamedFolder`): batches hold
u8[B, T, S, S, 3] and everything downstream (eval batches, attacks, features) takes the extra axis as it is.
"""
import re

import numpy as np

from csl_jax.data import folder, streamed_folder

LAYOUT = "<root>/<split>/<class>/<video>/<frame>.jpg"


def natural_key(name: str):
  """Sort key that orders the numbers inside names by value: frame_2.jpg < frame_10.jpg."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def frame_indices(num_frames: int, clip_frames: int) -> np.ndarray:
  """int[clip_frames]: `clip_frames` indices spread uniformly over [0, num_frames) (repeats when fewer frames)."""
  return np.round(np.linspace(0, num_frames - 1, clip_frames)).astype(np.int64)


def index_videos(path, split: str, source: str):
  """(class names sorted over all splits, [(frame names in natural order, label)] for the videos of `split`)."""
  files, _ = folder.list_entries(path)
  prefixes = [""] + sorted({f.split("/")[0] + "/" for f in files if "/" in f})
  for prefix in prefixes:
    videos = {}  # (split, class, video) -> frame names
    for name in files:
      parts = name[len(prefix):].split("/") if name.startswith(prefix) else []
      if len(parts) == 4:
        videos.setdefault(tuple(parts[:3]), []).append(name)
    if any(key[0] == split for key in videos):
      break
  else:
    found = sorted({p + key[0] for p in prefixes for key in _videos_under(files, p)})
    raise FileNotFoundError(f"{source}: no videos in split {split!r} — expected {LAYOUT} (a directory per video "
                            f"holding its frames; a directory or a .zip of one); found splits with videos: {found}.")
  class_names = sorted({key[1] for key in videos})
  label_of = {name: i for i, name in enumerate(class_names)}
  entries = [(tuple(sorted(frames, key=natural_key)), label_of[key[1]])
             for key, frames in sorted(videos.items()) if key[0] == split]
  return class_names, entries


def _videos_under(files, prefix: str) -> set:
  return {tuple(f[len(prefix):].split("/")[:3]) for f in files
          if f.startswith(prefix) and len(f[len(prefix):].split("/")) == 4}


def _clip_decoder(root: str, clip_frames: int, image_size: int, resize_size):
  def decode(reader: streamed_folder.FileReader, frames: tuple) -> np.ndarray:
    return np.stack([folder.decode_image(reader.read(frames[i]), root, frames[i], image_size, resize_size)
                     for i in frame_indices(len(frames), clip_frames)])
  return decode


def load(path: str, split: str, *, clip_frames: int, image_size: int, resize_size: int | None = None,
         num_workers: int = 0) -> streamed_folder.StreamedFolder:
  """Split `split` of the frame folder at `path` as a streamed dataset of u8[clip_frames, S, S, 3] clips."""
  source = f"frames:{path}"
  if clip_frames < 1 or not image_size:
    raise ValueError(f"{source}: clips need clip_frames >= 1 and image_size > 0 (got {clip_frames} and "
                     f"{image_size}); set config.dataset.clip_frames and config.dataset.image_size.")
  root = streamed_folder.resolve(path, source, LAYOUT)
  class_names, entries = index_videos(root, split, source)
  order = folder.fixed_order(len(entries))
  return streamed_folder.StreamedFolder(
      root=str(root), entries=tuple(entries[i][0] for i in order),
      labels=np.array([entries[i][1] for i in order], np.int32), class_names=class_names,
      image_shape=(clip_frames, image_size, image_size, 3),
      decode=_clip_decoder(str(root), clip_frames, image_size, resize_size), name=f"{source}:{split}",
      num_workers=num_workers)

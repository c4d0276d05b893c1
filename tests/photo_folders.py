"""Real-photo test data on disk: an ImageNet-shaped image folder of mixed sizes and a folder of video frames.

Images: crops of scikit-image's bundled photos at mixed sizes and aspect ratios, saved as JPEGs, one class per
photo (astronaut, cat, coffee, rocket), so a probe has something to learn and every image needs resizing.
Videos: CIFAR-10 test photos as frames, each video a camera panning over one photo (frames differ), in
per-video directories with unpadded frame numbers (frame_2 before frame_10 only in natural order).
"""
import io
import pathlib
import zipfile

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photo(name: str) -> np.ndarray:
  from skimage import data  # pylint: disable=g-import-not-at-top
  return getattr(data, name)()


def imagenet_like_folder(root, *, per_class: dict, classes=PHOTOS[:3], seed: int = 0) -> pathlib.Path:
  """<root>/<split>/<class>/<n>.JPEG: per_class[split] random crops (120-330 px a side, any aspect) of each photo."""
  rng = np.random.default_rng(seed)
  root = pathlib.Path(root)
  for name in classes:
    image = photo(name)
    height, width = image.shape[:2]
    for split, count in per_class.items():
      directory = root / split / name
      directory.mkdir(parents=True, exist_ok=True)
      for k in range(count):
        h, w = (int(rng.integers(120, min(330, side) + 1)) for side in (height, width))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        Image.fromarray(image[top:top + h, left:left + w]).save(directory / f"{k}.JPEG", quality=90)
  return root


def cifar_photos(zip_path, names) -> list:
  with zipfile.ZipFile(zip_path) as archive:
    return [np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB")) for name in names]


def video_frame_folder(root, zip_path, *, videos: dict, frame_counts=(5, 12)) -> pathlib.Path:
  """<root>/<split>/<class>/<video>/frame_<t>.jpg: videos[split] videos per class (airplane, cat), the v-th with
  frame_counts[v % len] frames of a 40x48 window panning over an upscaled CIFAR-10 test photo."""
  root = pathlib.Path(root)
  videos = [(split, label, name, v) for split, count in videos.items()
            for label, name in enumerate(("airplane", "cat")) for v in range(count)]
  scenes = cifar_photos(zip_path, [f"test/{name}/{k:04d}.jpg" for k, (_, _, name, _) in enumerate(videos)])
  for (split, label, name, v), scene in zip(videos, scenes):
    scene = np.asarray(Image.fromarray(scene).resize((96, 96), Image.BILINEAR))
    directory = root / split / name / f"v_{label}_{v}"
    directory.mkdir(parents=True, exist_ok=True)
    for t in range(frame_counts[v % len(frame_counts)]):
      Image.fromarray(scene[2 * t:2 * t + 40, 3 * t:3 * t + 48]).save(directory / f"frame_{t + 1}.jpg", quality=95)
  return root

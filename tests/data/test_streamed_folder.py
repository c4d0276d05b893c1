"""Streamed image folders (mixed sizes, resize 256 / crop 224) and video frame folders: preprocessing equals a
PIL reference, batches equal the in-memory split's, clips go through eval batches and a PGD attack."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from csl_jax import attacks, data
from csl_jax.analysis import geometry_stage
from csl_jax.data import dataset, folder, streamed_folder, video_frames
from csl_jax.eval import batches
from csl_jax.train import sharding
from tests import photo_folders

pytest.importorskip("skimage")


def reference_resize_crop(image: Image.Image, resize: int, crop: int) -> np.ndarray:
  """torchvision's Resize(resize) + CenterCrop(crop), written out from its source (transforms.functional)."""
  w, h = image.size
  if w <= h:
    size = (resize, int(resize * h / w))
  else:
    size = (int(resize * w / h), resize)
  image = image.resize(size, Image.BILINEAR)
  w, h = image.size
  top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
  return np.asarray(image.crop((left, top, left + crop, top + crop)))


@pytest.fixture(scope="module")
def photos_root(tmp_path_factory):
  return photo_folders.imagenet_like_folder(tmp_path_factory.mktemp("imagenet"), per_class={"train": 3, "val": 2})


@pytest.mark.parametrize("name", ["chelsea", "coffee", "rocket"])
def test_resize_crop_equals_the_torchvision_reference_on_a_photo(name, tmp_path):
  image = Image.fromarray(photo_folders.photo(name))  # landscape photos, 300x451 to 427x640
  portrait = image.transpose(Image.Transpose.ROTATE_90)
  for pil in (image, portrait):
    expected = reference_resize_crop(pil, 256, 224)
    np.testing.assert_array_equal(np.asarray(dataset.fit_image(pil, 224, 256)), expected)
  # The streamed folder decodes the same pixels (the JPEG round trip is the only other step).
  (tmp_path / "val" / "x").mkdir(parents=True)
  image.save(tmp_path / "val" / "x" / "0.png")
  ds = streamed_folder.load_images(str(tmp_path), "val", image_size=224, resize_size=256)
  batch = next(ds.batches(1, seed=0, shuffle=False, process_index=0, process_count=1))
  np.testing.assert_array_equal(batch["image"][0], reference_resize_crop(image, 256, 224))


def test_tf_resize_crop_matches_the_reference_geometry():
  """TFDS streaming resizes with TensorFlow: same output size and crop window, bilinear within a few levels."""
  tf = pytest.importorskip("tensorflow")
  from csl_jax.data import tfds_source
  image = photo_folders.photo("chelsea")
  out = tfds_source._fit_image_tf(tf.constant(image), 224, 256).numpy()  # pylint: disable=protected-access
  expected = reference_resize_crop(Image.fromarray(image), 256, 224)
  assert out.shape == expected.shape == (224, 224, 3)
  # A crop window one pixel off would differ by tens of levels at the cat's edges.
  assert np.mean(np.abs(out.astype(float) - expected)) < 1.5


def test_mixed_size_folder_streams_the_in_memory_batches(photos_root, tmp_path):
  streamed = data.load(f"folder:{photos_root}", "train", image_size=32, resize_size=40)
  assert isinstance(streamed, streamed_folder.StreamedFolder) and not hasattr(streamed, "images")
  assert streamed.image_shape == (32, 32, 3) and len(streamed) == 9 and streamed.class_names == [
      "astronaut", "chelsea", "coffee"]
  # The in-memory reference: every file through the same PIL transform, in the streamed split's stored order.
  files = [str(photos_root / name) for name in streamed.entries]
  images = np.stack([np.asarray(dataset.fit_image(Image.open(f).convert("RGB"), 32, 40)) for f in files])
  expected = [f.split("/")[-2] for f in files]
  assert [streamed.class_names[label] for label in streamed.labels] == expected
  in_memory = dataset.ArrayDataset(images=images, labels=streamed.labels, class_names=streamed.class_names)
  for kwargs in (dict(shuffle=True, start_step=3), dict(shuffle=False, drop_remainder=False)):
    ours = list(zip(range(6), streamed.batches(4, seed=5, process_index=0, process_count=1, **kwargs)))
    theirs = list(zip(range(6), in_memory.batches(4, seed=5, process_index=0, process_count=1, **kwargs)))
    assert len(ours) == len(theirs) > 1
    for (_, a), (_, b) in zip(ours, theirs):
      for key in ("image", "label", "index"):
        np.testing.assert_array_equal(a[key], b[key])
  # Two processes read disjoint halves of every batch; together one pass sees every image once.
  seen = [np.concatenate([b["index"] for b in streamed.batches(4, seed=0, shuffle=False, drop_remainder=False,
                                                                process_index=p, process_count=2)]) for p in (0, 1)]
  assert sorted(np.concatenate(seen)) == list(range(9)) and not set(seen[0]) & set(seen[1])
  # The stored order is a fixed shuffle: a prefix (robustness.num_examples) holds several classes.
  assert len(set(streamed.take(4).labels)) > 1 and len(streamed.take(4)) == 4


def test_large_folders_stream_and_small_ones_load_into_memory(photos_root, tmp_path, monkeypatch):
  small = data.load(f"folder:{photos_root}", "val", image_size=24, cache_dir=tmp_path / "cache")
  assert isinstance(small, dataset.ArrayDataset) and small.images.shape == (6, 24, 24, 3)
  monkeypatch.setattr(streamed_folder, "IN_MEMORY_LIMIT_BYTES", 6 * 24 * 24 * 3 - 1)
  large = data.load(f"folder:{photos_root}", "val", image_size=24, cache_dir=tmp_path / "cache")
  assert isinstance(large, streamed_folder.StreamedFolder)
  # Same pixels in the same stored order either way (`folder.fixed_order`).
  got = np.concatenate([b["image"] for b in large.batches(6, seed=0, shuffle=False, process_index=0,
                                                          process_count=1)])
  np.testing.assert_array_equal(got, small.images)


def test_streamed_folder_errors_name_the_layout(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"folder:.*nope.*<root>/<split>/<class>/<image>"):
    data.load(f"folder:{tmp_path / 'nope'}", "val", image_size=8, resize_size=10)
  with pytest.raises(FileNotFoundError, match=r"frames:.*<root>/<split>/<class>/<video>/<frame>\.jpg"):
    data.load(f"frames:{tmp_path / 'nope'}", "test", image_size=8, clip_frames=4)
  (tmp_path / "flat" / "test" / "cls").mkdir(parents=True)  # images directly under the class: not videos
  Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "test" / "cls" / "0.jpg")
  with pytest.raises(FileNotFoundError, match="no videos in split 'test'"):
    data.load(f"frames:{tmp_path / 'flat'}", "test", image_size=8, clip_frames=4)
  with pytest.raises(ValueError, match="clip_frames=4 is for video frame folders"):
    data.load(f"folder:{tmp_path / 'flat'}", "test", image_size=8, clip_frames=4)


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory, cifar10_zip):
  return photo_folders.video_frame_folder(tmp_path_factory.mktemp("videos"), cifar10_zip,
                                          videos={"train": 4, "test": 3})


def test_frame_folder_clips_sample_frames_uniformly_in_natural_order(frames_root):
  ds = data.load(f"frames:{frames_root}", "test", image_size=24, resize_size=28, clip_frames=4)
  assert isinstance(ds, streamed_folder.StreamedFolder)
  assert len(ds) == 6 and ds.image_shape == (4, 24, 24, 3) and ds.class_names == ["airplane", "cat"]
  batch = next(ds.batches(6, seed=0, shuffle=False, process_index=0, process_count=1))
  assert batch["image"].shape == (6, 4, 24, 24, 3) and batch["image"].dtype == np.uint8
  for clip, label, frames in zip(batch["image"], batch["label"], ds.entries):
    assert frames[0].split("/")[-3] == ds.class_names[label]
    # Natural order: frame_1, frame_2, ..., frame_10, and the clip takes round(linspace(0, n - 1, 4)) of them.
    numbers = [int(name.rsplit("_", 1)[1].split(".")[0]) for name in frames]
    assert numbers == list(range(1, len(frames) + 1))
    picked = np.round(np.linspace(0, len(frames) - 1, 4)).astype(int)
    expected = [np.asarray(dataset.fit_image(Image.open(frames_root / frames[i]).convert("RGB"), 24, 28))
                for i in picked]
    np.testing.assert_array_equal(clip, np.stack(expected))
  assert video_frames.frame_indices(2, 4).tolist() == [0, 0, 1, 1]


def test_clips_go_through_eval_batches_a_pgd_attack_and_the_geometry_view(frames_root):
  mesh = sharding.make_mesh()
  ds = data.load(f"frames:{frames_root}", "test", image_size=16, clip_frames=4)
  rng = np.random.default_rng(0)
  weights = jnp.asarray(rng.normal(size=(4 * 16 * 16 * 3, 2)).astype(np.float32) / 40)
  logits_fn = jax.jit(lambda x: jnp.reshape(x - 0.5, (x.shape[0], -1)) @ weights)
  seen = []
  for batch in batches.eval_batches(ds, 4, mesh=mesh):  # 6 clips in padded batches of 8 (8 devices)
    assert batch.images.shape[1:] == (4, 16, 16, 3) and batch.images.shape[0] % mesh.size == 0
    seen.append(batches.gather(batch.images, batch.mask))
  clips = np.concatenate(seen)
  assert clips.shape == (6, 4, 16, 16, 3)
  labels = np.asarray(ds.labels)
  eps = 4 / 255
  x_adv = np.asarray(attacks.pgd(logits_fn, jnp.asarray(clips / 255.0, jnp.float32), jnp.asarray(labels), eps=eps,
                                 steps=5, key=jax.random.PRNGKey(0)))
  assert x_adv.shape == clips.shape and np.max(np.abs(x_adv - clips / 255.0)) <= eps + 1e-6
  before = np.argmax(np.asarray(logits_fn(clips / 255.0)), 1) == labels
  after = np.argmax(np.asarray(logits_fn(x_adv)), 1) == labels
  assert after.sum() < before.sum() or before.sum() == 0  # a linear model on raw pixels falls at 4/255
  # Geometry's second view augments a clip with one draw: identical frames stay identical.
  from csl_jax import methods
  from configs import quickstart
  augment = methods.simclr_augment(quickstart.get_config("smoke"), 16)
  still = np.repeat(clips[:, :1], 4, axis=1)
  view = np.asarray(geometry_stage.second_view(augment, jax.random.PRNGKey(3), jnp.asarray(still)))
  assert view.shape == still.shape
  np.testing.assert_allclose(view, np.repeat(view[:, :1], 4, axis=1), atol=1e-6)
  assert not np.allclose(view[:, 0], still[:, 0] / 255.0, atol=0.05)  # and it did augment


def test_every_clip_evaluator_runs_on_the_streamed_frame_folder(frames_root, tmp_path):
  """linear_eval (probe streamed and held), robustness (with fra31's checks) and geometry on u8[B, T, H, W, C]."""
  from configs import ucf101_pretrained
  from csl_jax import config as config_lib
  from csl_jax.eval import linear, registry
  mesh = sharding.make_mesh()
  config = ucf101_pretrained.get_config()
  config.dataset.source = f"frames:{frames_root}"
  config.dataset.clip_frames, config.dataset.image_size, config.dataset.resize_size = 4, 16, 20
  config.init_from = "random"
  config.linear_eval.epochs, config.linear_eval.batch_size = 2, 8
  config.robustness.attacks = "fgsm:linf:1/255,pgd:linf:2/255:steps=2"
  config.robustness.batch_size = 8
  config.geometry.tsne_max_points = 0
  config.eval_batch_size = 8
  config_lib.validate(config)
  kwargs = dict(image_size=16, resize_size=20, clip_frames=4)
  train, test = (data.load(config.dataset.source, split, **kwargs) for split in ("train", "test"))
  assert len(train) == 8 and len(test) == 6 and test.image_shape == (4, 16, 16, 3)
  rng = np.random.default_rng(1)
  w = jnp.asarray(rng.normal(size=(4 * 16 * 16 * 3, 12)).astype(np.float32) / 60)
  features = jax.tree_util.Partial(lambda w, x: jnp.tanh(jnp.reshape(x - 0.5, (x.shape[0], -1)) @ w), w)
  for cache_gb in (4.0, 0.0):  # held train features (kNN runs), then streamed (probe by SGD on clips, no kNN)
    config.linear_eval.feature_cache_gb = cache_gb
    train_features = linear.train_features(config, features, train, mesh)
    head = linear.fit_or_load_head(config, train_features, tmp_path, num_classes=2, features_fn=features,
                                   train_ds=train, mesh=mesh, model_fingerprint={"cache_gb": cache_gb})
    logits = jax.tree_util.Partial(lambda f, k, b, x: f(x) @ k + b, features, jnp.asarray(head["kernel"]),
                                   jnp.asarray(head["bias"]))
    classifier = registry.Classifier(features=features, logits=logits, num_classes=2, class_names=("airplane", "cat"),
                                     mesh=mesh, fingerprint={"checkpoint_step": 0, "params_sha256": str(cache_gb)})
    results = {e.name: e.run(classifier, test, tmp_path)
               for e in registry.build(config, train_ds=train, train_features=train_features, mesh=mesh)}
    assert set(results) == {"linear_eval", "robustness", "geometry"}  # corruptions: images only (off)
    assert results["linear_eval"]["num_test"] == 6 and (results["linear_eval"]["knn_top1"] is None) == (cache_gb == 0)
    robustness = results["robustness"]
    assert robustness["num_examples"] == 6 and [row["spec"] for row in robustness["attacks"]] == [
        "fgsm:linf:1/255", "pgd:linf:2/255:steps=2"]
    assert not [flag for flag in robustness["checks"] if flag["check"] != "num_classes"]
    assert results["geometry"]["num_examples"] == 6 and results["geometry"]["alignment"] is not None
  config.corruptions.enabled = True
  with pytest.raises(ValueError, match="corruptions.*defined for images"):
    config_lib.validate(config)

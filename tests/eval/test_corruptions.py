"""Properties of the 15 corruptions on real 32x32 images, and checks against the CIFAR-10-C table.

Reference numbers (severity tables) are transcribed here from hendrycks/robustness
`ImageNet-C/create_c/make_cifar_c.py`, independently of csl_jax/eval/corruptions/params.py.
"""
import colorsys
import importlib.util
import io
import zipfile

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from csl_jax.eval import corruptions
from csl_jax.eval.corruptions import blur
from csl_jax.eval.corruptions import digital
from csl_jax.eval.corruptions import params
from csl_jax.eval.corruptions import resample
from csl_jax.eval.corruptions import weather

HAS_FROST = importlib.util.find_spec("imagecorruptions") is not None
SEVERITIES = (1, 2, 3, 4, 5)


def _needs_frost(name):
  if name == "frost" and not HAS_FROST:
    pytest.skip("frost needs the imagecorruptions package (its photos)")


def real_images(cifar10_zip_path, count: int = 16, size: int = 32) -> np.ndarray:
  """u8[count, size, size, 3]: CIFAR-10 test images if the shared zip exists, else sklearn digits."""
  if cifar10_zip_path is not None:
    with zipfile.ZipFile(cifar10_zip_path) as archive:
      names = sorted(n for n in archive.namelist() if n.startswith("test/") and n.endswith(".jpg"))
      picked = names[::len(names) // count][:count]  # Spread over the classes.
      images = [Image.open(io.BytesIO(archive.read(n))).convert("RGB") for n in picked]
  else:
    from sklearn.datasets import load_digits
    digits = np.round(load_digits().images[:count] * 255 / 16).astype(np.uint8)
    images = [Image.fromarray(d).convert("RGB") for d in digits]
  return np.stack([np.asarray(im.resize((size, size), Image.BILINEAR)) for im in images])


@pytest.fixture(scope="module")
def images(request):
  try:
    path = request.getfixturevalue("cifar10_zip")
  except pytest.skip.Exception:
    path = None
  return real_images(path)


def mean_change(corrupted, clean) -> float:
  return float(np.abs(corrupted.astype(np.float64) - clean).mean())


# ---------------------------------------------------------------- API and validation


def test_corruption_names_are_the_fifteen_of_the_benchmark():
  assert corruptions.CORRUPTIONS == (
      "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
      "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
      "jpeg_compression")
  for table in params.TABLES.values():
    assert set(table) == set(corruptions.CORRUPTIONS)
    assert all(len(settings) == 5 for settings in table.values())


def test_unknown_name_lists_the_valid_ones(images):
  with pytest.raises(ValueError, match="gaussian_noise.*jpeg_compression"):
    corruptions.apply("gaussian_blur", images, 1)


@pytest.mark.parametrize("severity", [0, 6, 2.0, True, "3"])
def test_bad_severity(images, severity):
  with pytest.raises(ValueError, match="1..5"):
    corruptions.apply("contrast", images, severity)


def test_bad_images():
  with pytest.raises(ValueError, match="uint8"):
    corruptions.apply("contrast", np.zeros((2, 32, 32, 3), np.float32), 1)
  with pytest.raises(ValueError, match=r"images\[None\]"):
    corruptions.apply("contrast", np.zeros((32, 32, 3), np.uint8), 1)
  with pytest.raises(ValueError, match="C = 1 or 3"):
    corruptions.apply("contrast", np.zeros((2, 32, 32, 4), np.uint8), 1)


def test_table_choice_by_size():
  assert params.table_for_size(32, 32) == "cifar10_c"
  assert params.table_for_size(224, 224) == "imagenet_c"
  assert params.table_for_size(64, 64) == "cifar10_c"
  assert params.table_for_size(128, 160) == "imagenet_c"
  assert corruptions.setting("gaussian_noise", 2, 32, 32) == 0.06
  assert corruptions.setting("gaussian_noise", 2, 224, 224) == 0.12
  # Elastic lengths are the scripts' IMSIZE * fraction: 32 * 0.2 (CIFAR), 244 * 0.7 (ImageNet).
  assert corruptions.setting("elastic_transform", 2, 32, 32).sigma == pytest.approx(6.4)
  assert corruptions.setting("elastic_transform", 1, 224, 224).sigma == pytest.approx(170.8)


# ---------------------------------------------------------------- properties on real images


@pytest.mark.parametrize("name", corruptions.CORRUPTIONS)
def test_shape_dtype_determinism_and_seed(images, name):
  _needs_frost(name)
  out = corruptions.apply(name, images, 3, seed=7)
  assert out.shape == images.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out, corruptions.apply(name, images, 3, seed=7))
  other_seed = corruptions.apply(name, images, 3, seed=8)
  if name in corruptions.RANDOM_CORRUPTIONS:
    assert np.any(other_seed != out)
  else:
    np.testing.assert_array_equal(other_seed, out)
  assert mean_change(out, images) > 0.5  # It does corrupt.


# Corruptions whose published CIFAR-10-C table is not monotone in pixel change (checked below by
# the property the table *is* monotone in).
NOT_MONOTONE_IN_PIXEL_CHANGE = ("glass_blur", "frost", "elastic_transform")


@pytest.mark.parametrize("name", [n for n in corruptions.CORRUPTIONS if n not in NOT_MONOTONE_IN_PIXEL_CHANGE])
def test_severity_is_monotone_in_mean_absolute_change(images, name):
  changes = [mean_change(corruptions.apply(name, images, s, seed=1), images) for s in SEVERITIES]
  # 2% slack: motion blur's severities 3 and 4 ((6, 2) and (8, 2)) differ only in taps of weight < 1e-9.
  for lower, higher in zip(changes, changes[1:]):
    assert higher >= 0.98 * lower, changes
  assert changes[-1] > 1.5 * changes[0], changes


def test_glass_blur_two_shuffle_passes_change_more_than_one(images):
  # CIFAR table: severities 1-3 shuffle once, 4-5 twice (sigma does not grow monotonically).
  changes = [mean_change(corruptions.apply("glass_blur", images, s, seed=1), images) for s in SEVERITIES]
  assert min(changes[3:]) > 1.2 * max(changes[:3]), changes


@pytest.mark.skipif(not HAS_FROST, reason="frost needs the imagecorruptions package (its photos)")
def test_frost_weight_is_monotone_on_black_images():
  # On black images the output is frost_weight * texture crop; same seed → same crops.
  black = np.zeros((16, 32, 32, 3), np.uint8)
  frost_levels = [corruptions.apply("frost", black, s, seed=3).astype(np.float64).mean() for s in SEVERITIES]
  weights = [0.2, 0.3, 0.4, 0.4, 0.45]
  ratios = np.array(frost_levels) / np.array(weights)
  np.testing.assert_allclose(ratios, ratios[0], rtol=0.02)  # Linear in the table's frost weight.


def test_elastic_displacement_part_is_monotone(images):
  # CIFAR table: severity 1 is a pure affine (alpha = 0) and the affine shrinks while the elastic
  # displacement alpha / sigma grows (0, 0.25, 1.3, 2.5, 3.3); without the affine, change grows.
  rng = np.random.default_rng(0)
  fields = rng.uniform(-1, 1, size=(len(images), 2, 32, 32))
  no_affine = np.zeros((len(images), 3, 2))
  changes = []
  for severity in SEVERITIES:
    setting = corruptions.setting("elastic_transform", severity, 32, 32)
    out = np.clip(digital.elastic_from_draws(images, setting, no_affine, fields), 0, 255).astype(np.uint8)
    changes.append(mean_change(out, images))
  assert changes[0] < 0.01 and all(b > a for a, b in zip(changes, changes[1:])), changes


@pytest.mark.parametrize("name", ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "snow", "fog",
                                  "brightness", "contrast", "elastic_transform", "pixelate"])
def test_one_channel_matches_replicated_rgb(images, name):
  gray = images[..., :1]
  out = corruptions.apply(name, gray, 4, seed=5)
  rgb = corruptions.apply(name, np.repeat(gray, 3, axis=-1), 4, seed=5)
  assert out.shape == gray.shape
  assert np.abs(out.astype(int) - rgb[..., :1]).max() <= 1


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "frost", "jpeg_compression"])
def test_one_channel_other_corruptions(images, name):
  _needs_frost(name)
  gray = images[..., :1]
  out = corruptions.apply(name, gray, 3, seed=5)
  assert out.shape == gray.shape and out.dtype == np.uint8
  assert 0.5 < mean_change(out, gray) < 80


# ---------------------------------------------------------------- CIFAR-10-C table, measured

MID_GRAY = np.full((64, 32, 32, 3), 128, np.uint8)


@pytest.mark.parametrize("severity, std", list(zip(SEVERITIES, [0.04, 0.06, 0.08, 0.09, 0.10])))
def test_gaussian_noise_std_is_the_table_value(severity, std):
  out = corruptions.apply("gaussian_noise", MID_GRAY, severity).astype(np.float64)
  assert out.std() == pytest.approx(std * 255, rel=0.01)
  assert out.mean() == pytest.approx(127.5, abs=0.1)  # np.uint8 truncation lowers the mean by 1/2.


@pytest.mark.parametrize("severity, rate", list(zip(SEVERITIES, [500, 250, 100, 75, 50])))
def test_shot_noise_std_is_poisson(severity, rate):
  out = corruptions.apply("shot_noise", MID_GRAY, severity).astype(np.float64)
  # Poisson(rate x) / rate has variance x / rate; truncation adds ~1/12 and the 255/rate grid.
  expected = np.sqrt((128 / 255) / rate) * 255
  assert out.std() == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("severity, amount", list(zip(SEVERITIES, [0.01, 0.02, 0.03, 0.05, 0.07])))
def test_impulse_noise_fraction_is_the_table_value(severity, amount):
  out = corruptions.apply("impulse_noise", MID_GRAY, severity)
  salt, pepper = np.mean(out == 255), np.mean(out == 0)
  assert salt + pepper == pytest.approx(amount, rel=0.05)
  assert salt == pytest.approx(pepper, rel=0.15)
  assert np.all((out == 0) | (out == 255) | (out == 128))


@pytest.mark.parametrize("severity, factor", list(zip(SEVERITIES, [0.75, 0.5, 0.4, 0.3, 0.15])))
def test_contrast_formula(severity, factor):
  image = np.full((1, 32, 32, 3), 60, np.uint8)
  image[:, :, 16:] = 200  # Mean 130 in every channel.
  out = corruptions.apply("contrast", image, severity)
  for value in (60, 200):
    expected = np.floor(((value / 255 - 130 / 255) * factor + 130 / 255) * 255 + 1e-9)
    assert np.all(np.abs(out[image == value].astype(float) - expected) <= 1)


@pytest.mark.parametrize("severity, amount", list(zip(SEVERITIES, [0.05, 0.1, 0.15, 0.2, 0.3])))
def test_brightness_against_colorsys(severity, amount):
  assert corruptions.setting("brightness", severity, 32, 32) == amount
  rng = np.random.default_rng(severity)
  image = rng.integers(0, 256, size=(1, 16, 16, 3), dtype=np.uint8)
  image[0, 0, 0] = 0  # Black: hue undefined, becomes gray.
  out = weather.brightness(image, amount)  # Before the uint8 cast, whose ties are float noise.
  expected = np.empty(image.shape[1:])
  for (i, j), _ in np.ndenumerate(image[0, ..., 0]):
    h, s, v = colorsys.rgb_to_hsv(*(image[0, i, j] / 255))
    expected[i, j] = np.array(colorsys.hsv_to_rgb(h, s, min(v + amount, 1))) * 255
  np.testing.assert_allclose(out[0], expected, atol=1e-9)


@pytest.mark.parametrize("severity, factor", list(zip(SEVERITIES, [0.95, 0.9, 0.85, 0.75, 0.65])))
def test_pixelate_box_resizes_through_the_table_size(images, severity, factor):
  small = int(32 * factor)
  expected = np.stack([np.asarray(Image.fromarray(im).resize((small, small), Image.BOX).resize((32, 32), Image.BOX))
                       for im in images])
  np.testing.assert_array_equal(corruptions.apply("pixelate", images, severity), expected)


@pytest.mark.parametrize("severity, quality", list(zip(SEVERITIES, [80, 65, 58, 50, 40])))
def test_jpeg_quality_is_the_table_value(images, severity, quality):
  def roundtrip(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer))
  expected = np.stack([roundtrip(im) for im in images])
  np.testing.assert_array_equal(corruptions.apply("jpeg_compression", images, severity), expected)


@pytest.mark.parametrize("stop", [1.06, 1.11, 1.16, 1.21, 1.26])
def test_zoom_blur_is_the_mean_of_scipy_zooms(images, stop):
  severity = [1.06, 1.11, 1.16, 1.21, 1.26].index(stop) + 1
  x = (images[:2] / 255.0).astype(np.float32)
  zoomed = [x]
  for factor in np.arange(1, stop, 0.01):
    crop = int(np.ceil(32 / factor))
    top = (32 - crop) // 2
    z = ndimage.zoom(x[:, top:top + crop, top:top + crop], (1, factor, factor, 1), order=1)
    trim = (z.shape[1] - 32) // 2
    zoomed.append(z[:, trim:trim + 32, trim:trim + 32])
  expected = np.clip(np.mean(zoomed, axis=0), 0, 1) * 255
  out = corruptions.apply("zoom_blur", images[:2], severity)
  assert np.abs(out - expected).max() < 1.0001


@pytest.mark.parametrize("size, factor", [(32, 1.0), (32, 1.07), (31, 1.25), (224, 1.13)])
def test_clipped_zoom_matches_scipy(size, factor):
  x = np.random.default_rng(0).random((2, size, size, 1))
  crop = int(np.ceil(size / factor))
  top = (size - crop) // 2
  z = ndimage.zoom(x[:, top:top + crop, top:top + crop], (1, factor, factor, 1), order=1)
  trim = (z.shape[1] - size) // 2
  np.testing.assert_allclose(resample.clipped_zoom(x, factor), z[:, trim:trim + size, trim:trim + size], atol=1e-9)


@pytest.mark.parametrize("mode", ["reflect", "mirror"])
def test_bilinear_sample_matches_map_coordinates(mode):
  rng = np.random.default_rng(1)
  images = rng.random((3, 9, 7, 2))
  rows = rng.uniform(-12, 20, size=(3, 5, 6))
  cols = rng.uniform(-12, 20, size=(3, 5, 6))
  out = resample.bilinear_sample(images, rows, cols, mode)
  for b in range(3):
    for c in range(2):
      expected = ndimage.map_coordinates(images[b, ..., c], [rows[b], cols[b]], order=1, mode=mode)
      np.testing.assert_allclose(out[b, ..., c], expected, atol=1e-12)


@pytest.mark.parametrize("shape, sigma", [((1, 2, 40, 30), 20.0), ((2, 1, 64, 64), 40.0), ((1, 1, 32, 32), 2.0)])
def test_smooth_fields_matches_gaussian_filter(shape, sigma):
  # sigma = 40 on 64 pixels: the kernel (radius 120) reaches past several reflections.
  fields = np.random.default_rng(0).uniform(-1, 1, size=shape)
  expected = ndimage.gaussian_filter(fields, (0, 0, sigma, sigma), mode="reflect", truncate=3.0)
  np.testing.assert_allclose(digital.smooth_fields(fields, sigma), expected, atol=1e-12)


def _literal_shuffle(image, offsets, d):
  """The scripts' loop verbatim, swap of numpy views included (it copies rather than swaps)."""
  x = image.copy()
  size_h, size_w = x.shape[:2]
  for i, h in enumerate(range(size_h - d, d, -1)):
    for j, w in enumerate(range(size_w - d, d, -1)):
      dx, dy = offsets[i, j]
      h_prime, w_prime = h + dy, w + dx
      x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
  return x


@pytest.mark.parametrize("max_delta, height, width", [(1, 32, 32), (2, 20, 23), (3, 40, 37), (4, 30, 30)])
def test_local_shuffle_equals_the_scripts_loop(max_delta, height, width):
  rng = np.random.default_rng(max_delta)
  images = rng.integers(0, 256, size=(3, height, width, 3), dtype=np.uint8)
  offsets = blur.shuffle_offsets(rng, 3, height, width, max_delta)
  expected = np.stack([_literal_shuffle(im, o, max_delta) for im, o in zip(images, offsets)])
  np.testing.assert_array_equal(blur.local_shuffle(images, offsets, max_delta), expected)


def test_motion_blur_at_angle_zero_is_a_one_sided_horizontal_blur():
  image = np.zeros((1, 32, 32, 1))
  image[0, 16, 10] = 1.0
  out = blur.motion_blur_stack(image, radius=6, sigma=2.0, angles=np.array([0.0]))[0, ..., 0]
  taps = np.exp(-np.arange(13) ** 2 / 8)
  # Tap i reads the pixel i to the right, so the dot spreads i pixels to the left.
  np.testing.assert_allclose(out[16, 10::-1], (taps / taps.sum())[:11], atol=1e-12)
  assert out[16, 11:].max() == 0 and np.delete(out, 16, axis=0).max() == 0


def test_plasma_fractal_range_and_size():
  maps = weather.plasma_fractal(3, 32, 2.0, np.random.default_rng(0).uniform)
  assert maps.shape == (3, 32, 32)
  np.testing.assert_allclose(maps.min(axis=(1, 2)), 0)
  np.testing.assert_allclose(maps.max(axis=(1, 2)), 1)
  with pytest.raises(ValueError, match="power of two"):
    weather.plasma_fractal(1, 48, 2.0, np.random.default_rng(0).uniform)


def test_frost_without_the_package_says_what_to_install(images, monkeypatch):
  weather.frost_textures.cache_clear()
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *args: None if name == "imagecorruptions" else find_spec(name, *args))
  with pytest.raises(ModuleNotFoundError, match="pip install --no-deps imagecorruptions"):
    corruptions.apply("frost", images, 1)
  monkeypatch.undo()
  weather.frost_textures.cache_clear()


def test_motion_blur_rounds_to_nearest_like_the_imagemagick_generator():
  """The published generator reads ImageMagick's 8-bit output (rounded); truncation would be ~0.5/255 darker."""
  images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)
  setting = corruptions.setting("motion_blur", 3, 32, 32)
  exact = blur.motion_blur(images, setting, np.random.default_rng(123))
  assert np.array_equal(exact, np.round(exact)), "motion blur must return whole 8-bit values"
  floats = blur.motion_blur_stack(images.astype(np.float64), setting.radius, setting.sigma,
                                  np.random.default_rng(123).uniform(-45, 45, size=6))
  np.testing.assert_array_equal(exact, np.round(np.clip(floats, 0, 255)))
  assert abs(float(np.mean(exact - np.clip(floats, 0, 255)))) < 0.05  # unbiased, unlike truncation (-0.5)

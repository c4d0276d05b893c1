"""On-device augmentation: colour ops against colorsys/scipy references, geometry, determinism, recipes.

Each recipe configuration is jitted once at module scope and reused.
"""
import colorsys
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from csl_jax.data import augment

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
GRAY_IMAGES = RNG.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
IDENTITY = dict(crop_scale=(1.0, 1.0), flip=False, jitter_prob=0.0, grayscale_prob=0.0)


@functools.lru_cache(maxsize=None)
def _jitted(recipe, **kwargs):
  return jax.jit(functools.partial(getattr(augment, recipe), **kwargs))


def _simclr(key, images, **kwargs):
  return np.asarray(_jitted("simclr", **{k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()})(
      key, images))


# ----------------------------------------------------------------------------------------------------
# Colour ops, per pixel, against independent references.

# Random colours plus every colour with channels in {0, 0.5, 1}: grays, primaries and max/min ties.
EDGE_COLOURS = np.array(np.meshgrid(*[[0.0, 0.5, 1.0]] * 3)).reshape(3, -1).T
COLOURS = np.concatenate([RNG.random((229, 3)), EDGE_COLOURS]).astype(np.float32).reshape(16, 16, 3)
rgb_to_hsv, hsv_to_rgb = jax.jit(augment.rgb_to_hsv), jax.jit(augment.hsv_to_rgb)
adjust_saturation, adjust_hue = jax.jit(augment.adjust_saturation), jax.jit(augment.adjust_hue)


def _colorsys_map(op):
  """Applies op(h, s, v) -> (h, s, v) to every colour of COLOURS through Python's colorsys."""
  out = [colorsys.hsv_to_rgb(*op(*colorsys.rgb_to_hsv(*p))) for p in COLOURS.reshape(-1, 3)]
  return np.array(out).reshape(COLOURS.shape)


def test_hsv_round_trip_matches_colorsys():
  hsv = np.asarray(rgb_to_hsv(COLOURS))
  expected = np.array([colorsys.rgb_to_hsv(*p) for p in COLOURS.reshape(-1, 3)]).reshape(hsv.shape)
  # Hue is circular (0 and 1 are the same): compare points on the colour wheel.
  wheel = lambda x: np.stack([np.cos(2 * np.pi * x[..., 0]), np.sin(2 * np.pi * x[..., 0])]) * x[..., 1]
  np.testing.assert_allclose(wheel(hsv), wheel(expected), atol=1e-5)
  np.testing.assert_allclose(hsv[..., 1:], expected[..., 1:], atol=1e-5)
  np.testing.assert_allclose(hsv_to_rgb(hsv), COLOURS, atol=1e-5)


@pytest.mark.parametrize("factor", [0.0, 0.45, 1.0, 1.8])
def test_saturation_matches_colorsys(factor):
  expected = _colorsys_map(lambda h, s, v: (h, min(s * factor, 1.0), v))
  np.testing.assert_allclose(adjust_saturation(COLOURS, factor), expected, atol=2e-5)


@pytest.mark.parametrize("delta", [-0.37, 0.0, 0.1, 0.5])
def test_hue_matches_colorsys(delta):
  expected = _colorsys_map(lambda h, s, v: ((h + delta) % 1.0, s, v))
  np.testing.assert_allclose(adjust_hue(COLOURS, delta), expected, atol=2e-5)


def test_contrast_brightness_grayscale():
  image = RNG.random((5, 7, 3)).astype(np.float32)
  contrasted = np.asarray(augment.adjust_contrast(image, 0.3))
  mean = image.mean(axis=(0, 1))
  np.testing.assert_allclose(contrasted, (image - mean) * 0.3 + mean, atol=1e-6)
  np.testing.assert_allclose(augment.adjust_brightness(image, 1.4), image * 1.4, rtol=1e-6)
  gray = np.asarray(augment.to_grayscale(image))
  np.testing.assert_allclose(gray[..., 0], image @ np.array(augment.GRAY_WEIGHTS), atol=1e-6)
  assert np.all(gray == gray[..., :1])


def test_zero_strength_jitter_is_the_identity():
  image = RNG.random((6, 6, 3)).astype(np.float32)
  u = jax.random.uniform(jax.random.key(0), (augment.JITTER_UNIFORMS,))
  np.testing.assert_allclose(augment.color_jitter(u, image, 0.0), image, atol=1e-5)


def test_jitter_order_follows_the_sort_keys():
  # Brightness x1.8 then contrast x0.2 differs from the reverse order (they commute only without the
  # clipping after each op); the sort keys pick which.
  image = RNG.random((6, 6, 1)).astype(np.float32)
  strength = 1.0  # factors: 0.2 + 1.6 u.
  u_factors = [1.0, 0.0, 0.5, 0.5]
  first_brightness = np.asarray(augment.color_jitter(jnp.array(u_factors + [0.1, 0.9, 0, 0]), image, strength))
  first_contrast = np.asarray(augment.color_jitter(jnp.array(u_factors + [0.9, 0.1, 0, 0]), image, strength))
  b_then_c = np.clip(augment.adjust_contrast(np.clip(image * 1.8, 0, 1), 0.2), 0, 1)
  c_then_b = np.clip(np.asarray(augment.adjust_contrast(image, 0.2)) * 1.8, 0, 1)
  np.testing.assert_allclose(first_brightness, b_then_c, atol=1e-6)
  np.testing.assert_allclose(first_contrast, c_then_b, atol=1e-6)
  assert not np.allclose(b_then_c, c_then_b)


@pytest.mark.parametrize("sigma,kernel_size", [(0.7, 3), (1.9, 9)])
def test_gaussian_blur_matches_scipy_mirror_filter(sigma, kernel_size):
  image = RNG.random((11, 9, 3)).astype(np.float32)
  offsets = np.arange(kernel_size) - kernel_size // 2
  weights = np.exp(-offsets**2 / (2 * sigma**2))
  weights /= weights.sum()
  expected = scipy.ndimage.correlate1d(image, weights, axis=0, mode="mirror")
  expected = scipy.ndimage.correlate1d(expected, weights, axis=1, mode="mirror")
  np.testing.assert_allclose(augment.gaussian_blur(image, sigma, kernel_size), expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Geometry.


def test_crop_boxes_respect_scale_ratio_and_bounds():
  u = jax.random.uniform(jax.random.key(1), (4000, augment.CROP_UNIFORMS))
  y0, x0, h, w = map(np.asarray, jax.vmap(lambda v: augment.crop_box(v, 40, 30, (0.1, 0.6)))(u))
  assert np.all(y0 >= 0) and np.all(x0 >= 0) and np.all(y0 + h <= 40 + 1e-4) and np.all(x0 + w <= 30 + 1e-4)
  area = h * w / (40 * 30)
  assert np.all(area >= 0.1 - 1e-4) and np.all(area <= 0.6 + 1e-4)
  assert np.all(w / h >= 3 / 4 - 1e-4) and np.all(w / h <= 4 / 3 + 1e-4)
  # The whole range is used, and offsets spread over the free space.
  assert area.min() < 0.12 and area.max() > 0.55
  # Offsets are uniform over the free space, independently along each axis.
  rel_y, rel_x = y0 / (40 - h), x0 / (30 - w)
  for rel in (rel_y, rel_x):
    assert abs(rel.mean() - 0.5) < 0.03 and abs(rel.std() - np.sqrt(1 / 12)) < 0.02
  assert abs(np.corrcoef(rel_y, rel_x)[0, 1]) < 0.1


def test_crop_box_falls_back_to_the_clamped_whole_image():
  u = jnp.full((augment.CROP_UNIFORMS,), 0.5)
  # Full area with aspect 1 cannot fit a 10 x 40 image: fallback is the widest 4/3 box of full height.
  y0, x0, h, w = augment.crop_box(u, 10, 40, (1.0, 1.0))
  np.testing.assert_allclose([h, w], [10, 40 / 3], rtol=1e-5)
  np.testing.assert_allclose(x0, (40 - 40 / 3) / 2, rtol=1e-5)


def _bilinear_reference(image, box, out_size):
  """Half-pixel-centre bilinear sampling with edge clamping, in numpy."""
  y0, x0, h, w = box
  ys = np.clip(y0 + (np.arange(out_size) + 0.5) * h / out_size - 0.5, 0, image.shape[0] - 1)
  xs = np.clip(x0 + (np.arange(out_size) + 0.5) * w / out_size - 0.5, 0, image.shape[1] - 1)

  def weights(coords, size):
    low = np.floor(coords).astype(int)
    frac = coords - low
    matrix = np.zeros((len(coords), size))
    matrix[np.arange(len(coords)), low] += 1 - frac
    matrix[np.arange(len(coords)), np.minimum(low + 1, size - 1)] += frac
    return matrix

  return np.einsum("ij,jkc,lk->ilc", weights(ys, image.shape[0]), image, weights(xs, image.shape[1]))


@pytest.mark.parametrize("box", [(2.0, 3.0, 6.0, 5.0), (0.0, 0.0, 12.0, 12.0), (4.3, 1.7, 3.2, 7.9)])
def test_resized_crop_is_bilinear_when_upsampling(box):
  image = RNG.random((12, 12, 3)).astype(np.float32)
  got = augment.resized_crop(image, tuple(map(jnp.float32, box)), 12)
  np.testing.assert_allclose(got, _bilinear_reference(image, box, 12), atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Recipes.


@pytest.mark.parametrize("images,kwargs", [(IMAGES, dict(out_size=10)), (IMAGES, dict(out_size=12, blur=True)),
                                           (GRAY_IMAGES, dict(out_size=16))])
def test_simclr_range_dtype_shape_and_determinism(images, kwargs):
  a = _simclr(jax.random.key(0), images, **kwargs)
  b = _simclr(jax.random.key(0), images, **kwargs)
  c = _simclr(jax.random.key(1), images, **kwargs)
  chex.assert_shape(a, (len(images), kwargs["out_size"], kwargs["out_size"], images.shape[-1]))
  assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
  np.testing.assert_array_equal(a, b)
  assert np.all(np.abs(a - c).reshape(len(images), -1).max(axis=1) > 1e-3)


def test_simclr_identity_configuration():
  out = _simclr(jax.random.key(3), IMAGES, out_size=12, **IDENTITY)
  np.testing.assert_allclose(out, IMAGES / 255.0, atol=1e-6)
  resized = _simclr(jax.random.key(3), IMAGES, out_size=8, **IDENTITY)
  np.testing.assert_allclose(resized, augment.to_float(IMAGES, out_size=8), atol=1e-6)


def test_simclr_flip_only_mirrors_some_examples():
  batch = np.repeat(IMAGES[:1], 32, axis=0)
  out = _simclr(jax.random.key(4), batch, out_size=12, **{**IDENTITY, "flip": True})
  original, mirrored = IMAGES[0] / 255.0, IMAGES[0, :, ::-1] / 255.0
  is_original = np.all(np.isclose(out, original, atol=1e-6), axis=(1, 2, 3))
  is_mirrored = np.all(np.isclose(out, mirrored, atol=1e-6), axis=(1, 2, 3))
  assert np.all(is_original ^ is_mirrored) and 4 < is_mirrored.sum() < 28


def test_flip_of_a_flip_is_the_identity():
  image = jnp.asarray(IMAGES[0] / 255.0)
  np.testing.assert_array_equal(augment.flip_if(True, augment.flip_if(True, image)), image)
  np.testing.assert_array_equal(augment.flip_if(True, image), image[:, ::-1])
  np.testing.assert_array_equal(augment.flip_if(False, image), image)


def test_simclr_grayscale_gives_equal_channels():
  out = _simclr(jax.random.key(5), IMAGES, out_size=12, **{**IDENTITY, "grayscale_prob": 1.0})
  np.testing.assert_allclose(out, np.broadcast_to(out[..., :1], out.shape))
  np.testing.assert_allclose(out[..., 0], (IMAGES / 255.0) @ np.array(augment.GRAY_WEIGHTS), atol=1e-5)


def test_identical_images_get_independent_views():
  out = _simclr(jax.random.key(6), np.repeat(IMAGES[:1], 6, axis=0), out_size=10)
  assert len({o.tobytes() for o in out}) == 6


def test_recipes_trace_without_per_example_unrolling():
  # The traced program is the same size for batch 2 and batch 6: vmapped, not a Python loop over examples.
  for recipe, kwargs in [("simclr", dict(out_size=10, blur=True)), ("supervised", dict(out_size=12))]:
    fn = functools.partial(getattr(augment, recipe), **kwargs)
    sizes = [len(jax.make_jaxpr(fn)(jax.random.key(0), IMAGES[:n]).jaxpr.eqns) for n in (2, 6)]
    assert sizes[0] == sizes[1]


def test_supervised_pad_crop_flip():
  out = np.asarray(_jitted("supervised", out_size=12)(jax.random.key(7), np.repeat(IMAGES[:1], 24, axis=0)))
  assert out.dtype == np.float32 and out.shape == (24, 12, 12, 3) and out.min() >= 0 and out.max() <= 1
  padded = np.pad(IMAGES[0] / 255.0, ((4, 4), (4, 4), (0, 0)))
  candidates = [crop for dy in range(9) for dx in range(9)
                for crop in (padded[dy:dy + 12, dx:dx + 12], padded[dy:dy + 12, dx:dx + 12][:, ::-1])]
  for view in out:  # Every view is one of the 162 shifted (and possibly mirrored) windows.
    assert min(np.abs(view - c).max() for c in candidates) < 1e-6
  assert len({o.tobytes() for o in out}) > 12
  same = augment.supervised(jax.random.key(7), IMAGES, out_size=12, padding=0, flip=False)
  np.testing.assert_allclose(same, IMAGES / 255.0, atol=1e-7)


def test_to_float_and_input_validation():
  np.testing.assert_allclose(augment.to_float(IMAGES), IMAGES / 255.0, atol=1e-7)
  up = np.asarray(augment.to_float(IMAGES, out_size=24))
  assert up.shape == (6, 24, 24, 3) and up.min() >= 0 and up.max() <= 1
  for k in range(2):  # Upsampling: plain bilinear, pixel centres aligned.
    np.testing.assert_allclose(up[k], _bilinear_reference(IMAGES[k] / 255.0, (0, 0, 12, 12), 24), atol=1e-5)
  with pytest.raises(TypeError, match="u8\\[B, H, W, C\\]"):
    augment.simclr(jax.random.key(0), IMAGES / 255.0, out_size=12)


# ----------------------------------------------------------------------------------------------------
# The batched implementation against the per-example reference it replaced.


@pytest.mark.parametrize("in_size,out_size", [(12, 12), (12, 7), (9, 20)])
def test_resized_crop_equals_scale_and_translate(in_size, out_size):
  # Upsampling, antialiased downsampling and plain resizing: the interpolation matrices reproduce
  # jax.image.scale_and_translate(..., "linear", antialias=True) for the same boxes.
  image = RNG.random((in_size, in_size, 3)).astype(np.float32)
  u = jax.random.uniform(jax.random.key(8), (16, augment.CROP_UNIFORMS))
  for y0, x0, h, w in zip(*map(np.asarray, augment.crop_box(u, in_size, in_size, (0.08, 1.0)))):
    scale = jnp.array([out_size / h, out_size / w])
    expected = jax.image.scale_and_translate(image, (out_size, out_size, 3), (0, 1), scale,
                                             -jnp.array([y0, x0]) * scale, method="linear", antialias=True)
    got = augment.resized_crop(image, (y0, x0, h, w), out_size)
    np.testing.assert_allclose(got, expected, atol=2e-6)


def _reference_simclr(key, images, *, out_size, crop_scale=(0.08, 1.0), jitter_strength=0.5, jitter_prob=0.8,
                      grayscale_prob=0.2, blur=False, blur_prob=0.5, flip=True):
  """The per-example SimCLR recipe (vmapped over examples, one `lax.switch` per jitter slot), written with
  the public per-image ops: the implementation `augment.simclr` replaced, reading the same uniforms."""
  num_crop, num_jitter = augment.CROP_UNIFORMS, augment.JITTER_UNIFORMS
  x = images.astype(np.float32) / 255.0

  def one(u, image):
    channels = image.shape[-1]
    y0, x0, h, w = augment.crop_box(u[5:5 + num_crop], image.shape[0], image.shape[1], crop_scale)
    scale = jnp.stack([out_size / h, out_size / w])
    image = jax.image.scale_and_translate(image, (out_size, out_size, channels), (0, 1), scale,
                                          -jnp.stack([y0, x0]) * scale, method="linear", antialias=True)
    if flip:
      image = augment.flip_if(u[0] < 0.5, image)
    image = jnp.clip(image, 0.0, 1.0)
    uj = u[5 + num_crop:5 + num_crop + num_jitter]
    low, high = max(0.0, 1.0 - 0.8 * jitter_strength), 1.0 + 0.8 * jitter_strength
    factors = low + (high - low) * uj[:3]
    ops = [lambda im: augment.adjust_brightness(im, factors[0]), lambda im: augment.adjust_contrast(im, factors[1])]
    if channels == 3:
      ops += [lambda im: augment.adjust_saturation(im, factors[2]),
              lambda im: augment.adjust_hue(im, 0.2 * jitter_strength * (2.0 * uj[3] - 1.0))]
    order = jnp.argsort(uj[4:4 + len(ops)])
    jittered = image
    for position in range(len(ops)):
      jittered = jnp.clip(jax.lax.switch(order[position], ops, jittered), 0.0, 1.0)
    image = jnp.where(u[1] < jitter_prob, jittered, image)
    if channels == 3:
      image = jnp.where(u[2] < grayscale_prob, augment.to_grayscale(image), image)
    if blur:
      sigma = 0.1 + 1.9 * u[4]
      image = jnp.where(u[3] < blur_prob, augment.gaussian_blur(image, sigma, 2 * (out_size // 10 // 2) + 1), image)
    return jnp.clip(image, 0.0, 1.0)

  u = jax.random.uniform(key, (len(images), 5 + num_crop + num_jitter))
  return np.asarray(jax.jit(jax.vmap(one))(u, x))


@pytest.mark.parametrize("images,kwargs", [
    (RNG.integers(0, 256, (64, 12, 12, 3), dtype=np.uint8), dict(out_size=12)),
    (RNG.integers(0, 256, (64, 12, 12, 3), dtype=np.uint8), dict(out_size=8, jitter_strength=1.0, blur=True)),
    (RNG.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8), dict(out_size=20, crop_scale=(0.3, 1.0), flip=False,
                                                                  jitter_prob=1.0, grayscale_prob=0.5)),
    (GRAY_IMAGES, dict(out_size=10, jitter_prob=1.0))])
def test_simclr_equals_the_per_example_reference(images, kwargs):
  # Same key -> the same views as the per-example implementation, up to float rounding: the batched
  # rewrite changed the speed, not the distribution.
  for seed in range(2):
    expected = _reference_simclr(jax.random.key(seed), images, **kwargs)
    np.testing.assert_allclose(_simclr(jax.random.key(seed), images, **kwargs), expected, atol=2e-5)


def _torchvision_crop_boxes(rng, n, height, width, scale, ratio=augment.CROP_RATIO):
  """numpy transcription of torchvision's RandomResizedCrop.get_params (10 attempts, then the clamped centre)."""
  boxes = []
  for _ in range(n):
    for _ in range(10):
      area = height * width * rng.uniform(*scale)
      aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
      w, h = np.sqrt(area * aspect), np.sqrt(area / aspect)
      if w <= width and h <= height:
        boxes.append((h, w))
        break
    else:
      boxes.append((min(height, width / ratio[0]), min(width, height * ratio[1])))
  return np.array(boxes)


@pytest.mark.parametrize("height,width,scale", [(32, 32, (0.08, 1.0)), (24, 40, (0.2, 1.0))])
def test_crop_area_and_aspect_follow_the_torchvision_distribution(height, width, scale):
  n = 20000
  u = jax.random.uniform(jax.random.key(9), (n, augment.CROP_UNIFORMS))
  _, _, h, w = map(np.asarray, augment.crop_box(u, height, width, scale))
  reference = _torchvision_crop_boxes(np.random.default_rng(9), n, height, width, scale)
  ref_h, ref_w = reference[:, 0], reference[:, 1]
  for got, expected in ((h * w, ref_h * ref_w), (np.log(w / h), np.log(ref_w / ref_h))):
    # Two-sample Kolmogorov-Smirnov statistic (seeded, so deterministic); its 1% critical value at n = 20000 is 0.016.
    grid = np.sort(np.concatenate([got, expected]))
    cdf = lambda sample: np.searchsorted(np.sort(sample), grid, "right")
    ks = np.max(np.abs(cdf(got) - cdf(expected)))
    assert ks / n < 0.016

"""Square Attack: patterns and updates against loop-based numpy twins of the reference, attack properties."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csl_jax.attacks.square import (eta_pattern, l2_init, l2_proposal, linf_proposal, p_selection,
                                    side_lengths, square)

NUM_CLASSES = 10
SHAPE = (8, 8, 3)
_rng = np.random.default_rng(0)
WEIGHTS = jnp.asarray(_rng.normal(size=(int(np.prod(SHAPE)), NUM_CLASSES)), jnp.float32)


def linear_logits(x):
  return jnp.reshape(x, (x.shape[0], -1)) @ WEIGHTS


def _norm(delta, norm):
  flat = np.reshape(delta, (delta.shape[0], -1))
  return np.abs(flat).max(1) if norm == "linf" else np.linalg.norm(flat, axis=1)


# ---- numpy twins, written from the paper's description with explicit loops and slices -----------------

def _np_nested_squares(rows, cols):
  """Sum of centred squares of half-width k = 0, 1, …, each weighted 1/(k+1)², cut to rows×cols."""
  out = np.zeros((rows, cols))
  ci, cj = rows // 2, cols // 2
  for k in range(max(ci, cj) + 1):
    out[max(ci - k, 0):ci + k + 1, max(cj - k, 0):cj + k + 1] += 1.0 / (k + 1) ** 2
  total = np.sqrt(np.sum(out**2))
  return out / total if total > 0 else out


def _np_eta(s):
  out = np.zeros((s, s))
  out[:s // 2] = _np_nested_squares(s // 2, s)
  out[s // 2:] = -_np_nested_squares(s - s // 2, s)
  return out / np.sqrt(np.sum(out**2))


def _l2_normalize(delta):
  return delta / (np.sqrt(np.sum(delta**2, axis=(1, 2, 3), keepdims=True)) + 1e-12)


def _np_l2_init(x, eps, tile_signs, tile_flips):
  h, w = x.shape[1:3]
  s = h // 5
  delta = np.zeros_like(x, np.float64)
  top = (h - 5 * s) // 2
  for a in range(h // s):
    for b in range(w // s):
      pattern = _np_eta(s).T if tile_flips[a, b] else _np_eta(s)
      r, c = top + a * s, top + b * s
      delta[:, r:r + s, c:c + s, :] += pattern[None, :, :, None] * tile_signs[:, a:a + 1, b:b + 1, :]
  return np.clip(x + _l2_normalize(delta) * eps, 0, 1)


def _np_l2_proposal(x, x_best, eps, s, corner, corner2, transpose, signs):
  (r, c), (r2, c2) = corner, corner2
  delta = np.array(x_best - x, np.float64)
  win = (slice(None), slice(r, r + s), slice(c, c + s))
  win2 = (slice(None), slice(r2, r2 + s), slice(c2, c2 + s))
  both = np.zeros_like(delta)
  both[win], both[win2] = 1.0, 1.0
  norm_win = np.sqrt(np.sum(delta[win] ** 2, axis=(1, 2), keepdims=True))
  norm_both = np.sqrt(np.sum((delta * both) ** 2, axis=(1, 2), keepdims=True))
  norm_image = np.sqrt(np.sum(delta**2, axis=(1, 2, 3), keepdims=True))
  pattern = _np_eta(s).T if transpose else _np_eta(s)
  new = pattern[None, :, :, None] * signs + delta[win] / (1e-12 + norm_win)
  budget = np.sqrt(np.maximum(eps**2 - norm_image**2, 0) / x.shape[-1] + norm_both**2)
  new = new / (1e-12 + np.sqrt(np.sum(new**2, axis=(1, 2), keepdims=True))) * budget
  delta[win2] = 0.0
  delta[win] = new
  return np.clip(x + _l2_normalize(delta) * eps, 0, 1)


# ---- building blocks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("side", [1, 2, 3, 4, 5, 8, 11])
def test_eta_pattern_matches_nested_squares(side):
  pattern = jax.jit(eta_pattern, static_argnums=1)
  canvas = np.asarray(pattern(side, 12, False))
  np.testing.assert_allclose(canvas[:side, :side], _np_eta(side), atol=1e-6)
  assert np.all(canvas[side:] == 0) and np.all(canvas[:, side:] == 0)
  np.testing.assert_allclose(np.asarray(pattern(side, 12, True)), canvas.T, atol=1e-7)


def test_p_schedule_halves_at_the_reference_query_counts():
  halvings = {0: 0, 10: 0, 11: 1, 50: 1, 51: 2, 200: 2, 201: 3, 501: 4, 1001: 5, 2001: 6, 4001: 7, 6001: 8,
              8001: 9, 9999: 9}
  for query, k in halvings.items():
    assert p_selection(query, 0.8, 10000) == pytest.approx(0.8 / 2**k)
  # Rescaled to 5000 queries, the schedule runs twice as fast.
  assert p_selection(26, 0.8, 5000, rescale=True) == pytest.approx(0.8 / 4)
  linf, l2 = side_lengths("linf", 5000, 0.8, 32, 32), side_lengths("l2", 5000, 0.8, 32, 32)
  assert linf[0] == round(np.sqrt(0.8 * 1024)) and linf[-1] == max(round(np.sqrt(0.8 / 2**7 * 1024)), 1)
  assert np.all(np.diff(linf) <= 0) and np.all(np.diff(l2) <= 0)
  assert np.all(l2 % 2 == 1) and np.all(l2 >= 3) and linf.max() <= 32


@pytest.mark.parametrize("hw", [(32, 32), (20, 15)])
def test_l2_init_matches_tiled_loop(hw):
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 1, (2,) + hw + (3,)).astype(np.float32)
  s = hw[0] // 5
  tiles = (hw[0] // s, hw[1] // s)
  signs = rng.choice([-1.0, 1.0], size=(2,) + tiles + (3,)).astype(np.float32)
  flips = rng.uniform(size=tiles) > 0.5
  got = jax.jit(l2_init)(jnp.asarray(x), 0.5, jnp.asarray(signs), jnp.asarray(flips))
  np.testing.assert_allclose(got, _np_l2_init(x, 0.5, signs, flips), atol=1e-5)


def test_l2_proposal_matches_window_loop():
  rng = np.random.default_rng(2)
  x = rng.uniform(0, 1, (3, 16, 16, 3)).astype(np.float32)
  # ‖δ‖₂ ≈ 0.3 < eps = 1, so the share of the unused budget (eps² − ‖δ‖²) / C matters.
  x_best = np.clip(x + 0.01 * rng.normal(size=x.shape), 0, 1).astype(np.float32)
  signs = rng.choice([-1.0, 1.0], size=(3, 1, 1, 3)).astype(np.float32)
  for side, corner, corner2, transpose in [(5, (2, 7), (9, 1), False), (3, (0, 0), (1, 1), True),
                                           (7, (9, 4), (9, 4), True)]:
    got = jax.jit(l2_proposal)(jnp.asarray(x), jnp.asarray(x_best), 1.0, side, corner, corner2, transpose,
                      jnp.asarray(signs))
    want = _np_l2_proposal(x, x_best, 1.0, side, corner, corner2, transpose, signs)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.all(_norm(np.asarray(got) - x, "l2") <= 1.0 + 1e-5)


def test_linf_proposal_flips_one_square():
  rng = np.random.default_rng(3)
  x = rng.uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
  eps = 0.1
  x_best = np.clip(x + eps * rng.choice([-1.0, 1.0], size=x.shape), 0, 1).astype(np.float32)
  signs = np.array([1.0, -1.0, 1.0], np.float32)
  got = np.asarray(jax.jit(linf_proposal)(jnp.asarray(x), jnp.asarray(x_best), eps, 3, (2, 4), jnp.asarray(signs)))
  want = x_best.copy()
  want[:, 2:5, 4:7] = np.clip(x[:, 2:5, 4:7] + eps * signs, 0, 1)
  np.testing.assert_allclose(got, want, atol=1e-6)


# ---- the attack --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(4)
  x = rng.uniform(0, 1, (48,) + SHAPE).astype(np.float32)
  y = np.array(jnp.argmax(linear_logits(x), 1))
  y[:2] = (y[:2] + 1) % NUM_CLASSES  # misclassified from the start
  return x, y


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.3)])
def test_square_lowers_accuracy_within_threat_model(batch, norm, eps):
  x, y = batch
  run = lambda key: np.asarray(square(linear_logits, x, jnp.asarray(y), eps=eps, norm=norm, n_queries=200,
                                      key=key))
  x_adv = run(jax.random.PRNGKey(0))
  clean = np.asarray(jnp.argmax(linear_logits(x), 1)) == y
  robust = np.asarray(jnp.argmax(linear_logits(x_adv), 1)) == y
  assert robust.mean() < clean.mean()
  assert not np.any(robust & ~clean)
  assert np.all((x_adv >= 0) & (x_adv <= 1))
  assert np.all(_norm(x_adv - x, norm) <= eps * (1 + 1e-5))
  np.testing.assert_array_equal(x_adv[:2], x[:2])  # already misclassified: untouched
  np.testing.assert_array_equal(x_adv[robust], x[robust])  # not fooled: returned unchanged
  np.testing.assert_array_equal(run(jax.random.PRNGKey(0)), x_adv)  # same key, same result
  assert not np.array_equal(run(jax.random.PRNGKey(1)), x_adv)


def test_square_on_video_stays_in_threat_model():
  rng = np.random.default_rng(5)
  video = rng.uniform(0, 1, (8, 2, 8, 8, 3)).astype(np.float32)  # [B, T, H, W, C]
  logits = lambda v: linear_logits(jnp.mean(v, axis=1))
  y = np.asarray(jnp.argmax(logits(video), 1))
  x_adv = np.asarray(square(logits, video, jnp.asarray(y), eps=3.0, norm="l2", n_queries=50))
  assert x_adv.shape == video.shape
  assert np.all(_norm(x_adv - video, "l2") <= 3.0 * (1 + 1e-5))
  fooled = np.asarray(jnp.argmax(logits(x_adv), 1)) != y
  assert fooled.any()
  np.testing.assert_array_equal(x_adv[~fooled], video[~fooled])


@pytest.mark.parametrize("bad,match", [
    (dict(norm="l1"), "norm"),
    (dict(x=np.full((2,) + SHAPE, -0.5, np.float32)), r"\[0, 1\]"),
    (dict(y=np.zeros(3, np.int32)), "batch sizes differ"),
    (dict(p_init=1.5), "p_init"),
])
def test_square_rejects_bad_inputs(bad, match):
  args = dict(x=np.full((2,) + SHAPE, 0.5, np.float32), y=np.zeros(2, np.int32), eps=0.1, norm="linf")
  args.update(bad)
  with pytest.raises(ValueError, match=match):
    square(linear_logits, args.pop("x"), args.pop("y"), **args)

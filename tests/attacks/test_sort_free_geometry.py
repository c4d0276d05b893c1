"""The sort-free ℓ1 geometry (bisection over float bit patterns) against sort-based numpy references, at
the sizes the attacks use (CIFAR: d = 3072), with ties, zeros, saturated pixels and per-example fractions.

`projections._l1_box_threshold` and `projections.top_fraction_mask` used to sort every row; the property
tests in test_projections.py check the projection's geometry on small inputs, these check that the
bisection lands on exactly the same answers as sorting on large ones.
"""
import jax
import numpy as np
import pytest

from csl_jax.attacks import projections

B, D = 6, 3072


def _top_fraction_reference(magnitudes, fraction):
  """The sort-based rule: keep values ≥ the sorted value at index ⌊(1 − fraction) · d⌋, per row."""
  flat = magnitudes.reshape(len(magnitudes), -1)
  fraction = np.broadcast_to(np.asarray(fraction, np.float32), (len(flat),))
  index = np.clip(np.floor((1.0 - fraction) * flat.shape[1]), 0, flat.shape[1] - 1).astype(int)
  threshold = np.sort(flat, axis=1)[np.arange(len(flat)), index]
  return (flat >= threshold[:, None]).reshape(magnitudes.shape)


@pytest.mark.parametrize("kind", ["continuous", "ties", "mostly_zero"])
def test_top_fraction_mask_matches_sorting(kind):
  rng = np.random.default_rng(0)
  magnitudes = np.abs(rng.normal(size=(B, 32, 32, 3))).astype(np.float32)
  if kind == "ties":
    magnitudes = np.round(magnitudes * 4) / 4  # a handful of distinct values, many ties
  elif kind == "mostly_zero":
    magnitudes *= rng.uniform(size=magnitudes.shape) < 0.01
  fractions = np.array([1 / D, 0.003, 0.05, 0.2, 0.9, 1.0], np.float32)
  mask = np.asarray(jax.jit(projections.top_fraction_mask)(magnitudes, fractions))
  np.testing.assert_array_equal(mask, _top_fraction_reference(magnitudes, fractions))


def _l1_box_reference(z, x, eps):
  """float64 projection onto {‖δ‖₁ ≤ eps} ∩ box: sort all 2d breakpoints of g(λ) = Σ clip(a − λ, 0, u),
  find the segment where g crosses eps, interpolate."""
  out = np.empty_like(z, dtype=np.float64)
  for i in range(len(z)):
    v = z[i].astype(np.float64) - x[i]
    room = np.where(v >= 0, 1.0 - x[i], x[i])
    a = np.abs(v)
    lam = 0.0
    if np.minimum(a, room).sum() > eps:
      knots = np.sort(np.concatenate([np.maximum(a - room, 0.0), a]))
      mass = np.array([np.clip(a - k, 0, room).sum() for k in knots])
      j = np.flatnonzero(mass <= eps)[0]  # g is non-increasing: the root lies in (knots[j-1], knots[j]]
      lo, hi = knots[j - 1], knots[j]
      lam = lo + (np.clip(a - lo, 0, room).sum() - eps) * (hi - lo) / (mass[j - 1] - mass[j])
    out[i] = x[i] + np.sign(v) * np.clip(a - lam, 0, room)
  return out


@pytest.mark.parametrize("kind", ["dense_step", "sparse_step", "saturating"])
def test_l1_projection_matches_sorting_at_image_size(kind):
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 1, (B, D)).astype(np.float32)
  if kind == "dense_step":
    z = x + rng.laplace(scale=0.01, size=x.shape)
  elif kind == "sparse_step":
    z = x + rng.laplace(scale=0.5, size=x.shape) * (rng.uniform(size=x.shape) < 0.05)
  else:  # many coordinates pushed past their box face, so the box binds
    z = x + np.sign(rng.normal(size=x.shape)) * rng.uniform(0.5, 1.5, x.shape) * (rng.uniform(size=x.shape) < 0.02)
  z = z.astype(np.float32)
  for eps in (1.0, 8.0, 12.0):
    p = np.asarray(jax.jit(projections.project_l1)(z, x, eps))
    np.testing.assert_allclose(p, _l1_box_reference(z, x, eps), atol=2e-6)
    assert np.all(np.abs(p.astype(np.float64) - x).sum(axis=1) <= eps * (1 + 1e-5))  # float32 rounding of x + δ

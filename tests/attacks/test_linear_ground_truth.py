"""Attacks against linear classifiers, whose exact robust accuracy is known in closed form.

For f(x) = Wᵀx + b and the pair (y, j), the smallest perturbation that reaches the boundary z_y = z_j has
‖δ‖_p = (z_y − z_j) / ‖w_y − w_j‖_q with q the dual norm (ℓ∞ ↔ ℓ1, ℓ2 ↔ ℓ2, ℓ1 ↔ ℓ∞), as long as the
box [0, 1] is not reached; points lie in [0.3, 0.7]^d and eps stays below 0.3, so it never is. A point
is robust at eps iff min_j of that distance exceeds eps. An attack can never report a robust accuracy
below the exact one (that would mean it left the threat model) and should not be above it by more
than one point.
"""
import functools

import jax
import numpy as np
import pytest

from csl_jax import attacks

N, DIM, K = 400, 20, 5
DUAL = {"linf": 1, "l2": 2, "l1": np.inf}


def _problem(num_classes=K, seed=0):
  rng = np.random.default_rng(seed)
  w = (4 * rng.normal(size=(DIM, num_classes))).astype(np.float32)
  b = rng.normal(size=num_classes).astype(np.float32)
  x = rng.uniform(0.3, 0.7, (N, DIM)).astype(np.float32)
  y = np.argmax(x @ w + b, axis=1).astype(np.int32)
  return w, b, x, y


W, B, X, Y = _problem()


def logits_fn(x):
  return x @ W + B


def exact_distance(w, b, x, y, norm):
  """min_j (z_y − z_j) / ‖w_y − w_j‖_dual per example, f64[N]."""
  z = (x @ w + b).astype(np.float64)
  margins = z[np.arange(len(y)), y][:, None] - z
  dual = np.linalg.norm(w[:, y].T[:, None, :] - w.T[None, :, :], ord=DUAL[norm], axis=2)
  dist = margins / np.where(dual > 0, dual, 1.0)
  dist[np.arange(len(y)), y] = np.inf
  return dist.min(axis=1)


def eps_between_quantiles(dist, q):
  """An eps halfway between two consecutive sorted distances near quantile q (no ties at eps)."""
  ordered = np.sort(dist)
  k = int(q * len(ordered))
  return float((ordered[k] + ordered[k + 1]) / 2)


def _accuracy(logits, x_adv, y):
  return float(np.mean(np.argmax(np.asarray(logits(x_adv)), axis=1) == y))


ATTACKS = {
    "pgd": functools.partial(attacks.pgd, steps=40),
    "apgd-ce": functools.partial(attacks.apgd, loss="ce", n_iter=50),
    "apgd-dlr": functools.partial(attacks.apgd, loss="dlr", n_iter=50),
}


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_robust_accuracy_matches_closed_form(norm, attack):
  dist = exact_distance(W, B, X, Y, norm)
  for q in (0.25, 0.5, 0.75):
    eps = eps_between_quantiles(dist, q)
    assert eps < 0.3  # the optimal perturbation stays inside the box
    exact = float(np.mean(dist > eps))
    robust = _accuracy(logits_fn, ATTACKS[attack](logits_fn, X, Y, eps=eps, norm=norm), Y)
    assert exact - 1e-9 <= robust <= exact + 0.01, (attack, norm, eps, exact, robust)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_l1_robust_accuracy_matches_closed_form(attack):
  """ℓ1 (box inactive): FGSM-ℓ1 is the exact linear maximiser; PGD-ℓ1's sparse steps converge to it."""
  dist = exact_distance(W, B, X, Y, "l1")
  fn = attacks.fgsm if attack == "fgsm" else functools.partial(attacks.pgd, steps=40)
  for q in (0.25, 0.75):
    eps = eps_between_quantiles(dist, q)
    assert eps < 0.3
    exact = float(np.mean(dist > eps))
    robust = _accuracy(logits_fn, fn(logits_fn, X, Y, eps=eps, norm="l1"), Y)
    assert exact - 1e-9 <= robust <= exact + 0.01, (attack, eps, exact, robust)


def _l1_box_distance(w, b, x, y):
  """Exact minimal ℓ1 distance to the other class of a binary linear model WITH the [0, 1] box:
  a fractional knapsack over coordinates sorted by |w_i| (each moves at most to its box face)."""
  z = x @ w + b
  out = np.empty(len(y))
  for i in range(len(y)):
    direction = (w[:, 1 - y[i]] - w[:, y[i]]).astype(np.float64)
    needed = z[i, y[i]] - z[i, 1 - y[i]]
    room = np.where(direction > 0, 1 - x[i], x[i]).astype(np.float64)
    cost = 0.0
    for c in np.argsort(-np.abs(direction)):
      gain = abs(direction[c]) * room[c]
      if gain >= needed:
        cost += needed / abs(direction[c])
        needed = 0.0
        break
      needed -= gain
      cost += room[c]
    out[i] = cost if needed == 0.0 else np.inf
  return out


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fgsm_is_exact_on_binary_linear_models(norm):
  """With two classes the CE gradient is ∝ w_other − w_y, so one FGSM step is the optimal attack
  (for ℓ1 even with the box active: the knapsack step, checked on points spread over all of [0, 1])."""
  rng = np.random.default_rng(1)
  w = (4 * rng.normal(size=(DIM, 2))).astype(np.float32)
  b = rng.normal(size=2).astype(np.float32)
  x = rng.uniform(0.0 if norm == "l1" else 0.3, 1.0 if norm == "l1" else 0.7, (N, DIM)).astype(np.float32)
  y = np.argmax(x @ w + b, axis=1).astype(np.int32)
  binary = lambda v: v @ w + b  # noqa: E731
  dist = _l1_box_distance(w, b, x, y) if norm == "l1" else exact_distance(w, b, x, y, norm)
  for q in (0.3, 0.7):
    eps = eps_between_quantiles(dist[np.isfinite(dist)], q)
    exact = float(np.mean(dist > eps))
    robust = _accuracy(binary, attacks.fgsm(binary, x, y, eps=eps, norm=norm), y)
    assert exact - 1e-9 <= robust <= exact + 0.005, (norm, eps, exact, robust)


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_apgd_is_as_strong_as_the_reference_implementation(norm):
  """Twin check against fra31/auto-attack's APGD on the same linear model (skipped without it)."""
  torch = pytest.importorskip("torch")
  autopgd = pytest.importorskip("autoattack.autopgd_base")
  x = np.random.default_rng(2).uniform(0.0, 1.0, (N, DIM)).astype(np.float32)
  y = np.argmax(x @ W + B, axis=1).astype(np.int32)
  eps = {"linf": 0.03, "l1": 0.3}[norm]
  w_t, b_t = torch.tensor(W), torch.tensor(B)
  reference = autopgd.APGDAttack(lambda t: t @ w_t + b_t, n_iter=50, norm={"linf": "Linf", "l1": "L1"}[norm],
                                 eps=eps, loss="ce", device="cpu", seed=0)
  x_ref = reference.perturb(torch.tensor(x), torch.tensor(y).long()).detach().numpy()
  robust_ref = _accuracy(logits_fn, x_ref, y)
  robust = _accuracy(logits_fn, attacks.apgd(logits_fn, x, y, eps=eps, norm=norm, n_iter=50,
                                             key=jax.random.PRNGKey(3)), y)
  assert robust <= robust_ref + 0.01, (norm, robust, robust_ref)

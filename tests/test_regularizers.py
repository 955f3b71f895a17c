"""Tests for immujax/regularizers.py: hand-derived gradients and Theorems 4.1–4.3."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import immujax as ij
from immujax import regularizers
from tests.helpers import fd_gradient, fd_symmetric_gradient, random_psd

TOL = dict(rtol=1e-7)


def _close(a, b):
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-7 * np.abs(b).max())


@pytest.mark.parametrize("name", ["r_ill", "r_well"])
def test_full_rank_gradient_custom_vs_autodiff_vs_fd(name):
  rng = np.random.default_rng(0)
  s = random_psd(rng, 6)
  f, f_ad = getattr(ij, name), getattr(ij, name + "_autodiff")
  g = jax.grad(f)(s)
  _close(g, jax.grad(f_ad)(s))
  _close(g, fd_symmetric_gradient(f, s))
  # The installed rule is the closed form of Thm 4.1(3) / σ1u1v1ᵀ − S/p.
  e = ij.extremes(s)
  if name == "r_ill":
    delta = e.frobenius_sq / 12 - e.sigma_min**2 / 2
    closed = (e.lambda_min * np.outer(e.v_min, e.v_min) - s / 6) / delta**2
  else:
    closed = e.lambda_max * np.outer(e.v_max, e.v_max) - s / 6
  _close(g, closed)


@pytest.mark.parametrize("name", ["r_ill", "r_well"])
def test_rank_deficient_gradient_via_theta_custom_vs_autodiff_vs_fd(name):
  # K singular (rank 5 of 8): H(θ) = θᵀKθ keeps rank 5 for every invertible θ, so the
  # regularizer is smooth in θ and finite differences are meaningful (Thm 4.2).
  rng = np.random.default_rng(1)
  k = random_psd(rng, 8, 5)
  theta = np.eye(8) + 0.3 * rng.normal(size=(8, 8))
  f, f_ad = getattr(ij, name), getattr(ij, name + "_autodiff")
  obj = lambda t: f(ij.hessian(t, k))
  g = np.asarray(jax.grad(obj)(theta))
  assert np.all(np.isfinite(g))
  _close(g, jax.grad(lambda t: f_ad(ij.hessian(t, k)))(theta))
  _close(g, fd_gradient(lambda t: obj(t), theta, h=1e-5))
  # Thm 4.2: ∇_θ R(θᵀKθ) = 2KθG with G = ∇_S R.
  h = ij.hessian(theta, k)
  _close(g, ij.theta_gradient(theta, k, jax.grad(f)(h)))


def test_eigh_autodiff_is_nan_where_ours_is_finite():
  # Documented motivation: differentiating eigenvectors through eigh on a degenerate
  # spectrum (rank-deficient S) gives non-finite values; the hand-derived rule does not.
  s = np.diag([3.0, 2.0, 1.0, 0.0, 0.0, 0.0])  # exactly repeated zero eigenvalues
  def via_eigh(m):
    lam, v = jnp.linalg.eigh(m)
    return jnp.sum(v[:, 0] * (m @ v[:, -1]) ** 2)  # uses a null-space eigenvector
  assert not np.all(np.isfinite(jax.grad(via_eigh)(s)))
  assert np.all(np.isfinite(jax.grad(ij.r_ill)(s)))


def test_gradients_under_jit_and_vmap():
  rng = np.random.default_rng(3)
  batch = np.stack([random_psd(rng, 5, r) for r in (5, 4, 3, 2)])
  for f in (ij.r_ill, ij.r_well):
    gb = jax.jit(jax.vmap(jax.grad(f)))(batch)
    for s, gs in zip(batch, gb):
      _close(gs, jax.grad(f)(s))


def test_scale_laws():
  rng = np.random.default_rng(4)
  for rank in (6, 4):
    s = random_psd(rng, 6, rank)
    for c in (0.1, 3.0):
      np.testing.assert_allclose(ij.condition_number(c * s), ij.condition_number(s), rtol=1e-10)
      np.testing.assert_allclose(ij.r_well(c * s), c**2 * ij.r_well(s), rtol=1e-10)
      np.testing.assert_allclose(ij.r_ill(c * s), ij.r_ill(s) / c**2, rtol=1e-10)
  assert float(ij.r_well(np.eye(4))) == 0.0


def test_r_ill_singular_point_is_inf_with_zero_gradient():
  s = np.diag([2.0, 2.0, 0.0])  # all non-zero σ equal: κ = 1, Δ = 0
  assert np.isinf(float(ij.r_ill(s)))
  assert np.all(jax.grad(ij.r_ill)(s) == 0)


def test_thm41_nonnegativity_and_log_kappa_bound():
  rng = np.random.default_rng(5)
  for trial in range(40):
    n = int(rng.integers(2, 9))
    rank = int(rng.integers(2, n + 1))
    spread = float(np.exp(rng.uniform(0.01, 8)))
    s = random_psd(rng, n, rank, spread=spread)
    r = float(ij.r_ill(s))
    kappa = float(ij.condition_number(s))
    smax = float(np.linalg.eigvalsh(s)[-1])
    assert r >= 0
    # Thm 4.1(2): 1/log κ ≤ σ_max² R_ill.
    assert 1.0 / np.log(kappa) <= smax**2 * r * (1 + 1e-12)
    # App. B.2 two-sided bound.
    smin = smax / kappa
    assert 2 * rank / ((rank - 1) * (kappa**2 - 1) * smin**2) <= r * (1 + 1e-9)
    assert r <= 2 * rank / ((kappa**2 - 1) * smin**2) * (1 + 1e-9)


def test_thm41_monotone_increase_inside_step_bound():
  rng = np.random.default_rng(6)
  for rank in (6, 4):
    s = random_psd(rng, 6, rank)
    e = ij.extremes(s)
    k = int(e.rank)
    delta = float(e.frobenius_sq) / (2 * k) - float(e.sigma_min) ** 2 / 2
    bound = k / (k - 1) * delta**2
    g = jax.grad(ij.r_ill)(s)
    for frac in (0.01, 0.5, 0.99):
      s2 = s - frac * bound * g
      assert float(ij.condition_number(s2)) > float(ij.condition_number(s))
    # Beyond the bound σ_k crosses zero: the step is no longer guaranteed to help.
    s3 = s - 3.0 * bound * g
    assert float(ij.condition_number(s3)) < float(ij.condition_number(s - 0.99 * bound * g))


def _eig_sorted(h):
  lam, v = np.linalg.eigh(h)
  return lam[::-1], v[:, ::-1]


def test_thm43_preconditioned_r_well_step_maps_eigenvalues_and_keeps_eigenvectors():
  rng = np.random.default_rng(7)
  d = 6
  k_p = random_psd(rng, d)
  theta = np.eye(d) + 0.2 * rng.normal(size=(d, d))
  h = np.asarray(ij.hessian(theta, k_p))
  lam, v = _eig_sorted(h)
  eta = 0.1 / lam[0]
  # K⁻¹∇_θ R_well computed with an explicit inverse equals the closed form 2θG.
  grad_theta = jax.grad(lambda t: ij.r_well(ij.hessian(t, k_p)))(theta)
  direction = np.linalg.solve(k_p, grad_theta)
  g = jax.grad(ij.r_well)(h)
  _close(direction, ij.preconditioned_direction(theta, g))
  h2 = np.asarray(ij.hessian(theta - eta * direction, k_p))
  expected = lam.copy()
  expected[0] = lam[0] * (1 - 2 * eta * lam[0] * (1 - 1 / d)) ** 2
  expected[1:] = lam[1:] * (1 + 2 * eta * lam[1:] / d) ** 2
  # Eigenvectors preserved: H' v_i = σ_i' v_i for the OLD eigenvectors.
  _close(h2 @ v, v * expected)
  assert float(ij.condition_number(h2)) < float(ij.condition_number(h))


def test_thm43_preconditioned_r_ill_step_maps_eigenvalues_and_keeps_eigenvectors():
  rng = np.random.default_rng(8)
  d = 6
  k_h = random_psd(rng, d)
  theta = np.eye(d) + 0.2 * rng.normal(size=(d, d))
  h = np.asarray(ij.hessian(theta, k_h))
  lam, v = _eig_sorted(h)
  k = d
  delta = np.sum(lam**2) / (2 * k) - lam[-1] ** 2 / 2
  eta = 0.2 * delta**2 / ((1 - 1 / k) * lam[-1])
  g = jax.grad(ij.r_ill)(h)
  grad_theta = jax.grad(lambda t: ij.r_ill(ij.hessian(t, k_h)))(theta)
  direction = np.linalg.solve(k_h, grad_theta)
  _close(direction, ij.preconditioned_direction(theta, g))
  h2 = np.asarray(ij.hessian(theta - eta * direction, k_h))
  expected = lam * (1 + 2 * eta * lam / (k * delta**2)) ** 2
  expected[-1] = lam[-1] * (1 - 2 * eta * lam[-1] * (1 - 1 / k) / delta**2) ** 2
  _close(h2 @ v, v * expected)
  assert float(ij.condition_number(h2)) > float(ij.condition_number(h))


def test_preconditioned_direction_defined_for_singular_k():
  rng = np.random.default_rng(9)
  k_h = random_psd(rng, 6, 3)
  theta = np.eye(6)
  h = ij.hessian(theta, k_h)
  step = ij.preconditioned_direction(theta, jax.grad(ij.r_ill)(h))
  assert np.all(np.isfinite(step))
  h2 = ij.hessian(theta - 1e-3 * step, k_h)
  assert float(ij.condition_number(h2)) > float(ij.condition_number(h))


def test_value_and_grad_helpers_match_public_functions():
  rng = np.random.default_rng(11)
  s = random_psd(rng, 5, 4)
  vg = regularizers.r_ill_value_and_grad(jnp.asarray(s))
  np.testing.assert_allclose(vg.value, ij.r_ill(s), rtol=1e-14)
  _close(vg.grad, jax.grad(ij.r_ill)(s))
  vg = regularizers.r_well_value_and_grad(jnp.asarray(s))
  np.testing.assert_allclose(vg.value, ij.r_well(s), rtol=1e-14)
  _close(vg.grad, jax.grad(ij.r_well)(s))


def test_bad_input():
  with pytest.raises(ValueError, match="`s`.*square"):
    ij.r_ill(np.ones((2, 3)))
  with pytest.raises(ValueError, match="`s`.*NaN"):
    ij.r_well(np.full((2, 2), np.nan))

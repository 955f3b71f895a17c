"""Tests for immujax/spectral.py: κ conventions, rank tolerance, gradients, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import immujax as ij
from immujax import spectral
from tests.helpers import fd_symmetric_gradient, random_psd


def test_covariance_and_hessian_shapes_and_values():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 4))
  theta = rng.normal(size=(4, 3))
  k = ij.covariance(x)
  np.testing.assert_allclose(k, x.T @ x, rtol=1e-14)
  h = ij.hessian(theta, k)
  np.testing.assert_allclose(h, (x @ theta).T @ (x @ theta), rtol=1e-12)
  assert np.array_equal(h, h.T)


@pytest.mark.parametrize("rank", [5, 3])
def test_condition_number_matches_pinv_definition(rank):
  rng = np.random.default_rng(rank)
  s = random_psd(rng, 5, rank)
  sv = np.linalg.svd(s, compute_uv=False)
  nz = sv[sv > 5 * np.finfo(float).eps * sv[0]]
  # κ = ‖S‖₂ ‖S†‖₂ (Eq. 1).
  expected = np.linalg.norm(s, 2) * np.linalg.norm(np.linalg.pinv(s), 2)
  np.testing.assert_allclose(ij.condition_number(s), expected, rtol=1e-9)
  np.testing.assert_allclose(ij.condition_number(s), nz[0] / nz[-1], rtol=1e-9)
  assert int(ij.numerical_rank(s)) == rank == np.linalg.matrix_rank(s)


def test_rank_tolerance_is_relative_not_absolute():
  # The same matrix scaled by 1e-12 or 1e12 has the same rank and κ.
  rng = np.random.default_rng(1)
  s = random_psd(rng, 6, 4)
  for c in (1e-12, 1.0, 1e12):
    assert int(ij.numerical_rank(c * s)) == 4
    np.testing.assert_allclose(ij.condition_number(c * s), ij.condition_number(s), rtol=1e-8)


def test_singular_values_of_indefinite_symmetric_are_absolute_eigenvalues():
  s = np.diag([3.0, -6.0, 1.5])
  np.testing.assert_allclose(ij.condition_number(s), 4.0)
  smax, smin = ij.sigma_max_min(s)
  assert float(smax) == 6.0 and float(smin) == 1.5


def test_authors_recipe_reduces_to_lambda_max_times_1e6_on_rank_deficient():
  rng = np.random.default_rng(2)
  s = random_psd(rng, 40, 20)
  lam_max = np.linalg.eigvalsh(s)[-1]
  kappa_authors = float(ij.condition_number_authors(s))
  # σ_min ≈ 1e-6 (a shifted null eigenvalue), so κ ≈ (λ_max + 1e-6) / 1e-6.
  np.testing.assert_allclose(kappa_authors, (lam_max + 1e-6) / 1e-6, rtol=1e-6)
  assert kappa_authors > 1e3 * float(ij.condition_number(s))
  # On a well-conditioned full-rank matrix the two conventions agree.
  f = random_psd(rng, 5)
  np.testing.assert_allclose(ij.condition_number_authors(f), ij.condition_number(f), rtol=1e-5)


@pytest.mark.parametrize("rank", [6, 4])
def test_log_condition_number_gradient_custom_vs_autodiff_vs_fd(rank):
  rng = np.random.default_rng(10 + rank)
  s = random_psd(rng, 6, rank)
  g = np.asarray(jax.grad(ij.log_condition_number)(s))
  # Autodiff reference: eigvalsh (eigenvalue derivatives only), rank mask held fixed.
  def ref(m):
    lam = jnp.linalg.eigvalsh(m)
    nz = lam[-rank:]
    return jnp.log(nz[-1]) - jnp.log(nz[0])
  g_ad = np.asarray(jax.grad(ref)(s))
  # Finite differences on symmetric perturbations; rtol=1e-6 keeps the perturbed null
  # eigenvalues (O(h)) classified as zero, so the rank does not jump.
  g_fd = fd_symmetric_gradient(
      lambda m: spectral.log_condition_number(m, rtol=1e-6), s, h=1e-6)
  scale = np.abs(g).max()
  np.testing.assert_allclose(g, g_ad, rtol=1e-7, atol=1e-7 * scale)
  np.testing.assert_allclose(g, g_fd, rtol=1e-7, atol=1e-7 * scale)
  assert np.all(np.isfinite(g))


def test_jit_vmap_grad_of_condition_number():
  rng = np.random.default_rng(3)
  batch = np.stack([random_psd(rng, 5, r) for r in (5, 4, 3)])
  vals = jax.jit(jax.vmap(ij.condition_number))(batch)
  for b, v in zip(batch, vals):
    np.testing.assert_allclose(v, ij.condition_number(b), rtol=1e-12)
  grads = jax.jit(jax.vmap(jax.grad(ij.log_condition_number)))(batch)
  assert grads.shape == batch.shape and np.all(np.isfinite(grads))


def test_zero_matrix_inside_jit_is_nan_free():
  z = jnp.zeros((4, 4))
  assert float(jax.jit(ij.condition_number)(z)) == 1.0
  g = jax.jit(jax.grad(ij.log_condition_number))(z)
  assert np.all(np.isfinite(g))


@pytest.mark.parametrize("bad, match", [
    (np.ones((3, 4)), "square"),
    (np.ones(3), "2-D"),
    (np.array([[1.0, 2.0], [0.0, 1.0]]), "not symmetric"),
    (np.array([[np.nan, 0.0], [0.0, 1.0]]), "NaN"),
    (np.array([[np.inf, 0.0], [0.0, 1.0]]), "NaN or inf"),
    (np.zeros((3, 3)), "zero matrix"),
    (np.array([["a"]]), "dtype"),
])
def test_bad_input_raises_value_error_naming_argument(bad, match):
  with pytest.raises(ValueError, match=match) as info:
    ij.condition_number(bad)
  assert "`s`" in str(info.value)


def test_hessian_rejects_torch_layout():
  with pytest.raises(ValueError, match="theta"):
    ij.hessian(np.ones((3, 5)), np.eye(5))


@pytest.mark.parametrize("rank", [8, 5])
def test_covariance_root_and_gram_extremes_equal_the_full_decomposition(rank):
  # RᵀR = K on K's range, and the extremes of (Rθ)ᵀ(Rθ) read from the small Gram (Rθ)(Rθ)ᵀ
  # equal those of the full D×D Hessian: values, rank, Frobenius, eigenvectors (up to sign).
  rng = np.random.default_rng(rank)
  k = random_psd(rng, 8, rank=rank)
  root = spectral.covariance_root(k)
  assert root.shape == (rank, 8)
  np.testing.assert_allclose(root.T @ root, k, atol=1e-12)
  padded = spectral.covariance_root(k, rows=10)
  assert padded.shape == (10, 8) and not np.any(padded[rank:])
  theta = rng.normal(size=(8, 8))
  full = spectral.extremes(spectral.hessian(theta, k))
  for r in (root, padded):
    small = jax.jit(spectral.gram_extremes)(r @ theta)
    assert int(small.rank) == int(full.rank) == rank
    for f in ("sigma_max", "sigma_min", "lambda_max", "lambda_min", "frobenius_sq"):
      np.testing.assert_allclose(getattr(small, f), getattr(full, f), rtol=1e-9)
    for f in ("v_max", "v_min"):
      np.testing.assert_allclose(np.abs(getattr(small, f) @ getattr(full, f)), 1.0, rtol=1e-9)
  with pytest.raises(ValueError, match="rows"):
    spectral.covariance_root(k, rows=rank - 1)

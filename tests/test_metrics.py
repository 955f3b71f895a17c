"""Tests for immujax/metrics.py: RIR conventions and the closed-form RIR limit."""
import jax
import numpy as np
import pytest

import immujax as ij
from tests.helpers import random_psd


def test_rir_against_itself_is_exactly_one():
  rng = np.random.default_rng(0)
  k_p, k_h = random_psd(rng, 5, 4), random_psd(rng, 5, 3)
  theta0 = rng.normal(size=(5, 5))
  r = ij.relative_immunization_ratio(theta0, k_p=k_p, k_h=k_h, theta0=theta0)
  assert float(r.rir) == 1.0 and float(r.ratio_h) == 1.0 and float(r.ratio_p) == 1.0
  r = ij.relative_immunization_ratio(np.eye(5), k_p=k_p, k_h=k_h)
  assert float(r.rir) == 1.0


def test_rir_factors_match_definition():
  rng = np.random.default_rng(1)
  k_p, k_h = random_psd(rng, 5), random_psd(rng, 5)
  theta = rng.normal(size=(5, 5))
  r = ij.relative_immunization_ratio(theta, k_p=k_p, k_h=k_h)
  kap = lambda s: np.linalg.cond(s)
  ratio_h = kap(theta.T @ k_h @ theta) / kap(k_h)
  ratio_p = kap(theta.T @ k_p @ theta) / kap(k_p)
  np.testing.assert_allclose(r.ratio_h, ratio_h, rtol=1e-8)
  np.testing.assert_allclose(r.ratio_p, ratio_p, rtol=1e-8)
  np.testing.assert_allclose(r.rir, ratio_h / ratio_p, rtol=1e-8)


def test_rir_from_features_equals_rir_from_extractors():
  rng = np.random.default_rng(2)
  x_p, x_h = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
  theta, theta0 = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
  a = ij.rir_from_features(phi_p=x_p @ theta, phi_h=x_h @ theta, phi_p_ref=x_p @ theta0,
                           phi_h_ref=x_h @ theta0)
  b = ij.relative_immunization_ratio(theta, k_p=ij.covariance(x_p), k_h=ij.covariance(x_h),
                                     theta0=theta0)
  np.testing.assert_allclose(a.rir, b.rir, rtol=1e-9)


def test_rir_upper_bound_holds_and_whitening_attains_it():
  rng = np.random.default_rng(3)
  k_p, k_h = random_psd(rng, 6, spread=50), random_psd(rng, 6, spread=50)
  bound = ij.rir_upper_bound(k_p=k_p, k_h=k_h)
  assert bool(bound.bounded)
  w = ij.whitening_extractor(k_p)
  attained = ij.relative_immunization_ratio(w, k_p=k_p, k_h=k_h)
  np.testing.assert_allclose(attained.rir, bound.rir_on_range, rtol=1e-8)
  np.testing.assert_allclose(attained.ratio_p * np.linalg.cond(k_p), 1.0, rtol=1e-8)
  # Generalized eigenvalues of the pencil (K_H, K_P).
  gam = np.sort(np.real(np.linalg.eigvals(np.linalg.solve(k_p, k_h))))
  np.testing.assert_allclose(bound.pencil_kappa, gam[-1] / gam[0], rtol=1e-8)
  # No random invertible θ beats it.
  thetas = rng.normal(size=(200, 6, 6))
  rirs = jax.vmap(lambda t: ij.relative_immunization_ratio(t, k_p=k_p, k_h=k_h).rir)(thetas)
  assert np.all(rirs <= bound.rir_on_range * (1 + 1e-9))


def test_rir_unbounded_when_null_kp_not_inside_null_kh():
  # K_P has a null direction v (a constant/zero column for D_P) that K_H does see: stretching
  # θ along v leaves H_P unchanged and inflates κ(H_H) without limit.
  rng = np.random.default_rng(4)
  x_p = rng.normal(size=(40, 5))
  x_p[:, 4] = 0.0  # a pixel that is always 0 for the pre-training digit
  x_h = rng.normal(size=(40, 5))
  k_p, k_h = ij.covariance(x_p), ij.covariance(x_h)
  bound = ij.rir_upper_bound(k_p=k_p, k_h=k_h)
  assert not bool(bound.bounded) and float(bound.leak) > 1e-3
  v = np.eye(5)[4]
  rirs, ratio_ps = [], []
  for t in (1.0, 10.0, 100.0, 1000.0):
    theta = np.eye(5) + t * np.outer(v, v)
    r = ij.relative_immunization_ratio(theta, k_p=k_p, k_h=k_h)
    rirs.append(float(r.rir))
    ratio_ps.append(float(r.ratio_p))
  np.testing.assert_allclose(ratio_ps, 1.0, rtol=1e-9)  # H_P untouched
  assert all(b > 50 * a for a, b in zip(rirs[1:], rirs[2:]))  # grows like t²
  assert rirs[-1] > 1e3 * float(bound.rir_on_range)


def test_bounded_case_when_null_spaces_nest():
  rng = np.random.default_rng(5)
  x_p, x_h = rng.normal(size=(40, 5)), rng.normal(size=(40, 5))
  x_p[:, 4] = 0.0
  x_h[:, 4] = 0.0
  assert bool(ij.rir_upper_bound(k_p=ij.covariance(x_p), k_h=ij.covariance(x_h)).bounded)


def test_authors_kappa_option_and_bad_kappa():
  rng = np.random.default_rng(6)
  k_p, k_h = random_psd(rng, 5), random_psd(rng, 5)
  r = ij.relative_immunization_ratio(np.eye(5), k_p=k_p, k_h=k_h, kappa="authors")
  assert float(r.rir) == 1.0
  with pytest.raises(ValueError, match="`kappa`"):
    ij.relative_immunization_ratio(np.eye(5), k_p=k_p, k_h=k_h, kappa="nope")


def test_accuracy():
  assert float(ij.accuracy(np.array([[0.1, 0.9], [2.0, 1.0]]), np.array([1, 1]))) == 0.5
  assert float(ij.accuracy(np.array([1.0, -1.0]), np.array([1, 0]))) == 1.0


def test_positional_arrays_raise_type_error_showing_the_keyword_form():
  """Issue 16: the natural call (theta, K_P, K_H) was silently read as the old (k_p, k_h,
  theta) order (a wrong RIR for a symmetric θ); every extra positional is now a TypeError."""
  rng = np.random.default_rng(7)
  k_p, k_h = random_psd(rng, 4), random_psd(rng, 4)
  theta = rng.normal(size=(4, 4))
  sym = theta + theta.T
  with pytest.raises(TypeError, match=r"relative_immunization_ratio\(theta, k_p=K_P, k_h=K_H\)"):
    ij.relative_immunization_ratio(sym, k_p, k_h)
  with pytest.raises(TypeError, match=r"rir_from_hessians\(h_p=\.\.\., h_h="):
    ij.rir_from_hessians(k_p, k_h, k_p, k_h)
  with pytest.raises(TypeError, match=r"rir_from_features\(phi_p="):
    ij.rir_from_features(theta, theta, theta, theta)
  with pytest.raises(TypeError, match=r"rir_upper_bound\(k_p=K_P, k_h=K_H\)"):
    ij.rir_upper_bound(k_p, k_h)


def test_errors_name_the_callers_arguments():
  rng = np.random.default_rng(8)
  k = random_psd(rng, 4)
  theta = rng.normal(size=(4, 4))
  theta[1, 2] = np.nan
  with pytest.raises(ValueError, match=r"^`theta` contains NaN"):
    ij.relative_immunization_ratio(theta, k_p=k, k_h=k)
  with pytest.raises(ValueError, match=r"^`theta0` must be \(D_in, D_hid\) with D_in = 4"):
    ij.relative_immunization_ratio(np.eye(4), k_p=k, k_h=k, theta0=np.eye(3))
  with pytest.raises(ValueError, match=r"^`k_p` \(4, 4\) and `k_h` \(3, 3\)"):
    ij.relative_immunization_ratio(np.eye(4), k_p=k, k_h=np.eye(3))
  with pytest.raises(ValueError, match=r"^`theta` must be \(D_in, D_hid\)"):
    ij.relative_immunization_ratio(np.eye(3), k_p=k, k_h=k)


def test_new_convention_rejects_ambiguous_calls():
  k = np.eye(3)
  with pytest.raises(TypeError, match="keyword"):
    ij.relative_immunization_ratio(k, k)          # two positionals: neither form
  with pytest.raises(TypeError, match="missing the keyword argument"):
    ij.relative_immunization_ratio(k, k_p=k)
  with pytest.raises(TypeError, match="keyword"):
    ij.rir_from_hessians(k, k, k)
  with pytest.raises(TypeError, match="keyword"):
    ij.rir_upper_bound(k, k_p=k)

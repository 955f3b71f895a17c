"""Tests for immujax/attacks.py: the linear-probing attackers and their convergence theory."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from immujax import attacks

_STATIC = ("steps", "init", "return_iterates")


@functools.cache
def _jit(fn):
  """One compiled version per attacker, reused across calls with equal shapes. The outputs come
  back as numpy arrays, so that indexing in the assertions does not compile XLA ops."""
  compiled = jax.jit(fn, static_argnames=_STATIC)

  def run(*args, init="zeros", return_iterates=False, **kwargs):
    # Explicit static keywords, so that omitting a default does not miss the jit cache.
    out = compiled(*args, init=init, return_iterates=return_iterates, **kwargs)
    return jax.tree.map(np.asarray, out)

  return run


_probe_problem = jax.jit(attacks.probe_problem)


def _contraction(kappa):
  """(κ−1)/(κ+1): the worst-case per-step error contraction of optimally tuned GD."""
  return (kappa - 1.0) / (kappa + 1.0)


def _embed(phi, y):
  """Zero-pads a small problem to the shared 40 x 8 shape (the singular values are unchanged),
  so that every test reuses the attackers compiled by test_attacker_reaches_lstsq_optimum."""
  n, d = phi.shape
  big = np.zeros((40, 8))
  big[:n, :d] = phi
  return big, np.concatenate([y, np.zeros(40 - n)])


def _diag_problem(lam, w_star):
  """Φ = diag(√λ) (padded to 40 x 8), Y = Φ w*, so the Hessian 2ΦᵀΦ has eigenvalues 2λ."""
  phi = np.diag(np.sqrt(lam))
  return _embed(phi, phi @ w_star)


def _two_eigenvalue_problem(kappa):
  """λ ∈ {1, κ} (four times each), w* = 1, w_0 = 0: κ(H) = κ, and the initial error has equal
  weight on the two extreme eigenvalues, where the worst-case bound of tuned GD is attained."""
  return _diag_problem(np.repeat([1.0, kappa], 4), np.ones(8))


def _run(name, phi, y, **kwargs):
  """The registry attacker ``name`` with its budget, through the uniform signature."""
  return _jit(attacks.ATTACKERS[name])(phi, y, jax.random.key(0), steps=_BUDGET[name],
                                       **kwargs)


def _random_problem(seed=0, n=40, d=8, c=None):
  rng = np.random.default_rng(seed)
  phi = rng.normal(size=(n, d))
  y = rng.normal(size=(n,) if c is None else (n, c))
  return phi, y


def _duplicate_column_problem(seed=11):
  """40 x 8 features of rank 5: five random columns, two copies, and one doubled copy."""
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(40, 5))
  return np.concatenate([a, a[:, :2], 2 * a[:, :1]], axis=1), rng.normal(size=40)


# Steps per attacker. They are ample on the well-conditioned 40 x 8 problem (κ(H) ≈ 5). The
# GD and momentum budgets also cover the κ = 1e3 / 1e4 problems of the theory tests, which
# reuse the same compiled functions.
_BUDGET = {
    "gd_line_search": 5000, "gd_constant": 5000, "heavy_ball": 1500, "nesterov": 1500,
    "adam": 2000, "lbfgs": 40, "cg": 12, "closed_form": 1,
}


def test_registry_is_complete():
  assert set(attacks.ATTACKERS) == set(_BUDGET)
  assert set(attacks.LOGISTIC_ATTACKERS) == {"gd", "lbfgs"}


@pytest.mark.parametrize("name", sorted(_BUDGET))
def test_attacker_reaches_lstsq_optimum(name):
  """Every attacker, called through the registry's uniform signature, reaches Φ⁺Y."""
  phi, y = _random_problem()
  steps = _BUDGET[name]
  traj = _run(name, phi, y)
  w_ls = np.linalg.lstsq(phi, y, rcond=None)[0]
  for field in ("loss", "norm_ratio", "excess_loss"):
    assert getattr(traj, field).shape == (steps + 1,)
    assert np.all(np.isfinite(getattr(traj, field)))
  assert traj.step_size.shape == (steps,)
  assert traj.iterates is None and traj.accuracy is None
  np.testing.assert_allclose(traj.norm_ratio[0], 1.0)
  np.testing.assert_allclose(traj.loss[0], np.sum(y**2), rtol=1e-12)
  tol, atol_w = (1e-6, 1e-3) if name == "adam" else (1e-8, 1e-6)  # Adam: a noise floor.
  assert traj.norm_ratio[-1] < tol
  assert traj.excess_loss[-1] < tol
  np.testing.assert_allclose(traj.w, w_ls, atol=atol_w)
  np.testing.assert_allclose(traj.loss[-1], np.sum((phi @ w_ls - y) ** 2), rtol=1e-6)
  if name == "closed_form":  # One solve, whatever κ is.
    assert int(attacks.steps_to_tolerance(traj.norm_ratio, 1e-20)) == 1


def test_matrix_targets_reach_columnwise_lstsq():
  """Targets (N, C): CG on vec(W) with Frobenius inner products solves every column."""
  phi, y = _random_problem(seed=1, c=3)
  traj = _jit(attacks.conjugate_gradient)(phi, y, None, steps=_BUDGET["cg"])
  assert traj.w.shape == (8, 3)
  np.testing.assert_allclose(traj.w, np.linalg.lstsq(phi, y, rcond=None)[0], atol=1e-8)


def test_metrics_match_direct_formulas():
  """The loss, norm ratio (Eq. 16) and excess loss recorded in the scan match their definitions
  evaluated directly on the iterates."""
  phi, y = _random_problem(seed=2, n=20, d=5)
  traj = _jit(attacks.gd_exact_line_search)(phi, y, None, steps=12, return_iterates=True)
  ws = np.asarray(traj.iterates)
  assert ws.shape == (13, 5)
  np.testing.assert_allclose(ws[-1], traj.w)
  w_star = np.linalg.lstsq(phi, y, rcond=None)[0]
  loss = np.sum((ws @ phi.T - y) ** 2, axis=1)
  dist = np.sum((ws - w_star) ** 2, axis=1)
  l_star = np.sum((phi @ w_star - y) ** 2)
  np.testing.assert_allclose(traj.loss, loss, rtol=1e-10)
  np.testing.assert_allclose(traj.norm_ratio, dist / dist[0], rtol=1e-8, atol=1e-14)
  np.testing.assert_allclose(traj.excess_loss, (loss - l_star) / (loss[0] - l_star),
                             rtol=1e-6, atol=1e-12)


def test_probe_problem_spectrum():
  phi, y = _random_problem(seed=4)
  prob = _probe_problem(phi, y)
  s = np.linalg.svd(phi, compute_uv=False)
  np.testing.assert_allclose(prob.hess_max, 2 * s[0] ** 2, rtol=1e-12)
  np.testing.assert_allclose(prob.hess_min, 2 * s[-1] ** 2, rtol=1e-12)
  assert int(prob.rank) == 8
  np.testing.assert_allclose(prob.w_star, np.linalg.pinv(phi) @ y, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Convergence theory.


def test_gd_optimal_constant_step_matches_worst_case_rate():
  """On the two-eigenvalue problem, GD with α = 2/(L+μ) contracts ‖·‖² by exactly
  ((κ−1)/(κ+1))² per step. So the steps to ε are ⌈log(1/ε)/(2 log((κ+1)/(κ−1)))⌉, 461 at
  κ = 100 and ε = 1e-8. We assert the 20% window and the exact count. The textbook step 1/L
  (the paper's Eq. 2 rate) needs 882 steps here and fails both."""
  kappa, eps = 100.0, 1e-8
  traj = _run("gd_constant", *_two_eigenvalue_problem(kappa))
  theory = np.log(1 / eps) / (2 * np.log(1 / _contraction(kappa)))       # 460.5
  measured = int(attacks.steps_to_tolerance(traj.norm_ratio, eps))
  assert abs(measured - theory) / theory < 0.2, (measured, theory)
  assert measured == int(np.ceil(theory))
  np.testing.assert_allclose(traj.norm_ratio[:100],
                             _contraction(kappa) ** (2 * np.arange(100)), rtol=1e-9)


def test_gd_constant_step_bound_holds_on_spread_spectrum():
  """The worst-case bound ‖e_t‖² ≤ q^{2t}‖e_0‖² holds for any spectrum and any targets."""
  kappa = 1e3
  rng = np.random.default_rng(5)
  traj = _run("gd_constant", *_diag_problem(np.logspace(0, 3, 8), rng.normal(size=8)))
  bound = _contraction(kappa) ** (2 * np.arange(_BUDGET["gd_constant"] + 1))
  assert np.all(traj.norm_ratio <= bound * (1 + 1e-9) + 1e-28)


def _golden_section(f, lo, hi, iters=200):
  phi = (np.sqrt(5) - 1) / 2
  a, b = lo, hi
  c, d = b - phi * (b - a), a + phi * (b - a)
  for _ in range(iters):
    if f(c) < f(d):
      b, d = d, c
      c = b - phi * (b - a)
    else:
      a, c = c, d
      d = a + phi * (b - a)
  return (a + b) / 2


def test_exact_line_search_step_minimizes_loss():
  """Every α_t is the loss-minimizing step along −g_t, found independently with a 1-D
  golden-section search on the directly evaluated loss. The loss is monotone."""
  rng = np.random.default_rng(6)
  phi = rng.normal(size=(20, 5)) * np.array([1.0, 2.0, 5.0, 10.0, 0.3])
  y = rng.normal(size=20)
  traj = _jit(attacks.gd_exact_line_search)(phi, y, None, steps=12, return_iterates=True)
  ws = np.asarray(traj.iterates)
  for t in range(12):
    g = 2 * phi.T @ (phi @ ws[t] - y)
    f = lambda a, w=ws[t], g=g: np.sum((phi @ (w - a * g) - y) ** 2)
    alpha = float(traj.step_size[t])
    a_star = _golden_section(f, 0.0, 4 * alpha)
    np.testing.assert_allclose(alpha, a_star, rtol=1e-6)
    np.testing.assert_allclose(ws[t + 1], ws[t] - alpha * g, rtol=1e-12, atol=1e-14)
    grid = alpha * np.linspace(0.0, 3.0, 61)
    assert f(alpha) <= min(f(a) for a in grid) * (1 + 1e-12)
  assert np.all(np.diff(np.asarray(traj.loss)) <= 1e-12 * traj.loss[0])


def test_exact_line_search_attains_kantorovich_rate():
  """Steepest descent with exact line search contracts the excess loss by at most
  ((κ−1)/(κ+1))² per step (Kantorovich). The bound is attained when the gradient has equal
  energy on the two extreme eigenspaces, i.e. e_0 ∝ (1, 1/κ) in the eigenbasis. Then the
  steps to ε are the same as for tuned constant-step GD, and they grow linearly in κ: this is
  the paper's premise for Fig. 1."""
  eps = 1e-8
  counts = []
  for kappa in (1e2, 1e3):
    w_star = np.repeat([1.0, 1.0 / kappa], 4)
    traj = _run("gd_line_search", *_diag_problem(np.repeat([1.0, kappa], 4), w_star))
    q2 = _contraction(kappa) ** 2
    np.testing.assert_allclose(traj.excess_loss[:60], q2 ** np.arange(60), rtol=1e-8)
    theory = np.log(1 / eps) / (2 * np.log(1 / _contraction(kappa)))  # 460.5, 4605.2
    counts.append(int(attacks.steps_to_tolerance(traj.excess_loss, eps)))
    assert abs(counts[-1] - theory) / theory < 0.2, (counts, theory)
  assert 0.9 <= np.log10(counts[1] / counts[0]) <= 1.1, counts
  # A generic start converges at least as fast (the bound is a worst case).
  rng = np.random.default_rng(7)
  traj = _run("gd_line_search", *_diag_problem(np.logspace(0, 2, 8), rng.normal(size=8)))
  ex = traj.excess_loss
  assert np.all(ex[1:] <= _contraction(100.0) ** 2 * ex[:-1] * (1 + 1e-9) + 1e-28)


def test_cg_terminates_in_number_of_distinct_eigenvalues():
  """CG's iterate minimizes the energy error over a Krylov space. With m distinct eigenvalues,
  a degree-m polynomial vanishes on the spectrum, so the error is zero after m steps (to
  rounding). Degree m−1 cannot vanish there, so after m−1 steps the error is still macroscopic."""
  m = 4
  rng = np.random.default_rng(8)
  traj = _run("cg", *_diag_problem(np.repeat([1.0, 7.0, 40.0, 300.0], 2), rng.normal(size=8)))
  assert traj.norm_ratio[m - 1] > 1e-6
  assert traj.norm_ratio[m] < 1e-20
  assert np.all(traj.norm_ratio[m:] < 1e-20)  # Frozen after convergence, no blow-up.


def test_cg_matches_chebyshev_bound():
  """Chebyshev bound: excess_loss[t] ≤ 4ρ^{2t}, ρ = (√κ−1)/(√κ+1). It is nearly tight when the
  eigenvalues sit at Chebyshev nodes of [1, κ] and the energy of the error is spread evenly.
  There the measured count is within 20% of the bound (we measure 172 vs 193 at κ = 1e3)."""
  kappa, m, eps = 1e3, 250, 1e-10
  j = np.arange(m)
  lam = (1 + kappa) / 2 + (kappa - 1) / 2 * np.cos(np.pi * j / (m - 1))
  phi = np.diag(np.sqrt(lam))
  y = phi @ (1 / np.sqrt(lam))       # e_0 = −λ^{-1/2}: equal energy per eigenvector.
  traj = _jit(attacks.conjugate_gradient)(phi, y, None, steps=220)
  rho = _contraction(np.sqrt(kappa))
  t = np.arange(221)
  assert np.all(traj.excess_loss <= 4 * rho ** (2 * t) * (1 + 1e-9))
  theory = np.log(4 / eps) / (2 * np.log(1 / rho))
  measured = int(attacks.steps_to_tolerance(traj.excess_loss, eps))
  assert 0.8 * theory <= measured <= theory, (measured, theory)


@pytest.mark.parametrize("name,kappas,lo,hi", [
    ("gd_constant", (1e2, 1e3), 0.9, 1.1),
    ("heavy_ball", (1e2, 1e4), 0.4, 0.65),
    ("nesterov", (1e2, 1e4), 0.4, 0.65),
])
def test_steps_scale_as_power_of_kappa(name, kappas, lo, hi):
  """The slope of log(steps to ε) against log κ is 1 for GD and 1/2 for the momentum methods.
  On the two-eigenvalue problem we measure 1.00, 0.54 and 0.51. (Exact line search is
  covered by test_exact_line_search_attains_kantorovich_rate. The closed form takes 1 step,
  see test_attacker_reaches_lstsq_optimum.)"""
  counts = []
  for kappa in kappas:
    traj = _run(name, *_two_eigenvalue_problem(kappa))
    counts.append(int(attacks.steps_to_tolerance(traj.norm_ratio, 1e-8)))
  assert counts[1] <= _BUDGET[name], counts  # Reached within the budget.
  slope = np.log(counts[1] / counts[0]) / np.log(kappas[1] / kappas[0])
  assert lo <= slope <= hi, (counts, slope)


# ---------------------------------------------------------------------------------------------
# Transformations, rank deficiency, edge cases.


@pytest.mark.parametrize("name,init", [("gd_line_search", "normal"), ("lbfgs", "zeros")])
def test_jit_vmap_over_features_targets_and_keys(name, init):
  """A batch of problems under jit(vmap) equals the problems run one by one (L-BFGS included:
  its zoom line search is a while_loop, which vmap turns into a masked loop). The batched
  function is traced once for two different batches."""
  rng = np.random.default_rng(9)
  phis = rng.normal(size=(3, 40, 8))
  ys = rng.normal(size=(3, 40))
  keys = jax.random.split(jax.random.key(10), 3)
  fn = attacks.ATTACKERS[name]
  steps = _BUDGET[name]
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def batched(p, y, k):
    return jax.vmap(lambda a, b, c: fn(a, b, c, steps=steps, init=init))(p, y, k)

  out = jax.tree.map(np.asarray, batched(phis, ys, keys))
  batched(phis + 1.0, ys, keys)  # No retrace.
  assert out.norm_ratio.shape == (3, steps + 1)
  assert out.w.shape == (3, 8)
  for i in range(3):
    single = _jit(fn)(phis[i], ys[i], keys[i], steps=steps, init=init)
    np.testing.assert_allclose(out.norm_ratio[i, :6], single.norm_ratio[:6], rtol=1e-6)
    np.testing.assert_allclose(out.w[i], single.w, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(out.w[i], np.linalg.lstsq(phis[i], ys[i], rcond=None)[0],
                               atol=1e-6)
  if init == "normal":  # The keys reach the init: different keys, different w_0.
    assert len(set(np.round(np.asarray(out.loss[:, 0]), 6))) == 3


@pytest.mark.parametrize("name", sorted(_BUDGET))
def test_rank_deficient_features_give_min_norm_optimum(name):
  """With duplicated columns (rank 5 of 8) every attacker stays finite and reaches the
  solution set. Every attacker except Adam reaches the min-norm Φ⁺Y from w_0 = 0 (CG needs its
  stopping guard for this; without it the iteration blows up in null(Φ)). Adam's iterates
  leave range(Φᵀ), so for it we check the fit ΦW = ΦΦ⁺Y."""
  phi, y = _duplicate_column_problem()
  assert int(_probe_problem(phi, y).rank) == 5
  traj = _run(name, phi, y)
  assert np.all(np.isfinite(traj.loss)) and np.all(np.isfinite(traj.w))
  w_mn = np.linalg.pinv(phi) @ y
  tol = 1e-6 if name == "adam" else 1e-16
  assert traj.norm_ratio[-1] < tol and traj.excess_loss[-1] < tol
  if name == "adam":
    np.testing.assert_allclose(phi @ traj.w, phi @ w_mn, atol=1e-3)
  else:
    np.testing.assert_allclose(traj.w, w_mn, atol=1e-9)


def test_projected_norm_ratio_ignores_null_space_from_random_init():
  """From a random w_0, GD never changes the null(Φ) part of w. The projected Eq. 16 ratio
  still goes to 0, while the plain ‖w_t − Φ⁺Y‖ stays at the null-space offset."""
  phi, y = _duplicate_column_problem(seed=12)
  traj = _jit(attacks.gd_exact_line_search)(phi, y, jax.random.key(1),
                                            steps=_BUDGET["gd_line_search"], init="normal")
  assert traj.norm_ratio[-1] < 1e-20
  assert np.linalg.norm(traj.w - np.linalg.pinv(phi) @ y) > 1e-2


def test_zero_gradient_start_has_no_nans():
  """If w_0 is already optimal (Y = 0), then every guarded division (exact line search, CG,
  L-BFGS, and the norm ratio 0/0) gives zeros, not NaNs."""
  phi, _ = _random_problem(seed=13)
  y = np.zeros(40)
  for name in ("gd_line_search", "cg", "heavy_ball", "lbfgs"):
    traj = _run(name, phi, y)
    fields = [traj.loss, traj.norm_ratio, traj.excess_loss, traj.w]
    if name != "heavy_ball":  # Heavy ball reports its constant α.
      fields.append(traj.step_size)
    for field in fields:
      assert np.all(np.asarray(field) == 0.0), name


def test_steps_to_tolerance_edge_cases():
  curve = jnp.array([1.0, 0.5, 0.1, 0.1, 0.01])
  assert int(attacks.steps_to_tolerance(curve, 0.1)) == 2            # Equality counts.
  assert int(attacks.steps_to_tolerance(curve, 2.0)) == 0            # Reached at t = 0.
  assert int(attacks.steps_to_tolerance(curve, 1e-3)) == 5           # Never: len(curve).
  assert int(attacks.steps_to_tolerance(jnp.array([jnp.nan, 0.0]), 0.5)) == 1  # NaN misses.
  batch = jnp.stack([curve, curve[::-1]])
  np.testing.assert_array_equal(attacks.steps_to_tolerance(batch, 0.2), [2, 0])
  np.testing.assert_array_equal(attacks.steps_to_tolerance(batch, jnp.array([0.05, 2.0])),
                                [4, 0])
  jitted = jax.jit(jax.vmap(attacks.steps_to_tolerance, in_axes=(None, 0)))
  np.testing.assert_array_equal(jitted(curve, jnp.array([2.0, 0.3, 1e-9])), [0, 2, 5])
  assert attacks.steps_to_tolerance(batch, 0.2).dtype == jnp.int32
  with pytest.raises(ValueError, match="curve"):
    attacks.steps_to_tolerance(jnp.float32(1.0), 0.1)


def test_slowdown_factor():
  np.testing.assert_allclose(attacks.slowdown_factor(300, 30), 10.0)
  np.testing.assert_allclose(attacks.slowdown_factor(jnp.array([0, 5, 4]),
                                                     jnp.array([0, 0, 8])),
                             [1.0, np.inf, 0.5])
  assert np.isfinite(jax.grad(lambda a: attacks.slowdown_factor(a, 0.0))(0.0))


# ---------------------------------------------------------------------------------------------
# Logistic probe.


def _logistic_problem(seed=14, n=200, d=5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  labels = (x @ rng.normal(size=d) + rng.normal(size=n) > 0).astype(np.float64)
  return x, labels


_reference = jax.jit(attacks.logistic_reference, static_argnames="newton_steps")


def test_logistic_reference_is_stationary():
  x, labels = _logistic_problem()
  w_ref, f_ref, gnorm = _reference(x, labels, ridge=1e-4)
  assert gnorm < 1e-12
  # The gradient checked independently: mean_i (σ(φ_iᵀw) − y_i) φ_i + ridge·w.
  p = 1 / (1 + np.exp(-(x @ w_ref)))
  np.testing.assert_allclose(x.T @ (p - labels) / len(labels) + 1e-4 * w_ref, 0, atol=1e-12)
  # Separable data: the ridge makes the optimum exist, and Newton still gets there.
  xs = np.random.default_rng(15).normal(size=(200, 5))
  w_sep, _, gnorm_sep = _reference(xs, (xs[:, 0] > 0).astype(float), ridge=1e-4)
  assert gnorm_sep < 1e-10
  # The ridge optimum is a max-margin-like separator (we measure 99.5% training accuracy).
  assert np.mean(((xs @ w_sep) > 0) == (xs[:, 0] > 0)) >= 0.98


def test_logistic_attackers_reach_reference():
  x, labels = _logistic_problem()
  w_ref, f_ref, _ = _reference(x, labels, ridge=1e-4)
  acc_ref = np.mean(((x @ w_ref) > 0) == labels)
  lb = _jit(attacks.logistic_lbfgs)(x, labels, None, steps=30)
  assert lb.norm_ratio[-1] < 1e-12
  np.testing.assert_allclose(lb.w, w_ref, atol=1e-6)
  np.testing.assert_allclose(lb.accuracy[-1], acc_ref)
  # GD gets the precomputed reference; L-BFGS computed its own, and both agree.
  gd = _jit(attacks.logistic_gd)(x, labels, None, steps=300, reference=(w_ref, f_ref))
  loss = np.asarray(gd.loss)
  np.testing.assert_allclose(loss[0], np.log(2.0), rtol=1e-12)  # w_0 = 0.
  assert np.all(np.diff(loss) <= 1e-15)                          # The 1/L_F step is safe.
  assert gd.norm_ratio[-1] < 1e-6
  assert np.all((gd.accuracy >= 0) & (gd.accuracy <= 1))
  # L-BFGS beats GD by a wide margin on this problem.
  assert (int(attacks.steps_to_tolerance(lb.norm_ratio, 1e-6))
          < int(attacks.steps_to_tolerance(gd.norm_ratio, 1e-6)) / 3)


# ---------------------------------------------------------------------------------------------
# Input validation.


def test_input_validation_messages():
  phi, y = _random_problem(n=10, d=3)
  fn = attacks.gd_exact_line_search
  with pytest.raises(ValueError, match="features must be a 2-D"):
    fn(phi[0], y, None, steps=3)
  with pytest.raises(ValueError, match="targets must have shape"):
    fn(phi, y[:5], None, steps=3)
  with pytest.raises(ValueError, match="targets must have shape"):
    fn(phi, y[:, None, None], None, steps=3)
  with pytest.raises(ValueError, match="steps must be a non-negative"):
    fn(phi, y, None, steps=-1)
  with pytest.raises(ValueError, match="steps must be a non-negative"):
    fn(phi, y, None, steps=2.0)
  with pytest.raises(ValueError, match="floating dtype"):
    fn(phi.astype(np.int32), y, None, steps=3)
  with pytest.raises(ValueError, match="NaN"):
    fn(np.where(phi > 1, np.nan, phi), y, None, steps=3)
  with pytest.raises(ValueError, match="init must be"):
    fn(phi, y, None, steps=3, init="ones")
  with pytest.raises(ValueError, match="needs a PRNG key"):
    fn(phi, y, None, steps=3, init="normal")
  with pytest.raises(ValueError, match="init array"):
    fn(phi, y, None, steps=3, init=np.zeros(4))
  with pytest.raises(ValueError, match="labels must be in"):
    attacks.logistic_gd(phi, y, None, steps=3)
  with pytest.raises(ValueError, match="labels must have shape"):
    attacks.logistic_gd(phi, np.zeros((10, 2)), None, steps=3)
  with pytest.raises(ValueError, match="reference must be"):
    attacks.logistic_gd(phi, (y > 0).astype(float), None, steps=3,
                        reference=(np.zeros(4), 0.0))
  with pytest.raises(ValueError, match="ridge"):
    attacks.logistic_gd(phi, (y > 0).astype(float), None, steps=3, ridge=-1.0)


# ---------------------------------------------------------------- adaptive budgets (run_until)


def _small_problem(seed=0, n=40, d=6):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)) * np.logspace(0, -1, d)
  y = rng.normal(size=n)
  return x, y


@functools.cache
def _until(name, max_steps):
  return jax.jit(lambda p, eps, rec: attacks.run_until(name, p, eps=eps, max_steps=max_steps,
                                                       record_at=rec))


@pytest.mark.parametrize("name", list(attacks.ATTACKERS))
def test_run_until_reproduces_the_scan_attackers(name):
  # The eigenbasis while-loop gives the same steps to ε and the same iterates as the scan
  # attacker on the raw features (rotation invariance; Adam runs in the original coordinates).
  x, y = _small_problem()
  prob = attacks.quadratic_probe(x.T @ x, x.T @ y, y @ y)
  steps = 200
  traj = _jit(attacks.ATTACKERS[name])(x, y, None, steps=steps, return_iterates=True)
  eps = jnp.array([1e-2, 1e-6])
  want = np.asarray(attacks.steps_to_tolerance(traj.norm_ratio, eps))
  rec = jnp.array([0, 1, 5, 20])
  got = jax.tree.map(np.asarray, _until(name, steps)(prob, eps, rec))
  np.testing.assert_array_equal(got.steps[0], want)
  np.testing.assert_array_equal(got.steps[1],
                                np.asarray(attacks.steps_to_tolerance(traj.excess_loss, eps)))
  # L-BFGS's zoom line search sees the loss up to the constant L* (it is fitted on the excess
  # loss here), so its iterates agree to line-search rounding, not to 1e-9.
  tol = 1e-2 if name == "lbfgs" else 1e-9
  # Recordings after the run stopped hold the final iterate.
  at = np.minimum(np.asarray(rec), int(got.final_step))
  np.testing.assert_allclose(got.recorded, traj.iterates[at], atol=tol)
  np.testing.assert_allclose(got.norm_ratio, traj.norm_ratio[at], rtol=tol, atol=1e-12)
  # It stops as soon as every ε is reached (or at the cap).
  assert int(got.final_step) == min(steps, int(np.max(got.steps)))


def test_run_until_stops_early_and_counts_kappa_steps_at_a_large_cap():
  # Two-point spectrum, κ = 1e5: GD with step 2/(L+μ) has norm ratio ((κ−1)/(κ+1))^{2t}
  # exactly, so the steps to ε are known in closed form; a 10⁷ cap costs only those steps.
  kappa = 1e5
  lam = jnp.array([1.0, 1.0 / kappa])
  prob = attacks.quadratic_probe(jnp.diag(lam), lam * jnp.array([1.0, 1.0]))
  eps = jnp.array([1e-2, 1e-4])
  got = _until("gd_constant", 10**7)(prob, eps, jnp.array([0]))
  rate = (kappa - 1) / (kappa + 1)
  want = np.ceil(np.log(np.asarray(eps)) / (2 * np.log(rate)))
  np.testing.assert_allclose(np.asarray(got.steps[0]), want, atol=1)
  assert int(got.final_step) <= want[-1] + 1 and want[-1] > 2e5


def test_run_until_reports_the_cap_as_a_sentinel_and_lanes_finish_independently():
  lam = jnp.array([[1.0, 1e-2], [1.0, 1e-6]])         # κ = 100 and κ = 10⁶
  probs = jax.vmap(lambda l: attacks.quadratic_probe(jnp.diag(l), l))(lam)
  run = jax.jit(jax.vmap(lambda p: attacks.run_until("gd_constant", p, eps=jnp.array([1e-4]),
                                                     max_steps=2000)))
  got = jax.tree.map(np.asarray, run(probs))
  assert got.steps[0, 0, 0] == 231                     # log(1e-4)/(2 log(99/101)) → 231
  assert got.steps[1, 0, 0] == 2001                    # the sentinel: cap + 1
  # Under vmap the loop runs until the last lane is done, but a finished lane is frozen.
  np.testing.assert_array_equal(got.final_step, [231, 2000])
  assert got.norm_ratio[0, -1] <= 1e-4 < got.norm_ratio[1, -1]


def test_run_until_rejects_bad_arguments():
  prob = attacks.quadratic_probe(jnp.eye(2), jnp.ones(2))
  with pytest.raises(ValueError, match="max_steps"):
    attacks.run_until("cg", prob, eps=[1e-2], max_steps=0)
  with pytest.raises(ValueError, match="unknown attacker"):
    attacks.run_until("sgd", prob, eps=[1e-2], max_steps=10)
  with pytest.raises(ValueError, match="gram must be"):
    attacks.quadratic_probe(jnp.eye(2), jnp.ones(3))

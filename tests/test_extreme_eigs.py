"""Warm-started extremes (immujax/extreme_eigs.py) against a full eigh, step by step.

Every comparison is with ``extreme_eigs.exact`` (one ``eigh`` of the Gram, the reference
path): eigenvalues to 1e-10 relative, vectors to 1e-8 up to sign, on full-rank, padded
(rank-deficient K), near-degenerate-bottom and rank-dropping Hessians, and along whole
training trajectories where the warm start is the previous step's basis.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from immujax import extreme_eigs as xe
from immujax import immunize
from immujax import spectral
from immujax import sweep

EIG_RTOL = 1e-10
VEC_TOL = 1e-8
_warm, _exact = jax.jit(xe.warm), jax.jit(xe.exact)   # compiled once per shape


def _graded_root(rng, r, d, *, pad=0, spread=1e6, bottom_gap=None):
  """A root R (r × d) with decreasing row scales (like spectral.covariance_root)."""
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  lam = np.sort(np.exp(rng.uniform(0, np.log(spread), size=r - pad)))[::-1]
  if bottom_gap is not None:       # the two smallest eigenvalues of K close together
    lam[-2] = lam[-1] * (1 + bottom_gap)
  root = np.sqrt(lam)[:, None] * q[:, : r - pad].T
  return np.concatenate([root, np.zeros((pad, d))]) if pad else root


def _sign_dist(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return min(np.linalg.norm(a - b), np.linalg.norm(a + b))


def _assert_matches(e, e0):
  for name in ("sigma_max", "sigma_min"):
    np.testing.assert_allclose(float(getattr(e, name)), float(getattr(e0, name)),
                               rtol=EIG_RTOL, err_msg=name)
  assert int(e.rank) == int(e0.rank)
  np.testing.assert_allclose(float(e.frobenius_sq), float(e0.frobenius_sq), rtol=1e-12)
  assert _sign_dist(e.v_max, e0.v_max) < VEC_TOL
  assert _sign_dist(e.v_min, e0.v_min) < VEC_TOL


def _trajectory(rng, root, steps=8, size=0.05):
  """θ_0 orthogonal, then random smooth perturbations, as training steps move θ."""
  d = root.shape[1]
  theta, _ = np.linalg.qr(rng.normal(size=(d, d)))
  out = [theta]
  for _ in range(steps):
    theta = theta @ (np.eye(d) + size / np.sqrt(d) * rng.normal(size=(d, d)))
    out.append(theta)
  return out


@pytest.mark.parametrize("krylov_steps", [0, 1])
@pytest.mark.parametrize("case", ["full_rank", "padded", "near_degenerate_bottom"])
def test_warm_matches_eigh_at_every_step(case, krylov_steps):
  rng = np.random.default_rng({"full_rank": 0, "padded": 1, "near_degenerate_bottom": 2}[case])
  kw = {"full_rank": {}, "padded": {"pad": 7},
        "near_degenerate_bottom": {"bottom_gap": 1e-3}}[case]
  root = _graded_root(rng, 40, 48, **kw)
  # r = 40 fits one Krylov product with a block of 4 (4·b·(k + 1) ≤ r); 0 skips the phase.
  warm, exact = _warm_with(krylov_steps), _exact
  basis = None
  for theta in _trajectory(rng, root):
    b = jnp.asarray(root @ theta)
    e0, basis0, check0 = exact(b)
    if basis is None:
      basis = basis0
      continue
    e, basis, check = warm(b, basis)
    assert bool(check.ok), check
    assert float(check.residual_max) < 1e-12 and float(check.residual_min) < 1e-12
    if case == "near_degenerate_bottom":
      # A 1e-3 relative gap still pins the eigenvalue; the vector only to residual/gap.
      np.testing.assert_allclose(float(e.sigma_min), float(e0.sigma_min), rtol=EIG_RTOL)
      np.testing.assert_allclose(float(e.sigma_max), float(e0.sigma_max), rtol=EIG_RTOL)
      continue
    _assert_matches(e, e0)


def _warm_with(krylov_steps):
  return jax.jit(functools.partial(xe.warm, krylov_steps=krylov_steps))


def _flat_top_root(rng, r, d, *, top=8, spread=1e4):
  """A graded root whose ``top`` largest eigenvalues lie within 3 % of each other."""
  root = _graded_root(rng, r, d, spread=spread)
  scale = np.linalg.norm(root, axis=1)
  root[:top] *= (scale[0] * np.linspace(1.0, 0.97, top) / scale[:top])[:, None]
  return root


def test_krylov_phase_saves_iterations_on_a_flattened_top_and_changes_no_answer():
  # R_well flattens the top of H_P; from a warm block one step old the Ritz values are then
  # too poor for the shift-and-invert's shift (which must lie above λ_max). The Krylov
  # products first (no factorization) give the same answers in fewer block iterations.
  rng = np.random.default_rng(11)
  root = _flat_top_root(rng, 120, 128)
  warm0, warm6 = _warm_with(0), _warm_with(6)
  iterations = {0: 0, 6: 0}
  basis0 = basis6 = None
  for theta in _trajectory(rng, root, steps=6, size=0.2):
    b = jnp.asarray(root @ theta)
    e_ref, basis_ref, _ = _exact(b)
    if basis0 is None:
      basis0 = basis6 = basis_ref
      continue
    e0, basis0, c0 = warm0(b, basis0)
    e6, basis6, c6 = warm6(b, basis6)
    assert bool(c0.ok) and bool(c6.ok)
    np.testing.assert_allclose(float(e6.sigma_max), float(e_ref.sigma_max), rtol=EIG_RTOL)
    np.testing.assert_allclose(float(e6.sigma_min), float(e_ref.sigma_min), rtol=EIG_RTOL)
    np.testing.assert_allclose(float(e6.sigma_max), float(e0.sigma_max), rtol=1e-13)
    assert _sign_dist(e6.v_max, e0.v_max) < VEC_TOL
    iterations[0] += int(c0.iterations)
    iterations[6] += int(c6.iterations)
  assert iterations[6] < iterations[0], iterations


def test_krylov_phase_that_reaches_an_invariant_subspace_stays_exact():
  # M = BBᵀ = RRᵀ has three distinct eigenvalues (9, 4, 0.25, each 40 times) for any
  # orthogonal θ: the Krylov space of a 4-column block is exhausted after two products and
  # the spent directions must become zero columns, never NaN.
  rng = np.random.default_rng(12)
  q = np.linalg.qr(rng.normal(size=(128, 128)))[0][:, :120].T
  root = np.repeat([3.0, 2.0, 0.5], 40)[:, None] * q
  theta0 = np.linalg.qr(rng.normal(size=(128, 128)))[0]
  theta1 = np.linalg.qr(theta0 + 1e-2 * rng.normal(size=(128, 128)))[0]
  _, basis, _ = _exact(jnp.asarray(root @ theta0))
  e, _, check = _warm_with(6)(jnp.asarray(root @ theta1), basis)
  assert bool(check.ok), check
  np.testing.assert_allclose([float(e.sigma_max), float(e.sigma_min)], [9.0, 0.25],
                             rtol=EIG_RTOL)


def test_negative_krylov_steps_is_an_error_naming_the_argument():
  b = jnp.asarray(_graded_root(np.random.default_rng(13), 10, 12))
  _, basis, _ = _exact(b)
  with pytest.raises(ValueError, match="krylov_steps"):
    xe.warm(b, basis, krylov_steps=-1)


def test_extremes_match_gram_extremes_and_rank_of_padded_root():
  rng = np.random.default_rng(3)
  root = _graded_root(rng, 30, 36, pad=5)
  b = jnp.asarray(root @ np.linalg.qr(rng.normal(size=(36, 36)))[0])
  e0, basis, _ = _exact(b)
  ref = spectral.gram_extremes(b)
  assert int(e0.rank) == int(ref.rank) == 25
  e, _, check = _warm(b, basis)
  assert bool(check.ok)
  _assert_matches(e, ref)


def _rank_dropped(rng, nulls, r=20, d=24):
  """B = Rθ at θ0 and at θ0 with ``nulls`` row-space directions of B crushed by 1e-9."""
  root = _graded_root(rng, r, d, spread=10.0)
  theta = np.linalg.qr(rng.normal(size=(d, d)))[0]
  u = np.linalg.svd(root @ theta)[2][:nulls]          # row-space directions of B
  theta_low = theta @ (np.eye(d) - (1 - 1e-9) * u.T @ u)
  return jnp.asarray(root @ theta), jnp.asarray(root @ theta_low)


@pytest.mark.parametrize("nulls", [1, 2])
def test_rank_drop_is_handled_on_the_warm_path(nulls):
  # θ crushes directions of K's range: H loses ranks far below the tolerance (eigenvalues
  # 1e-18 of the rest, as Opt κ and IMMA produce). The warm solve finds the nulls, deflates
  # them and returns the smallest NON-zero pair and the rank, as the exact path does; the
  # next step starts from a block holding the nulls and needs a single iteration.
  b0, b = _rank_dropped(np.random.default_rng(4), nulls)
  _, basis, _ = _exact(b0)
  e0, _, _ = _exact(b)
  assert int(e0.rank) == 20 - nulls
  e, basis, check = _warm(b, basis)
  assert bool(check.ok), check
  _assert_matches(e, e0)
  e, _, check = _warm(b, basis)
  assert bool(check.ok) and int(check.iterations) <= 2
  _assert_matches(e, e0)


def test_more_nulls_than_the_block_holds_are_flagged_not_hidden():
  b0, b = _rank_dropped(np.random.default_rng(4), 4)
  _, basis, _ = _exact(b0)
  e, _, check = _warm(b, basis)
  assert not bool(check.ok)
  assert int(spectral.gram_extremes(b).rank) == 16


def test_failed_factorization_is_flagged():
  # A basis that is NaN (a corrupted state) cannot give a trusted answer.
  rng = np.random.default_rng(5)
  b = jnp.asarray(_graded_root(rng, 10, 12))
  _, basis, _ = _exact(b)
  bad = xe.Basis(basis.bottom * np.nan, basis.top)
  _, _, check = _warm(b, bad)
  assert not bool(check.ok)


def test_every_batching_rule_equals_looped_calls():
  # Under vmap the solver runs as a sequential map of unbatched LAPACK calls (the CPU rule:
  # jaxlib 0.10.x's batched CPU kernels deadlock when several run at once), as one batched
  # computation on the plain-XLA kernels of immujax.linalg, or on jnp.linalg's native
  # batched kernels (the GPU/TPU rule; on a CPU with one device and one solve at a time it
  # does not deadlock). All three must give the one-at-a-time results, to the solver's
  # tolerances (the iterates differ by round-off), including a rank-dropped member.
  rng = np.random.default_rng(6)
  root = _graded_root(rng, 16, 20)
  bs = [jnp.asarray(root @ t) for t in _trajectory(rng, root, steps=3)]
  _, basis, _ = jax.vmap(xe.exact)(jnp.stack(bs))
  b0, b1 = _rank_dropped(np.random.default_rng(4), 1, r=16, d=20)
  shifted = jnp.stack(bs[1:] + [b1])                # warm-start each from its neighbour,
  basis = jax.tree.map(lambda a, a0: a.at[-1].set(a0), basis, _exact(b0)[1])
  bs = shifted                                      # the last one from before its rank drop
  looped = [_warm(shifted[i], jax.tree.map(lambda a: a[i], basis))
            for i in range(bs.shape[0])]
  for rule in ("map", "xla", "native"):
    e_v, _, c_v = jax.jit(jax.vmap(lambda b, s: xe.warm(b, s, batching=rule)))(shifted, basis)
    for i, (e_i, _, c_i) in enumerate(looped):
      assert bool(c_v.ok[i]) == bool(c_i.ok), rule
      if bool(c_i.ok):
        np.testing.assert_allclose(float(e_v.sigma_min[i]), float(e_i.sigma_min),
                                   rtol=1e-10, err_msg=rule)
        np.testing.assert_allclose(float(e_v.sigma_max[i]), float(e_i.sigma_max),
                                   rtol=1e-12, err_msg=rule)
        assert _sign_dist(e_v.v_min[i], e_i.v_min) < VEC_TOL, rule
        assert int(e_v.rank[i]) == int(e_i.rank), rule


def _tiny_tasks(seed=0, t=3, d=14, r=12):
  rng = np.random.default_rng(seed)
  tasks = []
  for _ in range(t):
    # Columns that are always 0 (as MNIST pixels): K_P has rank d − 2, K_H rank d − 3.
    x_p = rng.normal(size=(60, d)) * np.linspace(3, 0.1, d) * (np.arange(d) >= 2)
    x_h = rng.normal(size=(50, d)) * np.linspace(0.1, 3, d) * (np.arange(d) < d - 3)
    task = immunize.make_task(x_p, (x_p[:, 2] > 0).astype(float), x_h,
                              (x_h[:, 1] > 0).astype(float))
    tasks.append(task._replace(root_p=spectral.covariance_root(task.k_p, rows=r),
                               root_h=spectral.covariance_root(task.k_h, rows=r)))
  return jax.tree.map(lambda *a: jnp.stack(a), *tasks)


def test_sweep_warm_matches_eigh_for_ours_and_counts_fallbacks():
  tasks = _tiny_tasks()
  methods = ("ours", "r_ill_only", "imma")
  out = {}
  for solver in ("warm", "eigh"):
    runs = sweep.init_runs(jax.random.key(1), tasks, methods, 2, learning_rate=0.005,
                           step_scale=0.5, eig_solver=solver)
    assert (runs.state.basis is None) == (solver == "eigh")
    state, fallbacks = runs.state, 0
    for _ in range(3):
      state, terms, fb = sweep.run_chunk_checked(state, tasks, runs.weights, steps=4,
                                                 loss="bce")
      fallbacks += int(fb.sum())
    out[solver] = np.asarray(sweep.evaluate(state, tasks, loss="bce").rir)
    if solver == "warm":
      assert np.asarray(terms.eig_residual).max() < 1e-10
  # Ours and R_ill Only to 1e-8. IMMA drives θ towards singular (RIR ~3e5 here, its rank
  # drops and its steps fall back to eigh); round-off in its balanced weights then shows at
  # ~1e-8, so it gets 1e-6.
  np.testing.assert_allclose(out["warm"][:, :4], out["eigh"][:, :4], rtol=1e-8)
  np.testing.assert_allclose(out["warm"][:, 4:], out["eigh"][:, 4:], rtol=1e-6)


def test_fallback_recomputes_flagged_runs_exactly(monkeypatch):
  # Force every warm check to fail (no residual is ever below tol = 0): the checked chunk
  # must then equal the exact path (to round-off: one run alone vs the vmapped program) and
  # flag every run — recomputed run by run (bulk_fraction 1) or as a whole batch (0.25).
  tasks = _tiny_tasks(seed=2, t=2)
  runs = sweep.init_runs(jax.random.key(2), tasks, ("ours",), 1, learning_rate=0.005,
                         step_scale=0.5)
  monkeypatch.setattr(xe, "DEFAULT_TOL", 0.0)
  jax.clear_caches()   # the tolerance is read when the step is traced
  out = [sweep.run_chunk_checked(runs.state, tasks, runs.weights, steps=3, loss="bce",
                                 bulk_fraction=bulk) for bulk in (1.0, 0.25)]
  # The same in two halves, as the MNIST study steps its methods: two blocks' chunks
  # dispatched before either is checked, then each checked and recomputed.
  dispatched = [sweep.run_chunk(runs.state, tasks, runs.weights, steps=3, loss="bce")
                for _ in range(2)]
  out += [sweep.check_chunk(runs.state, tasks, runs.weights, new, terms, steps=3,
                            loss="bce", bulk_fraction=bulk)
          for (new, terms), bulk in zip(dispatched, (1.0, 0.25))]
  ref, _ = sweep.run_chunk(runs.state, tasks, runs.weights, steps=3, loss="bce", exact=True)
  jax.clear_caches()
  for new, terms, fb in out:
    assert fb.all() and not np.asarray(terms.eig_ok).any()
    np.testing.assert_allclose(np.asarray(new.params.theta), np.asarray(ref.params.theta),
                               rtol=1e-11, atol=1e-13)

"""Tests for immujax/immunize.py, baselines.py and sweep.py: Alg. 1 steps in closed form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import immujax as ij
from immujax import baselines
from immujax import immunize as im
from immujax import sweep
from tests.helpers import random_psd


def _task(seed=0, n=40, d=5, rank_h=None):
  rng = np.random.default_rng(seed)
  x_p, x_h = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  if rank_h is not None:
    x_h[:, rank_h:] = x_h[:, :1]  # duplicate columns: K_H singular
  return im.make_task(x_p, rng.normal(size=n), x_h, rng.normal(size=n)), (x_p, x_h)


def _one_step(task, weights, params, eta=0.01, loss="mse"):
  state = im.init_state(params, eta)
  new, _ = im.run_steps(state, task, weights, steps=1, loss=loss)
  return new.params


def _close(a, b, rtol=1e-9):
  np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(np.asarray(b)).max())


def test_paper_mode_step_equals_algorithm_1_closed_form():
  task, (x_p, _) = _task()
  params = im.init_params(jax.random.key(0), 5)
  lam_p, lam_h, eta = 0.3, 7.0, 0.01
  w = im.method_weights("ours", r_well=lam_p, r_ill=lam_h)
  new = _one_step(task, w, params, eta)
  theta, omega = params
  g_theta, g_omega = jax.grad(im.supervised_loss, (0, 1))(theta, omega, task, "mse")
  # Alg. 1 line 6 with explicit inverses of the (full-rank) covariances.
  grad_well = jax.grad(lambda t: ij.r_well(ij.hessian(t, task.k_p)))(theta)
  grad_ill = jax.grad(lambda t: ij.r_ill(ij.hessian(t, task.k_h)))(theta)
  theta1 = (theta - eta * g_theta - eta * lam_p * np.linalg.solve(task.k_p, grad_well)
            - eta * lam_h * np.linalg.solve(task.k_h, grad_ill))
  _close(new.theta, theta1)
  _close(new.omega, omega - eta * g_omega)  # line 4: ω uses the same (ω_t, θ_t)


def test_paper_mode_works_for_singular_k_without_inverse():
  task, _ = _task(rank_h=3)
  assert int(ij.numerical_rank(task.k_h)) == 3
  params = im.init_params(jax.random.key(1), 5)
  w = im.method_weights("ours", r_well=0.0, r_ill=5.0, supervised=0.0)
  new = _one_step(task, w, params, 0.01)
  # Closed form 2θ∇_S R_ill: the step keeps H_H's eigenvectors and raises κ (Thm 4.3(2)).
  g = jax.grad(ij.r_ill)(ij.hessian(params.theta, task.k_h))
  _close(new.theta, params.theta - 0.01 * 5.0 * 2 * params.theta @ g)
  assert (float(ij.condition_number(ij.hessian(new.theta, task.k_h)))
          > float(ij.condition_number(ij.hessian(params.theta, task.k_h))))


def test_baselines_use_plain_gradients():
  task, _ = _task(2)
  params = im.init_params(jax.random.key(2), 5)
  theta, omega = params
  eta = 0.01
  g_sup = jax.grad(im.supervised_loss)(theta, omega, task, "mse")
  # R_ill Only: GD on L + λ R_ill(H_H) through the installed custom VJP.
  w = im.method_weights("r_ill_only", r_ill=3.0)
  g = jax.grad(lambda t: 3.0 * ij.r_ill(ij.hessian(t, task.k_h)))(theta)
  _close(_one_step(task, w, params, eta).theta, theta - eta * (g_sup + g))
  # The three Opt κ forms: GD on L + their objective, through the installed custom rules.
  hp, hh = (lambda t: ij.hessian(t, task.k_p)), (lambda t: ij.hessian(t, task.k_h))
  for method, terms, objective in (
      ("opt_kappa", dict(log_kappa_p=0.5, inv_log_kappa_h=0.2),   # the authors' ImmuLoss
       lambda t: 0.5 * ij.log_condition_number(hp(t))
       + 0.2 * baselines.inverse_log_condition_number(hh(t))),
      ("opt_kappa_log", dict(log_kappa_p=0.5, log_kappa_h=0.2),
       lambda t: 0.5 * ij.log_condition_number(hp(t))
       - 0.2 * ij.log_condition_number(hh(t))),
      ("opt_kappa_loglog", dict(log_log_kappa_p=0.5, inv_log_log_kappa_h=0.2),
       lambda t: 0.5 * baselines.log_log_condition_number(hp(t))
       + 0.2 * baselines.inverse_log_log_condition_number(hh(t)))):
    w = im.method_weights(method, **terms)
    _close(_one_step(task, w, params, eta).theta,
           theta - eta * (g_sup + jax.grad(objective)(theta)))


def test_imma_inner_attacker_matches_feature_space_unrolling():
  task, (_, x_h) = _task(3)
  rng = np.random.default_rng(3)
  theta = jnp.asarray(rng.normal(size=(5, 5)))
  # Reference: unroll GD with exact line search on the features directly.
  y = rng.normal(size=x_h.shape[0])
  def reference(t):
    phi = x_h @ t
    w = jnp.zeros(5)
    for _ in range(4):
      g = 2 * phi.T @ (phi @ w - y)
      w = w - (g @ g) / (2 * jnp.sum((phi @ g) ** 2)) * g
    return jnp.mean((phi @ w - y) ** 2)
  stats = (x_h.T @ x_h, x_h.T @ y, y @ y, float(x_h.shape[0]))
  ours = lambda t: baselines.imma_harmful_loss(t, *stats, steps=4)
  _close(ours(theta), reference(theta))
  g = jax.grad(ours)(theta)
  assert float(jnp.linalg.norm(g)) > 0  # differentiated through the inner loop
  _close(g, jax.grad(reference)(theta), rtol=1e-7)


def test_sweep_all_methods_jit_vmap_finite_and_compiles_once():
  tasks = jax.tree.map(lambda *a: jnp.stack(a), _task(4)[0], _task(5)[0])
  runs = sweep.init_runs(jax.random.key(0), tasks, im.METHODS, 2, learning_rate=0.01,
                         step_scale=0.2)
  n = 2 * len(im.METHODS)   # all 7 methods × 2 seeds, one vmapped program
  assert runs.state.params.theta.shape == (2, n, 5, 5)
  assert runs.state.harmful_head.shape == (2, n, 5)
  before = sweep.run_chunk._cache_size()
  state, terms = sweep.run_chunk(runs.state, tasks, runs.weights, steps=3)
  state, terms = sweep.run_chunk(state, tasks, runs.weights, steps=3)
  assert sweep.run_chunk._cache_size() == before + 1
  assert np.all(np.isfinite(state.params.theta)) and np.all(np.isfinite(terms.supervised))
  ev = sweep.evaluate(state, tasks)
  assert ev.rir.shape == (2, n) and np.all(ev.finite)
  # One task at a time (bounded memory) is the same evaluation.
  one = sweep.evaluate(state, tasks, task_batch=1)
  for a, b in zip(one, ev):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)
  with pytest.raises(ValueError, match="task_batch"):
    sweep.evaluate(state, tasks, task_batch=0)
  # Only IMMA's runs move their harmful head; every method moved θ away from θ0.
  imma = np.array([m == "imma" for m, _ in sweep.run_index(im.METHODS, 2)])
  heads = np.abs(np.asarray(state.harmful_head)).max(-1)
  assert np.all(heads[:, imma] > 0) and np.all(heads[:, ~imma] == 0)
  moved = np.abs(np.asarray(state.params.theta - runs.state.params.theta)).max((-2, -1))
  assert np.all(moved > 0)
  # Same seed ⇒ same θ0 for every method (common random numbers).
  _close(runs.state.params.theta[0, 0], runs.state.params.theta[0, 2])


def test_pooled_tasks_match_per_task_copies_padded_and_sharded():
  # Two tasks drawing supervised rows from ONE shared pool behave exactly like the same
  # tasks holding their own copies; the pool is neither padded nor split over devices.
  rng = np.random.default_rng(8)
  pool = rng.normal(size=(30, 4))
  rows = np.stack([rng.choice(30, 12, replace=False) for _ in range(2)])
  copies = [im.make_task(pool[r], rng.normal(size=12), rng.normal(size=(20, 4)),
                         rng.normal(size=20)) for r in rows]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *copies)
  pooled = stacked._replace(x_p=jnp.asarray(pool), rows=jnp.asarray(rows))
  assert sweep.task_axes(pooled).x_p is None and sweep.task_axes(stacked).x_p == 0
  finals = []
  for tasks in (stacked, pooled):
    runs = sweep.init_runs(jax.random.key(2), tasks, ("ours", "imma"), 1, learning_rate=0.01,
                           step_scale=0.2)
    state, _ = sweep.run_chunk(runs.state, tasks, runs.weights, steps=3, loss="bce")
    finals.append(state.params.theta)
    ev = sweep.evaluate(state, tasks, loss="bce")
  _close(finals[1], finals[0], rtol=1e-10)
  # Memory-bounded chunks (lax.map over task groups, shard_map over a mesh) are the same
  # computation as vmapping every task at once.
  mesh = sweep.device_mesh(jax.devices()[:1])
  state, _ = sweep.run_chunk(runs.state, pooled, runs.weights, steps=3, loss="bce",
                             task_batch=1, mesh=mesh)
  _close(state.params.theta, finals[1], rtol=1e-10)
  with pytest.raises(ValueError, match="task_batch"):
    sweep.run_chunk(runs.state, pooled, runs.weights, steps=3, task_batch=0)
  padded = sweep.pad_tasks(pooled, 3)
  assert padded.x_p.shape == (30, 4) and padded.rows.shape == (3, 12)
  assert padded.k_p.shape == (3, 4, 4)
  assert sweep.slice_tasks(padded, 1, 2).rows.shape == (1, 12)
  assert sweep.shard_tasks(pooled, mesh).x_p.sharding.is_fully_replicated
  assert ev.rir.shape == (2, 2)


def test_ours_raises_rir_on_a_toy_problem():
  # D_P and D_H stretch opposite input directions: immunization is possible (Prop. 3.2).
  rng = np.random.default_rng(6)
  scale = np.array([10, 5, 2, 1, 0.5, 0.2])
  x_p, x_h = rng.normal(size=(60, 6)) * scale, rng.normal(size=(60, 6)) * scale[::-1]
  task = im.make_task(x_p, rng.normal(size=60), x_h, rng.normal(size=60))
  tasks = jax.tree.map(lambda a: a[None], task)
  runs = sweep.init_runs(jax.random.key(1), tasks, ("ours",), 1, learning_rate=0.01,
                         step_scale=0.2)
  state, _ = sweep.run_chunk(runs.state, tasks, runs.weights, steps=200)
  ev = sweep.evaluate(state, tasks)
  assert float(ev.ratio_h[0, 0]) > 10 and float(ev.ratio_p[0, 0]) < 0.1
  assert float(ev.rir[0, 0]) > 1e3


def test_orthogonal_init_is_kappa_neutral():
  task, _ = _task(7)
  params = im.init_params(jax.random.key(3), 5)
  assert float(ij.relative_immunization_ratio(params.theta, k_p=task.k_p, k_h=task.k_h).rir) == \
      pytest.approx(1.0, abs=1e-10)


def test_bad_inputs():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="x_h"):
    im.make_task(rng.normal(size=(5, 3)), np.zeros(5), rng.normal(size=(5, 4)), np.zeros(5))
  with pytest.raises(ValueError, match="targets"):
    im.make_task(rng.normal(size=(5, 3)), np.zeros(4), rng.normal(size=(5, 3)), np.zeros(5))
  with pytest.raises(ValueError, match="method"):
    im.method_weights("nope")
  with pytest.raises(ValueError, match="init"):
    im.init_params(jax.random.key(0), 3, init="nope")


def test_roots_and_preconditioned_only_give_the_same_runs():
  # The r×r-Gram path (Task.root_*) and the static preconditioned_only shortcut are exact
  # rewrites: the same trajectories and the same RIR as the plain D×D path.
  from immujax import spectral
  rng = np.random.default_rng(9)
  x_p, x_h = rng.normal(size=(5, 7)), rng.normal(size=(4, 7))  # rank 5 and 4 of 7
  task = im.make_task(x_p, rng.normal(size=5), x_h, rng.normal(size=4))
  rooted = task._replace(root_p=spectral.covariance_root(task.k_p, rows=5),
                         root_h=spectral.covariance_root(task.k_h, rows=5))
  out = {}
  for name, t, pre_only in (("full", task, False), ("roots", rooted, False),
                            ("roots_pre", rooted, True)):
    tasks = jax.tree.map(lambda a: a[None], t)
    runs = sweep.init_runs(jax.random.key(4), tasks, ("ours",), 2, learning_rate=0.01,
                           step_scale=0.2)
    state, _ = sweep.run_chunk(runs.state, tasks, runs.weights, steps=5,
                               preconditioned_only=pre_only)
    out[name] = (state.params.theta, sweep.evaluate(state, tasks).rir)
  for name in ("roots", "roots_pre"):
    _close(out[name][0], out["full"][0], rtol=1e-8)
    _close(out[name][1], out["full"][1], rtol=1e-6)
  assert np.all(out["full"][1] > 1)  # the runs did move κ: the comparison is not vacuous


@pytest.mark.parametrize("precondition_baselines", [False, True])
@pytest.mark.parametrize("roots", [False, True])
def test_each_methods_factored_direction_equals_the_dense_one(roots, precondition_baselines):
  # sweep.method_statics promises each method's block its own spectral terms only; the
  # factored direction (rank-one terms through Kθv, R_ill's S term through Rᵀ(BBᵀ)B, the
  # unused terms not formed) is an exact rewrite of the dense Σ M_X G_X.
  from immujax import spectral
  rng = np.random.default_rng(21)
  x_p, x_h = rng.normal(size=(9, 7)), rng.normal(size=(6, 7)) * np.linspace(2, 0.5, 7)
  task = im.make_task(x_p, rng.normal(size=9), x_h, rng.normal(size=6))
  if roots:
    task = task._replace(root_p=spectral.covariance_root(task.k_p, rows=7),
                         root_h=spectral.covariance_root(task.k_h, rows=7))
  params = im.init_params(jax.random.key(3), 7)
  # Two plain gradient steps first, so that no term vanishes at an orthogonal θ.
  params = params._replace(theta=params.theta @ (np.eye(7) + 0.3 * rng.normal(size=(7, 7))))
  bal = im.balanced_weights(params, task, learning_rate=0.01, step_scale=0.2, imma_steps=2)
  checked = set()
  for m in im.METHODS:
    w = im.balanced_method_weights(m, bal, precondition_baselines=precondition_baselines)
    st = sweep.method_statics(m, imma_steps=2, precondition_baselines=precondition_baselines)
    head = (im.adapt_harmful_head(params.theta, jnp.zeros(7), task, w, steps=1)
            if m == "imma" else None)
    kw = dict(preconditioned_only=st["preconditioned_only"], imma_steps=st["imma_steps"],
              harmful_head=head)
    dense, terms, _ = im.direction(params, task, w, **kw)
    factored, terms_f, _ = im.direction(params, task, w, spectral_terms=st["spectral_terms"],
                                        **kw)
    _close(factored.theta, dense.theta, rtol=1e-10)
    _close(factored.omega, dense.omega, rtol=1e-12)
    for a, b in zip(terms_f, terms):
      np.testing.assert_array_equal(a, b)   # the values are the same computation
    checked.add(m)
    if m in ("r_ill_only", "opt_kappa"):
      # Not vacuous: the spectral part of the direction is large.
      sup = im.direction(params, task, w._replace(
          **{t: 0.0 * getattr(w, t) for t in im.SPECTRAL_TERMS}), **kw)[0].theta
      assert np.linalg.norm(dense.theta - sup) > 1e-3 * np.linalg.norm(dense.theta)
  assert checked == set(im.METHODS)
  assert sweep.method_statics("opt_kappa", imma_steps=0)["spectral_terms"] == (
      "log_kappa_p", "inv_log_kappa_h")
  assert sweep.method_statics("imma", imma_steps=0)["spectral_terms"] == ()

"""Tests for immujax/baselines.py: Opt κ's forms of log κ and IMMA's bi-level alternation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import immujax as ij
from immujax import baselines
from immujax import checkpoint
from immujax import immunize as im
from immujax import spectral
from immujax import sweep
from tests.helpers import fd_gradient, fd_symmetric_gradient, random_psd

# name -> (custom-rule function, value-and-grad from extremes, φ as a function of ℓ = log κ)
FORMS = {
    "inverse_log": (baselines.inverse_log_condition_number,
                    baselines.inverse_log_kappa_value_and_grad, lambda l: 1.0 / l),
    "log_log": (baselines.log_log_condition_number,
                baselines.log_log_kappa_value_and_grad, jnp.log),
    "inverse_log_log": (baselines.inverse_log_log_condition_number,
                        baselines.inverse_log_log_kappa_value_and_grad,
                        lambda l: 1.0 / jnp.log(l)),
}


def _close(a, b, rtol=1e-7):
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


def _autodiff(phi):
  """φ(log κ(S)) differentiated by plain JAX autodiff through ``eigvalsh`` (the reference)."""
  def f(s):
    sig = jnp.abs(jnp.linalg.eigvalsh(s))
    rtol = spectral.default_rtol(s.shape, s.dtype)
    nonzero = jax.lax.stop_gradient(sig > rtol * jnp.max(sig))
    return phi(jnp.log(jnp.max(sig)) - jnp.log(jnp.min(jnp.where(nonzero, sig, jnp.inf))))
  return f


@pytest.mark.parametrize("name", list(FORMS))
def test_full_rank_gradient_custom_vs_autodiff_vs_fd(name):
  f, value_and_grad, phi = FORMS[name]
  s = random_psd(np.random.default_rng(0), 6, spread=50.0)
  assert float(ij.log_condition_number(s)) > 1.0   # inside every form's domain (κ > e)
  g = jax.grad(f)(s)
  _close(f(s), _autodiff(phi)(s), rtol=1e-12)
  _close(g, jax.grad(_autodiff(phi))(s))
  _close(g, fd_symmetric_gradient(f, s))
  # The installed rule is φ'(log κ)·(v_1v_1ᵀ/σ_1 − v_kv_kᵀ/σ_k), as the training step uses it.
  vg = value_and_grad(s, ij.extremes(s))
  _close(vg.value, f(s), rtol=1e-14)
  _close(vg.grad, g, rtol=1e-14)


@pytest.mark.parametrize("name", list(FORMS))
def test_rank_deficient_gradient_via_theta_custom_vs_autodiff_vs_fd(name):
  # K singular (rank 5 of 8): H(θ) = θᵀKθ keeps rank 5 for invertible θ, so φ(log κ(H(θ)))
  # is smooth in θ and finite differences in θ are meaningful (as for R_ill, R_well).
  f, _, phi = FORMS[name]
  rng = np.random.default_rng(1)
  k = random_psd(rng, 8, 5, spread=50.0)
  theta = np.eye(8) + 0.3 * rng.normal(size=(8, 8))
  obj = lambda t: f(ij.hessian(t, k))
  g = np.asarray(jax.grad(obj)(theta))
  assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
  _close(g, jax.grad(lambda t: _autodiff(phi)(ij.hessian(t, k)))(theta))
  _close(g, fd_gradient(obj, theta, h=1e-5))
  # Thm 4.2's chain rule holds for every form: ∇_θ φ(H(θ)) = 2KθG with G = ∇_S φ.
  _close(g, ij.theta_gradient(theta, k, jax.grad(f)(ij.hessian(theta, k))))


def test_singular_points_are_guarded_without_nan():
  # κ = 1 (all non-zero σ equal): 1/log κ = +inf, log log κ = −inf, gradient 0 — no NaN,
  # also inside jit and vmap where both where-branches are evaluated.
  s = np.diag([2.0, 2.0, 0.0])
  for name, (f, _, _) in FORMS.items():
    v = float(f(s))
    assert np.isinf(v), name
    g = jax.jit(jax.vmap(jax.grad(f)))(np.stack([s, s]))
    assert np.all(g == 0), name
  # 1 < κ ≤ e: log log κ ≤ 0, outside the double-log harmful form's domain.
  s = np.diag([2.0, 1.0, 0.0])
  assert np.isinf(float(baselines.inverse_log_log_condition_number(s)))
  assert np.all(jax.grad(baselines.inverse_log_log_condition_number)(s) == 0)
  assert np.isfinite(float(baselines.inverse_log_condition_number(s)))
  # The scalar forms themselves at ℓ = 0.
  for form in (baselines.inverse_log_form, baselines.log_log_form,
               baselines.inverse_log_log_form):
    f = form(jnp.asarray(0.0))
    assert np.isinf(float(f.value)) and float(f.slope) == 0.0


def test_opt_kappa_forms_take_the_same_first_step():
  # Balanced at θ0 to equal gradient norms, every Opt κ form is a scalar on ∇log κ: the
  # three variants start in the same direction and differ only as κ moves.
  rng = np.random.default_rng(2)
  x_p, x_h = rng.normal(size=(30, 5)) * [5, 2, 1, 1, .5], rng.normal(size=(30, 5))
  task = im.make_task(x_p, rng.normal(size=30), x_h, rng.normal(size=30))
  params = im.init_params(jax.random.key(0), 5)
  bal = im.balanced_weights(params, task, learning_rate=0.01, step_scale=0.2)
  dirs = [im.direction(params, task, im.balanced_method_weights(m, bal), imma_steps=0)[0].theta
          for m in ("opt_kappa", "opt_kappa_log", "opt_kappa_loglog")]
  for d in dirs[1:]:
    _close(d, dirs[0], rtol=1e-12)


def _imma_task(seed=3, n=40, d=5):
  rng = np.random.default_rng(seed)
  x_p, x_h = rng.normal(size=(n, d)), rng.normal(size=(n, d)) * np.linspace(3, 0.3, d)
  return im.make_task(x_p, rng.normal(size=n), x_h, x_h @ rng.normal(size=d)
                      + 0.1 * rng.normal(size=n)), x_h


def test_imma_inner_step_is_the_attackers_line_search_and_lowers_the_harmful_loss():
  task, x_h = _imma_task()
  theta = jnp.asarray(np.random.default_rng(4).normal(size=(5, 5)))
  stats = (task.q_h, task.b_h, task.c_h, task.n_h)
  loss = lambda w: float(baselines.harmful_loss(theta, w, *stats))
  w = jnp.zeros(5)
  losses = [loss(w)]
  for _ in range(4):
    w_next = baselines.imma_inner(theta, w, task.q_h, task.b_h, steps=1)
    # GD with exact line search on the harmful features Φ = X_Hθ: the loss-minimising α.
    phi = x_h @ theta
    g = 2 * phi.T @ (phi @ w) - 2 * theta.T @ task.b_h
    alpha = (g @ g) / (2 * np.sum((phi @ g) ** 2))
    _close(w_next, w - alpha * g, rtol=1e-10)
    w = w_next
    losses.append(loss(w))
  assert all(b < a for a, b in zip(losses, losses[1:]))   # strictly lower every step
  # Two inner steps from w are one step from the one-step head (warm start composes).
  _close(baselines.imma_inner(theta, jnp.zeros(5), task.q_h, task.b_h, steps=2),
         baselines.imma_inner(theta, baselines.imma_inner(theta, jnp.zeros(5), task.q_h,
                                                          task.b_h, steps=1),
                              task.q_h, task.b_h, steps=1), rtol=1e-13)


def test_imma_alternation_warm_starts_the_head_and_takes_a_first_order_outer_step():
  task, _ = _imma_task()
  params = im.init_params(jax.random.key(5), 5)
  lam, eta = 0.7, 0.01
  w = im.method_weights("imma", imma=lam)
  state = im.init_state(params, eta)
  assert state.harmful_head.shape == (5,) and not np.any(state.harmful_head)
  s1, terms = im.run_steps(state, task, w, steps=1, imma_steps=0)
  # Step 1: inner step from w = 0 at θ0, then GD on L_P − λ L_H(θ, w_1) with w_1 fixed.
  theta, omega = params
  w1 = baselines.imma_inner(theta, jnp.zeros(5), task.q_h, task.b_h, steps=1)
  _close(s1.harmful_head, w1, rtol=1e-13)
  g_sup, g_omega = jax.grad(im.supervised_loss, (0, 1))(theta, omega, task, "mse")
  g_h = jax.grad(baselines.harmful_loss)(theta, w1, task.q_h, task.b_h, task.c_h, task.n_h)
  _close(s1.params.theta, theta - eta * (g_sup - lam * g_h), rtol=1e-12)
  _close(s1.params.omega, omega - eta * g_omega, rtol=1e-12)
  _close(terms.imma[0], baselines.harmful_loss(theta, w1, task.q_h, task.b_h, task.c_h,
                                               task.n_h), rtol=1e-13)
  # Step 2 starts from w_1 (warm), not from 0.
  s2, _ = im.run_steps(s1, task, w, steps=1, imma_steps=0)
  w2 = baselines.imma_inner(s1.params.theta, w1, task.q_h, task.b_h, steps=1)
  _close(s2.harmful_head, w2, rtol=1e-13)
  cold = baselines.imma_inner(s1.params.theta, jnp.zeros(5), task.q_h, task.b_h, steps=1)
  assert np.abs(np.asarray(w2 - cold)).max() > 1e-6 * np.abs(np.asarray(w2)).max()
  # Chunks compose: 1 + 1 steps equal 2 steps in one chunk, bit for bit.
  s2_once, _ = im.run_steps(state, task, w, steps=2, imma_steps=0)
  np.testing.assert_array_equal(s2_once.harmful_head, s2.harmful_head)
  np.testing.assert_array_equal(s2_once.params.theta, s2.params.theta)
  # A batch without IMMA (imma_inner_steps = 0) leaves the head alone.
  s_off, _ = im.run_steps(state, task, w, steps=1, imma_inner_steps=0, imma_steps=0)
  assert not np.any(s_off.harmful_head)


def test_method_statics_skip_what_a_method_does_not_need():
  st = {m: sweep.method_statics(m, imma_steps=5) for m in im.METHODS}
  assert st["imma"]["imma_inner_steps"] == im.IMMA_INNER_STEPS == 1
  assert st["imma"]["imma_steps"] == 0
  assert st["imma_unrolled"] == dict(imma_steps=5, imma_inner_steps=0,
                                     preconditioned_only=True, exact=False, spectral_terms=())
  for m in ("ours", "r_ill_only", "opt_kappa", "opt_kappa_log", "opt_kappa_loglog"):
    assert st[m]["imma_steps"] == st[m]["imma_inner_steps"] == 0
  for m in ("opt_kappa", "opt_kappa_log", "opt_kappa_loglog", "r_ill_only"):
    assert not st[m]["preconditioned_only"]   # plain gradients for the baselines
  tasks = jax.tree.map(lambda a: a[None], _imma_task()[0])
  with pytest.raises(ValueError, match="imma_steps"):
    sweep.init_runs(jax.random.key(0), tasks, ("imma_unrolled",), 1, learning_rate=0.01,
                    step_scale=0.2, imma_steps=0)
  with pytest.raises(ValueError, match="imma_inner_steps"):
    sweep.init_runs(jax.random.key(0), tasks, ("imma",), 1, learning_rate=0.01,
                    step_scale=0.2, imma_inner_steps=0)


def test_checkpoint_round_trip_with_harmful_head_resumes_bit_identically(tmp_path):
  # Per-method blocks with their own statics, as the binaries step them; the IMMA block's
  # head survives a save/restore and the resumed run equals the uninterrupted one exactly.
  task, _ = _imma_task()
  tasks = jax.tree.map(lambda a: a[None], task)
  methods = ("ours", "imma")
  runs = sweep.init_runs(jax.random.key(6), tasks, methods, 1, learning_rate=0.01,
                         step_scale=0.2)
  blocks = sweep.split_by_method(runs.state, methods, 1)
  weights = sweep.split_by_method(runs.weights, methods, 1)
  statics = [sweep.method_statics(m, imma_steps=5) for m in methods]

  def chunk(blocks):
    return tuple(sweep.run_chunk(b, tasks, w, steps=2, **f)[0]
                 for b, w, f in zip(blocks, weights, statics))

  straight = chunk(chunk(blocks))
  checkpoint.Checkpointer(tmp_path / "ckpt").save(2, chunk(blocks), metadata={"step": 2})
  # A new Checkpointer, as a resumed process has.
  restored = checkpoint.Checkpointer(tmp_path / "ckpt").restore(2, like=blocks)
  assert np.any(np.asarray(restored[1].harmful_head))   # IMMA's head is in the checkpoint
  resumed = chunk(restored)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
    np.testing.assert_array_equal(a, b)

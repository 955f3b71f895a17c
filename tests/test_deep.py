"""Tests for immujax/deep.py: the methods, float64 regularizers, RIR_θ0, IMMA, resume."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from immujax import checkpoint
from immujax import deep
from immujax import metrics
from immujax import models
from immujax import regularizers
from immujax import training

N, B, S = 24, 8, 2   # examples per task, batch size, seeds


@functools.lru_cache(maxsize=None)
def _setup():
  model = models.small_resnet(num_classes=3, stage_sizes=(1, 1), num_filters=4)
  variables = models.init(model, jax.random.key(0), (1, 8, 8, 1))
  trainable, frozen = deep.split_variables(model, variables)
  rng = np.random.default_rng(0)
  data = deep.TaskData(
      jnp.asarray(rng.normal(size=(N, 8, 8, 1)), jnp.float32), jnp.asarray(rng.integers(0, 3, N)),
      jnp.asarray(rng.normal(size=(N, 8, 8, 1)) + 1.0, jnp.float32),
      jnp.asarray(rng.integers(0, 2, N)))
  return model, trainable, frozen, data


def _hparams():
  return deep.make_hparams(lr=1e-2, lambda_p=1e-3, lambda_h=1e-1, lambda_kappa=0.1,
                           lambda_imma=0.5, inner_lr=0.5, num_seeds=S)


@functools.lru_cache(maxsize=None)
def _chunk(method, steps, batch_size=B):
  model, *_ = _setup()
  spec = deep.Spec(model, method, num_harmful_classes=2, inner_steps=2)
  return spec, deep.make_chunk(deep.make_train_step(spec), batch_size=batch_size,
                               chunk_steps=steps)


@pytest.mark.parametrize("method", deep.METHODS)
def test_each_method_jit_vmap_two_seeds(method):
  _, trainable, frozen, data = _setup()
  spec, chunk = _chunk(method, 2)
  keys = jax.random.split(jax.random.key(1), S)
  state = deep.init_state(spec, trainable, num_seeds=S)
  new, m = chunk(state, 0, keys, _hparams(), frozen, data)
  assert m["loss"].shape == (S, 2)
  assert np.all(np.isfinite(np.asarray(m["loss"])))
  for leaf in jax.tree.leaves(new.params):
    assert leaf.shape[0] == S and np.all(np.isfinite(np.asarray(leaf)))
  # Parameters moved and the trunk/BN statistics were not touched (they are not in the state).
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new.params, state.params)
  assert max(jax.tree.leaves(moved)) > 0
  # Seeds draw different minibatches, so the seeds' parameters differ.
  p0, p1 = (jax.tree.map(lambda a, s=s: a[s], new.params) for s in range(S))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)))


def test_ours_loss_decreases_full_batch():
  _, trainable, frozen, data = _setup()
  spec, chunk = _chunk("ours", 6, N)  # batch = the whole set: same minibatch every step
  keys = jax.random.split(jax.random.key(1), S)
  hp = deep.make_hparams(lr=1e-2, lambda_p=1e-4, lambda_h=1e-1, num_seeds=S)
  _, m = chunk(deep.init_state(spec, trainable, num_seeds=S), 0, keys, hp, frozen, data)
  loss = np.asarray(m["loss"])
  assert np.all(loss[:, -1] < loss[:, 0]), loss


def test_regularizers_in_float64_with_float32_features():
  model, trainable, frozen, data = _setup()
  batch_p, batch_h = (data.x_p[:B], data.y_p[:B]), (data.x_h[:B], data.y_h[:B])
  phi_p, _ = deep.forward(model, trainable, frozen, batch_p[0])
  phi_h, _ = deep.forward(model, trainable, frozen, batch_h[0])
  assert phi_p.dtype == jnp.float32
  spec = deep.Spec(model, "ours")
  hp = deep.make_hparams(lr=1e-2, lambda_p=1.0, lambda_h=1.0)
  _, aux = deep.objective(spec, trainable, frozen, batch_p, batch_h, hp)
  assert aux["r_well"].dtype == jnp.float64 and aux["r_ill"].dtype == jnp.float64
  s_p = np.asarray(phi_p, np.float64).T @ np.asarray(phi_p, np.float64)
  s_h = np.asarray(phi_h, np.float64).T @ np.asarray(phi_h, np.float64)
  assert deep.gram64(phi_p).dtype == jnp.float64
  np.testing.assert_allclose(aux["r_well"], regularizers.r_well(s_p), rtol=1e-12)
  np.testing.assert_allclose(aux["r_ill"], regularizers.r_ill(s_h), rtol=1e-10)
  # A float32 Gram would not agree this closely (it is what float64 buys).
  s32 = np.asarray(phi_h).T @ np.asarray(phi_h)
  assert s32.dtype == np.float32


def test_opt_kappa_is_the_authors_kappa_loss_and_opt_kappa_log_the_log_form():
  from immujax import baselines, spectral
  model, trainable, frozen, data = _setup()
  batch_p, batch_h = (data.x_p[:B], data.y_p[:B]), (data.x_h[:B], data.y_h[:B])
  s_p, s_h = (deep.gram64(deep.forward(model, trainable, frozen, x)[0])
              for x in (batch_p[0], batch_h[0]))
  lk_p, lk_h = spectral.log_condition_number(s_p), spectral.log_condition_number(s_h)
  hp = deep.make_hparams(lr=1e-2, lambda_kappa=0.3)
  for method, reg in (("opt_kappa", lk_p + baselines.inverse_log_condition_number(s_h)),
                      ("opt_kappa_log", lk_p - lk_h)):
    loss, aux = deep.objective(deep.Spec(model, method), trainable, frozen, batch_p, batch_h,
                               hp)
    np.testing.assert_allclose(loss, aux["ce_p"] + 0.3 * reg, rtol=1e-12)
  np.testing.assert_allclose(baselines.inverse_log_condition_number(s_h), 1 / lk_h,
                             rtol=1e-12)


def test_rir_theta0_identity_is_exactly_one():
  rng = np.random.default_rng(0)
  phi_p, phi_h = rng.normal(size=(60, 12)), rng.exponential(size=(50, 12))
  r = deep.rir_theta0(phi_p, phi_h, phi_p, phi_h, jax.random.key(0), n_groups=4,
                      group_size=10)
  assert np.all(r.rir == 1.0) and np.all(r.ratio_h == 1.0) and np.all(r.ratio_p == 1.0)
  assert r.mean == {"ratio_h": 1.0, "ratio_p": 1.0, "rir": 1.0}
  assert r.std["rir"] == 0.0


def test_rir_theta0_is_the_mean_of_per_group_ratios():
  rng = np.random.default_rng(1)
  phi_p0, phi_h0 = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
  phi_p = phi_p0 @ np.diag([1, 1, 1, 1, 1, 0.3])
  phi_h = phi_h0 @ rng.normal(size=(6, 6))
  key = jax.random.key(3)
  r = deep.rir_theta0(phi_p, phi_h, phi_p0, phi_h0, key, n_groups=5, group_size=8)
  kp, kh = jax.random.split(key)
  ip = np.asarray(deep.group_indices(kp, n_groups=5, group_size=8, n=40))
  ih = np.asarray(deep.group_indices(kh, n_groups=5, group_size=8, n=40))
  per = [metrics.rir_from_features(phi_p=phi_p[a], phi_h=phi_h[b], phi_p_ref=phi_p0[a],
                                   phi_h_ref=phi_h0[b])
         for a, b in zip(ip, ih)]
  expected = np.array([float(x.rir) for x in per])
  np.testing.assert_allclose(r.rir, expected, rtol=1e-12)
  np.testing.assert_allclose(r.mean["rir"], expected.mean(), rtol=1e-12)
  ratio_of_means = (np.mean([float(x.ratio_h) for x in per])
                    / np.mean([float(x.ratio_p) for x in per]))
  assert not np.isclose(r.mean["rir"], ratio_of_means, rtol=1e-6)
  assert all(len(set(g)) == 8 for g in ip)  # no repeats within a group


def test_imma_inner_loop_is_differentiated():
  rng = np.random.default_rng(2)
  phi = jnp.asarray(rng.normal(size=(16, 5)))
  y = jnp.asarray(rng.integers(0, 3, 16))

  def after(p):
    return deep.unrolled_probe(p, y, num_classes=3, steps=3, lr=jnp.asarray(0.5))[0]

  def before(p):
    return deep.unrolled_probe(p, y, num_classes=3, steps=3, lr=jnp.asarray(0.5))[1]

  # At w = 0 the loss is log C whatever Φ is: any gradient comes through the inner steps.
  assert float(jnp.max(jnp.abs(jax.grad(before)(phi)))) == 0.0
  np.testing.assert_allclose(before(phi), np.log(3), rtol=1e-12)
  g = jax.grad(after)(phi)
  assert float(jnp.max(jnp.abs(g))) > 1e-3
  d = jnp.asarray(rng.normal(size=phi.shape))
  h = 1e-6
  fd = (after(phi + h * d) - after(phi - h * d)) / (2 * h)
  np.testing.assert_allclose(jnp.vdot(g, d), fd, rtol=1e-6)
  # ... and it reaches the extractor's parameters through the features.
  model, trainable, frozen, data = _setup()
  spec = deep.Spec(model, "imma", num_harmful_classes=2, inner_steps=2)
  hp = deep.make_hparams(lr=1e-2, lambda_imma=1.0, inner_lr=0.5)
  grad_h = jax.grad(lambda p: deep.objective(spec, p, frozen, (data.x_p[:B], data.y_p[:B]),
                                             (data.x_h[:B], data.y_h[:B]), hp)[1]
                    ["ce_h_adapted"])(trainable)
  norms = [float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(grad_h[models.EXTRACTOR])]
  assert max(norms) > 0 and all(np.isfinite(norms))


def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path):
  _, trainable, frozen, data = _setup()
  spec, chunk = _chunk("ours", 2)
  keys = jax.random.split(jax.random.key(1), S)
  hp = _hparams()
  state0 = deep.init_state(spec, trainable, num_seeds=S)

  def run(directory, total):
    ckpt = checkpoint.Checkpointer(directory)
    final, _ = training.run_chunked(
        lambda st, start: chunk(deep.TrainState(*st), start, keys, hp, frozen, data), state0,
        total_steps=total, chunk_steps=2, checkpointer=ckpt)
    ckpt.close()
    return final

  full = run(tmp_path / "full", 6)
  run(tmp_path / "killed", 2)              # "killed" after the first chunk
  resumed = run(tmp_path / "killed", 6)    # restart: resumes from step 2
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_loop_mode_matches_scan_mode():
  _, trainable, frozen, data = _setup()
  spec, scan_chunk = _chunk("opt_kappa", 2)
  loop_chunk = deep.make_chunk(deep.make_train_step(spec), batch_size=B, chunk_steps=2,
                               mode="loop")
  keys = jax.random.split(jax.random.key(1), S)
  state = deep.init_state(spec, trainable, num_seeds=S)
  a, _ = scan_chunk(state, 0, keys, _hparams(), frozen, data)
  b, _ = loop_chunk(state, 0, keys, _hparams(), frozen, data)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_probe_curve_shapes_and_learning():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 90)
  phi = rng.normal(size=(90, 4)) + 3.0 * np.eye(4)[y]
  c = deep.probe_curve(phi[:60], y[:60], phi[60:], y[60:], jax.random.key(0), num_classes=3,
                       epochs=4, batch_size=10, lr=0.1)
  acc = np.asarray(c.test_accuracy)
  assert acc.shape == (5,) and acc[-1] > 80.0
  assert np.asarray(c.train_loss)[-1] < np.log(3)


def test_bad_inputs_raise():
  model, *_ = _setup()
  with pytest.raises(ValueError, match="method"):
    deep.Spec(model, "nope")
  with pytest.raises(ValueError, match="inner_steps"):
    deep.Spec(model, "imma", num_harmful_classes=2, inner_steps=0)
  with pytest.raises(ValueError, match="lr"):
    deep.make_hparams(lr=-1.0)
  with pytest.raises(ValueError, match="group_size"):
    deep.rir_theta0(np.ones((5, 2)), np.ones((5, 2)), np.ones((5, 2)), np.ones((5, 2)),
                    jax.random.key(0), n_groups=1, group_size=6)


def test_scan_steps_over_prebuilt_batches_matches_chunk():
  """The paper-scale path (batches built on the host) equals the in-memory chunk."""
  _, trainable, frozen, data = _setup()
  spec, chunk = _chunk("ours", 2)
  keys = jax.random.split(jax.random.key(1), S)
  state = deep.init_state(spec, trainable, num_seeds=S)
  idx = {name: np.stack([[np.asarray(deep.batch_indices(
      jax.random.fold_in(k, stream), t, n=N, batch_size=B)) for t in range(2, 4)]
      for k in keys]) for name, stream in (("p", 0), ("h", 1))}
  bp = (np.asarray(data.x_p)[idx["p"]], np.asarray(data.y_p)[idx["p"]])
  bh = (np.asarray(data.x_h)[idx["h"]], np.asarray(data.y_h)[idx["h"]])
  scan_steps = deep.make_scan_steps(deep.make_train_step(spec))
  a, _ = scan_steps(state, 2, keys, _hparams(), frozen, bp, bh)
  b, _ = chunk(state, 2, keys, _hparams(), frozen, data)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)

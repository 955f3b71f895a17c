"""Tests for immujax/deep/finetune.py (full fine-tuning, LoRA) and the RFD of evaluate.py."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from immujax import deep
from immujax import models

N, C = 24, 3   # training examples, harmful classes


@functools.lru_cache(maxsize=None)
def _setup():
  model = models.small_resnet(num_classes=5, stage_sizes=(1, 1), num_filters=4)
  variables = models.init(model, jax.random.key(0), (1, 8, 8, 1))
  trainable, frozen = deep.split_variables(model, variables)
  rng = np.random.default_rng(0)
  y = rng.integers(0, C, N + 12)
  x = rng.normal(size=(N + 12, 8, 8, 1)) + 1.5 * y[:, None, None, None]  # learnable
  x = jnp.asarray(x, jnp.float32)
  return model, trainable, frozen, (x[:N], jnp.asarray(y[:N]), x[N:], jnp.asarray(y[N:]))


def _random_head(d, key=1):
  k1, k2 = jax.random.split(jax.random.key(key))
  return {"kernel": jax.random.normal(k1, (d, C), jnp.float64),
          "bias": jax.random.normal(k2, (C,), jnp.float64)}


def test_lora_with_zero_b_is_the_base_model_exactly():
  model, trainable, frozen, (x, *_) = _setup()
  ext = trainable[models.EXTRACTOR]
  lora = deep.lora_init(ext, jax.random.key(3), rank=2)
  # Every kernel of the stage is adapted, A is random and B is zero.
  kernels = [k for k in jax.tree_util.tree_flatten_with_path(ext)[0]
             if k[0][-1].key == "kernel"]
  assert len(lora) == len(kernels) >= 2
  assert all(float(jnp.max(jnp.abs(f["a"]))) > 0 and not np.any(np.asarray(f["b"]))
             for f in lora.values())
  merged = deep.lora_merge(ext, lora, scale=3.0)
  for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(ext)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  head = _random_head(deep.feature_dim(deep.FinetuneSpec(model, C), ext, frozen, x))
  full = deep.finetune_logits(deep.FinetuneSpec(model, C), {"stage": ext, "head": head}, ext,
                              frozen, x)
  low = deep.finetune_logits(deep.FinetuneSpec(model, C, adapter="lora", rank=2),
                             {"stage": lora, "head": head}, ext, frozen, x)
  np.testing.assert_array_equal(np.asarray(full), np.asarray(low))
  # ... and the logits are those of the base features through the head.
  phi = models.features(model, deep.merge_variables(trainable, frozen), x)
  np.testing.assert_allclose(low, np.asarray(phi, np.float64) @ head["kernel"] + head["bias"],
                             rtol=1e-12)


def test_lora_delta_is_scaled_rank_r_product():
  _, trainable, *_ = _setup()
  ext = trainable[models.EXTRACTOR]
  rank, scale = 2, 0.5
  lora = deep.lora_init(ext, jax.random.key(4), rank=rank)
  rng = np.random.default_rng(5)
  lora = {k: {"a": f["a"], "b": jnp.asarray(rng.normal(size=f["b"].shape), f["b"].dtype)}
          for k, f in lora.items()}
  merged = deep.lora_merge(ext, lora, scale=scale)
  flat_m = {"/".join(k): v for k, v in _flat(merged).items()}
  flat_e = {"/".join(k): v for k, v in _flat(ext).items()}
  for name, f in lora.items():
    delta = np.asarray(flat_m[name], np.float64) - np.asarray(flat_e[name], np.float64)
    m, n = deep.lora_matrix_shape(tuple(name.split("/")), flat_e[name].shape)
    expected = scale * np.asarray(f["a"], np.float64) @ np.asarray(f["b"], np.float64)
    np.testing.assert_allclose(delta.reshape(m, n), expected, atol=1e-5)
    assert np.linalg.matrix_rank(expected) == min(rank, m, n)
  # Non-kernel leaves (BatchNorm scales and offsets) are untouched.
  for name in flat_e:
    if name not in lora:
      np.testing.assert_array_equal(flat_m[name], flat_e[name])


def _flat(tree):
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  return traverse_util.flatten_dict(dict(tree))


def test_lora_matrix_shape():
  assert deep.lora_matrix_shape(("b", "conv1", "kernel"), (3, 3, 8, 16)) == (72, 16)
  assert deep.lora_matrix_shape(("fc", "kernel"), (32, 10)) == (32, 10)
  assert deep.lora_matrix_shape(("attn", "query", "kernel"), (32, 4, 8)) == (32, 32)
  assert deep.lora_matrix_shape(("attn", "out", "kernel"), (4, 8, 32)) == (32, 32)
  with pytest.raises(ValueError, match="ndim"):
    deep.lora_matrix_shape(("bn", "scale"), (8,))


def test_lora_on_attention_kernels_uses_the_input_output_view():
  # A ViT-like stage (no model needed: the adapted output is a function of the merged tree).
  rng = np.random.default_rng(0)
  stage = {"attn": {"query": {"kernel": rng.normal(size=(8, 2, 4)), "bias": np.ones((2, 4))},
                    "out": {"kernel": rng.normal(size=(2, 4, 8))}},
           "mlp": {"kernel": rng.normal(size=(8, 16))}, "norm": {"scale": np.ones(8)}}
  stage = jax.tree.map(jnp.asarray, stage)
  lora = deep.lora_init(stage, jax.random.key(1), rank=3)
  assert sorted(lora) == ["attn/out/kernel", "attn/query/kernel", "mlp/kernel"]
  assert lora["attn/query/kernel"]["a"].shape == (8, 3)      # (D, r): inputs = D
  assert lora["attn/query/kernel"]["b"].shape == (3, 8)      # (r, H·d_h)
  assert lora["attn/out/kernel"]["a"].shape == (8, 3)        # inputs = H·d_h
  for a, b in zip(jax.tree.leaves(deep.lora_merge(stage, lora)), jax.tree.leaves(stage)):
    np.testing.assert_array_equal(a, b)
  f = lora["attn/query/kernel"]
  lora["attn/query/kernel"] = {"a": f["a"], "b": jnp.ones_like(f["b"])}
  merged = deep.lora_merge(stage, lora, scale=2.0)
  delta = merged["attn"]["query"]["kernel"] - stage["attn"]["query"]["kernel"]
  np.testing.assert_allclose(delta, (2.0 * f["a"] @ jnp.ones((3, 8))).reshape(8, 2, 4),
                             rtol=1e-12)
  with pytest.raises(ValueError, match="no kernel"):
    deep.lora_merge({"mlp": {"kernel": stage["mlp"]["kernel"]}}, lora)


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_finetuning_decreases_the_loss_and_moves_only_its_parameters(adapter):
  model, trainable, frozen, (x, y, x_te, y_te) = _setup()
  ext = trainable[models.EXTRACTOR]
  spec = deep.FinetuneSpec(model, C, adapter=adapter, rank=2, batch_size=N)  # full batch
  curve = deep.finetune_curve(spec, ext, frozen, x, y, x_te, y_te, jax.random.key(0),
                              steps=30, eval_every=10, lr=1e-2)
  np.testing.assert_array_equal(curve.steps, [0, 10, 20, 30])
  assert curve.test_accuracy.shape == (4,) and np.all((0 <= curve.test_accuracy)
                                                      & (curve.test_accuracy <= 100))
  assert curve.train_loss[0] == pytest.approx(np.log(C), rel=1e-12)
  assert curve.train_loss[-1] < curve.train_loss[1] < curve.train_loss[0], curve.train_loss
  # The released stage itself is a constant of the attack; the attacker's copy moves.
  step = jax.jit(deep.make_finetune_step(spec))
  state = deep.init_finetune(spec, ext, jax.random.key(1), feature_dim=8)
  lr = jnp.asarray(1e-2)
  for _ in range(2):   # the first step moves only the zero head; the second reaches the stage
    state, _ = step(state, ext, frozen, x, y, lr)
  moved = [float(jnp.max(jnp.abs(a - b))) for a, b in
           zip(jax.tree.leaves(deep.adapted_stage(spec, state.params, ext)),
               jax.tree.leaves(ext))]
  assert max(moved) > 0
  if adapter == "lora":   # BatchNorm scales/offsets are not adapted by LoRA
    flat_a = _flat(deep.adapted_stage(spec, state.params, ext))
    for k, v in _flat(ext).items():
      if k[-1] != "kernel":
        np.testing.assert_array_equal(flat_a[k], v)


def test_finetune_step_is_adam_with_learning_rate_lr():
  model, trainable, frozen, (x, y, *_) = _setup()
  spec = deep.FinetuneSpec(model, C, batch_size=N)
  ext = trainable[models.EXTRACTOR]
  state = deep.init_finetune(spec, ext, jax.random.key(1), feature_dim=8)
  step = jax.jit(deep.make_finetune_step(spec))
  lr = 3e-3
  opt = optax.adam(lr)
  ref_params, ref_state = state.params, opt.init(state.params)

  def loss(p):
    logits = deep.finetune_logits(spec, p, ext, frozen, x)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

  grad = jax.jit(jax.grad(loss))
  for _ in range(2):
    state, _ = step(state, ext, frozen, x, y, jnp.asarray(lr))
    u, ref_state = opt.update(grad(ref_params), ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, u)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_finetune_bad_inputs():
  model, trainable, frozen, (x, y, x_te, y_te) = _setup()
  with pytest.raises(ValueError, match="adapter"):
    deep.FinetuneSpec(model, C, adapter="prefix")
  with pytest.raises(ValueError, match="rank"):
    deep.FinetuneSpec(model, C, adapter="lora", rank=0)
  spec = deep.FinetuneSpec(model, C, batch_size=8)
  ext = trainable[models.EXTRACTOR]
  with pytest.raises(ValueError, match="multiple of `eval_every`"):
    deep.finetune_curve(spec, ext, frozen, x, y, x_te, y_te, jax.random.key(0), steps=5,
                        eval_every=2, lr=1e-3)
  with pytest.raises(ValueError, match="labels in"):
    deep.finetune_curve(spec, ext, frozen, x, y + C, x_te, y_te, jax.random.key(0), steps=2,
                        eval_every=2, lr=1e-3)


# ------------------------------------------------------------------------------------ RFD


def test_rfd_of_identical_curves_is_zero():
  rng = np.random.default_rng(0)
  a = rng.uniform(10, 100, size=(3, 7))
  np.testing.assert_array_equal(deep.relative_finetuning_difficulty(a, a), np.zeros(3))


def test_rfd_known_values():
  # Gaps 50 % and 0 % → 25 %; the immunized model twice as slow on every point → 50 %.
  assert deep.relative_finetuning_difficulty([50.0, 80.0], [25.0, 80.0]) == 25.0
  a0 = np.array([20.0, 40.0, 80.0])
  np.testing.assert_allclose(deep.relative_finetuning_difficulty(a0, a0 / 2), 50.0)
  # Easier to attack than θ0 → negative; batched over a leading axis.
  out = deep.relative_finetuning_difficulty(np.stack([a0, a0]), np.stack([a0 * 1.1, a0]))
  np.testing.assert_allclose(out, [-10.0, 0.0], atol=1e-12)


def test_rfd_bad_inputs():
  with pytest.raises(ValueError, match="> 0"):
    deep.relative_finetuning_difficulty([0.0, 50.0], [0.0, 40.0])
  with pytest.raises(ValueError, match="NaN"):
    deep.relative_finetuning_difficulty([10.0, 50.0], [np.nan, 40.0])
  with pytest.raises(ValueError, match="broadcast"):
    deep.relative_finetuning_difficulty([10.0, 50.0], [1.0, 2.0, 3.0])
  with pytest.raises(ValueError, match="at least one"):
    deep.relative_finetuning_difficulty(np.zeros((2, 0)), np.zeros((2, 0)))


def test_probe_curve_with_adam_learns():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 90)
  phi = rng.normal(size=(90, 4)) + 3.0 * np.eye(4)[y]
  c = deep.probe_curve(phi[:60], y[:60], phi[60:], y[60:], jax.random.key(0), num_classes=3,
                       epochs=4, batch_size=10, lr=0.1, optimizer="adam")
  assert np.asarray(c.test_accuracy)[-1] > 80.0
  sgd = deep.probe_curve(phi[:60], y[:60], phi[60:], y[60:], jax.random.key(0), num_classes=3,
                         epochs=4, batch_size=10, lr=0.1)
  assert not np.array_equal(np.asarray(c.train_loss), np.asarray(sgd.train_loss))
  with pytest.raises(ValueError, match="optimizer"):
    deep.probe_curve(phi, y, phi, y, jax.random.key(0), num_classes=3, epochs=1,
                     batch_size=10, lr=0.1, optimizer="lbfgs")

"""Attackers of an immunized deep model: linear probing, full fine-tuning and LoRA (Fig. 3+).

Each attacker adapts the released model to the harmful task D_H from its training split and
is scored by its **harmful test accuracy** along the way (:func:`run_attacks`: after every
epoch). The relative fine-tuning difficulty of two such curves (θ0 against θ_I) is
:func:`immujax.deep.relative_finetuning_difficulty`. All three start from a *fresh*
linear head ``(w, b) = 0`` of ``C_H`` classes (the pre-training head ω is discarded), so at
step 0 every extractor gives the same prediction and the curves differ only by how fast the
attacker learns:

==================  =========================================================================
``linear_probe``    :func:`probe_curve`: only the head trains, on frozen features ``f_θ(x)``
                    (the paper's threat model, Fig. 3).
``full``            :func:`finetune_curve` with ``adapter="full"``: every trainable parameter
                    of the immunized stage θ (convolutions / dense kernels, biases, BatchNorm
                    scales and offsets) and the head train; optimizer Adam or SGD.
``lora``            :func:`finetune_curve` with ``adapter="lora"``: each kernel ``W`` of the
                    immunized stage becomes ``W + s·(A B)`` reshaped to ``W``'s shape, with
                    ``A ∈ R^{m×r}``, ``B ∈ R^{r×n}`` (``W`` viewed as an ``m × n`` input ×
                    output matrix, see :func:`lora_matrix_shape`); only ``A``, ``B`` and the
                    head train, θ itself stays frozen (Hu et al. 2022).
==================  =========================================================================

LoRA initialisation follows Hu et al.: ``A ~ N(0, 1/m)`` (fan-in scaling) and ``B = 0``, so
the adapted model *is* θ at step 0; ``s = α/r`` is ``lora_scale``. The model's BatchNorms run
in inference mode (frozen running statistics, as during immunization), the trunk stays frozen
(its outputs may be passed instead of images, ``from_trunk``), and the head's logits are
formed in float64 from the model's (possibly float32) features.

**Execution.** :func:`make_finetune_step` is a pure, jit-able step of the attacker.
:func:`finetune_curve` runs it in a Python loop over a jitted step and evaluates every
``eval_every`` steps (on XLA:CPU, convolutions inside ``lax.scan`` run one to two orders of
magnitude slower, see :func:`immujax.deep.make_chunk`). Minibatches are :func:`immujax.deep.batch_indices` of
``(key, step)``, as for the probe, so a run is a function of its key.

References:
  Zheng, Bai, Bullins, Yeh. "Model Immunization from a Condition Number Perspective",
  ICML 2025, Fig. 3 (linear probing).
  Hu et al. "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
from flax import traverse_util
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from immujax import models
from immujax.deep.network import apply_in_batches
from immujax.deep.network import merge_variables
from immujax.deep.train import batch_indices

Array = jax.Array
PyTree = Any

ATTACKS = ("linear_probe", "full", "lora")
ADAPTERS = ("full", "lora")
OPTIMIZERS = ("adam", "sgd")


# ------------------------------------------------------------------------ linear probing


class ProbeCurve(NamedTuple):
  """An attack trajectory (Fig. 3): scores after 0, 1, …, ``epochs`` epochs.

  Attributes:
    test_accuracy: ``(epochs + 1,)`` harmful test accuracy in %.
    train_loss: ``(epochs + 1,)`` mean cross-entropy on the whole harmful training split.
  """
  test_accuracy: Array
  train_loss: Array


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size",
                                             "optimizer"))
def probe_curve(phi_train, y_train, phi_test, y_test, key: Array, *, num_classes: int,
                epochs: int, batch_size: int, lr, momentum=0.9,
                optimizer: str = "sgd") -> ProbeCurve:
  """Linear probing of frozen features: the attacker of Fig. 3.

  Softmax regression ``(w, b)`` from zero on the raw (unnormalised) features, trained with
  minibatch SGD + heavy-ball momentum (or Adam) at a fixed learning rate — the same optimizer
  for every extractor, so the curves compare how fast the same first-order attacker adapts
  (an ill-conditioned ``ΦᵀΦ`` slows SGD down). Minibatches as :func:`batch_indices`. Float64.

  Args:
    phi_train: ``(N, D)`` harmful training features; y_train: ``(N,)`` labels.
    phi_test: ``(M, D)`` harmful test features; y_test: ``(M,)`` labels.
    key: PRNG key of the minibatch order.
    num_classes: C_H.
    epochs: probing epochs.
    batch_size: probe minibatch size (drop_last).
    lr: learning rate (scalar).
    momentum: SGD momentum (scalar).
    optimizer: ``"sgd"`` (Fig. 3's attacker) or ``"adam"`` (a diagonally preconditioned one).

  Returns:
    :class:`ProbeCurve`.
  """
  phi_train = jnp.asarray(phi_train, jnp.float64)
  phi_test = jnp.asarray(phi_test, jnp.float64)
  n, d = phi_train.shape
  per_epoch = n // batch_size
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}; got {optimizer!r}.")
  opt = optax.sgd(lr, momentum=momentum) if optimizer == "sgd" else optax.adam(lr)
  params = (jnp.zeros((d, num_classes), jnp.float64), jnp.zeros((num_classes,), jnp.float64))

  def loss(p, x, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x @ p[0] + p[1], y))

  def evaluate(p):
    acc = jnp.mean(jnp.argmax(phi_test @ p[0] + p[1], -1) == y_test)
    return 100.0 * acc, loss(p, phi_train, y_train)

  def step(carry, s):
    p, st = carry
    idx = batch_indices(key, s, n=n, batch_size=batch_size)
    g = jax.grad(loss)(p, phi_train[idx], y_train[idx])
    u, st = opt.update(g, st, p)
    return (optax.apply_updates(p, u), st), None

  def epoch(carry, e):
    carry, _ = lax.scan(step, carry, e * per_epoch + jnp.arange(per_epoch))
    return carry, evaluate(carry[0])

  _, (accs, losses) = lax.scan(epoch, (params, opt.init(params)), jnp.arange(epochs))
  acc0, loss0 = evaluate(params)
  return ProbeCurve(jnp.concatenate([acc0[None], accs]), jnp.concatenate([loss0[None], losses]))


# ----------------------------------------------------------------------------------- LoRA


_QKV = ("query", "key", "value")


def lora_matrix_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, int]:
  """The ``(m, n)`` = (inputs, outputs) matrix view of a kernel that LoRA factorises.

  * Dense ``(D_in, D_out)`` → itself; convolution ``(k_h, k_w, C_in, C_out)`` →
    ``(k_h·k_w·C_in, C_out)`` (the im2col view); attention output ``(H, d_h, D)`` →
    ``(H·d_h, D)``: all "every axis but the last is an input".
  * Attention ``query``/``key``/``value`` kernels ``(D, H, d_h)`` → ``(D, H·d_h)``.

  Args:
    path: the kernel's path in the parameter tree, e.g. ``("layer4_0", "conv1", "kernel")``.
    shape: the kernel's shape (ndim ≥ 2).

  Returns:
    ``(m, n)`` with ``m·n == prod(shape)``; ``W.reshape(m, n)`` is the matrix view.
  """
  if len(shape) < 2:
    raise ValueError(f"kernel {'/'.join(path)} has shape {shape}; LoRA needs ndim ≥ 2.")
  if len(shape) == 3 and len(path) >= 2 and path[-2] in _QKV:
    return shape[0], math.prod(shape[1:])
  return math.prod(shape[:-1]), shape[-1]


def _lora_targets(extractor: dict) -> dict[tuple[str, ...], Array]:
  flat = traverse_util.flatten_dict(dict(extractor))
  return {k: v for k, v in flat.items() if k[-1] == "kernel" and v.ndim >= 2}


def lora_init(extractor: dict, key: Array, *, rank: int) -> dict:
  """LoRA factors for every kernel of the immunized stage: ``A ~ N(0, 1/m)``, ``B = 0``.

  Args:
    extractor: the immunized stage's parameters (``trainable["extractor"]``).
    key: PRNG key of ``A``.
    rank: r ≥ 1.

  Returns:
    ``{"layer4_0/conv1/kernel": {"a": (m, r), "b": (r, n)}, ...}`` in each kernel's dtype
    (``(m, n)`` from :func:`lora_matrix_shape`).
  """
  if rank < 1:
    raise ValueError(f"`rank` must be ≥ 1; got {rank}.")
  targets = _lora_targets(extractor)
  if not targets:
    raise ValueError("`extractor` has no kernel (ndim ≥ 2) to adapt; pass "
                     "trainable['extractor'] of a model with immunized_blocks ≥ 1.")
  out = {}
  for i, (path, w) in enumerate(sorted(targets.items())):
    m, n = lora_matrix_shape(path, w.shape)
    a = jax.random.normal(jax.random.fold_in(key, i), (m, rank), jnp.float32) / math.sqrt(m)
    out["/".join(path)] = {"a": a.astype(w.dtype), "b": jnp.zeros((rank, n), w.dtype)}
  return out


def lora_merge(extractor: dict, lora: dict, *, scale: float | Array = 1.0) -> dict:
  """The adapted stage: every factorised kernel becomes ``W + s·(A B).reshape(W.shape)``.

  Args:
    extractor: the frozen immunized stage.
    lora: factors from :func:`lora_init` (may be traced).
    scale: s = α/r.

  Returns:
    A parameter tree shaped like ``extractor``. With ``B = 0`` it equals ``extractor``
    exactly.
  """
  flat = traverse_util.flatten_dict(dict(extractor))
  for name, f in lora.items():
    path = tuple(name.split("/"))
    if path not in flat:
      raise ValueError(f"LoRA factor {name!r} has no kernel in `extractor`; build `lora` "
                       "with lora_init(extractor, ...).")
    w = flat[path]
    flat[path] = w + (scale * (f["a"] @ f["b"])).reshape(w.shape).astype(w.dtype)
  return traverse_util.unflatten_dict(flat)


# ---------------------------------------------------------------------- fine-tuning attack


@dataclasses.dataclass(frozen=True)
class FinetuneSpec:
  """Static description of a fine-tuning attack (hashable; closed over by the step).

  Attributes:
    model: the :mod:`immujax.models` model whose immunized stage is attacked.
    num_classes: C_H, the width of the fresh head.
    adapter: ``"full"`` (all of the stage's parameters train) or ``"lora"``.
    rank: LoRA rank r (``adapter="lora"``).
    lora_scale: LoRA's s = α/r.
    optimizer: ``"adam"`` (β = 0.9, 0.999, ε = 1e-8) or ``"sgd"`` (heavy-ball momentum).
    momentum: SGD momentum.
    batch_size: attack minibatch size (drop_last epochs, as the probe).
    from_trunk: inputs are trunk outputs (the trunk is frozen, so they can be precomputed).
  """
  model: nn.Module
  num_classes: int
  adapter: str = "full"
  rank: int = 4
  lora_scale: float = 1.0
  optimizer: str = "adam"
  momentum: float = 0.9
  batch_size: int = 64
  from_trunk: bool = False

  def __post_init__(self):
    if self.adapter not in ADAPTERS:
      raise ValueError(f"`adapter` must be one of {ADAPTERS}; got {self.adapter!r}.")
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}; got {self.optimizer!r}.")
    if self.num_classes < 2:
      raise ValueError(f"`num_classes` must be ≥ 2 (the harmful head); got {self.num_classes}.")
    if self.adapter == "lora" and self.rank < 1:
      raise ValueError(f"`rank` must be ≥ 1 for adapter='lora'; got {self.rank}.")
    if self.batch_size < 1:
      raise ValueError(f"`batch_size` must be ≥ 1; got {self.batch_size}.")
    if not 0.0 <= self.momentum < 1.0:
      raise ValueError(f"`momentum` must be in [0, 1); got {self.momentum}.")


class FinetuneState(NamedTuple):
  """The attacker's trainable parameters and optimizer state.

  ``params = {"stage": ..., "head": {"kernel": (D_hid, C_H), "bias": (C_H,)}}`` where
  ``stage`` is the stage's parameters (``full``) or the LoRA factors (``lora``).
  """
  params: dict
  opt_state: PyTree


def _direction(spec: FinetuneSpec) -> optax.GradientTransformation:
  # Learning rate 1; the step multiplies by the (traced) lr. For a constant lr this equals
  # optax.adam(lr) / optax.sgd(lr, momentum): both updates are linear in lr.
  if spec.optimizer == "adam":
    return optax.scale_by_adam()
  return optax.trace(decay=spec.momentum)


def feature_dim(spec: FinetuneSpec, extractor: dict, frozen: dict, x) -> int:
  """D_hid of the model's features on inputs shaped like ``x`` (no compute, eval_shape)."""
  variables = merge_variables({models.EXTRACTOR: extractor, models.HEAD: {}}, frozen)
  out = jax.eval_shape(lambda v, a: models.features(spec.model, v, a,
                                                    from_trunk=spec.from_trunk),
                       variables, jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype))
  return int(out.shape[-1])


def init_finetune(spec: FinetuneSpec, extractor: dict, key: Array, *,
                  feature_dim: int) -> FinetuneState:
  """The attacker's initial state: the stage (or zero-B LoRA factors) and a zero head.

  Args:
    spec: the :class:`FinetuneSpec`.
    extractor: the released stage θ (``trainable["extractor"]`` of θ0 or of θ_I).
    key: PRNG key (LoRA's ``A``).
    feature_dim: D_hid (:func:`feature_dim`).

  Returns:
    :class:`FinetuneState`.
  """
  stage = (extractor if spec.adapter == "full"
           else lora_init(extractor, key, rank=spec.rank))
  head = {"kernel": jnp.zeros((feature_dim, spec.num_classes), jnp.float64),
          "bias": jnp.zeros((spec.num_classes,), jnp.float64)}
  params = {"stage": stage, "head": head}
  return FinetuneState(params, _direction(spec).init(params))


def adapted_stage(spec: FinetuneSpec, params: dict, extractor: dict) -> dict:
  """The stage the attacker currently uses: ``params["stage"]`` or θ merged with LoRA."""
  if spec.adapter == "full":
    return params["stage"]
  return lora_merge(extractor, params["stage"], scale=spec.lora_scale)


def finetune_logits(spec: FinetuneSpec, params: dict, extractor: dict, frozen: dict,
                    x: Array) -> Array:
  """Harmful logits ``f_θ'(x) w + b`` (float64) of the attacker's current model.

  Args:
    spec: the :class:`FinetuneSpec`.
    params: :attr:`FinetuneState.params`.
    extractor: the released stage θ (used by ``lora``; ignored by ``full``).
    frozen: ``{"trunk", "batch_stats"}`` of the released model.
    x: ``(N, ...)`` images, or trunk outputs when ``spec.from_trunk``.

  Returns:
    ``(N, C_H)`` float64 logits.
  """
  stage = adapted_stage(spec, params, extractor)
  variables = merge_variables({models.EXTRACTOR: stage, models.HEAD: {}}, frozen)
  phi = models.features(spec.model, variables, x, from_trunk=spec.from_trunk)
  head = params["head"]
  return phi.astype(jnp.float64) @ head["kernel"] + head["bias"]


def _loss(spec, params, extractor, frozen, x, y):
  logits = finetune_logits(spec, params, extractor, frozen, x)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def make_finetune_step(spec: FinetuneSpec) -> Callable:
  """The attacker's pure step on one minibatch.

  Args:
    spec: the :class:`FinetuneSpec`.

  Returns:
    ``step(state, extractor, frozen, x, y, lr) -> (state, loss)``: one optimizer step on the
    mean cross-entropy of the minibatch ``(x, y)`` (``loss`` is before the step), jit- and
    vmap-able; ``lr`` is a scalar array.
  """
  direction = _direction(spec)

  def step(state, extractor, frozen, x, y, lr):
    loss, grads = jax.value_and_grad(
        lambda p: _loss(spec, p, extractor, frozen, x, y))(state.params)
    updates, opt_state = direction.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p - (lr * u).astype(p.dtype), state.params, updates)
    return FinetuneState(params, opt_state), loss

  return step


@functools.lru_cache(maxsize=32)
def _compiled(spec: FinetuneSpec, eval_batch_size: int):
  step = make_finetune_step(spec)

  @jax.jit
  def train_step(state, extractor, frozen, x, y, order, t, lr):
    idx = batch_indices(order, t, n=x.shape[0], batch_size=spec.batch_size)
    return step(state, extractor, frozen, x[idx], y[idx], lr)

  @jax.jit
  def eval_batch(params, extractor, frozen, x, y, valid):
    logits = finetune_logits(spec, params, extractor, frozen, x)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    hit = jnp.argmax(logits, -1) == y
    return jnp.sum(jnp.where(valid, hit, False)), jnp.sum(jnp.where(valid, ce, 0.0))

  def evaluate(params, extractor, frozen, x, y):
    """(accuracy %, mean CE) over all of (x, y), in zero-padded batches of one shape."""
    n = x.shape[0]
    hits, ce = 0.0, 0.0
    for i in range(0, n, eval_batch_size):
      xb, yb = np.asarray(x[i:i + eval_batch_size]), np.asarray(y[i:i + eval_batch_size])
      m = xb.shape[0]
      valid = np.arange(eval_batch_size) < m
      if m < eval_batch_size:
        xb = np.concatenate([xb, np.zeros((eval_batch_size - m,) + xb.shape[1:], xb.dtype)])
        yb = np.concatenate([yb, np.zeros((eval_batch_size - m,), yb.dtype)])
      h, c = eval_batch(params, extractor, frozen, xb, yb, valid)
      hits, ce = hits + float(h), ce + float(c)
    return 100.0 * hits / n, ce / n

  return train_step, evaluate


class FinetuneCurve(NamedTuple):
  """A fine-tuning attack's trajectory, scored every ``eval_every`` steps.

  Attributes:
    steps: ``(K + 1,)`` attack steps at the evaluation points: 0, e, 2e, …, ``steps``.
    test_accuracy: ``(K + 1,)`` harmful test accuracy in % at those points.
    train_loss: ``(K + 1,)`` the mean minibatch cross-entropy of the steps since the previous
      point (each measured before its update); at step 0 the loss of the zero head, log C_H.
  """
  steps: np.ndarray
  test_accuracy: np.ndarray
  train_loss: np.ndarray


def finetune_curve(spec: FinetuneSpec, extractor: dict, frozen: dict, x_train, y_train,
                   x_test, y_test, key: Array, *, steps: int, eval_every: int, lr: float,
                   eval_batch_size: int = 256) -> FinetuneCurve:
  """Full fine-tuning or LoRA of the immunized stage: harmful test accuracy over steps.

  The attacker starts from the released stage θ (``extractor``) with a zero head and takes
  ``steps`` optimizer steps on minibatches :func:`batch_indices` of ``(key, step)`` (epochs
  of ``⌊N/B⌋`` batches, drop_last), scoring the harmful test accuracy at step 0 and after
  every ``eval_every`` steps.

  Args:
    spec: the :class:`FinetuneSpec`.
    extractor: the released stage θ (θ0's or an immunized one), ``trainable["extractor"]``.
    frozen: ``{"trunk", "batch_stats"}`` of the released model.
    x_train: ``(N, ...)`` harmful training inputs (trunk outputs if ``spec.from_trunk``);
      y_train: ``(N,)`` int labels in ``[0, C_H)``.
    x_test, y_test: the harmful test split, likewise.
    key: PRNG key: ``fold_in(key, 0)`` orders the minibatches, ``fold_in(key, 1)`` draws
      LoRA's ``A``.
    steps: attack steps, a multiple of ``eval_every``.
    eval_every: steps between evaluations.
    lr: learning rate.
    eval_batch_size: batch size of the evaluations.

  Returns:
    :class:`FinetuneCurve` of numpy arrays.
  """
  n = int(x_train.shape[0])
  if n != int(np.shape(y_train)[0]) or int(x_test.shape[0]) != int(np.shape(y_test)[0]):
    raise ValueError("inputs and labels must have equal lengths: check `x_train`/`y_train` "
                     "and `x_test`/`y_test`.")
  if int(x_test.shape[0]) == 0:
    raise ValueError("`x_test` is empty; pass the harmful test split.")
  if spec.batch_size > n:
    raise ValueError(f"`spec.batch_size` ({spec.batch_size}) exceeds the training split "
                     f"({n}); lower it.")
  if eval_every < 1 or steps < 1 or steps % eval_every:
    raise ValueError(f"`steps` ({steps}) must be a positive multiple of `eval_every` "
                     f"({eval_every}).")
  if not np.isfinite(lr) or lr <= 0:
    raise ValueError(f"`lr` must be a finite number > 0; got {lr}.")
  for name, y in (("y_train", y_train), ("y_test", y_test)):
    y = np.asarray(y)
    if y.min() < 0 or y.max() >= spec.num_classes:
      raise ValueError(f"`{name}` must hold labels in [0, {spec.num_classes}); got "
                       f"[{y.min()}, {y.max()}].")
  train_step, evaluate = _compiled(spec, eval_batch_size)
  state = init_finetune(spec, extractor, jax.random.fold_in(key, 1),
                        feature_dim=feature_dim(spec, extractor, frozen, x_train))
  x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
  lr = jnp.asarray(lr, jnp.float64)
  order = jax.random.fold_in(key, 0)
  points = [0]
  accs = [evaluate(state.params, extractor, frozen, x_test, y_test)[0]]
  losses, pending = [float(np.log(spec.num_classes))], []
  for t in range(steps):
    state, loss = train_step(state, extractor, frozen, x_train, y_train, order,
                             jnp.asarray(t), lr)
    pending.append(loss)
    if (t + 1) % eval_every == 0:
      points.append(t + 1)
      accs.append(evaluate(state.params, extractor, frozen, x_test, y_test)[0])
      losses.append(float(np.mean(np.asarray(jnp.stack(pending)))))
      pending = []
  return FinetuneCurve(np.asarray(points), np.asarray(accs), np.asarray(losses))


# --------------------------------------------------------------------- the three attackers


@dataclasses.dataclass(frozen=True)
class AttackSettings:
  """One attacker of :func:`run_attacks` and its hyperparameters.

  Attributes:
    kind: ``"linear_probe"`` (:func:`probe_curve`), ``"full"`` or ``"lora"``
      (:func:`finetune_curve`).
    epochs: passes over the harmful training split (⌊N/B⌋ steps each); scored after each.
    batch_size: minibatch size B.
    lr: learning rate.
    optimizer: ``"adam"`` or ``"sgd"`` (heavy-ball momentum; Fig. 3's probe).
    momentum: SGD momentum.
    rank: LoRA rank r.
    lora_scale: LoRA's s = α/r.
  """
  kind: str
  epochs: int
  batch_size: int
  lr: float
  optimizer: str = "adam"
  momentum: float = 0.9
  rank: int = 4
  lora_scale: float = 1.0

  def __post_init__(self):
    if self.kind not in ATTACKS:
      raise ValueError(f"`kind` must be one of {ATTACKS}; got {self.kind!r}.")
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}; got {self.optimizer!r}.")
    if self.epochs < 1 or self.batch_size < 1:
      raise ValueError(f"`epochs` ({self.epochs}) and `batch_size` ({self.batch_size}) must be "
                       "≥ 1.")
    if not np.isfinite(self.lr) or self.lr <= 0:
      raise ValueError(f"`lr` must be a finite number > 0; got {self.lr}.")


def run_attacks(model: nn.Module, extractor: dict, frozen: dict, x_train, y_train, x_test,
                y_test, key: Array, *, attacks: dict[str, AttackSettings], num_classes: int,
                from_trunk: bool = False, eval_batch_size: int = 256
                ) -> dict[str, FinetuneCurve]:
  """Every attacker of ``attacks`` on one released stage θ: harmful test accuracy per epoch.

  Use the same ``key`` for θ0 and for every immunized model of a seed: the attackers then see
  the same minibatches (and LoRA the same ``A``), so their curves differ only by θ.

  Args:
    model: the model.
    extractor: the released stage θ, ``trainable["extractor"]``.
    frozen: ``{"trunk", "batch_stats"}``.
    x_train, y_train: harmful training split (trunk outputs if ``from_trunk``).
    x_test, y_test: harmful test split.
    key: PRNG key (attack ``i`` in sorted-name order uses ``fold_in(key, i)``).
    attacks: ``{name: AttackSettings}``.
    num_classes: C_H.
    from_trunk: inputs are trunk outputs.
    eval_batch_size: batch size of feature extraction and evaluation.

  Returns:
    ``{name: FinetuneCurve}``, each scored at steps ``0, ⌊N/B⌋, …, epochs·⌊N/B⌋``.
  """
  n = int(x_train.shape[0])
  out, feats = {}, None
  for i, name in enumerate(sorted(attacks)):
    a = attacks[name]
    k = jax.random.fold_in(key, i)
    per_epoch = n // a.batch_size
    if per_epoch < 1:
      raise ValueError(f"attack {name!r}: `batch_size` ({a.batch_size}) exceeds the harmful "
                       f"training split ({n}); lower it.")
    if a.kind == "linear_probe":
      if feats is None:
        variables = merge_variables({models.EXTRACTOR: extractor, models.HEAD: {}}, frozen)
        feats = [apply_in_batches(model, variables, xx, batch_size=eval_batch_size,
                                  from_trunk=from_trunk) for xx in (x_train, x_test)]
      c = probe_curve(feats[0], jnp.asarray(y_train), feats[1], jnp.asarray(y_test), k,
                      num_classes=num_classes, epochs=a.epochs, batch_size=a.batch_size,
                      lr=a.lr, momentum=a.momentum, optimizer=a.optimizer)
      out[name] = FinetuneCurve(per_epoch * np.arange(a.epochs + 1),
                                np.asarray(c.test_accuracy), np.asarray(c.train_loss))
    else:
      spec = FinetuneSpec(model, num_classes, adapter=a.kind, rank=a.rank,
                          lora_scale=a.lora_scale, optimizer=a.optimizer, momentum=a.momentum,
                          batch_size=a.batch_size, from_trunk=from_trunk)
      out[name] = finetune_curve(spec, extractor, frozen, x_train, y_train, x_test, y_test, k,
                                 steps=a.epochs * per_epoch, eval_every=per_epoch, lr=a.lr,
                                 eval_batch_size=eval_batch_size)
  return out

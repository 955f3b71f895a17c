"""Immunization of deep feature extractors and its evaluation (paper Sec. 5.3, Table 3, Fig. 3).

A deep model is ``head ∘ extractor ∘ trunk`` (:mod:`immujax.models`). Only the immunized
extractor θ and the head ω train; the trunk and every BatchNorm running statistic stay frozen
(BatchNorms run in inference mode). With ``Φ = f_θ(X)`` the pooled features of a minibatch,
``H̃ = ΦᵀΦ`` is the linear-probe Hessian of Eq. 18 and the four methods minimise:

==============  ==========================================================================
``ours``        ``L_P + λ_P·R_well(Φ_PᵀΦ_P) + λ_H·R_ill(Φ_HᵀΦ_H)``             (Eq. 11)
``r_ill_only``  ``L_P + λ_H·R_ill(Φ_HᵀΦ_H)``  (keeps L_P, as the authors' ``max_only``)
``opt_kappa``   ``L_P + λ_κ·(log κ(Φ_PᵀΦ_P) − log κ(Φ_HᵀΦ_H))``
``imma``        ``L_P − λ_imma·CE_H(w_T)``, ``w_T`` = a linear probe after ``T`` unrolled
                gradient steps on the harmful minibatch (bi-level, Zheng & Yeh 2024)
==============  ==========================================================================

``L_P`` is the label-smoothed (ε = 0.1) softmax cross-entropy of the pre-training task on the
D_P minibatch (timm's ``LabelSmoothingCrossEntropy`` = ``optax.softmax_cross_entropy`` with
``optax.smooth_labels``). There is no K⁻¹ preconditioner for deep nets (as in the paper and
the authors' code). R_well, R_ill and log κ follow the paper's definitions exactly
(:mod:`immujax.regularizers`, :mod:`immujax.spectral`): ``p`` = the Gram's dimension D_hid,
``k`` = its numerical rank, σ_min = the smallest *non-zero* singular value.

**IMMA.** The inner problem is the attacker: a softmax-regression probe ``(w, b)`` on the
harmful minibatch features ``Φ_H`` with the harmful labels, started at zero and updated by
``T = spec.inner_steps`` plain gradient steps of size ``η_inner`` (``hparams.inner_lr``)::

    (w, b)_{t+1} = (w, b)_t − η_inner ∇_{(w,b)} CE(Φ_H w_t + b_t, y_H).

The steps are unrolled with ``lax.scan`` and differentiated through, so the outer gradient
reaches θ both through ``Φ_H`` in the final loss and through the adapted ``w_T``. The outer
objective *maximises* the attacker's loss after adaptation, ``CE(Φ_H w_T + b_T, y_H)``, while
keeping the pre-training task (``L_P``); the inner and outer losses use the same harmful
minibatch. (The authors' code has an IMMA fragment that alternates the sign of the harmful loss
through a fixed classifier and is not runnable, digest §4; this is the standard bi-level form.)

**Precision.** The trunk and the extractor may run in float32 (or bfloat16: set the model's
``dtype``); the features are cast to float64 before the Gram matrices are formed, and the
Grams, their eigendecompositions, the regularizers, log κ and the IMMA inner loop are float64.
This needs ``jax_enable_x64`` (checked). The supervised loss runs in the model's dtype.

**Optimizer.** optax SGD with momentum 0.9, Nesterov, the learning rate taken from the
hyperparameter arrays (so it can be vmapped), and weight decay ``2e-5`` on the head only (the
authors' two parameter groups). The authors' configured learning rates are overwritten to a
constant 1e-5 by an unused timm scheduler (digest §5.3); the configs here use 1e-5.

**Runs.** :func:`make_train_step` returns a pure, jit-able
``step(params, opt_state, batch_p, batch_h, key, hparams, frozen)``. :func:`make_chunk` scans
it over ``chunk_steps`` steps whose minibatches are drawn from in-memory data by epoch
permutations derived from ``fold_in(key, epoch)``, vmapped over seeds, so that
:func:`immujax.training.run_chunked` can drive it and a resumed run reproduces the
uninterrupted one bit for bit. :func:`make_scan_steps` does the same over pre-built batches (for
data streamed from disk).

**Evaluation.** :func:`rir_theta0` (Eq. 17, θ0 kept separately, mean of per-group ratios over
``n`` groups of ``k`` samples), :func:`accuracy` (top-1), :func:`probe_curve` (Fig. 3:
softmax-regression probe on frozen features, test accuracy per epoch).

References:
  Zheng, Bai, Bullins, Yeh. "Model Immunization from a Condition Number Perspective",
  ICML 2025, Eq. 11, 17, 18, Sec. 5.3, Table 3, Fig. 3.
  Zheng & Yeh. "IMMA: Immunizing text-to-image models against malicious adaptation",
  ECCV 2024.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from immujax import metrics as metrics_lib
from immujax import models
from immujax import regularizers
from immujax import spectral
from immujax import training

Array = jax.Array
PyTree = Any

METHODS = ("ours", "r_ill_only", "opt_kappa", "imma")


# ------------------------------------------------------------------------ hyperparameters


class HParams(NamedTuple):
  """Hyperparameters that may differ across a vmap (all scalar float arrays).

  Attributes:
    lr: SGD learning rate η.
    lambda_p: λ_P, weight of R_well(Φ_PᵀΦ_P) (the authors' ``lambda_r1``).
    lambda_h: λ_H, weight of R_ill(Φ_HᵀΦ_H) (the authors' ``lambda_r2``).
    lambda_kappa: λ_κ, weight of ``log κ(S_P) − log κ(S_H)`` (``opt_kappa``).
    lambda_imma: λ_imma, weight of the adapted harmful loss (``imma``).
    inner_lr: η_inner, the IMMA attacker's step size.
  """
  lr: Array
  lambda_p: Array
  lambda_h: Array
  lambda_kappa: Array
  lambda_imma: Array
  inner_lr: Array


def make_hparams(*, lr: float, lambda_p: float = 0.0, lambda_h: float = 0.0,
                 lambda_kappa: float = 0.0, lambda_imma: float = 0.0,
                 inner_lr: float = 0.0, num_seeds: int | None = None) -> HParams:
  """Builds :class:`HParams` as float64 arrays, optionally replicated for ``num_seeds``.

  Args:
    lr, lambda_p, lambda_h, lambda_kappa, lambda_imma, inner_lr: see :class:`HParams`.
    num_seeds: if given, every field gets a leading axis of this size (for ``jax.vmap``).

  Returns:
    :class:`HParams`.
  """
  values = dict(lr=lr, lambda_p=lambda_p, lambda_h=lambda_h, lambda_kappa=lambda_kappa,
                lambda_imma=lambda_imma, inner_lr=inner_lr)
  for name, v in values.items():
    if not np.isfinite(v) or v < 0:
      raise ValueError(f"`{name}` must be a finite non-negative number; got {v}.")
  hp = HParams(**{k: jnp.asarray(v, jnp.float64) for k, v in values.items()})
  if num_seeds is not None:
    hp = jax.tree.map(lambda a: jnp.broadcast_to(a, (num_seeds,)), hp)
  return hp


@dataclasses.dataclass(frozen=True)
class Spec:
  """Static description of an immunization run (hashable; closed over by the step).

  Attributes:
    model: a :class:`immujax.models.ResNet` or :class:`immujax.models.VisionTransformer`.
    method: one of :data:`METHODS`.
    num_harmful_classes: classes of the harmful task (the IMMA attacker's probe width).
    inner_steps: T, unrolled attacker steps for ``imma``.
    label_smoothing: ε of the D_P cross-entropy (authors: 0.1).
    momentum: SGD momentum (authors: 0.9).
    nesterov: Nesterov momentum (authors: True).
    head_weight_decay: weight decay of the head (authors: 2e-5; the extractor has none).
    from_trunk: the batches hold trunk outputs instead of images (valid because the trunk
      and its BatchNorm statistics are frozen; the stand-in precomputes them once).
    rtol: relative "non-zero" tolerance for rank and σ_min (default ``n · eps``).
  """
  model: nn.Module
  method: str = "ours"
  num_harmful_classes: int = 0
  inner_steps: int = 0
  label_smoothing: float = 0.1
  momentum: float = 0.9
  nesterov: bool = True
  head_weight_decay: float = 2e-5
  from_trunk: bool = False
  rtol: float | None = None

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"`method` must be one of {METHODS}; got {self.method!r}.")
    if not hasattr(self.model, "part_of"):
      raise ValueError(
          f"`model` must be an immujax.models ResNet or VisionTransformer; got "
          f"{type(self.model).__name__}.")
    if self.method == "imma":
      if self.inner_steps < 1:
        raise ValueError(
            f"`inner_steps` must be ≥ 1 for method='imma' (the unrolled attacker); got "
            f"{self.inner_steps}.")
      if self.num_harmful_classes < 2:
        raise ValueError(
            f"`num_harmful_classes` must be ≥ 2 for method='imma' (the attacker's probe "
            f"width); got {self.num_harmful_classes}.")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"`label_smoothing` must be in [0, 1); got {self.label_smoothing}.")
    if not 0.0 <= self.momentum < 1.0:
      raise ValueError(f"`momentum` must be in [0, 1); got {self.momentum}.")
    if self.from_trunk and getattr(self.model, "train_all_norms", False):
      raise ValueError(
          "`from_trunk=True` needs a frozen trunk, but the model trains the LayerNorms of all "
          "blocks (train_all_norms=True); pass images (from_trunk=False) or set "
          "train_all_norms=False.")


def _require_x64() -> None:
  if not jax.config.jax_enable_x64:
    raise ValueError(
        "immujax.deep forms the feature Grams and regularizers in float64; call "
        "jax.config.update('jax_enable_x64', True) at program start.")


# ---------------------------------------------------------------------- params and forward


def split_variables(model: nn.Module, variables: dict) -> tuple[dict, dict]:
  """Splits model variables into the trainable and the frozen parts.

  Args:
    model: the model.
    variables: ``{"params": ..., ["batch_stats": ...]}``.

  Returns:
    ``(trainable, frozen)``: ``trainable = {"extractor": ..., "head": ...}`` (parameters
    only); ``frozen = {"trunk": ..., "batch_stats": ...}`` (all BatchNorm statistics frozen).
  """
  if "params" not in variables:
    raise ValueError("`variables` must be the model's variables dict with a 'params' entry.")
  parts = models.split_params(model, variables["params"])
  if not jax.tree.leaves(parts[models.EXTRACTOR]):
    raise ValueError(
        "the model has no immunized parameters (immunized_blocks=0); set immunized_blocks ≥ 1.")
  trainable = {models.EXTRACTOR: parts[models.EXTRACTOR], models.HEAD: parts[models.HEAD]}
  frozen = {models.TRUNK: parts[models.TRUNK],
            "batch_stats": dict(variables.get("batch_stats", {}))}
  return trainable, frozen


def merge_variables(trainable: dict, frozen: dict) -> dict:
  """Inverse of :func:`split_variables` (works on traced values)."""
  params = models.merge_params({models.TRUNK: frozen[models.TRUNK],
                                models.EXTRACTOR: trainable[models.EXTRACTOR],
                                models.HEAD: trainable[models.HEAD]})
  variables = {"params": params}
  if frozen.get("batch_stats"):
    variables["batch_stats"] = frozen["batch_stats"]
  return variables


def head_apply(head: dict, phi: Array) -> Array:
  """The linear head ``g_ω(Φ) = Φ W + b`` (the model's single ``Dense`` head module).

  Args:
    head: the head parameters, ``{name: {"kernel": (D_hid, C), "bias": (C,)}}``.
    phi: features, ``(N, D_hid)``.

  Returns:
    Logits ``(N, C)``.
  """
  if len(head) != 1:
    raise ValueError(f"`head` must hold exactly one Dense module; got keys {list(head)}.")
  (dense,) = head.values()
  kernel = dense["kernel"]
  return phi.astype(kernel.dtype) @ kernel + dense["bias"]


def forward(model: nn.Module, trainable: dict, frozen: dict, x: Array, *,
            from_trunk: bool = False) -> tuple[Array, Array]:
  """Features and pre-training logits in inference mode (frozen BatchNorm statistics).

  Args:
    model: the model.
    trainable: ``{"extractor", "head"}`` parameters.
    frozen: ``{"trunk", "batch_stats"}``.
    x: ``(N, H, W, C)`` images, or trunk outputs when ``from_trunk``.
    from_trunk: ``x`` is the trunk's output.

  Returns:
    ``(phi, logits)``: ``(N, D_hid)`` features in the model's dtype and ``(N, C_P)`` logits.
  """
  variables = merge_variables(trainable, frozen)
  phi = models.features(model, variables, x, from_trunk=from_trunk)
  return phi, head_apply(trainable[models.HEAD], phi)


def gram64(phi: Array) -> Array:
  """``ΦᵀΦ`` in float64 (symmetrized), the probe Hessian of Eq. 18.

  Args:
    phi: ``(N, D_hid)`` features of any float dtype; gradients flow back in that dtype.

  Returns:
    ``(D_hid, D_hid)`` float64 symmetric PSD matrix.
  """
  phi = phi.astype(jnp.float64)
  s = phi.T @ phi
  return 0.5 * (s + s.T)


def smoothed_cross_entropy(logits: Array, labels: Array, *, num_classes: int,
                           smoothing: float) -> Array:
  """Mean label-smoothed softmax cross-entropy (timm ``LabelSmoothingCrossEntropy``).

  ``(1 − ε)·(−log p_y) + ε·mean_c(−log p_c)`` = CE against ``(1 − ε)·onehot + ε/C``.
  """
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes, dtype=logits.dtype),
                                smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def unrolled_probe(phi_h: Array, labels_h: Array, *, num_classes: int, steps: int,
                   lr: Array) -> tuple[Array, Array]:
  """The IMMA attacker: ``steps`` unrolled gradient steps of softmax regression from zero.

  ``(w, b) ← (w, b) − η (Φᵀ(P − Y)/N, mean(P − Y))`` with ``P = softmax(Φw + b)``, run in
  float64 under ``lax.scan`` and fully differentiable with respect to ``phi_h``.

  Args:
    phi_h: harmful features ``(N, D_hid)``.
    labels_h: harmful labels ``(N,)`` in ``[0, num_classes)``.
    num_classes: probe width C_H.
    steps: T ≥ 1.
    lr: η_inner (scalar array).

  Returns:
    ``(loss_after, loss_before)``: the mean cross-entropy of the probe after T steps, and at
    ``w = 0`` (``log C_H``).
  """
  phi = phi_h.astype(jnp.float64)
  y = jax.nn.one_hot(labels_h, num_classes, dtype=jnp.float64)
  n = phi.shape[0]

  def ce(w, b):
    return jnp.mean(optax.softmax_cross_entropy(phi @ w + b, y))

  def body(carry, _):
    w, b = carry
    r = jax.nn.softmax(phi @ w + b) - y
    return (w - lr * (phi.T @ r) / n, b - lr * jnp.mean(r, axis=0)), None

  w0 = jnp.zeros((phi.shape[1], num_classes), jnp.float64)
  b0 = jnp.zeros((num_classes,), jnp.float64)
  (w, b), _ = lax.scan(body, (w0, b0), None, length=steps)
  return ce(w, b), ce(w0, b0)


# ---------------------------------------------------------------------------- objective


def objective(spec: Spec, trainable: dict, frozen: dict, batch_p, batch_h,
              hparams: HParams) -> tuple[Array, dict]:
  """The immunization objective of ``spec.method`` on one pair of minibatches.

  Args:
    spec: the :class:`Spec`.
    trainable: ``{"extractor", "head"}`` parameters.
    frozen: ``{"trunk", "batch_stats"}``.
    batch_p: ``(x_p, y_p)``: D_P inputs ``(B, ...)`` and labels ``(B,)``.
    batch_h: ``(x_h, y_h)``: D_H inputs and labels (labels used by ``imma`` only).
    hparams: :class:`HParams` (scalars).

  Returns:
    ``(loss, metrics)``: the float64 scalar objective and a dict of scalar diagnostics
    (``ce_p``, ``log_kappa_p``, ``log_kappa_h`` for every method, plus the method's terms).
  """
  x_p, y_p = batch_p
  x_h, y_h = batch_h
  phi_p, logits_p = forward(spec.model, trainable, frozen, x_p, from_trunk=spec.from_trunk)
  phi_h, _ = forward(spec.model, trainable, frozen, x_h, from_trunk=spec.from_trunk)
  ce_p = smoothed_cross_entropy(logits_p, y_p, num_classes=logits_p.shape[-1],
                                smoothing=spec.label_smoothing).astype(jnp.float64)
  s_p, s_h = gram64(phi_p), gram64(phi_h)
  out = {"ce_p": ce_p}
  if spec.method == "ours":
    rw = regularizers.r_well(s_p)
    ri = regularizers.r_ill(s_h, rtol=spec.rtol)
    loss = ce_p + hparams.lambda_p * rw + hparams.lambda_h * ri
    out.update(r_well=rw, r_ill=ri)
  elif spec.method == "r_ill_only":
    ri = regularizers.r_ill(s_h, rtol=spec.rtol)
    loss = ce_p + hparams.lambda_h * ri
    out.update(r_ill=ri)
  elif spec.method == "opt_kappa":
    lk_p = spectral.log_condition_number(s_p, rtol=spec.rtol)
    lk_h = spectral.log_condition_number(s_h, rtol=spec.rtol)
    loss = ce_p + hparams.lambda_kappa * (lk_p - lk_h)
  else:  # imma
    ce_h, ce_h0 = unrolled_probe(phi_h, y_h, num_classes=spec.num_harmful_classes,
                                 steps=spec.inner_steps, lr=hparams.inner_lr)
    loss = ce_p - hparams.lambda_imma * ce_h
    out.update(ce_h_adapted=ce_h, ce_h_initial=ce_h0)
  sg = lax.stop_gradient
  out.update(loss=loss,
             log_kappa_p=spectral.log_condition_number(sg(s_p), rtol=spec.rtol),
             log_kappa_h=spectral.log_condition_number(sg(s_h), rtol=spec.rtol),
             acc_p=jnp.mean(jnp.argmax(logits_p, -1) == y_p))
  return loss, out


# ---------------------------------------------------------------------------- optimizer


def make_optimizer(spec: Spec) -> optax.GradientTransformation:
  """SGD direction with momentum (Nesterov) and head-only weight decay, learning rate 1.

  The step multiplies the resulting update by ``hparams.lr``; with a constant learning rate
  this equals ``optax.sgd(lr, momentum, nesterov)`` (the momentum trace is linear in g).

  Args:
    spec: the :class:`Spec`.

  Returns:
    An optax transformation over ``{"extractor": ..., "head": ...}``.
  """
  decay_mask = {models.EXTRACTOR: False, models.HEAD: True}
  return optax.chain(
      optax.masked(optax.add_decayed_weights(spec.head_weight_decay),
                   lambda p: {k: jax.tree.map(lambda _: decay_mask[k], v)
                              for k, v in p.items()}),
      optax.sgd(1.0, momentum=spec.momentum, nesterov=spec.nesterov),
  )


class TrainState(NamedTuple):
  """Trainable parameters and optimizer state (batched over seeds in a run)."""
  params: dict
  opt_state: PyTree


def init_state(spec: Spec, trainable: dict, *, num_seeds: int | None = None) -> TrainState:
  """The initial :class:`TrainState` from θ0's trainable parameters.

  Args:
    spec: the :class:`Spec`.
    trainable: ``{"extractor", "head"}`` of θ0.
    num_seeds: replicate along a leading seed axis (for the vmapped chunk).

  Returns:
    :class:`TrainState`.
  """
  state = TrainState(trainable, make_optimizer(spec).init(trainable))
  if num_seeds is not None:
    state = jax.tree.map(lambda a: jnp.broadcast_to(a, (num_seeds,) + a.shape), state)
  return state


def make_train_step(spec: Spec) -> Callable:
  """Builds the pure training step of ``spec.method``.

  Args:
    spec: the :class:`Spec`.

  Returns:
    ``step(params, opt_state, batch_p, batch_h, key, hparams, frozen)
    -> (params, opt_state, metrics)``, jit- and vmap-able. ``key`` (a per-step key, e.g.
    ``fold_in(seed_key, step)``) is reserved for stochastic augmentations and unused by the
    methods themselves.
  """
  _require_x64()
  optimizer = make_optimizer(spec)

  def step(params, opt_state, batch_p, batch_h, key, hparams, frozen):
    del key
    grad_fn = jax.grad(lambda p: objective(spec, p, frozen, batch_p, batch_h, hparams),
                       has_aux=True)
    grads, aux = grad_fn(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p + (hparams.lr * u).astype(p.dtype), params, updates)
    return params, opt_state, aux

  return step


# --------------------------------------------------------------------------------- chunks


class TaskData(NamedTuple):
  """In-memory immunization data: D_P inputs/labels and D_H inputs/labels."""
  x_p: Array
  y_p: Array
  x_h: Array
  y_h: Array


def batch_indices(key: Array, step: Array, *, n: int, batch_size: int) -> Array:
  """Indices of minibatch ``step``: epochs of ``⌊n / B⌋`` batches, drop_last.

  Epoch ``e = step // ⌊n/B⌋`` uses the permutation of ``fold_in(key, e)``, so the batch of
  any step is a function of ``(key, step)`` alone — a resumed run sees the same batches.

  Args:
    key: a typed PRNG key (one data stream of one seed).
    step: int scalar (may be traced).
    n: dataset size.
    batch_size: B ≤ n.

  Returns:
    ``(B,)`` int32 indices.
  """
  if batch_size > n:
    raise ValueError(f"`batch_size` ({batch_size}) must not exceed the dataset size ({n}).")
  per_epoch = n // batch_size
  epoch, pos = step // per_epoch, step % per_epoch
  perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
  return lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size)


def make_scan_steps(step_fn: Callable) -> Callable:
  """Scans a training step over pre-built minibatches, vmapped over seeds, jitted.

  Args:
    step_fn: from :func:`make_train_step`.

  Returns:
    ``run(state, start, keys, hparams, frozen, batches_p, batches_h) -> (state, metrics)``
    where ``state`` and ``hparams`` have a leading seed axis S, ``keys`` is ``(S,)`` typed
    keys, ``batches_*`` are ``(x, y)`` with leading axes ``(S, T)``, ``start`` is the global
    index of the first step (the per-step key is ``fold_in(keys[s], start + t)``), and
    ``metrics`` has leaves ``(S, T)``.
  """

  def one_seed(state, start, key, hparams, frozen, batches_p, batches_h):
    t = jax.tree.leaves(batches_p)[0].shape[0]

    def body(carry, inp):
      params, opt_state = carry
      i, bp, bh = inp
      params, opt_state, m = step_fn(params, opt_state, bp, bh,
                                     jax.random.fold_in(key, start + i), hparams, frozen)
      return (params, opt_state), m

    (params, opt_state), m = lax.scan(body, tuple(state),
                                      (jnp.arange(t), batches_p, batches_h))
    return TrainState(params, opt_state), m

  return jax.jit(jax.vmap(one_seed, in_axes=(0, None, 0, 0, None, 0, 0)))


CHUNK_MODES = ("scan", "loop")


def _stack(trees):
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _index(tree, i):
  return jax.tree.map(lambda a: a[i], tree)


def make_chunk(step_fn: Callable, *, batch_size: int, chunk_steps: int,
               mode: str = "scan") -> Callable:
  """A chunk of ``chunk_steps`` training steps on in-memory data, for every seed.

  The D_P and D_H minibatches of step ``t`` are drawn by :func:`batch_indices` from the data
  streams ``fold_in(key, 0)`` and ``fold_in(key, 1)`` of each seed's key, and the step gets
  ``fold_in(key, t)``; everything is a function of ``(key, t)``, so a resumed run repeats the
  uninterrupted one exactly.

  Two execution modes compute the same steps:

  * ``"scan"`` (default; GPU/TPU): one compiled ``jit(vmap(scan(step)))`` over the chunk —
    seeds vmapped, steps scanned.
  * ``"loop"`` (XLA:CPU): a Python loop over a compiled single-seed step. On XLA:CPU,
    convolutions inside a ``while`` loop (``lax.scan``) and convolutions with vmapped
    (seed-batched) kernels run one to two orders of magnitude slower than the same
    convolution in a plain jitted step (measured on the stand-in ResNet block: 0.04 s per step
    plain, 0.8 s per step scanned, several seconds per step vmapped over 3 seeds), so the
    stand-in uses this mode. Results agree with ``"scan"`` up to floating-point
    reassociation; each mode reproduces itself bit for bit on resume.

  Args:
    step_fn: from :func:`make_train_step`.
    batch_size: B, the same for D_P and D_H (the authors pair one batch of each per step).
    chunk_steps: steps per call.
    mode: ``"scan"`` or ``"loop"``.

  Returns:
    ``chunk(state, start, keys, hparams, frozen, data) -> (state, metrics)`` with ``state``,
    ``keys`` and ``hparams`` batched over seeds (leading axis S) and ``data`` a
    :class:`TaskData` shared by all seeds; metric leaves are ``(S, chunk_steps)``.
  """
  if chunk_steps < 1 or batch_size < 1:
    raise ValueError(f"`chunk_steps` ({chunk_steps}) and `batch_size` ({batch_size}) must be "
                     "positive.")
  if mode not in CHUNK_MODES:
    raise ValueError(f"`mode` must be one of {CHUNK_MODES}; got {mode!r}.")

  def one_step(carry, step, key, hparams, frozen, data):
    params, opt_state = carry
    ip = batch_indices(jax.random.fold_in(key, 0), step, n=data.x_p.shape[0],
                       batch_size=batch_size)
    ih = batch_indices(jax.random.fold_in(key, 1), step, n=data.x_h.shape[0],
                       batch_size=batch_size)
    params, opt_state, m = step_fn(
        params, opt_state, (data.x_p[ip], data.y_p[ip]), (data.x_h[ih], data.y_h[ih]),
        jax.random.fold_in(key, step), hparams, frozen)
    return (params, opt_state), m

  if mode == "scan":
    def one_seed(state, start, key, hparams, frozen, data):
      (params, opt_state), m = lax.scan(
          lambda c, t: one_step(c, t, key, hparams, frozen, data), tuple(state),
          start + jnp.arange(chunk_steps))
      return TrainState(params, opt_state), m

    return jax.jit(jax.vmap(one_seed, in_axes=(0, None, 0, 0, None, None)))

  jitted_step = jax.jit(one_step)

  def chunk(state, start, keys, hparams, frozen, data):
    states, all_metrics = [], []
    for s in range(keys.shape[0]):
      carry, key, hp = tuple(_index(tuple(state), s)), keys[s], _index(hparams, s)
      ms = []
      for t in range(int(start), int(start) + chunk_steps):
        carry, m = jitted_step(carry, jnp.asarray(t), key, hp, frozen, data)
        ms.append(m)
      states.append(TrainState(*carry))
      all_metrics.append(_stack(ms))
    return _stack(states), _stack(all_metrics)

  return chunk


# ----------------------------------------------------------- pre-training θ0 (stand-in)


class PretrainState(NamedTuple):
  """Full model variables and the optimizer state of the pre-training run."""
  variables: dict
  opt_state: PyTree


def make_pretrain_chunk(model: nn.Module, optimizer: optax.GradientTransformation, *,
                        batch_size: int, chunk_steps: int, mode: str = "scan") -> Callable:
  """A chunk of ordinary supervised training of the whole model (to make θ0).

  Plain softmax cross-entropy, every parameter trained, BatchNorms in training mode (batch
  statistics, running averages updated). Minibatches as :func:`batch_indices`.

  Args:
    model: the model.
    optimizer: e.g. ``optax.adam(1e-3)``.
    batch_size: B.
    chunk_steps: steps per call.
    mode: ``"scan"`` (one compiled scan) or ``"loop"`` (Python loop over a compiled step;
      much faster on XLA:CPU, see :func:`make_chunk`).

  Returns:
    ``chunk(state, start, key, x, y) -> (state, metrics)`` with a :class:`PretrainState`
    (initialise with ``PretrainState(variables, optimizer.init(variables["params"]))``).
  """
  if mode not in CHUNK_MODES:
    raise ValueError(f"`mode` must be one of {CHUNK_MODES}; got {mode!r}.")

  def loss_fn(params, variables, x, y):
    logits, new_vars = models.apply(model, {**variables, "params": params}, x,
                                    output="logits", train=True, train_trunk_bn=True)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return loss, (new_vars, jnp.mean(jnp.argmax(logits, -1) == y))

  def body(st, step, key, x, y):
    idx = batch_indices(key, step, n=x.shape[0], batch_size=batch_size)
    (loss, (new_vars, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        st.variables["params"], st.variables, x[idx], y[idx])
    updates, opt_state = optimizer.update(grads, st.opt_state, st.variables["params"])
    params = optax.apply_updates(st.variables["params"], updates)
    return PretrainState({**new_vars, "params": params}, opt_state), {"loss": loss, "acc": acc}

  if mode == "scan":
    @jax.jit
    def chunk(state, start, key, x, y):
      return lax.scan(lambda st, t: body(st, t, key, x, y), state,
                      start + jnp.arange(chunk_steps))
    return chunk

  jitted = jax.jit(body)

  def loop_chunk(state, start, key, x, y):
    ms = []
    for t in range(int(start), int(start) + chunk_steps):
      state, m = jitted(state, jnp.asarray(t), key, x, y)
      ms.append(m)
    return state, _stack(ms)

  return loop_chunk


# ----------------------------------------------------------------------------- evaluation


@functools.partial(jax.jit, static_argnames=("model", "output", "from_trunk"))
def _apply_inference(model, variables, x, output, from_trunk):
  return model.apply(variables, x, output=output, from_trunk=from_trunk)


def apply_in_batches(model: nn.Module, variables: dict, x, *, output: str = "features",
                     batch_size: int = 256, from_trunk: bool = False) -> np.ndarray:
  """Inference-mode ``model.apply`` over a large array, in minibatches (one compilation).

  The last batch is zero-padded to ``batch_size`` so that every call has the same shape.

  Args:
    model: the model.
    variables: its variables.
    x: ``(N, ...)`` images (or trunk outputs when ``from_trunk``).
    output: ``"features"``, ``"logits"`` or ``"trunk"``.
    batch_size: batch size of each call.
    from_trunk: ``x`` is the trunk's output.

  Returns:
    ``(N, ...)`` numpy array in the model's dtype.
  """
  n = x.shape[0]
  if n == 0:
    raise ValueError("`x` is empty; pass at least one input.")
  outs = []
  for i in range(0, n, batch_size):
    xb = np.asarray(x[i:i + batch_size])
    m = xb.shape[0]
    if m < batch_size:
      xb = np.concatenate([xb, np.zeros((batch_size - m,) + xb.shape[1:], xb.dtype)])
    outs.append(np.asarray(_apply_inference(model, variables, xb, output, from_trunk))[:m])
  return np.concatenate(outs)


def accuracy(model: nn.Module, variables: dict, x, y, *, batch_size: int = 256,
             from_trunk: bool = False) -> float:
  """Top-1 accuracy of the pre-training head (D_P test accuracy of Table 3), in %.

  Args:
    model: the model.
    variables: its variables (inference mode).
    x: ``(N, ...)`` inputs; y: ``(N,)`` int labels.
    batch_size: evaluation batch size.
    from_trunk: ``x`` is the trunk's output.

  Returns:
    Accuracy in percent.
  """
  logits = apply_in_batches(model, variables, x, output="logits", batch_size=batch_size,
                            from_trunk=from_trunk)
  return 100.0 * float(metrics_lib.accuracy(logits, y))


class RIRTheta0(NamedTuple):
  """RIR_θ0 (Eq. 17) over groups: per-group arrays and their means / standard deviations.

  Attributes:
    ratio_h: ``(n_groups,)`` ratio (i) κ(H̃_H(θ_I)) / κ(H̃_H(θ0)) per group.
    ratio_p: ``(n_groups,)`` ratio (ii) κ(H̃_P(θ_I)) / κ(H̃_P(θ0)) per group.
    rir: ``(n_groups,)`` (i)/(ii) per group.
    mean: dict ``{"ratio_h", "ratio_p", "rir"}`` of means over groups (what Table 3 reports).
    std: the same keys, standard deviations over groups.
  """
  ratio_h: np.ndarray
  ratio_p: np.ndarray
  rir: np.ndarray
  mean: dict
  std: dict


def group_indices(key: Array, *, n_groups: int, group_size: int, n: int) -> Array:
  """``(n_groups, group_size)`` indices: each group drawn without replacement, independently."""
  if group_size > n:
    raise ValueError(f"`group_size` ({group_size}) exceeds the pool size ({n}); lower it.")
  keys = jax.random.split(key, n_groups)
  return jax.vmap(lambda k: jax.random.permutation(k, n)[:group_size])(keys)


@functools.partial(jax.jit, static_argnames=("kappa",))
def _rir_groups(phi_p, phi_h, phi_p0, phi_h0, idx_p, idx_h, kappa):
  def one(ip, ih):
    r = metrics_lib.rir_from_features(phi_p[ip], phi_h[ih], phi_p0[ip], phi_h0[ih],
                                      kappa=kappa)
    return r.ratio_h, r.ratio_p, r.rir
  return jax.vmap(one)(idx_p, idx_h)


def rir_theta0(phi_p, phi_h, phi_p0, phi_h0, key: Array, *, n_groups: int = 20,
               group_size: int = 100, kappa: str = "pinv") -> RIRTheta0:
  """RIR_θ0 (Eq. 17) from features of D_P and D_H pools under θ_I and θ0.

  Each of ``n_groups`` groups draws ``group_size`` D_P samples and ``group_size`` D_H samples
  (without replacement within a group); the four Grams ``ΦᵀΦ`` (Eq. 18, float64) give
  ``ratio_h = κ(H̃_H(θ_I))/κ(H̃_H(θ0))``, ``ratio_p = κ(H̃_P(θ_I))/κ(H̃_P(θ0))`` and
  ``rir = ratio_h / ratio_p`` for that group. The reported values are the **means of the
  per-group ratios** (what Table 3 reports: e.g. ResNet/Cars 2.386/0.699 ≠ 3.467).
  θ0's features are passed separately, so ``rir_theta0(a, b, a, b) == 1`` exactly (the
  authors' released evaluation passes the immunized extractor twice).

  Args:
    phi_p: ``(N_P, D)`` D_P features under θ_I.
    phi_h: ``(N_H, D)`` D_H features under θ_I.
    phi_p0: ``(N_P, D0)`` the same D_P inputs under θ0.
    phi_h0: ``(N_H, D0)`` the same D_H inputs under θ0.
    key: PRNG key for the groups (use the same key for every method of a seed).
    n_groups: number of groups (paper: 20).
    group_size: samples per group (paper: 100).
    kappa: ``"pinv"`` (Eq. 1, default) or ``"authors"`` (their 1e-6 recipe).

  Returns:
    :class:`RIRTheta0`.
  """
  arrs = [jnp.asarray(a, jnp.float64) for a in (phi_p, phi_h, phi_p0, phi_h0)]
  for name, a in zip(("phi_p", "phi_h", "phi_p0", "phi_h0"), arrs):
    if a.ndim != 2:
      raise ValueError(f"`{name}` must be (N, D) features; got shape {a.shape}.")
    spectral.check_finite(a, name)
  if arrs[0].shape[0] != arrs[2].shape[0] or arrs[1].shape[0] != arrs[3].shape[0]:
    raise ValueError("θ_I and θ0 features must be of the same inputs: `phi_p`/`phi_p0` and "
                     "`phi_h`/`phi_h0` need equal numbers of rows.")
  kp, kh = jax.random.split(key)
  idx_p = group_indices(kp, n_groups=n_groups, group_size=group_size, n=arrs[0].shape[0])
  idx_h = group_indices(kh, n_groups=n_groups, group_size=group_size, n=arrs[1].shape[0])
  rh, rp, rr = (np.asarray(a) for a in _rir_groups(*arrs, idx_p, idx_h, kappa))
  per = {"ratio_h": rh, "ratio_p": rp, "rir": rr}
  return RIRTheta0(rh, rp, rr, {k: float(np.mean(v)) for k, v in per.items()},
                   {k: float(np.std(v)) for k, v in per.items()})


class ProbeCurve(NamedTuple):
  """A linear-probing trajectory (Fig. 3).

  Attributes:
    test_accuracy: ``(epochs + 1,)`` test accuracy in % after 0, 1, … epochs.
    train_loss: ``(epochs + 1,)`` mean training cross-entropy at the same points.
  """
  test_accuracy: Array
  train_loss: Array


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size"))
def probe_curve(phi_train, y_train, phi_test, y_test, key: Array, *, num_classes: int,
                epochs: int, batch_size: int, lr, momentum=0.9) -> ProbeCurve:
  """Linear probing of frozen features: the attacker of Fig. 3.

  Softmax regression ``(w, b)`` from zero on the raw (unnormalised) features, trained with
  minibatch SGD + heavy-ball momentum at a fixed learning rate — the same optimizer for every
  extractor, so the curves compare how fast the same first-order attacker adapts (an
  ill-conditioned ``ΦᵀΦ`` slows it down). Minibatches as :func:`batch_indices`. Float64.

  Args:
    phi_train: ``(N, D)`` harmful training features; y_train: ``(N,)`` labels.
    phi_test: ``(M, D)`` harmful test features; y_test: ``(M,)`` labels.
    key: PRNG key of the minibatch order.
    num_classes: C_H.
    epochs: probing epochs.
    batch_size: probe minibatch size (drop_last).
    lr: learning rate (scalar).
    momentum: momentum (scalar).

  Returns:
    :class:`ProbeCurve`.
  """
  phi_train = jnp.asarray(phi_train, jnp.float64)
  phi_test = jnp.asarray(phi_test, jnp.float64)
  n, d = phi_train.shape
  per_epoch = n // batch_size
  opt = optax.sgd(lr, momentum=momentum)
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


# ------------------------------------------------------------------------------ drivers


def immunize(spec: Spec, hparams: HParams, state: TrainState, frozen: dict, data: TaskData,
             keys: Array, *, batch_size: int, total_steps: int, chunk_steps: int,
             mode: str = "scan", checkpointer=None, on_progress=None) -> TrainState:
  """Runs :func:`make_chunk` under :func:`immujax.training.run_chunked` (resumable).

  Args:
    spec: the :class:`Spec`.
    hparams: :class:`HParams` with a leading seed axis S.
    state: initial :class:`TrainState` with a leading seed axis (:func:`init_state`).
    frozen: ``{"trunk", "batch_stats"}`` shared by all seeds.
    data: :class:`TaskData` (images, or trunk outputs when ``spec.from_trunk``).
    keys: ``(S,)`` typed PRNG keys, one per seed.
    batch_size: minibatch size of D_P and of D_H.
    total_steps: steps of the run (a multiple of ``chunk_steps``).
    chunk_steps: steps per compiled chunk (checkpoint and progress between chunks).
    mode: ``"scan"`` or ``"loop"`` (see :func:`make_chunk`).
    checkpointer: an :class:`immujax.checkpoint.Checkpointer` to save to and resume from.
    on_progress: callback receiving :class:`immujax.training.Progress`.

  Returns:
    The final :class:`TrainState` (seed axis first).
  """
  chunk = make_chunk(make_train_step(spec), batch_size=batch_size, chunk_steps=chunk_steps,
                     mode=mode)
  state = TrainState(*state)
  final, _ = training.run_chunked(
      lambda st, start: chunk(TrainState(*st), start, keys, hparams, frozen, data), state,
      total_steps=total_steps, chunk_steps=chunk_steps, checkpointer=checkpointer,
      on_progress=on_progress)
  return TrainState(*final)


def pretrain(model: nn.Module, variables: dict, x, y, key: Array, *,
             optimizer: optax.GradientTransformation, batch_size: int, total_steps: int,
             chunk_steps: int, mode: str = "scan", checkpointer=None,
             on_progress=None) -> dict:
  """Supervised training of the whole model (θ0 of the stand-in), resumable.

  Args:
    model: the model.
    variables: initial variables.
    x: ``(N, H, W, C)`` images; y: ``(N,)`` int labels.
    key: PRNG key of the minibatch order.
    optimizer: an optax optimizer over ``variables["params"]``.
    batch_size, total_steps, chunk_steps, mode, checkpointer, on_progress: as
      :func:`immunize`.

  Returns:
    The trained variables (running BatchNorm statistics included).
  """
  chunk = make_pretrain_chunk(model, optimizer, batch_size=batch_size,
                              chunk_steps=chunk_steps, mode=mode)
  state = PretrainState(variables, optimizer.init(variables["params"]))
  x, y = jnp.asarray(x), jnp.asarray(y)
  final, _ = training.run_chunked(
      lambda st, start: chunk(PretrainState(*st), start, key, x, y), state,
      total_steps=total_steps, chunk_steps=chunk_steps, checkpointer=checkpointer,
      on_progress=on_progress)
  return PretrainState(*final).variables

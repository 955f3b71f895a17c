"""The immunization objectives of the methods on deep features (Eq. 11).

With ``Φ = f_θ(X)`` the pooled features of a minibatch and ``H̃ = ΦᵀΦ``
(:func:`immujax.deep.network.gram64`, float64), the methods minimise:

=================  =======================================================================
``ours``           ``L_P + λ_P·R_well(Φ_PᵀΦ_P) + λ_H·R_ill(Φ_HᵀΦ_H)``          (Eq. 11)
``r_ill_only``     ``L_P + λ_H·R_ill(Φ_HᵀΦ_H)``  (keeps L_P, as the authors' ``max_only``)
``opt_kappa``      ``L_P + λ_κ·(log κ(Φ_PᵀΦ_P) + 1/log κ(Φ_HᵀΦ_H))``: the authors'
                   ``ImmuLoss(loss_type="kappa")`` with its default ``λ_r1 = λ_r2 = 1``
                   (written for these minibatch feature Grams)
``opt_kappa_log``  ``L_P + λ_κ·(log κ(Φ_PᵀΦ_P) − log κ(Φ_HᵀΦ_H))`` (the earlier form)
``imma``           ``L_P − λ_imma·CE_H(w_T)``, ``w_T`` = a linear probe after ``T``
                   unrolled gradient steps on the harmful minibatch (bi-level, Zheng &
                   Yeh 2024; the linear study's ``imma`` alternates with a warm-started
                   head instead, its ``imma_unrolled`` is this scheme)
=================  =======================================================================

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

**Precision.** The Grams, their eigendecompositions, the regularizers, log κ and the IMMA
inner loop are float64 (needs ``jax_enable_x64``, checked by :func:`require_x64`). The
supervised loss runs in the model's dtype.

References:
  Zheng, Bai, Bullins, Yeh. "Model Immunization from a Condition Number Perspective",
  ICML 2025, Eq. 11, 18, Sec. 5.3.
  Zheng & Yeh. "IMMA: Immunizing text-to-image models against malicious adaptation",
  ECCV 2024.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from immujax import baselines
from immujax import regularizers
from immujax import spectral
from immujax.deep.network import forward
from immujax.deep.network import gram64

Array = jax.Array

METHODS = ("ours", "r_ill_only", "opt_kappa", "opt_kappa_log", "imma")


class HParams(NamedTuple):
  """Hyperparameters that may differ across a vmap (all scalar float arrays).

  Attributes:
    lr: SGD learning rate η.
    lambda_p: λ_P, weight of R_well(Φ_PᵀΦ_P) (the authors' ``lambda_r1``).
    lambda_h: λ_H, weight of R_ill(Φ_HᵀΦ_H) (the authors' ``lambda_r2``).
    lambda_kappa: λ_κ, weight of ``log κ(S_P) + 1/log κ(S_H)`` (``opt_kappa``) or of
      ``log κ(S_P) − log κ(S_H)`` (``opt_kappa_log``).
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


def require_x64() -> None:
  if not jax.config.jax_enable_x64:
    raise ValueError(
        "immujax.deep forms the feature Grams and regularizers in float64; call "
        "jax.config.update('jax_enable_x64', True) at program start.")


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
    inv_lk_h = baselines.inverse_log_condition_number(s_h, rtol=spec.rtol)
    loss = ce_p + hparams.lambda_kappa * (lk_p + inv_lk_h)
  elif spec.method == "opt_kappa_log":
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


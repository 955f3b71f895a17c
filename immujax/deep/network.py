"""The deep model split for immunization: trainable and frozen parts, forward pass, Grams.

A deep model is ``head ∘ extractor ∘ trunk`` (:mod:`immujax.models`). Only the immunized
extractor θ and the head ω train; the trunk and every BatchNorm running statistic stay frozen
(BatchNorms run in inference mode). With ``Φ = f_θ(X)`` the pooled features of a minibatch,
:func:`gram64` forms ``H̃ = ΦᵀΦ``, the linear-probe Hessian of Eq. 18, in float64.

**Precision.** The trunk and the extractor may run in float32 (or bfloat16: set the model's
``dtype``); the features are cast to float64 before the Gram matrices are formed.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from immujax import models

Array = jax.Array


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

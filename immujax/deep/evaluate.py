"""Evaluation of an immunized deep model: D_P accuracy and RIR_θ0 over groups (Eq. 17).

:func:`rir_theta0` (Eq. 17, θ0 kept separately, mean of per-group ratios over ``n`` groups of
``k`` samples) and :func:`accuracy` (top-1 of the pre-training head). The attackers and the
relative fine-tuning difficulty of their curves are in :mod:`immujax.deep.finetune`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from immujax import metrics as metrics_lib
from immujax import spectral
from immujax.deep.network import apply_in_batches

Array = jax.Array


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
    r = metrics_lib.rir_from_features(phi_p=phi_p[ip], phi_h=phi_h[ih], phi_p_ref=phi_p0[ip],
                                      phi_h_ref=phi_h0[ih], kappa=kappa)
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



def relative_finetuning_difficulty(acc_reference, acc_immunized) -> np.ndarray:
  """Relative fine-tuning difficulty (RFD, %): the mean relative harmful-accuracy gap.

  For an attack trajectory scored at evaluation points ``t = 1..T`` (e.g. after every epoch)
  on the reference model θ0 (``a_0(t)``) and on the immunized model θ_I (``a_I(t)``), under
  the same attacker (same optimizer, learning rate and minibatch order)::

      RFD = 100 · (1/T) · Σ_t (a_0(t) − a_I(t)) / a_0(t).

  RFD = 0 when immunization does not slow the attacker at all, 100 % when the attacker gains
  nothing on θ_I, and it is negative when θ_I is *easier* to attack than θ0. Only the points
  passed are averaged: drop step 0 when the attacker starts from a fresh zero head (both
  models then predict the same class and the gap is 0 by construction; the deep-net binary
  does this).

  Args:
    acc_reference: ``(..., T)`` accuracies of the attacker on θ0 (any unit, all > 0).
    acc_immunized: ``(..., T)`` accuracies of the same attacker on θ_I, broadcastable.

  Returns:
    ``(...)`` float64 RFD in percent.

  Example:
    >>> float(relative_finetuning_difficulty([50.0, 80.0], [25.0, 80.0]))
    25.0
  """
  a0 = np.asarray(acc_reference, dtype=np.float64)
  ai = np.asarray(acc_immunized, dtype=np.float64)
  if a0.ndim == 0 or a0.shape[-1] == 0:
    raise ValueError("`acc_reference` must hold at least one evaluation point on its last "
                     f"axis; got shape {a0.shape}.")
  for name, a in (("acc_reference", a0), ("acc_immunized", ai)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f"`{name}` holds NaN or inf; pass finite accuracies.")
  if np.any(a0 <= 0):
    raise ValueError("`acc_reference` must be > 0 at every evaluation point (RFD divides by "
                     "it); drop the points where the reference attacker has 0 accuracy, e.g. "
                     "step 0.")
  try:
    gap = (a0 - ai) / a0
  except ValueError as e:
    raise ValueError(f"`acc_immunized` {ai.shape} does not broadcast against "
                     f"`acc_reference` {a0.shape}; pass curves over the same points.") from e
  return 100.0 * np.mean(gap, axis=-1)


def table3_row(model: nn.Module, variables: dict, x_p, x_h, phi_p0, phi_h0, x_p_test,
               y_p_test, key: Array, *, n_groups: int = 20, group_size: int = 100,
               kappa: str = "pinv", batch_size: int = 256, from_trunk: bool = False) -> dict:
  """One immunized model's row of Table 3: ratios (i), (ii), RIR_θ0 and D_P test accuracy.

  Args:
    model: the model.
    variables: the immunized model's variables (θ_I, its head, the frozen rest).
    x_p, x_h: D_P and D_H pools for the RIR_θ0 groups (trunk outputs if ``from_trunk``).
    phi_p0, phi_h0: θ0's features of the same pools.
    x_p_test, y_p_test: the D_P test split for the accuracy.
    key: PRNG key of the groups (:func:`rir_theta0`).
    n_groups, group_size, kappa: as :func:`rir_theta0`.
    batch_size: inference batch size.
    from_trunk: inputs are trunk outputs.

  Returns:
    ``{"ratio_h", "ratio_p", "rir_theta0", "rir_theta0_group_std", "dp_accuracy"}`` (floats;
    the ratios are the means over groups, the accuracy in %).
  """
  def feats(x):
    return apply_in_batches(model, variables, x, batch_size=batch_size, from_trunk=from_trunk)
  r = rir_theta0(feats(x_p), feats(x_h), phi_p0, phi_h0, key, n_groups=n_groups,
                 group_size=group_size, kappa=kappa)
  return {"ratio_h": r.mean["ratio_h"], "ratio_p": r.mean["ratio_p"],
          "rir_theta0": r.mean["rir"], "rir_theta0_group_std": r.std["rir"],
          "dp_accuracy": accuracy(model, variables, x_p_test, y_p_test, batch_size=batch_size,
                                  from_trunk=from_trunk)}

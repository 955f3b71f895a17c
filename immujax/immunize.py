"""Algorithm 1 (condition-number regularized gradient descent) and the linear baselines.

Paper mode, exactly Alg. 1 with full-batch covariances computed once::

    ω_{t+1} = ω_t − η ∇_ω L(ω_t, θ_t; D_P)
    θ_{t+1} = θ_t − η ∇_θ L(ω_t, θ_t; D_P)
                  − η λ_P K_P⁻¹ ∇_θ R_well(θ_tᵀK_Pθ_t) − η λ_H K_H⁻¹ ∇_θ R_ill(θ_tᵀK_Hθ_t)

The preconditioned directions are evaluated in closed form, ``K⁻¹∇_θR(θᵀKθ) = 2θ∇_S R``
(Thm 4.2) — no inverse, and defined for singular K. The supervised gradient is not
preconditioned. Gradient descent is ``optax.sgd`` (any optax optimizer may be passed).

All methods (:data:`METHODS`) are points of one weight space (:class:`Weights`): every step
computes the two probe Hessians and ONE eigendecomposition of each, from which R_well, R_ill,
log κ (and every Opt κ form, a scalar factor on ∇log κ) and their gradients are read off;
IMMA's attacker steps cost O(D²) each. A method is therefore just an array of weights, and
seeds × tasks × methods batch with ``jax.vmap`` into one compiled program without
``lax.switch`` (which under vmap would run every branch).

``x`` conventions: θ is ``(D_in, D_hid)``, features ``X @ θ``, ω is ``(D_hid,)``.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from immujax import baselines
from immujax import extreme_eigs
from immujax import regularizers
from immujax import spectral

Array = jax.Array

METHODS = ("ours", "r_ill_only", "opt_kappa", "opt_kappa_log", "opt_kappa_loglog", "imma",
           "imma_unrolled")
"""Every method name (``immujax.baselines`` defines the baselines). The study's defaults are
``ours, r_ill_only, opt_kappa, imma``; ``opt_kappa_log``, ``opt_kappa_loglog`` and
``imma_unrolled`` are variants for comparison."""

IMMA_INNER_STEPS = 1
"""Attacker steps on IMMA's harmful head per outer step: IMMA's own default
(``--inner_loop_steps=1 --outer_loop_steps=1``) and the authors' intended ``% 2`` alternation."""


class Task(NamedTuple):
  """A linear immunization problem; every field is an array, so tasks batch with vmap.

  Attributes:
    x_p: inputs of the supervised pre-training task, ``(N_P, D_in)``; or, with ``rows``, a
      pool ``(M, D_in)`` the task draws its inputs from (:func:`supervised_inputs`).
    y_p: its targets, ``(N_P,)`` (regression values or {0, 1} labels).
    k_p: covariance of D_P used by R_well and κ(H_P), ``(D_in, D_in)``.
    k_h: covariance of D_H used by R_ill and κ(H_H), ``(D_in, D_in)``.
    q_h: ``XᵀX`` of the harmful *supervised* task (IMMA's attacker), ``(D_in, D_in)``.
    b_h: ``Xᵀy`` of the harmful task, ``(D_in,)``.
    c_h: ``yᵀy`` of the harmful task, scalar.
    n_h: number of harmful examples, scalar.
    rows: optional ``(N_P,)`` int row indices: the supervised inputs are ``x_p[rows]``. A
      batch of tasks may then share ONE pool ``x_p`` (2-D, not batched; see
      ``sweep.task_axes``) — the 90 MNIST pairs draw from the same 10 digits, and per-pair
      copies of full MNIST would take 6 GB.
    root_p, root_h: optional ``(r, D_in)`` roots with ``rootᵀroot = k`` on K's range
      (``spectral.covariance_root``, both with the same ``r``). Given, the probe Hessians are
      formed as ``(Rθ)ᵀ(Rθ)`` and decomposed through the ``r × r`` Gram
      (``spectral.gram_extremes``): the same spectra for (r/D)³ of the eigendecomposition
      cost. ``k_p``/``k_h`` stay the reference (κ(K) in metrics).
  """
  x_p: Array
  y_p: Array
  k_p: Array
  k_h: Array
  q_h: Array
  b_h: Array
  c_h: Array
  n_h: Array
  rows: Array | None = None
  root_p: Array | None = None
  root_h: Array | None = None


def make_task(x_p, y_p, x_h, y_h, *, x_p_kappa=None, x_h_kappa=None) -> Task:
  """Builds a :class:`Task`, computing the covariances once (Alg. 1, lines 1–2).

  Args:
    x_p: D_P inputs ``(N_P, D_in)``; y_p: D_P targets ``(N_P,)``.
    x_h: D_H inputs ``(N_H, D_in)``; y_h: D_H targets ``(N_H,)`` (IMMA only).
    x_p_kappa: inputs defining ``K_P`` if different from ``x_p`` (MNIST: the images of the
      pre-training digit, while the supervised task also has negatives).
    x_h_kappa: inputs defining ``K_H`` if different from ``x_h``.

  Returns:
    A :class:`Task` (float64 when x64 is enabled).
  """
  x_p = spectral._as_float(x_p, "x_p")
  x_h = spectral._as_float(x_h, "x_h")
  y_p = spectral._as_float(y_p, "y_p")
  y_h = spectral._as_float(y_h, "y_h")
  for name, x, y in (("x_p", x_p, y_p), ("x_h", x_h, y_h)):
    if x.ndim != 2:
      raise ValueError(f"`{name}` must be (N, D_in); got shape {x.shape}.")
    if y.shape != (x.shape[0],):
      raise ValueError(
          f"targets for `{name}` must have shape ({x.shape[0]},); got {y.shape}. Pass one "
          "scalar target per row.")
  if x_p.shape[1] != x_h.shape[1]:
    raise ValueError(
        f"`x_p` has D_in={x_p.shape[1]} but `x_h` has D_in={x_h.shape[1]}; both tasks must "
        "share the input space.")
  k_p = spectral.covariance(x_p if x_p_kappa is None else x_p_kappa)
  k_h = spectral.covariance(x_h if x_h_kappa is None else x_h_kappa)
  if k_p.shape[0] != x_p.shape[1] or k_h.shape[0] != x_p.shape[1]:
    raise ValueError("`x_p_kappa` / `x_h_kappa` must have the same D_in as `x_p`.")
  return Task(x_p, y_p, k_p, k_h, spectral.covariance(x_h), x_h.T @ y_h, y_h @ y_h,
              jnp.asarray(x_h.shape[0], x_h.dtype))


class Weights(NamedTuple):
  """Per-run objective weights (arrays, so methods batch with vmap).

  Attributes:
    supervised: weight of the D_P loss L(D_P, ω, θ).
    r_well: λ_P, weight of R_well(H_P) (direction preconditioned by K_P⁻¹).
    r_ill: λ_H, weight of R_ill(H_H) (preconditioned by K_H⁻¹).
    log_kappa_p: weight on +log κ(H_P) (``opt_kappa``, ``opt_kappa_log``).
    log_kappa_h: weight on −log κ(H_H) (``opt_kappa_log``).
    inv_log_kappa_h: weight on +1/log κ(H_H) (``opt_kappa``, the authors' ``ImmuLoss``).
    log_log_kappa_p: weight on +log(log κ(H_P)) (``opt_kappa_loglog``).
    inv_log_log_kappa_h: weight on +1/log(log κ(H_H)) (``opt_kappa_loglog``).
    imma: weight on −L_H(θ, w) with ``w`` the warm-started harmful head (``imma``); a
      non-zero weight also switches the run's inner attacker steps on.
    imma_unrolled: weight on −L_H(θ, w_T(θ)), ``T`` unrolled attacker steps from 0.
    precondition: 1 applies Alg. 1's K⁻¹ preconditioner to the spectral terms (Ours), 0
      uses their plain gradient ``2Kθ∇_S`` (the baselines, "via gradient descent").
    adaptive: 1 re-balances the two regularizers at every step instead of once at θ0:
      λ_P,t = r_well / σ_1(H_P(θ_t)) (a fixed fraction of Thm 4.3(1)'s stability limit when
      ``r_well = c/η``) and λ_H,t = r_ill·λ_P,t‖∇R_well‖_F / (r_well‖∇R_ill‖_F), i.e. the
      R_ill gradient is rescaled to the R_well gradient's norm (BUILD_NOTES, "Balancing").
  """
  supervised: Array
  r_well: Array
  r_ill: Array
  log_kappa_p: Array
  log_kappa_h: Array
  inv_log_kappa_h: Array
  log_log_kappa_p: Array
  inv_log_log_kappa_h: Array
  imma: Array
  imma_unrolled: Array
  precondition: Array
  adaptive: Array


_USES = {
    "ours": ("r_well", "r_ill"),
    "r_ill_only": ("r_ill",),
    "opt_kappa": ("log_kappa_p", "inv_log_kappa_h"),
    "opt_kappa_log": ("log_kappa_p", "log_kappa_h"),
    "opt_kappa_loglog": ("log_log_kappa_p", "inv_log_log_kappa_h"),
    "imma": ("imma",),
    "imma_unrolled": ("imma_unrolled",),
}


def method_terms(method: str) -> tuple[str, ...]:
  """The :class:`Weights` fields (besides ``supervised``) that ``method`` weighs."""
  if method not in _USES:
    raise ValueError(f"`method` must be one of {tuple(_USES)}; got {method!r}.")
  return _USES[method]


_TERMS = ("r_well", "r_ill", "log_kappa_p", "log_kappa_h", "inv_log_kappa_h",
          "log_log_kappa_p", "inv_log_log_kappa_h", "imma", "imma_unrolled")


def method_weights(method: str, *, supervised: float = 1.0, precondition: bool | None = None,
                   adaptive: bool = False, **terms: float) -> Weights:
  """The weights of a named method; terms the method does not use are zeroed.

  Args:
    method: one of ``METHODS``.
    supervised: weight of the D_P loss.
    **terms: weights of the objective terms, by :class:`Weights` field name (``r_well``,
      ``r_ill``, ``log_kappa_p``, ``log_kappa_h``, ``inv_log_kappa_h``, ``log_log_kappa_p``,
      ``inv_log_log_kappa_h``, ``imma``, ``imma_unrolled``); unused ones are ignored.
    precondition: K⁻¹-precondition the spectral terms; default True for ``"ours"``
      (Alg. 1) and False for the baselines (plain gradient descent).

  Returns:
    :class:`Weights` with the method's terms only.
  """
  if method not in _USES:
    raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")
  unknown = sorted(set(terms) - set(_TERMS))
  if unknown:
    raise ValueError(f"unknown term weight(s) {unknown}; the terms are {_TERMS}.")
  vals = {k: (terms.get(k, 0.0) if k in _USES[method] else 0.0) for k in _TERMS}
  if precondition is None:
    precondition = method == "ours"
  return Weights(supervised=jnp.asarray(supervised, float),
                 precondition=jnp.asarray(float(precondition)),
                 adaptive=jnp.asarray(float(adaptive)),
                 **{k: jnp.asarray(v, float) for k, v in vals.items()})


# --- supervised losses ------------------------------------------------------------------------

def mse_loss(logits: Array, targets: Array) -> Array:
  """Mean squared error, ``‖Φω − y‖² / N`` (the authors' house-price loss)."""
  return jnp.mean((logits - targets) ** 2)


def bce_loss(logits: Array, targets: Array) -> Array:
  """Mean binary cross-entropy with logits (the authors' MNIST loss)."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))


LOSSES: dict[str, Callable[[Array, Array], Array]] = {"mse": mse_loss, "bce": bce_loss}


def supervised_inputs(task: Task) -> Array:
  """The supervised D_P inputs ``X_P`` ``(N_P, D_in)`` (``x_p[rows]`` for a pooled task)."""
  return task.x_p if task.rows is None else task.x_p[task.rows]


def supervised_loss(theta: Array, omega: Array, task: Task, loss: str) -> Array:
  """``L(D_P, ω, θ)`` with logits ``X_P θ ω``.

  A pooled task computes the logits of the whole pool and picks its rows: under ``vmap``
  with a shared pool that is one ``(M, D) × (D, runs)`` product, and no per-task copy of
  the inputs is ever formed.
  """
  logits = task.x_p @ (theta @ omega)
  if task.rows is not None:
    logits = logits[task.rows]
  return LOSSES[loss](logits, task.y_p)


# --- one step ---------------------------------------------------------------------------------

class Terms(NamedTuple):
  """Per-step diagnostics (scalars per run).

  ``eig_residual`` is the largest ``‖Sv − λv‖/‖S‖`` of the four extreme pairs the step used
  (both ends of H_P and H_H), and ``eig_ok`` says whether the warm-started extremes
  (:mod:`immujax.extreme_eigs`) passed their checks; both are 0 / True on the exact path.
  ``log_kappa_p``/``log_kappa_h`` are log κ of the two Hessians whatever form of it a method
  optimises. ``imma`` is the harmful loss an IMMA run maximises: ``L_H(θ, w)`` at the
  adapted head (``imma``), or after the unrolled attacker (runs with an ``imma_unrolled``
  weight); 0 when neither is computed.
  """
  supervised: Array
  r_well: Array
  r_ill: Array
  log_kappa_p: Array
  log_kappa_h: Array
  imma: Array
  eig_residual: Array
  eig_ok: Array


class Params(NamedTuple):
  theta: Array
  omega: Array


def direction(params: Params, task: Task, weights: Weights, *, loss: str = "mse",
              imma_steps: int = 5, rtol: float | None = None,
              preconditioned_only: bool = False, basis: extreme_eigs.Basis | None = None,
              exact: bool = False, harmful_head: Array | None = None,
              spectral_terms: tuple[str, ...] | None = None
              ) -> tuple[Params, Terms, extreme_eigs.Basis | None]:
  """The update direction of Alg. 1 (and the baselines) at ``params``.

  Returns ``(d, terms, basis)`` where ``d`` is what gradient descent subtracts (times η):
  ``d_ω = ∇_ω L`` and ``d_θ = ∇_θ L + 2M_P G_P + 2M_H G_H − λ_imma ∇_θ L_H(θ, w)
  − λ_unrolled ∇_θ L_H(θ, w_T(θ))``, with ``M = θ`` (K⁻¹-preconditioned) or ``Kθ`` (plain)
  and the S-gradients
  ``G_P = λ_P∇R_well(H_P) + (λ_κP + λ_llP/log κ_P)·∇log κ(H_P)``,
  ``G_H = λ_H∇R_ill(H_H) − (λ_κH + λ_ilH/log² κ_H + λ_illH/(log κ_H log²log κ_H))·∇log κ(H_H)``
  — every Opt κ form is a scalar factor on ∇log κ (:mod:`immujax.baselines`).

  Args:
    params: current ``Params(theta, omega)``.
    task: the :class:`Task`.
    weights: the method's :class:`Weights`.
    loss: supervised loss name, ``"mse"`` or ``"bce"`` (static).
    imma_steps: the unrolled IMMA's attacker steps (static; 0 skips ``imma_unrolled``'s term).
    rtol: relative "non-zero" tolerance for rank and σ_min (static).
    preconditioned_only: static promise that every spectral term is preconditioned
      (``weights.precondition == 1``, e.g. a batch of Ours runs only): the plain-gradient
      products ``Kθ G`` are then not formed (a third fewer matmuls with roots).
    basis: warm-start blocks of the two probe Hessians (``Basis`` with a leading axis of 2:
      P, H), for tasks with roots. Given, the extremes come from
      :func:`extreme_eigs.warm` instead of a full ``eigh``; ``None`` uses ``eigh``.
    exact: with ``basis``, compute the extremes with ``eigh`` anyway (static) and return
      the basis for the next step — the fallback for runs whose warm check failed.
    harmful_head: IMMA's adapted harmful head ``w`` ``(D_hid,)``; given, the term
      ``−λ_imma ∇_θ L_H(θ, w)`` (``w`` held fixed) is added. ``None`` skips it.
    spectral_terms: static promise about a batch of one method's runs (see
      ``sweep.method_statics``): only these spectral weights (of :data:`SPECTRAL_TERMS`)
      may be non-zero, no run is ``adaptive``, and every run is preconditioned if
      ``preconditioned_only`` else none is. The S-gradients are then applied in factored
      form where that is cheaper — a rank-one term ``c·vvᵀ`` through ``(Kθv)vᵀ`` with
      ``Kθv = Rᵀ(Bv)``, an ``S`` term of the plain gradient through ``Rᵀ(BBᵀ)B`` — and the
      unused terms are not formed: Opt κ and IMMA form no ``D × D`` Hessian and no ``D³``
      product, R_ill Only only the harmful Gram's. ``None`` (default): any weights, the
      dense ``G`` of every term. Ours (both regularizers, preconditioned) takes the dense
      path either way.

  Returns:
    ``(Params of directions, Terms of values, next basis or None)``.
  """
  theta, omega = params
  sup, (g_theta, g_omega) = jax.value_and_grad(supervised_loss, argnums=(0, 1))(
      theta, omega, task, loss)
  kp_theta, kh_theta, h_p, h_h, e_p, e_h, basis, check = _hessians_and_extremes(
      theta, task, rtol, basis=basis, exact=exact)
  well = regularizers.r_well_value_and_grad(h_p, e_p)
  ill = regularizers.r_ill_value_and_grad(h_h, e_h, rtol=rtol)
  lk_p = baselines.log_kappa_value_and_grad(h_p, e_p)
  lk_h = baselines.log_kappa_value_and_grad(h_h, e_h)
  # ∇_θ R(θᵀKθ) = 2KθG, and K⁻¹ times it is 2θG: sum the G's acting through each Hessian
  # first, then multiply once by θ (preconditioned) or by the Kθ already formed for H.
  # Per-step balancing (weights.adaptive = 1): λ_P,t = r_well/σ_1(H_P), and R_ill's gradient
  # rescaled to R_well's Frobenius norm; O(D²) extra work.
  ada = weights.adaptive
  inv_s1 = 1.0 / jnp.where(e_p.sigma_max > 0, e_p.sigma_max, 1.0)
  n_well, n_ill = jnp.linalg.norm(well.grad), jnp.linalg.norm(ill.grad)
  ratio = n_well * inv_s1 / jnp.where(n_ill > 0, n_ill, 1.0)
  lam_well = weights.r_well * (ada * inv_s1 + (1.0 - ada))
  lam_ill = weights.r_ill * (ada * ratio + (1.0 - ada))
  # Opt κ, all forms: d/dS φ(log κ) = φ'(log κ)·∇log κ, so each is a scalar on ∇log κ.
  c_p = (weights.log_kappa_p
         + weights.log_log_kappa_p * baselines.log_log_form(lk_p.value).slope)
  c_h = (-weights.log_kappa_h
         + weights.inv_log_kappa_h * baselines.inverse_log_form(lk_h.value).slope
         + weights.inv_log_log_kappa_h * baselines.inverse_log_log_form(lk_h.value).slope)
  dense = (spectral_terms is None
           or (preconditioned_only and {"r_well", "r_ill"} & set(spectral_terms)))
  if dense:
    g_p = lam_well * well.grad + c_p * lk_p.grad
    g_h = lam_ill * ill.grad + c_h * lk_h.grad
    if preconditioned_only:
      d_spectral = theta @ (g_p + g_h)
    else:
      pre = weights.precondition
      m_p = pre * theta + (1.0 - pre) * kp_theta
      m_h = pre * theta + (1.0 - pre) * kh_theta
      d_spectral = m_p @ g_p + m_h @ g_h
  else:
    d_spectral = _factored_spectral_direction(
        theta, task, weights, e_p, e_h, c_p, c_h, used=frozenset(spectral_terms),
        preconditioned=preconditioned_only)
  d_theta = weights.supervised * g_theta + 2.0 * d_spectral
  imma_loss = jnp.zeros_like(sup)
  if harmful_head is not None:  # static: IMMA's outer step at the adapted head, w fixed
    imma_loss, g_imma = jax.value_and_grad(baselines.harmful_loss)(
        theta, jax.lax.stop_gradient(harmful_head), task.q_h, task.b_h, task.c_h, task.n_h)
    d_theta = d_theta - weights.imma * g_imma
  if imma_steps > 0:  # static: batches without imma_unrolled skip its unrolled attacker
    unrolled_loss, g_unrolled = jax.value_and_grad(baselines.imma_harmful_loss)(
        theta, task.q_h, task.b_h, task.c_h, task.n_h, steps=imma_steps)
    d_theta = d_theta - weights.imma_unrolled * g_unrolled
    imma_loss = (unrolled_loss if harmful_head is None
                 else jnp.where(weights.imma_unrolled != 0, unrolled_loss, imma_loss))
  d_omega = weights.supervised * g_omega
  terms = Terms(sup, well.value, ill.value, lk_p.value, lk_h.value, imma_loss,
                jnp.max(jnp.maximum(check.residual_max, check.residual_min)),
                jnp.all(check.ok))
  return Params(d_theta, d_omega), terms, basis


#: The weights of the spectral terms (:class:`Weights` fields), see ``direction``.
SPECTRAL_TERMS = ("r_well", "r_ill", "log_kappa_p", "log_kappa_h", "inv_log_kappa_h",
                  "log_log_kappa_p", "inv_log_log_kappa_h")


def _rank_one_parts(weights, e_p, e_h, c_p, c_h, *, used, n):
  """The S-gradients of ``direction`` as ``G_X = a_X·S_X + Σ c_i v_i v_iᵀ`` per Hessian.

  Returns ``(a_p, coefs_p (k,), vecs_p (k, n), a_h, coefs_h, vecs_h)``, term by term
  equal to the dense gradients of :mod:`immujax.regularizers` and
  :func:`baselines.log_kappa_value_and_grad` (``tests/test_immunize.py`` checks it); a
  term outside ``used`` is left out (its weight is 0 by the caller's promise).
  """
  def log_kappa(e):
    positive = e.sigma_min > 0
    smax = jnp.where(positive, e.sigma_max, 1.0)
    smin = jnp.where(positive, e.sigma_min, 1.0)
    return ([jnp.where(positive, jnp.sign(e.lambda_max) / smax, 0.0),
             jnp.where(positive, -jnp.sign(e.lambda_min) / smin, 0.0)], [e.v_max, e.v_min])

  zero = jnp.zeros((), e_p.sigma_max.dtype)
  a_p = a_h = zero
  cp, vp, ch, vh = [], [], [], []
  if "r_well" in used:            # ∇R_well = λ_1 v_1v_1ᵀ − S/n
    a_p = -weights.r_well / n
    cp.append(weights.r_well * e_p.lambda_max)
    vp.append(e_p.v_max)
  if "r_ill" in used:             # ∇R_ill = (λ_k v_kv_kᵀ − S/k)/Δ², 0 where Δ ≤ 0
    kk = jnp.maximum(e_h.rank, 1).astype(zero.dtype)
    delta = e_h.frobenius_sq / (2 * kk) - 0.5 * e_h.sigma_min**2
    positive = delta > 0
    scale = jnp.where(positive, weights.r_ill / jnp.where(positive, delta, 1.0)**2, 0.0)
    a_h = -scale / kk
    ch.append(scale * e_h.lambda_min)
    vh.append(e_h.v_min)
  if used & {"log_kappa_p", "log_log_kappa_p"}:
    c, v = log_kappa(e_p)
    cp += [c_p * x for x in c]
    vp += v
  if used & {"log_kappa_h", "inv_log_kappa_h", "inv_log_log_kappa_h"}:
    c, v = log_kappa(e_h)
    ch += [c_h * x for x in c]
    vh += v
  stack = lambda c, v: ((jnp.stack(c), jnp.stack(v)) if c else (None, None))
  return (a_p, *stack(cp, vp), a_h, *stack(ch, vh))


def _factored_spectral_direction(theta, task, weights, e_p, e_h, c_p, c_h, *, used,
                                 preconditioned):
  """``Σ_X M_X G_X`` of ``direction`` from the factored ``G_X`` (``M = θ`` or ``Kθ``)."""
  a_p, coefs_p, vecs_p, a_h, coefs_h, vecs_h = _rank_one_parts(
      weights, e_p, e_h, c_p, c_h, used=used, n=theta.shape[1])
  out = jnp.zeros_like(theta)
  for a, coefs, vecs, k, root, s_term in (
      (a_p, coefs_p, vecs_p, task.k_p, task.root_p, "r_well" in used),
      (a_h, coefs_h, vecs_h, task.k_h, task.root_h, "r_ill" in used)):
    if preconditioned:             # rank-one terms only: `direction` applies S terms densely
      if coefs is not None:
        out = out + (theta @ vecs.T * coefs) @ vecs
      continue
    if root is None:               # K itself: Kθv = K(θv), KθS = Kθ(θᵀKθ)
      if coefs is not None:
        out = out + (k @ (theta @ vecs.T) * coefs) @ vecs
      if s_term:
        k_theta = k @ theta
        out = out + a * (k_theta @ _sym(theta.T @ k_theta))
      continue
    b = root @ theta
    if coefs is not None:          # (Kθv)vᵀ with Kθv = Rᵀ(Bv)
      out = out + (root.T @ (b @ vecs.T) * coefs) @ vecs
    if s_term:                     # KθS = Rᵀ B BᵀB = Rᵀ (BBᵀ) B
      out = out + a * (root.T @ ((b @ b.T) @ b))
  return out


def _hessians_and_extremes(theta, task, rtol, *, basis=None, exact=False):
  """``(Kθ for P and H, H_P, H_H, Extremes of both, next basis, Check)``.

  Both Hessians are decomposed in ONE batched call: besides halving dispatch overhead,
  stacking them avoids two concurrent LAPACK custom calls, which deadlocked XLA:CPU's small
  intra-op thread pool on this 2-core machine (jaxlib 0.10.2; see BUILD_NOTES.md). With
  roots (``Task.root_p``) the spectra come from the ``r × r`` Grams — warm-started
  (:func:`extreme_eigs.warm`) when a ``basis`` is given, else one ``eigh`` each; ``Kθ =
  Rᵀ(Rθ)`` is then formed only if a caller uses it (XLA drops it otherwise, e.g. for
  ``preconditioned_only`` steps).
  """
  if task.root_p is None:
    if basis is not None:
      raise ValueError("warm-started extremes need tasks with roots (`Task.root_p`); build "
                       "the tasks with roots or start the runs without a basis.")
    kp_theta, kh_theta = task.k_p @ theta, task.k_h @ theta
    h_p = _sym(theta.T @ kp_theta)
    h_h = _sym(theta.T @ kh_theta)
    e = jax.vmap(functools.partial(spectral.extremes, rtol=rtol))(jnp.stack([h_p, h_h]))
    zero = jnp.zeros((2,), theta.dtype)
    check = extreme_eigs.Check(zero, zero, jnp.zeros((2,), jnp.int32), jnp.ones((2,), bool))
  else:
    b_p, b_h = task.root_p @ theta, task.root_h @ theta
    h_p, h_h = _sym(b_p.T @ b_p), _sym(b_h.T @ b_h)
    kp_theta, kh_theta = task.root_p.T @ b_p, task.root_h.T @ b_h
    bs = jnp.stack([b_p, b_h])
    if basis is None:
      e = jax.vmap(functools.partial(spectral.gram_extremes, rtol=rtol))(bs)
      zero = jnp.zeros((2,), theta.dtype)
      check = extreme_eigs.Check(zero, zero, jnp.zeros((2,), jnp.int32), jnp.ones((2,), bool))
    elif exact:
      e, basis, check = jax.vmap(functools.partial(
          extreme_eigs.exact, block=basis.bottom.shape[-1], rtol=rtol))(bs)
    else:
      e, basis, check = jax.vmap(functools.partial(extreme_eigs.warm, rtol=rtol))(bs, basis)
  e_p = jax.tree.map(lambda a: a[0], e)
  e_h = jax.tree.map(lambda a: a[1], e)
  return kp_theta, kh_theta, h_p, h_h, e_p, e_h, basis, check


def initial_basis(theta: Array, task: Task, *, block: int = extreme_eigs.DEFAULT_BLOCK,
                  rtol: float | None = None) -> extreme_eigs.Basis:
  """Warm-start blocks for both probe Hessians at ``theta`` (one exact ``eigh`` each).

  Returns:
    :class:`extreme_eigs.Basis` with a leading axis of 2 (P, H), blocks ``(2, r, block)``.
  """
  if task.root_p is None:
    raise ValueError("`task` has no roots (`Task.root_p`); warm-started extremes work on the "
                     "rank × rank Grams of the root path.")
  bs = jnp.stack([task.root_p @ theta, task.root_h @ theta])
  _, basis, _ = jax.vmap(functools.partial(extreme_eigs.exact, block=block, rtol=rtol))(bs)
  return basis


def _flush_subnormal(x):
  # Subnormal floats (from directions a method shrinks towards 0) are harmless for the maths
  # but make CPU arithmetic and LAPACK orders of magnitude slower: flush them to zero.
  return jnp.where(jnp.abs(x) < jnp.finfo(x.dtype).tiny, jnp.zeros_like(x), x)


def _sym(h):
  return 0.5 * (h + h.T)


class State(NamedTuple):
  """Training state of one run (a pytree of arrays; batched runs stack it).

  ``basis`` holds the warm-start blocks of the extreme eigenvectors of both probe Hessians
  (:func:`initial_basis`); it is part of the state so that it is checkpointed and a resumed
  run stays bit-identical. ``None`` runs every step with a full ``eigh``.

  ``harmful_head`` is IMMA's harmful probe ``w`` ``(D_hid,)``, adapted by the attacker's
  steps and warm-started from one outer step to the next (and across chunks and resumes, so
  it is checkpointed too). It stays zero for every other method (:func:`init_state`).
  """
  params: Params
  opt_state: optax.OptState
  step: Array
  basis: extreme_eigs.Basis | None = None
  harmful_head: Array | None = None


def _clipped_sgd(learning_rate, max_norm):
  return optax.chain(optax.clip_by_global_norm(max_norm), optax.sgd(learning_rate))


def sgd(learning_rate, max_norm=jnp.inf) -> optax.GradientTransformation:
  """Gradient descent (Alg. 1) with an optional cap on the update direction's global norm.

  Both hyperparameters live in the optimizer state (``optax.inject_hyperparams``), so runs
  with different values batch with vmap. ``max_norm = inf`` is plain gradient descent.
  """
  return optax.inject_hyperparams(_clipped_sgd)(learning_rate=learning_rate,
                                                max_norm=max_norm)


def init_params(key: Array, d_in: int, d_hid: int | None = None, *,
                init: str = "orthogonal", dtype=jnp.float64) -> Params:
  """Initial extractor and head.

  Args:
    key: a PRNG key.
    d_in: input dimension.
    d_hid: feature dimension (default ``d_in``, the paper's square θ).
    init: ``"orthogonal"`` (default: a Haar-random orthogonal θ0, which leaves every
      spectrum unchanged, so RIR(θ0) = 1 exactly while seeds start from different points),
      ``"identity"`` (θ0 = I), or ``"torch_default"`` (U(−1/√D_in, 1/√D_in), what the
      authors' ``nn.Linear`` used).
    dtype: parameter dtype.

  Returns:
    ``Params(theta (d_in, d_hid), omega (d_hid,))`` with ω ~ N(0, 1/d_hid).
  """
  d_hid = d_in if d_hid is None else d_hid
  k_theta, k_omega = jax.random.split(key)
  if init == "orthogonal":
    theta = jax.random.orthogonal(k_theta, max(d_in, d_hid), dtype=dtype)[:d_in, :d_hid]
  elif init == "identity":
    theta = jnp.eye(d_in, d_hid, dtype=dtype)
  elif init == "torch_default":
    bound = 1.0 / jnp.sqrt(d_in)
    theta = jax.random.uniform(k_theta, (d_in, d_hid), dtype, -bound, bound)
  else:
    raise ValueError(
        f"`init` must be 'orthogonal', 'identity' or 'torch_default'; got {init!r}.")
  omega = jax.random.normal(k_omega, (d_hid,), dtype) / jnp.sqrt(d_hid)
  return Params(theta, omega)


def init_state(params: Params, learning_rate, max_norm=jnp.inf,
               optimizer: Callable[..., optax.GradientTransformation] = sgd,
               basis: extreme_eigs.Basis | None = None) -> State:
  """Wraps initial params with the optimizer state; hyperparameters may be arrays.

  Pass ``basis`` (:func:`initial_basis`) to run the steps with warm-started extremes. The
  harmful head (IMMA) starts at zero, shape ``(D_hid,)``.
  """
  tx = optimizer(learning_rate, max_norm)
  return State(params, tx.init(params), jnp.zeros((), jnp.int32), basis,
               jnp.zeros_like(params.omega))


def direction_norm(params: Params, task: Task, weights: Weights, **kwargs) -> Array:
  """Global norm of :func:`direction` at ``params`` (used to set a run's ``max_norm``)."""
  d, _, _ = direction(params, task, weights, **kwargs)
  return optax.global_norm(d)


def adapt_harmful_head(theta: Array, head: Array, task: Task, weights: Weights, *,
                       steps: int) -> Array:
  """IMMA's inner steps: the attacker adapts the harmful head at fixed θ (warm start).

  Only runs with an ``imma`` weight move their head; every other run keeps it (at zero),
  without a branch (``jnp.where``), so all methods still batch together.

  Args:
    theta: extractor ``(D_in, D_hid)``.
    head: the head carried over from the previous step ``(D_hid,)``.
    task: the :class:`Task` (harmful statistics ``q_h``, ``b_h``).
    weights: the run's :class:`Weights`.
    steps: attacker steps (static; :data:`IMMA_INNER_STEPS` by default in the drivers).

  Returns:
    The next head ``(D_hid,)``.
  """
  new = baselines.imma_inner(theta, head, task.q_h, task.b_h, steps=steps)
  return jnp.where(weights.imma != 0, new, head)


@functools.partial(jax.jit, static_argnames=("steps", "loss", "imma_steps", "imma_inner_steps",
                                             "rtol", "optimizer", "preconditioned_only",
                                             "exact", "spectral_terms"))
def run_steps(state: State, task: Task, weights: Weights, *, steps: int, loss: str = "mse",
              imma_steps: int = 5, imma_inner_steps: int = IMMA_INNER_STEPS,
              rtol: float | None = None,
              optimizer: Callable[..., optax.GradientTransformation] = sgd,
              preconditioned_only: bool = False, exact: bool = False,
              spectral_terms: tuple[str, ...] | None = None) -> tuple[State, Terms]:
  """Runs ``steps`` iterations of Alg. 1 with ``lax.scan`` (one compiled chunk).

  The optimizer's hyperparameters live in ``state.opt_state`` (see :func:`sgd`), so this
  function is pure in ``(state, task, weights)`` and vmaps over all three. With
  ``state.basis`` the extremes are warm-started (``exact=True`` forces ``eigh`` while still
  carrying the basis: the fallback path).

  Each step of an IMMA run first adapts its harmful head (``imma_inner_steps`` attacker
  steps from the previous head, :func:`adapt_harmful_head`), then takes the outer step at
  ``(θ_t, w_{t+1})``; ``imma_inner_steps = 0`` (static) skips both for batches without IMMA.
  ``imma_steps`` is the unrolled variant's attacker length (0 skips it).
  ``preconditioned_only`` and ``spectral_terms`` are :func:`direction`'s static promises.

  Returns:
    ``(final state, Terms stacked over steps)``.
  """
  tx = optimizer(0.0, 0.0)  # hyperparameters are read from the injected state, not here
  if imma_inner_steps > 0 and state.harmful_head is None:
    raise ValueError("IMMA's inner steps need `state.harmful_head`; build the state with "
                     "`init_state` or pass imma_inner_steps=0.")

  def body(state, _):
    head = state.harmful_head
    if imma_inner_steps > 0:
      head = adapt_harmful_head(state.params.theta, head, task, weights,
                                steps=imma_inner_steps)
    d, terms, basis = direction(state.params, task, weights, loss=loss,
                                imma_steps=imma_steps, rtol=rtol,
                                preconditioned_only=preconditioned_only, basis=state.basis,
                                exact=exact, spectral_terms=spectral_terms,
                                harmful_head=head if imma_inner_steps > 0 else None)
    updates, opt_state = tx.update(d, state.opt_state, state.params)
    params = jax.tree.map(_flush_subnormal, optax.apply_updates(state.params, updates))
    return State(params, opt_state, state.step + 1, basis, head), terms

  return jax.lax.scan(body, state, None, length=steps)


def balanced_weights(params0: Params, task: Task, *, learning_rate: float,
                     step_scale: float, imma_steps: int = 5,
                     imma_inner_steps: int = IMMA_INNER_STEPS,
                     harmful_scale: float = 1.0,
                     basis: extreme_eigs.Basis | None = None) -> dict[str, Array]:
  """Regularizer weights "balanced by gradient norm" (paper, Sec. 6), made concrete.

  λ_P is set so the R_well step is a fixed fraction of its stability limit
  (``η λ_P σ_1(H_P(θ0)) = step_scale``; Thm 4.3(1) needs ``< 1/(1 − 1/D)``), and every other
  term's weight so that its (preconditioned) direction at θ0 has the same Frobenius norm as
  λ_P's R_well direction — preconditioned for Ours' R_ill (``r_ill``), plain gradient for
  the baselines (``r_ill_plain``, every Opt κ form, both IMMAs). Computed once, at θ0.
  ``harmful_scale`` then multiplies every harmful-side weight (``r_ill``, ``r_ill_plain``,
  ``log_kappa_h``, ``inv_log_kappa_h``, ``inv_log_log_kappa_h``, ``imma``,
  ``imma_unrolled``): their directions start at that multiple of R_well's norm.

  Every Opt κ form is a scalar ``φ'(log κ)`` times ∇log κ, so at θ0 the three Opt κ variants
  take exactly the same first step; they differ as κ moves. IMMA's weight is balanced on
  ``∇_θ L_H(θ0, w_1)`` with ``w_1`` the head after its first inner steps from 0 — the head
  its first outer step uses (at ``w = 0`` that gradient is 0).

  Args:
    params0: initial parameters.
    task: the :class:`Task`.
    learning_rate: η.
    step_scale: the R_well step as a fraction of its stability limit.
    imma_steps: the unrolled IMMA's attacker steps; 0 (static) skips it (weight 0).
    imma_inner_steps: IMMA's inner steps per outer step; 0 (static) skips it (weight 0).
    harmful_scale: weight of the harmful-side terms relative to the balanced ones (1 =
      equal norms, the paper's "balancing"; the paper's own λ values are unknown).
    basis: warm-start blocks at θ0 (:func:`initial_basis`); given, the extremes come from
      :func:`extreme_eigs.warm` (converged at once) instead of another ``eigh``.

  Returns:
    Dict with keys ``r_well, r_ill, r_ill_plain, log_kappa_p, log_kappa_h, inv_log_kappa_h,
    log_log_kappa_p, inv_log_log_kappa_h, imma, imma_unrolled``.
  """
  theta = params0.theta
  kp_theta, kh_theta, h_p, h_h, e_p, e_h, _, _ = _hessians_and_extremes(theta, task, None,
                                                                       basis=basis)
  lam_p = step_scale / (learning_rate * e_p.sigma_max)
  norm = lambda m, g: jnp.linalg.norm(2.0 * m @ g)
  target = lam_p * norm(theta, regularizers.r_well_value_and_grad(h_p, e_p).grad)
  harmful = harmful_scale * target
  g_ill = regularizers.r_ill_value_and_grad(h_h, e_h).grad
  lk_p = baselines.log_kappa_value_and_grad(h_p, e_p)
  lk_h = baselines.log_kappa_value_and_grad(h_h, e_h)
  n_lk_p, n_lk_h = norm(kp_theta, lk_p.grad), norm(kh_theta, lk_h.grad)

  def weight(goal, n, slope=1.0):
    # goal / (|φ'|·‖2Kθ∇log κ‖), and 0 where the term has no gradient at θ0.
    den = jnp.abs(slope) * n
    return jnp.where(den > 0, goal / jnp.where(den > 0, den, 1.0), 0.0)

  zero = jnp.zeros_like(target)
  imma = imma_unrolled = zero
  if imma_inner_steps > 0:
    head1 = baselines.imma_inner(theta, jnp.zeros_like(params0.omega), task.q_h, task.b_h,
                                 steps=imma_inner_steps)
    g = jax.grad(baselines.harmful_loss)(theta, head1, task.q_h, task.b_h, task.c_h, task.n_h)
    imma = weight(harmful, jnp.linalg.norm(g))
  if imma_steps > 0:  # static: skip the unrolled attacker when no run uses it
    g = jax.grad(baselines.imma_harmful_loss)(
        theta, task.q_h, task.b_h, task.c_h, task.n_h, steps=imma_steps)
    imma_unrolled = weight(harmful, jnp.linalg.norm(g))
  return dict(
      r_well=lam_p,
      r_ill=harmful / norm(theta, g_ill),
      r_ill_plain=harmful / norm(kh_theta, g_ill),
      log_kappa_p=weight(target, n_lk_p),
      log_kappa_h=weight(harmful, n_lk_h),
      inv_log_kappa_h=weight(harmful, n_lk_h, baselines.inverse_log_form(lk_h.value).slope),
      log_log_kappa_p=weight(target, n_lk_p, baselines.log_log_form(lk_p.value).slope),
      inv_log_log_kappa_h=weight(harmful, n_lk_h,
                                 baselines.inverse_log_log_form(lk_h.value).slope),
      imma=imma,
      imma_unrolled=imma_unrolled,
  )


def balanced_method_weights(method: str, balanced: dict[str, Array], *,
                            precondition_baselines: bool = False,
                            adaptive: bool = False, learning_rate: float | None = None,
                            step_scale: float | None = None) -> Weights:
  """:class:`Weights` of ``method`` from the output of :func:`balanced_weights`.

  Args:
    method: one of ``METHODS``.
    balanced: the dict returned by :func:`balanced_weights`.
    precondition_baselines: ablation — give R_ill Only and the Opt κ variants Alg. 1's
      preconditioner (their weights are then re-balanced on the preconditioned norm only for
      R_ill).
    adaptive: Ours re-balances λ_P, λ_H at every step (see :class:`Weights`).
    learning_rate, step_scale: η and c, needed when ``adaptive``.

  Returns:
    :class:`Weights`.
  """
  b = balanced
  if method not in METHODS:
    raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")
  if method == "ours" and adaptive:
    if learning_rate is None or step_scale is None:
      raise ValueError("adaptive balancing needs `learning_rate` and `step_scale`.")
    c = step_scale / learning_rate
    return method_weights("ours", r_well=c, r_ill=c, adaptive=True)
  if method == "ours":
    return method_weights("ours", r_well=b["r_well"], r_ill=b["r_ill"])
  if method == "r_ill_only":
    return method_weights("r_ill_only", precondition=precondition_baselines,
                          r_ill=b["r_ill"] if precondition_baselines else b["r_ill_plain"])
  if method.startswith("opt_kappa"):
    return method_weights(method, precondition=precondition_baselines,
                          **{k: b[k] for k in _USES[method]})
  return method_weights(method, **{k: b[k] for k in _USES[method]})

"""Linear-probing attackers: the threat model of Zheng et al. (ICML 2025).

A bad actor holds the features ``Φ = Xθ`` (shape ``(N, D)``) of the harmful data and their
targets ``Y`` (shape ``(N,)`` or ``(N, C)``) and fits a linear probe ``w`` on frozen features
(paper Eq. 4 and Eq. 8)::

  min_w  L(w) = ‖Φ w − Y‖²_F,      ∇L(w) = 2Φᵀ(Φw − Y),      ∇²L = 2ΦᵀΦ.

An immunized feature extractor makes ``κ(2ΦᵀΦ)`` large, so every first-order attacker needs
more steps. This module provides the attackers, all with one calling convention::

  attacker(features, targets, key, *, steps, init="zeros", return_iterates=False, ...)
      -> Trajectory

Every attacker is a pure function of arrays built on ``lax.scan``. Wrap it once as
``jax.jit(attacker, static_argnames=("steps", "init", "return_iterates"))`` (``init`` must
then be a string) or jit a ``jax.vmap`` of it over batches of features, targets and keys.
Un-jitted calls work, but each one re-traces the scan. Method hyperparameters (step sizes,
momenta, learning rates) may be arrays, so they can be vmapped too. A lone ``key`` of ``None``
is fine when ``init="zeros"``. Under jit, pass it consistently (always a key, or always
``None``), since the two spellings compile separately.

**Adaptive budgets.** :func:`run_until` runs any of these attackers in a ``lax.while_loop``
until it reaches given tolerances, or a cap (10⁷ steps cost only what is needed), on the
probe's sufficient statistics in the eigenbasis of ``ΦᵀΦ`` (:func:`quadratic_probe`): every
rotation-invariant attacker then costs ``O(D)`` per step, Adam ``O(D²)``. A count that hit the
cap is the sentinel ``cap + 1``. ``immujax.evaluation`` builds the slow-down tables on it.

**Metrics.** The per-step metrics are computed inside the scan, so memory is
``O(steps)`` unless ``return_iterates=True``. With ``w* = Φ⁺Y`` (the minimum-norm least-squares
solution) and ``L* = L(w*)``:

* ``norm_ratio[t] = ‖P(w_t − w*)‖² / ‖P(w_0 − w*)‖²`` (paper Eq. 16), where ``P`` is the
  orthogonal projector onto ``range(Φᵀ)``. ``‖P(w − w*)‖`` is the Euclidean distance from
  ``w`` to the set of minimizers ``w* + null(Φ)``. When ``Φ`` has full column rank, ``P = I``
  and this is exactly Eq. 16. For a rank-deficient ``Φ`` (the House-Prices features have rank
  74 of 79), plain ``‖w_t − w*‖`` would plateau at the null-space part of the error for any
  iterate that leaves ``range(Φᵀ)`` (Adam, or a random ``init``). GD, momentum methods, CG and
  L-BFGS started at ``w_0 = 0`` stay in ``range(Φᵀ)`` (every update is a combination of
  gradients ``2Φᵀr``), so for them the projection is a no-op up to rounding. In that case the
  reported value is the plain Eq. 16 ratio with the min-norm ``w*``.
* ``excess_loss[t] = (L(w_t) − L*) / (L(w_0) − L*)``. This equals
  ``‖w_t − w*‖²_H / ‖w_0 − w*‖²_H`` in the Hessian norm.
* ``loss[t] = L(w_t)``. It is evaluated as ``L* + ‖diag(σ) Vᵀ(w_t − w*)‖²`` from the SVD
  ``Φ = U diag(σ) Vᵀ``. That is identical to ``‖Φw_t − Y‖²`` in exact arithmetic. It avoids
  the cancellation in ``L(w_t) − L*``, so excess losses down to ~1e-30 remain measurable
  in float64.

"Non-zero" singular values follow numpy's ``matrix_rank``: ``σ_i > max(N, D)·eps·σ_max``.
``μ`` and ``L`` (the strong-convexity and smoothness constants used by the tuned attackers) are
the smallest and largest non-zero eigenvalues ``2σ_i²`` of the Hessian. The condition number is
``κ = L/μ``.

**Expected slow-down with κ** (steps to reach a fixed norm ratio ε; the tests check this):
``gd_constant_step`` and ``gd_exact_line_search`` need ``~ (κ/4)·log(1/ε)`` steps, so they scale
as ``κ``. ``heavy_ball``, ``nesterov`` and ``conjugate_gradient`` scale as ``√κ``. ``lbfgs``
is roughly ``√κ`` or better on quadratics. ``adam`` is a heuristic with no κ guarantee.
``closed_form`` takes 1 step whatever ``κ`` is.

References:
  Zheng, Bai, Bullins, Yeh. "Model Immunization from a Condition Number Perspective",
  ICML 2025, Eq. 2, Eq. 8, Eq. 16 and Fig. 1.
  Nocedal & Wright, "Numerical Optimization", 2nd ed.: Ch. 3 (exact line search),
  Ch. 5 (CG; CGLS is CG on the normal equations) and Ch. 7 (L-BFGS).
  Polyak (1964) for heavy ball; Nesterov, "Lectures on Convex Optimization" (2018),
  Sec. 2.2 for constant-step accelerated gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Init = Union[str, ArrayLike]

__all__ = [
    "ATTACKERS",
    "LOGISTIC_ATTACKERS",
    "ProbeProblem",
    "Trajectory",
    "adam",
    "closed_form",
    "conjugate_gradient",
    "gd_constant_step",
    "gd_exact_line_search",
    "heavy_ball",
    "lbfgs",
    "logistic_gd",
    "logistic_lbfgs",
    "logistic_reference",
    "nesterov",
    "QuadraticProbe",
    "Reached",
    "probe_problem",
    "quadratic_probe",
    "run_until",
    "slowdown_factor",
    "steps_to_tolerance",
]


class Trajectory(NamedTuple):
  """The result of one attack.

  ``T`` is the number of steps and ``W`` is the probe shape: ``(D,)`` for targets ``(N,)``,
  or ``(D, C)`` for targets ``(N, C)``. Under ``jax.vmap``, every field gains the batch axis
  in front.

  Attributes:
    w: ``W``. The final probe ``w_T``.
    loss: ``(T+1,)``. ``L(w_t)`` for ``t = 0..T``: ``‖Φw_t − Y‖²_F`` for the ℓ2 probe, or the
      ridge-regularized mean BCE for the logistic probe.
    norm_ratio: ``(T+1,)``. Eq. 16, ``‖w_t − w*‖² / ‖w_0 − w*‖²``. The ℓ2 probe measures it in
      ``range(Φᵀ)`` (see the module docstring). It is defined as 0 when ``w_0`` is already
      optimal.
    excess_loss: ``(T+1,)``. ``(L(w_t) − L*) / (L(w_0) − L*)``, with the same 0/0 := 0
      convention.
    step_size: ``(T,)``. The scalar step used at step ``t``: the line-search step (exact,
      zoom or CG ``α_t``), the constant step for GD and the momentum methods, and the learning
      rate for Adam. ``closed_form`` reports 1.
    iterates: ``(T+1,) + W`` when ``return_iterates=True``, otherwise ``None``.
    accuracy: ``(T+1,)``. Training accuracy of the logistic probe. ``None`` for the ℓ2 probe.
  """

  w: Array
  loss: Array
  norm_ratio: Array
  excess_loss: Array
  step_size: Array
  iterates: Optional[Array] = None
  accuracy: Optional[Array] = None


class ProbeProblem(NamedTuple):
  """Spectral summary of the ℓ2 probe ``min_w ‖Φw − Y‖²`` (see :func:`probe_problem`).

  ``k = min(N, D)``. ``W`` is ``(D,)`` or ``(D, C)``.

  Attributes:
    w_star: ``W``. The min-norm least-squares solution ``Φ⁺Y``.
    loss_star: ``()``. ``L* = ‖(I − ΦΦ⁺)Y‖²``.
    vt: ``(k, D)``. Right singular vectors of ``Φ`` (rows).
    sigma: ``(k,)``. Singular values of ``Φ``, descending. Those at or below the rank
      tolerance are set to exactly 0.
    rank: ``()`` int. The number of non-zero singular values.
    hess_max: ``()``. ``L = 2σ_max²``, the largest Hessian eigenvalue.
    hess_min: ``()``. ``μ = 2σ_min²``, the smallest non-zero Hessian eigenvalue (0 if
      ``Φ = 0``).
  """

  w_star: Array
  loss_star: Array
  vt: Array
  sigma: Array
  rank: Array
  hess_max: Array
  hess_min: Array


# ----------------------------------------------------------------------------------------
# Small numerics helpers.


def _safe_div(num: Array, den: Array, *, if_zero: ArrayLike = 0.0) -> Array:
  """``num / den`` where ``den > 0``, else ``if_zero``, with NaN-free gradients (double where)."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), if_zero)


def _vdot(a: Array, b: Array) -> Array:
  return jnp.sum(a * b)


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


# ----------------------------------------------------------------------------------------
# Input validation (static shapes at the public edge; values only when concrete).


def _check_steps(steps: Any) -> int:
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
    raise ValueError(
        f"steps must be a non-negative Python int (it sets the static scan length); got "
        f"{steps!r}. Pass e.g. steps=100, and mark it static under jit "
        f"(functools.partial(attacker, steps=100))."
    )
  return int(steps)


def _check_features_targets(
    features: ArrayLike, targets: ArrayLike, *, targets_name: str = "targets",
    allow_matrix_targets: bool = True,
) -> tuple[Array, Array]:
  """Validates ``features (N, D)`` and ``targets (N,)|(N, C)`` and returns them as arrays."""
  phi = jnp.asarray(features)
  y = jnp.asarray(targets)
  if phi.ndim != 2:
    raise ValueError(
        f"features must be a 2-D array (N, D) of probe features Φ = Xθ; got shape "
        f"{phi.shape}. Flatten the per-example features to (N, D); to batch several "
        f"problems use jax.vmap."
    )
  if not jnp.issubdtype(phi.dtype, jnp.floating):
    raise ValueError(
        f"features must have a floating dtype; got {phi.dtype}. Cast with "
        f"features.astype(jnp.float64) (enable jax_enable_x64 for spectral accuracy)."
    )
  ok_ndim = (1, 2) if allow_matrix_targets else (1,)
  if y.ndim not in ok_ndim or y.shape[0] != phi.shape[0]:
    want = "(N,) or (N, C)" if allow_matrix_targets else "(N,)"
    raise ValueError(
        f"{targets_name} must have shape {want} with N = features.shape[0] = "
        f"{phi.shape[0]}; got {y.shape}. Give one row of {targets_name} per feature row."
    )
  if jnp.issubdtype(y.dtype, jnp.floating):
    dtype = jnp.result_type(phi.dtype, y.dtype)
  else:
    dtype = phi.dtype
  phi = phi.astype(dtype)
  y = y.astype(dtype)
  # Value checks only outside jit, and in numpy (no per-shape XLA compiles).
  if _is_concrete(phi) and not np.all(np.isfinite(np.asarray(phi))):
    raise ValueError("features contain NaN or inf; clean or impute them before probing.")
  if _is_concrete(y) and not np.all(np.isfinite(np.asarray(y))):
    raise ValueError(f"{targets_name} contain NaN or inf; clean them before probing.")
  return phi, y


def _init_weights(init: Init, key: Optional[ArrayLike], shape: tuple[int, ...],
                  dtype: Any) -> Array:
  """``w_0``: ``"zeros"``, ``"normal"`` (N(0, 1) entries, like the paper's code) or an array."""
  if isinstance(init, str):
    if init == "zeros":
      return jnp.zeros(shape, dtype)
    if init == "normal":
      if key is None:
        raise ValueError(
            'init="normal" needs a PRNG key; pass key=jax.random.key(seed) or use '
            'init="zeros".'
        )
      return jax.random.normal(key, shape, dtype)
    raise ValueError(
        f'init must be "zeros", "normal" or an array of shape {shape}; got {init!r}.'
    )
  w0 = jnp.asarray(init)
  if w0.shape != shape:
    raise ValueError(
        f"init array must have the probe shape {shape} (D[, C]); got {w0.shape}."
    )
  return w0.astype(dtype)


# ----------------------------------------------------------------------------------------
# The ℓ2 probe: spectral summary, metrics and the scan driver.


def probe_problem(features: ArrayLike, targets: ArrayLike, *,
                  rtol: Optional[ArrayLike] = None) -> ProbeProblem:
  """Spectral summary of ``min_w ‖Φw − Y‖²_F`` via one thin SVD of ``Φ``.

  With ``Φ = U diag(σ) Vᵀ`` and ``m_i = [σ_i > rtol·σ_max]``:
  ``w* = V diag(m/σ) UᵀY`` (the min-norm solution ``Φ⁺Y``),
  ``L* = ‖Y − U diag(m) UᵀY‖²``, ``L = 2σ_max²`` and ``μ = 2 min_{m_i} σ_i²``.

  Args:
    features: ``(N, D)`` probe features ``Φ``.
    targets: ``(N,)`` or ``(N, C)`` targets ``Y``.
    rtol: relative rank tolerance on the singular values of ``Φ``. Defaults to
      ``max(N, D)·eps``, the ``numpy.linalg.matrix_rank`` convention.

  Returns:
    A :class:`ProbeProblem`.
  """
  phi, y = _check_features_targets(features, targets)
  return _probe_problem(phi, y, rtol=rtol)


def _probe_problem(phi: Array, y: Array, *, rtol: Optional[ArrayLike] = None) -> ProbeProblem:
  n, d = phi.shape
  if rtol is None:
    rtol = max(n, d) * jnp.finfo(phi.dtype).eps
  u, s, vt = jnp.linalg.svd(phi, full_matrices=False)
  mask = s > rtol * s[0]
  s_nz = jnp.where(mask, s, 0.0)
  inv_s = _safe_div(1.0, s_nz)
  uty = u.T @ y                                            # (k[, C])
  scale = inv_s if y.ndim == 1 else inv_s[:, None]
  w_star = vt.T @ (scale * uty)
  proj = uty * (mask if y.ndim == 1 else mask[:, None])
  loss_star = jnp.sum((y - u @ proj) ** 2)
  rank = jnp.sum(mask)
  s_min = jnp.min(jnp.where(mask, s, jnp.inf))
  hess_min = jnp.where(rank > 0, 2.0 * s_min**2, 0.0)
  return ProbeProblem(w_star=w_star, loss_star=loss_star, vt=vt, sigma=s_nz, rank=rank,
                      hess_max=2.0 * s[0] ** 2, hess_min=hess_min)


def _l2_metrics(prob: ProbeProblem, w: Array) -> tuple[Array, Array]:
  """``(‖P(w − w*)‖², L(w) − L*)`` from the SVD, in ``O(kD)``."""
  z = prob.vt @ (w - prob.w_star)                          # (k[, C])
  m = (prob.sigma > 0).astype(z.dtype)
  s = prob.sigma
  if z.ndim == 2:
    m, s = m[:, None], s[:, None]
  return jnp.sum(m * z**2), jnp.sum((s * z) ** 2)


def _trajectory_from_stats(w, dist2, excess, loss, step_size, iterates, accuracy=None):
  """Normalizes the raw ``(T+1,)`` distances and excess losses by their ``t = 0`` values."""
  d0, e0 = dist2[0], excess[0]
  inf = jnp.asarray(jnp.inf, dist2.dtype)
  norm_ratio = _safe_div(dist2, d0, if_zero=jnp.where(dist2 > 0, inf, 0.0))
  excess_loss = _safe_div(excess, e0, if_zero=jnp.where(excess > 0, inf, 0.0))
  return Trajectory(w=w, loss=loss, norm_ratio=norm_ratio, excess_loss=excess_loss,
                    step_size=step_size, iterates=iterates, accuracy=accuracy)


def _run_l2(prob: ProbeProblem, w0: Array, state0: Any,
            step_fn: Callable[[Any, Array], tuple[Any, Array, Array]], *, steps: int,
            return_iterates: bool) -> Trajectory:
  """Scans ``step_fn(state, w) -> (state, w_next, step_size)`` for ``steps`` steps and records
  the metrics of every iterate inside the scan."""

  def body(carry, _):
    state, w = carry
    state, w, alpha = step_fn(state, w)
    dist2, excess = _l2_metrics(prob, w)
    out = (dist2, excess, jnp.asarray(alpha, w.dtype), w if return_iterates else None)
    return (state, w), out

  (_, w_final), (dist2, excess, alphas, ws) = lax.scan(body, (state0, w0), None,
                                                       length=steps)
  d0, e0 = _l2_metrics(prob, w0)
  dist2 = jnp.concatenate([d0[None], dist2])
  excess = jnp.concatenate([e0[None], excess])
  iterates = jnp.concatenate([w0[None], ws]) if return_iterates else None
  return _trajectory_from_stats(w_final, dist2, excess, prob.loss_star + excess, alphas,
                                iterates)


def _setup_l2(features, targets, key, init, steps):
  steps = _check_steps(steps)
  phi, y = _check_features_targets(features, targets)
  prob = _probe_problem(phi, y)
  w_shape = (phi.shape[1],) + y.shape[1:]
  w0 = _init_weights(init, key, w_shape, phi.dtype)
  return steps, phi, y, prob, w0


def _grad(phi: Array, y: Array, w: Array) -> Array:
  """``∇‖Φw − Y‖² = 2Φᵀ(Φw − Y)``."""
  return 2.0 * phi.T @ (phi @ w - y)


# ----------------------------------------------------------------------------------------
# ℓ2-probe attackers.


def gd_exact_line_search(features: ArrayLike, targets: ArrayLike,
                         key: Optional[ArrayLike] = None, *, steps: int,
                         init: Init = "zeros",
                         return_iterates: bool = False) -> Trajectory:
  """Gradient descent with exact line search, the paper's Fig. 1 attacker.

  ``w_{t+1} = w_t − α_t g_t`` with ``g_t = 2Φᵀ(Φw_t − Y)`` and the loss-minimizing step.
  ``L(w − αg) = ‖r − αΦg‖²`` with ``r = Φw − Y`` is a parabola in ``α``. Setting its
  derivative ``−2⟨r, Φg⟩ + 2α‖Φg‖²`` to zero and using ``⟨r, Φg⟩ = ⟨Φᵀr, g⟩ = ½‖g‖²``
  gives::

    α* = gᵀg / (2 gᵀΦᵀΦ g) = ‖g‖² / (2‖Φg‖²).

  Frobenius inner products are used for matrix targets, so there is one ``α`` for all
  columns. At a stationary point (``Φg = 0``) the step is defined as 0, without NaNs.
  The worst-case rate is ``L(w_{t+1}) − L* ≤ ((κ−1)/(κ+1))² (L(w_t) − L*)``.

  Args:
    features: ``(N, D)`` features ``Φ``.
    targets: ``(N,)`` or ``(N, C)`` targets ``Y``.
    key: PRNG key; only used when ``init="normal"``.
    steps: number of GD steps ``T`` (static).
    init: ``"zeros"`` (default, the paper's protocol), ``"normal"``, or an array ``w_0``.
    return_iterates: also return all iterates, ``(T+1, D[, C])``.

  Returns:
    A :class:`Trajectory`. ``step_size[t] = α_t``.

  Example:
    >>> phi = jnp.diag(jnp.sqrt(jnp.array([1.0, 100.0])))       # κ(2ΦᵀΦ) = 100
    >>> y = phi @ jnp.array([1.0, 0.01])                        # worst-case start
    >>> run = jax.jit(gd_exact_line_search, static_argnames="steps")
    >>> traj = run(phi, y, None, steps=1000)
    >>> int(steps_to_tolerance(traj.excess_loss, 1e-8))          # ≈ log(1e8)/(2·log(101/99))
    461
  """
  steps, phi, y, prob, w0 = _setup_l2(features, targets, key, init, steps)

  def step(state, w):
    g = _grad(phi, y, w)
    phig = phi @ g
    alpha = _safe_div(_vdot(g, g), 2.0 * _vdot(phig, phig))
    return state, w - alpha * g, alpha

  return _run_l2(prob, w0, (), step, steps=steps, return_iterates=return_iterates)


def gd_constant_step(features: ArrayLike, targets: ArrayLike,
                     key: Optional[ArrayLike] = None, *, steps: int,
                     step_size: Optional[ArrayLike] = None, init: Init = "zeros",
                     return_iterates: bool = False) -> Trajectory:
  """Gradient descent with a constant step, by default the optimal ``2/(L + μ)``.

  ``L`` and ``μ`` are the largest and the smallest non-zero eigenvalues of ``∇²L = 2ΦᵀΦ``.
  With ``α = 2/(L+μ)``, every error component in ``range(Φᵀ)`` shrinks at least by
  ``(κ−1)/(κ+1)`` per step, so::

    norm_ratio[t] ≤ ((κ−1)/(κ+1))^{2t},
    steps to ε ≈ log(1/ε) / (2 log((κ+1)/(κ−1))) ≈ (κ/4) log(1/ε).

  The bound holds with equality when the error has equal weight on the two extreme
  eigenvectors. It is tighter than the paper's Eq. 2, ``(1 − 1/κ)^t``, which is the bound
  for step ``1/L``.

  Args:
    features: ``(N, D)`` features ``Φ``.
    targets: ``(N,)`` or ``(N, C)`` targets ``Y``.
    key: PRNG key; only used when ``init="normal"``.
    steps: number of steps ``T`` (static).
    step_size: scalar step ``α`` (may be a traced array). ``None`` means ``2/(L+μ)``.
    init: ``"zeros"``, ``"normal"`` or an array ``w_0``.
    return_iterates: also return all iterates.

  Returns:
    A :class:`Trajectory`. ``step_size`` holds the constant ``α``.
  """
  steps, phi, y, prob, w0 = _setup_l2(features, targets, key, init, steps)
  if step_size is None:
    alpha = _safe_div(2.0, prob.hess_max + prob.hess_min)
  else:
    alpha = jnp.asarray(step_size, phi.dtype)

  def step(state, w):
    return state, w - alpha * _grad(phi, y, w), alpha

  return _run_l2(prob, w0, (), step, steps=steps, return_iterates=return_iterates)


def _momentum_defaults(prob: ProbeProblem) -> tuple[Array, Array]:
  """``(√L, √μ)``. Both are 0 when ``Φ = 0``."""
  return jnp.sqrt(prob.hess_max), jnp.sqrt(prob.hess_min)


def heavy_ball(features: ArrayLike, targets: ArrayLike, key: Optional[ArrayLike] = None, *,
               steps: int, step_size: Optional[ArrayLike] = None,
               momentum: Optional[ArrayLike] = None, init: Init = "zeros",
               return_iterates: bool = False) -> Trajectory:
  """Polyak's heavy-ball method with the parameters that are optimal for quadratics.

  ``w_{t+1} = w_t − α ∇L(w_t) + β (w_t − w_{t−1})`` with ``w_{−1} = w_0``, and by default::

    α = 4 / (√L + √μ)²,      β = ((√κ − 1)/(√κ + 1))².

  The asymptotic rate of the error is ``√β = (√κ−1)/(√κ+1)`` per step, so the steps to ε
  scale as ``√κ``. A polynomial prefactor comes from the defective iteration matrix at the
  extreme eigenvalues. The error norm is not monotone.

  Args:
    features: ``(N, D)`` features ``Φ``.
    targets: ``(N,)`` or ``(N, C)`` targets ``Y``.
    key: PRNG key; only used when ``init="normal"``.
    steps: number of steps (static).
    step_size: ``α``, or ``None`` for the optimal value.
    momentum: ``β``, or ``None`` for the optimal value.
    init: ``"zeros"``, ``"normal"`` or an array ``w_0``.
    return_iterates: also return all iterates.

  Returns:
    A :class:`Trajectory`. ``step_size`` holds ``α``.
  """
  steps, phi, y, prob, w0 = _setup_l2(features, targets, key, init, steps)
  sl, sm = _momentum_defaults(prob)
  alpha = (_safe_div(4.0, (sl + sm) ** 2) if step_size is None
           else jnp.asarray(step_size, phi.dtype))
  beta = (_safe_div(sl - sm, sl + sm) ** 2 if momentum is None
          else jnp.asarray(momentum, phi.dtype))

  def step(w_prev, w):
    w_next = w - alpha * _grad(phi, y, w) + beta * (w - w_prev)
    return w, w_next, alpha

  return _run_l2(prob, w0, w0, step, steps=steps, return_iterates=return_iterates)


def nesterov(features: ArrayLike, targets: ArrayLike, key: Optional[ArrayLike] = None, *,
             steps: int, step_size: Optional[ArrayLike] = None,
             momentum: Optional[ArrayLike] = None, init: Init = "zeros",
             return_iterates: bool = False) -> Trajectory:
  """Nesterov's accelerated gradient, constant-step scheme for μ-strongly convex L-smooth L.

  ``y_t = w_t + β (w_t − w_{t−1})`` and ``w_{t+1} = y_t − α ∇L(y_t)``, with by default::

    α = 1/L,      β = (√κ − 1)/(√κ + 1).

  The guarantee is ``L(w_t) − L* ≤ C (1 − 1/√κ)^t``, so the steps to ε scale as ``√κ``
  (Nesterov 2018, Thm 2.2.3). The metrics are recorded at ``w_t``, not at ``y_t``.

  Args:
    features: ``(N, D)`` features ``Φ``.
    targets: ``(N,)`` or ``(N, C)`` targets ``Y``.
    key: PRNG key; only used when ``init="normal"``.
    steps: number of steps (static).
    step_size: ``α``, or ``None`` for ``1/L``.
    momentum: ``β``, or ``None`` for ``(√κ−1)/(√κ+1)``.
    init: ``"zeros"``, ``"normal"`` or an array ``w_0``.
    return_iterates: also return all iterates.

  Returns:
    A :class:`Trajectory`. ``step_size`` holds ``α``.
  """
  steps, phi, y, prob, w0 = _setup_l2(features, targets, key, init, steps)
  sl, sm = _momentum_defaults(prob)
  alpha = (_safe_div(1.0, prob.hess_max) if step_size is None
           else jnp.asarray(step_size, phi.dtype))
  beta = (_safe_div(sl - sm, sl + sm) if momentum is None
          else jnp.asarray(momentum, phi.dtype))

  def step(w_prev, w):
    look = w + beta * (w - w_prev)
    return w, look - alpha * _grad(phi, y, look), alpha

  return _run_l2(prob, w0, w0, step, steps=steps, return_iterates=return_iterates)


def adam(features: ArrayLike, targets: ArrayLike, key: Optional[ArrayLike] = None, *,
         steps: int, learning_rate: ArrayLike = 1e-2, b1: float = 0.9, b2: float = 0.999,
         init: Init = "zeros", return_iterates: bool = False) -> Trajectory:
  """Adam (``optax.adam``) on ``‖Φw − Y‖²``: a heuristic attacker.

  This is what a practitioner would run, and what the authors' code uses for training.
  Adam has no condition-number guarantee. Its coordinate-wise scaling is partly invariant
  to a *diagonal* rescaling of the features, but not to rotations, so an immunizer that
  makes ``κ`` large through a non-axis-aligned spectrum still slows it down. With a
  constant learning rate it stalls at a noise floor of order ``learning_rate`` in ``w``.
  Lower the rate (it may be a traced array, so it can be vmapped) for a lower floor. The
  iterates leave ``range(Φᵀ)``, so ``norm_ratio`` uses the projected distance from the
  module docstring.

  Args:
    features: ``(N, D)`` features ``Φ``.
    targets: ``(N,)`` or ``(N, C)`` targets ``Y``.
    key: PRNG key; only used when ``init="normal"``.
    steps: number of Adam steps (static).
    learning_rate: Adam step size. The default 1e-2 suits z-scored features with
      ``‖w*‖_∞ = O(1)``.
    b1: first-moment decay.
    b2: second-moment decay.
    init: ``"zeros"``, ``"normal"`` or an array ``w_0``.
    return_iterates: also return all iterates.

  Returns:
    A :class:`Trajectory`. ``step_size`` holds ``learning_rate``.
  """
  steps, phi, y, prob, w0 = _setup_l2(features, targets, key, init, steps)
  lr = jnp.asarray(learning_rate, phi.dtype)
  opt = optax.adam(lr, b1=b1, b2=b2)

  def step(opt_state, w):
    updates, opt_state = opt.update(_grad(phi, y, w), opt_state, w)
    return opt_state, optax.apply_updates(w, updates), lr

  return _run_l2(prob, w0, opt.init(w0), step, steps=steps,
                 return_iterates=return_iterates)


def _lbfgs_step_fn(value_fn: Callable[[Array], Array], memory_size: int):
  """L-BFGS with optax's zoom line search, using the ``value_and_grad_from_state`` pattern.

  Once the iteration has converged to rounding level, the line search can fail: it then
  returns a non-finite or non-decreasing step. In that case the step is rejected and
  ``(w, state)`` is kept, so the iterates stay finite and the loss never increases.
  """
  opt = optax.lbfgs(memory_size=memory_size)
  value_and_grad = optax.value_and_grad_from_state(value_fn)

  def step(state, w):
    value, grad = value_and_grad(w, state=state)
    updates, new_state = opt.update(grad, state, w, value=value, grad=grad,
                                    value_fn=value_fn)
    w_new = optax.apply_updates(w, updates)
    new_value = optax.tree_utils.tree_get(new_state, "value")
    lr = optax.tree_utils.tree_get(new_state, "learning_rate")
    ok = (jnp.all(jnp.isfinite(w_new)) & jnp.isfinite(new_value)
          & (new_value <= value) & (_vdot(grad, grad) > 0))
    keep = lambda a, b: jnp.where(ok, a, b)
    state = jax.tree.map(keep, new_state, state)
    return state, keep(w_new, w), jnp.where(ok, lr, 0.0)

  return opt, step


def lbfgs(features: ArrayLike, targets: ArrayLike, key: Optional[ArrayLike] = None, *,
          steps: int, memory_size: int = 10, init: Init = "zeros",
          return_iterates: bool = False) -> Trajectory:
  """L-BFGS (``optax.lbfgs`` with its default zoom line search) on ``‖Φw − Y‖²``.

  One step is one outer L-BFGS iteration. The zoom line search may evaluate the loss a few
  more times inside a step. On a quadratic with exact line searches, L-BFGS with infinite
  memory matches CG. With ``memory_size`` pairs it behaves like CG that is restarted, so
  the steps scale roughly as ``√κ``. Once the iteration reaches rounding level, the zoom line
  search can fail; such steps are rejected (``step_size`` 0), so in float64 the norm ratio
  bottoms out around 1e-18 rather than 1e-30.

  Args:
    features: ``(N, D)`` features ``Φ``.
    targets: ``(N,)`` or ``(N, C)`` targets ``Y``.
    key: PRNG key; only used when ``init="normal"``.
    steps: number of L-BFGS iterations (static).
    memory_size: number of curvature pairs kept (static).
    init: ``"zeros"``, ``"normal"`` or an array ``w_0``.
    return_iterates: also return all iterates.

  Returns:
    A :class:`Trajectory`. ``step_size`` holds the accepted line-search step (0 when the step
    was rejected).
  """
  steps, phi, y, prob, w0 = _setup_l2(features, targets, key, init, steps)
  value_fn = lambda w: jnp.sum((phi @ w - y) ** 2)
  opt, step = _lbfgs_step_fn(value_fn, memory_size)
  return _run_l2(prob, w0, opt.init(w0), step, steps=steps,
                 return_iterates=return_iterates)


def conjugate_gradient(features: ArrayLike, targets: ArrayLike,
                       key: Optional[ArrayLike] = None, *, steps: int,
                       init: Init = "zeros", return_iterates: bool = False) -> Trajectory:
  """CG on the normal equations ``ΦᵀΦ w = ΦᵀY`` (CGLS), with a fixed number of steps.

  CGLS never forms ``ΦᵀΦ``. Each step costs one product with ``Φ`` and one with ``Φᵀ``,
  the same as a GD step::

    r = Y − Φw,  s = Φᵀr,  p = s,  γ = ‖s‖²
    repeat:  q = Φp;  α = γ/‖q‖²;  w += αp;  r −= αq;
             s = Φᵀr;  γ' = ‖s‖²;  p = s + (γ'/γ) p;  γ = γ'

  The iterate ``w_t`` minimizes the excess loss ``‖w − w*‖²_{ΦᵀΦ}`` over
  ``w_0 + K_t(ΦᵀΦ, s_0)``. Hence:

  * It terminates (in exact arithmetic) after as many steps as ``ΦᵀΦ`` has distinct
    non-zero eigenvalues carrying error.
  * Chebyshev bound: ``excess_loss[t] ≤ 4 ((√κ−1)/(√κ+1))^{2t}``, so the steps scale as
    ``√κ``.
  * From ``w_0 = 0`` it converges to the min-norm solution ``Φ⁺Y``.

  Matrix targets use Frobenius inner products, i.e. CG on ``vec(W)`` with the same spectrum.
  The iteration freezes (``α = 0``) once ``‖Φᵀr‖ ≤ max(N, D)·eps·σ_max·‖r‖``, the rounding
  level of the computed gradient, or once ``‖q‖ = 0``. Iterating further in finite precision
  amplifies rounding noise in ``null(Φ)`` and diverges on rank-deficient ``Φ``. The
  divisions are guarded, so there are no NaNs.

  Args:
    features: ``(N, D)`` features ``Φ``.
    targets: ``(N,)`` or ``(N, C)`` targets ``Y``.
    key: PRNG key; only used when ``init="normal"``.
    steps: number of CG steps (static).
    init: ``"zeros"``, ``"normal"`` or an array ``w_0``.
    return_iterates: also return all iterates.

  Returns:
    A :class:`Trajectory`. ``step_size[t]`` is CG's ``α_t``.
  """
  steps, phi, y, prob, w0 = _setup_l2(features, targets, key, init, steps)
  n, d = phi.shape
  # Stop at the attainable accuracy: ‖Φᵀr‖ ≤ max(N, D)·eps·σ_max·‖r‖ is the rounding level of
  # the computed Φᵀr. Iterating past it lets rounding noise in null(Φ) be amplified by
  # α = γ/‖q‖² (observed blow-up on rank-deficient Φ).
  tol2 = (max(n, d) * jnp.finfo(phi.dtype).eps) ** 2 * prob.hess_max / 2.0

  def converged(r, gamma):
    return gamma <= tol2 * _vdot(r, r)

  r0 = y - phi @ w0
  s0 = phi.T @ r0
  gamma0 = _vdot(s0, s0)
  state0 = (r0, s0, gamma0, converged(r0, gamma0))

  def step(state, w):
    r, p, gamma, done = state
    q = phi @ p
    alpha = jnp.where(done, 0.0, _safe_div(gamma, _vdot(q, q)))
    w = w + alpha * p
    r = r - alpha * q
    s = phi.T @ r
    gamma_new = _vdot(s, s)
    p = s + _safe_div(gamma_new, gamma) * p
    done = done | (alpha == 0.0) | converged(r, gamma_new)
    return (r, p, gamma_new, done), w, alpha

  return _run_l2(prob, w0, state0, step, steps=steps, return_iterates=return_iterates)


def closed_form(features: ArrayLike, targets: ArrayLike, key: Optional[ArrayLike] = None, *,
                steps: int = 1, init: Init = "zeros",
                return_iterates: bool = False) -> Trajectory:
  """The closed-form attacker: one least-squares solve, ``w = Φ⁺Y`` (``jnp.linalg.pinv``).

  This is the κ-independent baseline. Its cost is one SVD, whatever ``κ`` is. To keep the
  registry uniform, the trajectory has length ``steps + 1``: ``w_0`` at ``t = 0``, then the
  lstsq solution at every ``t ≥ 1`` (a "step" is the solve). So
  ``steps_to_tolerance(norm_ratio, ε) = 1`` for any ``ε`` above rounding. The solution uses
  ``pinv``'s own SVD and rank cut-off, so rounding differences from ``w*`` show up honestly
  in the metrics.

  Args:
    features: ``(N, D)`` features ``Φ``.
    targets: ``(N,)`` or ``(N, C)`` targets ``Y``.
    key: PRNG key; only used when ``init="normal"``.
    steps: trajectory length minus one (static). ``steps = 0`` returns ``w_0`` only.
    init: ``"zeros"``, ``"normal"`` or an array ``w_0``.
    return_iterates: also return the (repeated) iterates.

  Returns:
    A :class:`Trajectory`. ``step_size`` is all ones.
  """
  steps, phi, y, prob, w0 = _setup_l2(features, targets, key, init, steps)
  w_ls = jnp.linalg.pinv(phi) @ y
  d0, e0 = _l2_metrics(prob, w0)
  d1, e1 = _l2_metrics(prob, w_ls)
  dist2 = jnp.concatenate([d0[None], jnp.full((steps,), d1)])
  excess = jnp.concatenate([e0[None], jnp.full((steps,), e1)])
  w_final = w_ls if steps > 0 else w0
  iterates = None
  if return_iterates:
    iterates = jnp.concatenate([w0[None], jnp.broadcast_to(w_ls, (steps,) + w0.shape)])
  return _trajectory_from_stats(w_final, dist2, excess, prob.loss_star + excess,
                                jnp.ones((steps,), phi.dtype), iterates)


# ----------------------------------------------------------------------------------------
# Logistic probe (binary classification, labels in {0, 1}).


def _bce(phi: Array, y: Array, w: Array, ridge: ArrayLike) -> Array:
  """Mean BCE with logits ``Φw`` plus ``(ridge/2)‖w‖²``."""
  logits = phi @ w
  return jnp.mean(jax.nn.softplus(logits) - y * logits) + 0.5 * ridge * _vdot(w, w)


def _accuracy(phi: Array, y: Array, w: Array) -> Array:
  return jnp.mean(((phi @ w) > 0).astype(phi.dtype) == y)


def _check_logistic(features, labels, ridge):
  phi, y = _check_features_targets(features, labels, targets_name="labels",
                                   allow_matrix_targets=False)
  if _is_concrete(y) and not np.all(np.isin(np.asarray(y), (0, 1))):
    raise ValueError("labels must be in {0, 1}; map your two classes to 0 and 1.")
  if _is_concrete(ridge) and not np.all(np.asarray(ridge) >= 0):
    raise ValueError(f"ridge must be >= 0; got {ridge!r}. Use a small positive value such "
                     f"as 1e-4 so that the optimum exists on separable data.")
  return phi, y


def logistic_reference(features: ArrayLike, labels: ArrayLike, *, ridge: ArrayLike = 1e-4,
                       newton_steps: int = 50) -> tuple[Array, Array, Array]:
  """Reference optimum of the logistic probe, found by damped Newton from ``w = 0``.

  Minimizes ``F(w) = mean_i[softplus(φ_iᵀw) − y_i φ_iᵀw] + (ridge/2)‖w‖²``. The Hessian is
  ``Φᵀ diag(p(1−p)) Φ / N + ridge·I`` with ``p = sigmoid(Φw)``. Each Newton direction
  (solved with a relative jitter of ``D·eps·max diag`` for safety) is damped by Armijo
  backtracking over ``2^{-j}``, ``j = 0..29``, which is evaluated in parallel, so the
  function is jit-able. Newton converges quadratically near the optimum. For ``ridge > 0``
  the optimum is unique, even on separable data. With ``ridge = 0`` it exists only for
  non-separable data.

  Args:
    features: ``(N, D)`` features ``Φ``.
    labels: ``(N,)`` labels in ``{0, 1}``.
    ridge: the ℓ2 weight ``ridge ≥ 0``.
    newton_steps: number of damped Newton steps (static).

  Returns:
    ``(w_ref (D,), F(w_ref) (), ‖∇F(w_ref)‖ ())``. Check the last value to confirm that
    the reference has converged.
  """
  phi, y = _check_logistic(features, labels, ridge)
  newton_steps = _check_steps(newton_steps)
  return _logistic_reference(phi, y, ridge, newton_steps)


def _logistic_reference(phi, y, ridge, newton_steps):
  n, d = phi.shape
  ridge = jnp.asarray(ridge, phi.dtype)
  f = lambda w: _bce(phi, y, w, ridge)
  grad_f = jax.grad(f)
  trials = 2.0 ** -jnp.arange(30, dtype=phi.dtype)

  def newton(w, _):
    g = grad_f(w)
    p = jax.nn.sigmoid(phi @ w)
    h = (phi * (p * (1 - p))[:, None]).T @ phi / n + ridge * jnp.eye(d, dtype=phi.dtype)
    jitter = d * jnp.finfo(phi.dtype).eps * jnp.max(jnp.diag(h))
    direction = -jnp.linalg.solve(h + jitter * jnp.eye(d, dtype=phi.dtype), g)
    f0, slope = f(w), _vdot(g, direction)
    f_trials = jax.vmap(lambda a: f(w + a * direction))(trials)
    armijo = f_trials <= f0 + 1e-4 * trials * slope
    first = jnp.argmax(armijo)
    a = jnp.where(jnp.any(armijo) & jnp.all(jnp.isfinite(direction)), trials[first], 0.0)
    return w + a * direction, None

  w, _ = lax.scan(newton, jnp.zeros((d,), phi.dtype), None, length=newton_steps)
  return w, f(w), jnp.linalg.norm(grad_f(w))


def _run_logistic(phi, y, w0, ridge, reference_steps, reference, state0, step_fn, *, steps,
                  return_iterates):
  if reference is None:
    w_ref, f_ref, _ = _logistic_reference(phi, y, ridge, reference_steps)
  else:
    w_ref, f_ref = reference[0], reference[1]
    if jnp.shape(w_ref) != (phi.shape[1],) or jnp.shape(f_ref) != ():
      raise ValueError(
          f"reference must be (w_ref of shape ({phi.shape[1]},), F_ref scalar), as returned "
          f"by logistic_reference(...)[:2]; got shapes {jnp.shape(w_ref)}, "
          f"{jnp.shape(f_ref)}.")

  def stats(w):
    return _vdot(w - w_ref, w - w_ref), _bce(phi, y, w, ridge), _accuracy(phi, y, w)

  def body(carry, _):
    state, w = carry
    state, w, alpha = step_fn(state, w)
    return (state, w), (stats(w), jnp.asarray(alpha, w.dtype),
                        w if return_iterates else None)

  (_, w_final), ((dist2, loss, acc), alphas, ws) = lax.scan(body, (state0, w0), None,
                                                            length=steps)
  d0, l0, a0 = stats(w0)
  dist2 = jnp.concatenate([d0[None], dist2])
  loss = jnp.concatenate([l0[None], loss])
  acc = jnp.concatenate([a0[None], acc])
  iterates = jnp.concatenate([w0[None], ws]) if return_iterates else None
  return _trajectory_from_stats(w_final, dist2, loss - f_ref, loss, alphas, iterates,
                                accuracy=acc)


def logistic_gd(features: ArrayLike, labels: ArrayLike, key: Optional[ArrayLike] = None, *,
                steps: int, step_size: Optional[ArrayLike] = None, ridge: ArrayLike = 1e-4,
                reference_steps: int = 50,
                reference: Optional[tuple[ArrayLike, ArrayLike]] = None,
                init: Init = "zeros", return_iterates: bool = False) -> Trajectory:
  """Fixed-step gradient descent on the logistic probe (mean BCE + ``(ridge/2)‖w‖²``).

  The default step is ``1/L_F`` with ``L_F = σ_max(Φ)²/(4N) + ridge``, a global Lipschitz
  constant of ``∇F`` (because ``sigmoid' ≤ 1/4``). The loss then decreases monotonically,
  and no backtracking is needed.

  The metrics are relative to the reference optimum of :func:`logistic_reference`
  (``reference_steps`` damped Newton steps, or the given ``reference``):
  ``norm_ratio = ‖w_t − w_ref‖²/‖w_0 − w_ref‖²`` and
  ``excess_loss = (F(w_t) − F_ref)/(F(w_0) − F_ref)``. ``accuracy`` is the training accuracy
  of the sign of ``Φw_t``.

  Args:
    features: ``(N, D)`` features ``Φ``.
    labels: ``(N,)`` labels in ``{0, 1}``.
    key: PRNG key; only used when ``init="normal"``.
    steps: number of GD steps (static).
    step_size: constant step, or ``None`` for ``1/L_F``.
    ridge: ℓ2 weight ``≥ 0``. Keep it positive on separable data.
    reference_steps: Newton steps for the reference optimum (static).
    reference: optional precomputed ``(w_ref, F_ref)``, e.g.
      ``logistic_reference(features, labels, ridge=ridge)[:2]``. Pass it to compare several
      attackers on one data set without re-running Newton. It must use the same ``ridge``.
    init: ``"zeros"``, ``"normal"`` or an array ``w_0``.
    return_iterates: also return all iterates.

  Returns:
    A :class:`Trajectory` with ``accuracy`` set.
  """
  steps = _check_steps(steps)
  phi, y = _check_logistic(features, labels, ridge)
  ridge = jnp.asarray(ridge, phi.dtype)
  n, d = phi.shape
  w0 = _init_weights(init, key, (d,), phi.dtype)
  if step_size is None:
    alpha = 1.0 / (jnp.linalg.norm(phi, ord=2) ** 2 / (4.0 * n) + ridge)
  else:
    alpha = jnp.asarray(step_size, phi.dtype)
  grad_f = jax.grad(lambda w: _bce(phi, y, w, ridge))

  def step(state, w):
    return state, w - alpha * grad_f(w), alpha

  return _run_logistic(phi, y, w0, ridge, _check_steps(reference_steps), reference, (), step,
                       steps=steps, return_iterates=return_iterates)


def logistic_lbfgs(features: ArrayLike, labels: ArrayLike, key: Optional[ArrayLike] = None,
                   *, steps: int, memory_size: int = 10, ridge: ArrayLike = 1e-4,
                   reference_steps: int = 50,
                   reference: Optional[tuple[ArrayLike, ArrayLike]] = None,
                   init: Init = "zeros", return_iterates: bool = False) -> Trajectory:
  """L-BFGS (``optax.lbfgs``, zoom line search) on the logistic probe.

  The objective and metrics are those of :func:`logistic_gd`. Steps whose line search fails
  at convergence are rejected, as in :func:`lbfgs`.

  Args:
    features: ``(N, D)`` features ``Φ``.
    labels: ``(N,)`` labels in ``{0, 1}``.
    key: PRNG key; only used when ``init="normal"``.
    steps: number of L-BFGS iterations (static).
    memory_size: number of curvature pairs (static).
    ridge: ℓ2 weight ``≥ 0``.
    reference_steps: Newton steps for the reference optimum (static).
    reference: optional precomputed ``(w_ref, F_ref)``; see :func:`logistic_gd`.
    init: ``"zeros"``, ``"normal"`` or an array ``w_0``.
    return_iterates: also return all iterates.

  Returns:
    A :class:`Trajectory` with ``accuracy`` set.
  """
  steps = _check_steps(steps)
  phi, y = _check_logistic(features, labels, ridge)
  ridge = jnp.asarray(ridge, phi.dtype)
  w0 = _init_weights(init, key, (phi.shape[1],), phi.dtype)
  opt, step = _lbfgs_step_fn(lambda w: _bce(phi, y, w, ridge), memory_size)
  return _run_logistic(phi, y, w0, ridge, _check_steps(reference_steps), reference,
                       opt.init(w0), step, steps=steps, return_iterates=return_iterates)


# ----------------------------------------------------------------------------------------
# Metrics on curves.


@jax.jit
def steps_to_tolerance(curve: ArrayLike, eps: ArrayLike) -> Array:
  """The first step ``t`` with ``curve[t] ≤ eps``, along the last axis.

  Args:
    curve: ``(..., T+1)``, e.g. ``Trajectory.norm_ratio``, possibly batched.
    eps: the tolerance, a scalar or an array that broadcasts against ``curve.shape[:-1]``.

  Returns:
    ``(...)`` int32. The first index ``t`` with ``curve[t] ≤ eps``. If the curve never gets
    there, the sentinel is ``T+1 = curve.shape[-1]``, one past the last index. Comparisons
    with a sentinel are lower bounds ("more than ``T`` steps"). NaN never counts as
    reached. The function is jit- and vmap-friendly (``argmax`` over a mask, no Python
    control flow).

  Example:
    >>> int(steps_to_tolerance(jnp.array([1.0, 0.5, 0.1, 0.01]), 0.1))
    2
    >>> int(steps_to_tolerance(jnp.array([1.0, 0.5]), 0.1))
    2
  """
  curve = jnp.asarray(curve)
  if curve.ndim < 1:
    raise ValueError(f"curve must have at least one axis (..., T+1); got shape {curve.shape}.")
  hit = curve <= jnp.asarray(eps)[..., None]
  first = jnp.argmax(hit, axis=-1)
  return jnp.where(jnp.any(hit, axis=-1), first, curve.shape[-1]).astype(jnp.int32)


@jax.jit
def slowdown_factor(steps_immunized: ArrayLike, steps_reference: ArrayLike) -> Array:
  """The attacker's slow-down: ``steps_immunized / steps_reference``, element-wise.

  By convention ``0/0 = 1`` (both start below the tolerance) and ``x/0 = inf`` for
  ``x > 0``. If either count is a :func:`steps_to_tolerance` sentinel, the factor is only a
  bound: a lower bound when the immunized run did not converge, an upper bound when the
  reference run did not.

  Args:
    steps_immunized: int or float array, the steps on the immunized features.
    steps_reference: same shape (broadcastable), the steps on the reference features
      (e.g. ``θ = I`` or ``θ_0``).

  Returns:
    A float array of slow-down factors.

  Example:
    >>> float(slowdown_factor(300, 30))
    10.0
  """
  a = jnp.asarray(steps_immunized)
  b = jnp.asarray(steps_reference)
  dtype = jnp.result_type(a.dtype, b.dtype, jnp.float32)
  a, b = a.astype(dtype), b.astype(dtype)
  return _safe_div(a, b, if_zero=jnp.where(a > 0, jnp.inf, 1.0))


# ----------------------------------------------------------------------------------------
# Registries with a uniform signature ``fn(features, targets, key, *, steps) -> Trajectory``.

ATTACKERS: dict[str, Callable[..., Trajectory]] = {
    "gd_line_search": gd_exact_line_search,
    "gd_constant": gd_constant_step,
    "heavy_ball": heavy_ball,
    "nesterov": nesterov,
    "adam": adam,
    "lbfgs": lbfgs,
    "cg": conjugate_gradient,
    "closed_form": closed_form,
}
"""The ℓ2-probe attackers. All are called as ``fn(features, targets, key, *, steps)``."""

LOGISTIC_ATTACKERS: dict[str, Callable[..., Trajectory]] = {
    "gd": logistic_gd,
    "lbfgs": logistic_lbfgs,
}
"""The logistic-probe attackers. All are called as ``fn(features, labels, key, *, steps)``."""


# ----------------------------------------------------------------------------------------
# Adaptive budgets: run an attacker until it reaches ε (``lax.while_loop``), on the probe's
# sufficient statistics in the eigenbasis of ΦᵀΦ.


class QuadraticProbe(NamedTuple):
  """The ℓ2 probe ``min_w ‖Φw − y‖²`` from its sufficient statistics, in ΦᵀΦ's eigenbasis.

  With ``ΦᵀΦ = V diag(λ) Vᵀ`` and ``z = Vᵀw``, the loss is
  ``L(w) = L* + Σ_i λ_i (z_i − z*_i)²`` and ``∇L = 2 V (λ ⊙ (z − z*))``. Nothing of size
  ``N`` is needed, so a probe on 10⁴ images at ``D = 784`` costs ``O(D)`` per step for every
  rotation-invariant attacker (see :func:`run_until`).

  Attributes:
    lam: ``(D,)`` eigenvalues ``λ`` of ``ΦᵀΦ`` (ascending); those at or below
      ``rtol·λ_max`` are set to exactly 0.
    vecs: ``(D, D)`` eigenvectors ``V`` (columns).
    z_star: ``(D,)`` ``Vᵀw*`` for the min-norm solution ``w* = Φ⁺y`` (0 off the range).
    loss_star: ``()`` ``L* = yᵀy − Σ (Vᵀb)²/λ`` (NaN when ``yᵀy`` was not given).
    mask: ``(D,)`` bool, ``λ_i > 0``.
  """

  lam: Array
  vecs: Array
  z_star: Array
  loss_star: Array
  mask: Array


def quadratic_probe(gram: ArrayLike, moment: ArrayLike, sq_norm: Optional[ArrayLike] = None,
                    *, rtol: Optional[float] = None) -> QuadraticProbe:
  """The :class:`QuadraticProbe` of ``Φ`` from ``ΦᵀΦ``, ``Φᵀy`` and (optionally) ``yᵀy``.

  For an extractor θ and inputs ``X``: ``gram = θᵀ(XᵀX)θ`` and ``moment = θᵀ(Xᵀy)``, so
  many extractors are attacked on one pair of statistics. "Non-zero" eigenvalues follow the
  project's κ convention: ``λ > rtol·λ_max`` with ``rtol = D·eps`` by default. The
  eigendecomposition uses ``spectral._eigh`` (a sequential ``lax.map`` under ``vmap``; the
  batched CPU kernel deadlocks jaxlib 0.10.2).

  Args:
    gram: ``(D, D)`` symmetric PSD ``ΦᵀΦ``.
    moment: ``(D,)`` ``Φᵀy``.
    sq_norm: ``()`` ``yᵀy``, only for ``loss_star``.
    rtol: relative eigenvalue tolerance.

  Returns:
    A :class:`QuadraticProbe`.
  """
  from immujax import spectral  # pylint: disable=g-import-not-at-top
  gram = jnp.asarray(gram)
  moment = jnp.asarray(moment, gram.dtype)
  if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or moment.shape != gram.shape[:1]:
    raise ValueError(f"gram must be (D, D) and moment (D,); got {gram.shape} and "
                     f"{moment.shape}. Pass θᵀ(XᵀX)θ and θᵀ(Xᵀy) for a scalar target y.")
  if rtol is None:
    rtol = spectral.default_rtol(gram.shape, gram.dtype)
  lam, vecs = spectral._eigh(0.5 * (gram + gram.T))  # pylint: disable=protected-access
  mask = lam > rtol * jnp.max(lam)
  lam = jnp.where(mask, lam, 0.0)
  vb = vecs.T @ moment
  z_star = _safe_div(vb, lam)
  if sq_norm is None:
    loss_star = jnp.asarray(jnp.nan, gram.dtype)
  else:
    loss_star = jnp.asarray(sq_norm, gram.dtype) - jnp.sum(z_star * vb)
  return QuadraticProbe(lam=lam, vecs=vecs, z_star=z_star, loss_star=loss_star, mask=mask)


class Reached(NamedTuple):
  """What :func:`run_until` measured. ``E`` tolerances, ``R`` recording steps.

  Attributes:
    steps: ``(2, E)`` int32. Row 0: the first ``t`` with ``norm_ratio[t] ≤ ε`` (Eq. 16);
      row 1: the same for ``excess_loss``. ``max_steps + 1`` (the sentinel) when the cap was
      hit first: the true count is then ``> max_steps``.
    final_step: ``()`` int32, the steps actually run (``≤ max_steps``).
    norm_ratio: ``(R,)`` the norm ratio at the recording steps.
    excess_loss: ``(R,)`` the excess-loss ratio at the recording steps.
    recorded: ``(R, D)`` the probe ``w_t`` (original coordinates) at ``record_at``. Steps
      after ``final_step`` hold the final iterate (the run had already reached every ε).
  """

  steps: Array
  final_step: Array
  norm_ratio: Array
  excess_loss: Array
  recorded: Array


ROTATION_INVARIANT = ("gd_line_search", "gd_constant", "heavy_ball", "nesterov", "lbfgs",
                      "cg", "closed_form")
"""Attackers whose iterates commute with rotations of the features: they run in the
eigenbasis with diagonal ``ΦᵀΦ`` (``O(D)`` per step). Adam is coordinate-wise, so it runs in
the original coordinates (``O(D²)`` per step)."""


def _invariant_step(name: str, prob: QuadraticProbe, kwargs: dict):
  """``(state0, step(state, z) -> (state, z))`` of a rotation-invariant attacker in ``z``."""
  lam, z_star = prob.lam, prob.z_star
  dtype = lam.dtype
  hess_max = 2.0 * jnp.max(lam)
  hess_min = 2.0 * jnp.min(jnp.where(prob.mask, lam, jnp.inf))
  hess_min = jnp.where(jnp.any(prob.mask), hess_min, 0.0)
  grad = lambda z: 2.0 * lam * (z - z_star)
  z0 = jnp.zeros_like(z_star)
  sl, sm = jnp.sqrt(hess_max), jnp.sqrt(hess_min)
  if name == "gd_line_search":
    def step(s, z):
      g = grad(z)
      return s, z - _safe_div(_vdot(g, g), 2.0 * _vdot(lam * g, g)) * g
    return (), step
  if name == "gd_constant":
    alpha = kwargs.get("step_size")
    alpha = _safe_div(2.0, hess_max + hess_min) if alpha is None else jnp.asarray(alpha, dtype)
    return (), lambda s, z: (s, z - alpha * grad(z))
  if name in ("heavy_ball", "nesterov"):
    heavy = name == "heavy_ball"
    alpha, beta = kwargs.get("step_size"), kwargs.get("momentum")
    if alpha is None:
      alpha = _safe_div(4.0, (sl + sm) ** 2) if heavy else _safe_div(1.0, hess_max)
    if beta is None:
      beta = _safe_div(sl - sm, sl + sm) ** (2 if heavy else 1)
    alpha, beta = jnp.asarray(alpha, dtype), jnp.asarray(beta, dtype)
    if heavy:
      return z0, lambda zp, z: (z, z - alpha * grad(z) + beta * (z - zp))
    def nesterov_step(zp, z):
      look = z + beta * (z - zp)
      return z, look - alpha * grad(look)
    return z0, nesterov_step
  if name == "cg":
    # CG on the normal equations diag(λ) z = λ ⊙ z* (the same iterates as CGLS). Null
    # directions have λ = 0 exactly here, so no rounding noise can enter them; the run
    # freezes once the gradient is at rounding level relative to its start.
    rho0 = lam * (z_star - z0)
    gamma0 = _vdot(rho0, rho0)
    tol = (lam.shape[0] * jnp.finfo(dtype).eps) ** 2 * gamma0

    def cg_step(s, z):
      rho, p, gamma, done = s
      q = lam * p
      alpha = jnp.where(done, 0.0, _safe_div(gamma, _vdot(p, q)))
      z = z + alpha * p
      rho = rho - alpha * q
      gamma_new = _vdot(rho, rho)
      p = rho + _safe_div(gamma_new, gamma) * p
      done = done | (alpha == 0.0) | (gamma_new <= tol)
      return (rho, p, gamma_new, done), z
    return (rho0, rho0, gamma0, gamma0 <= tol), cg_step
  if name == "lbfgs":
    value_fn = lambda z: _vdot(lam * (z - z_star), z - z_star)
    opt, lstep = _lbfgs_step_fn(value_fn, int(kwargs.get("memory_size", 10)))

    def lbfgs_step(s, z):
      s, z, _ = lstep(s, z)
      return s, z
    return opt.init(z0), lbfgs_step
  if name == "closed_form":
    return (), lambda s, z: (s, z_star)
  raise ValueError(f"unknown attacker {name!r}; use one of {list(ATTACKERS)}.")


def run_until(name: str, prob: QuadraticProbe, *, eps: ArrayLike, max_steps: int,
              record_at: Optional[ArrayLike] = None, **kwargs) -> Reached:
  """Runs attacker ``name`` from ``w_0 = 0`` until it reaches every ``ε``, or ``max_steps``.

  A ``lax.while_loop`` that stops as soon as both the norm ratio (Eq. 16) and the excess
  loss have reached ``min(ε)``, so a budget of 10⁷ steps costs only what is needed. It is
  jit- and vmap-compatible (under ``vmap`` the loop runs until every lane is done; finished
  lanes are frozen). The iterates are those of the :data:`ATTACKERS` entry of the same name
  (exactly, in exact arithmetic): rotation-invariant attackers run on ``z = Vᵀw`` with a
  diagonal Hessian, Adam in the original coordinates with ``∇L = 2V(λ ⊙ (Vᵀw − z*))``.
  Scalar targets only.

  Args:
    name: a key of :data:`ATTACKERS`.
    prob: a :class:`QuadraticProbe`.
    eps: ``(E,)`` tolerances.
    max_steps: the cap (static Python int ≥ 1).
    record_at: ``(R,)`` sorted non-negative ints: steps at which ``w_t`` and the two
      ratios are recorded (default: ``[max_steps]``).
    **kwargs: the attacker's hyperparameters (``step_size``, ``momentum``,
      ``learning_rate``, ``b1``, ``b2``, ``memory_size``), as for :data:`ATTACKERS`.

  Returns:
    A :class:`Reached`.

  Example:
    >>> p = quadratic_probe(jnp.diag(jnp.array([1.0, 100.0])), jnp.array([1.0, 1.0]))
    >>> r = run_until("cg", p, eps=jnp.array([1e-8]), max_steps=10**7)
    >>> int(r.final_step), int(r.steps[0, 0])            # CG: two eigenvalues, two steps
    (2, 2)
  """
  if name not in ATTACKERS:
    raise ValueError(f"unknown attacker {name!r}; use one of {list(ATTACKERS)}.")
  if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or (
      max_steps < 1):
    raise ValueError(f"max_steps must be a positive Python int (the cap); got {max_steps!r}.")
  max_steps = int(max_steps)
  lam, vecs, z_star, mask = prob.lam, prob.vecs, prob.z_star, prob.mask
  dtype = lam.dtype
  eps = jnp.atleast_1d(jnp.asarray(eps, dtype))
  record_at = (jnp.asarray([max_steps]) if record_at is None
               else jnp.atleast_1d(jnp.asarray(record_at)))
  sentinel = max_steps + 1

  if name == "adam":
    lr = jnp.asarray(kwargs.get("learning_rate", 1e-2), dtype)
    opt = optax.adam(lr, b1=kwargs.get("b1", 0.9), b2=kwargs.get("b2", 0.999))

    def to_z(w):
      return vecs.T @ w

    def step(s, w):
      g = 2.0 * (vecs @ (lam * (to_z(w) - z_star)))
      updates, s = opt.update(g, s, w)
      return s, optax.apply_updates(w, updates)
    state0 = opt.init(jnp.zeros_like(z_star))
  else:
    to_z = lambda z: z
    state0, step = _invariant_step(name, prob, kwargs)

  def stats(w):
    e = to_z(w) - z_star
    return jnp.sum(jnp.where(mask, e * e, 0.0)), jnp.sum(lam * e * e)

  w0 = jnp.zeros_like(z_star)
  d0, x0 = stats(w0)

  def ratios(w):
    d, x = stats(w)
    return (_safe_div(d, d0, if_zero=jnp.where(d > 0, jnp.inf, 0.0)),
            _safe_div(x, x0, if_zero=jnp.where(x > 0, jnp.inf, 0.0)))

  n_rec = record_at.shape[0]
  # Segments end at the recording steps, then at the cap. The boundaries are shared by every
  # lane under vmap, so a recording is a plain row write between inner loops (a per-step
  # scatter cost 5× the step itself at D = 79).
  bounds = jnp.concatenate([jnp.minimum(record_at, max_steps), jnp.asarray([max_steps])])
  nr0, ex0 = ratios(w0)
  hits0 = jnp.where(jnp.stack([nr0, ex0])[:, None] <= eps[None], 0, sentinel).astype(jnp.int32)

  def inner_cond(c):
    t, _, _, hits, ok, end = c
    return (t < end) & jnp.any(hits == sentinel) & ok

  def inner_body(c):
    t, s, w, hits, _, end = c
    s, w = step(s, w)
    t = t + 1
    nr, ex = ratios(w)
    reached = (jnp.stack([nr, ex])[:, None] <= eps[None]) & (hits == sentinel)
    return t, s, w, jnp.where(reached, t, hits), jnp.isfinite(nr) & jnp.isfinite(ex), end

  def segment(j, c):
    t, s, w, hits, ok, rec = c
    t, s, w, hits, ok, _ = lax.while_loop(inner_cond, inner_body, (t, s, w, hits, ok, bounds[j]))
    nr, ex = ratios(w)
    ws, nrs, exs = rec
    rec = (ws.at[j].set(w), nrs.at[j].set(nr), exs.at[j].set(ex))
    return t, s, w, hits, ok, rec

  rec0 = (jnp.zeros((n_rec + 1,) + w0.shape, dtype), jnp.zeros((n_rec + 1,), dtype),
          jnp.zeros((n_rec + 1,), dtype))
  t, _, w, hits, _, (ws, nrs, exs) = lax.fori_loop(
      0, n_rec + 1, segment,
      (jnp.asarray(0, jnp.int32), state0, w0, hits0, jnp.asarray(True), rec0))
  ws, nrs, exs = ws[:n_rec], nrs[:n_rec], exs[:n_rec]
  if name != "adam":
    ws = ws @ vecs.T                                      # w = V z
  return Reached(steps=hits, final_step=t, norm_ratio=nrs, excess_loss=exs, recorded=ws)

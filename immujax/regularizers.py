"""The condition-number regularizers R_well (Eq. 3) and R_ill (Eq. 12) with their gradients.

For a symmetric ``S`` (the probe Hessian θᵀKθ) with non-zero singular values
``σ_1 ≥ … ≥ σ_k > 0``:

* ``R_well(S) = ½σ_1² − (1/2p)‖S‖_F²`` (Nenov et al. 2024), ``p`` = the dimension of ``S``.
  Minimising it drives the spectrum together: it upper-bounds ``log κ``.
  Gradient (unique σ_1): ``∇R_well = σ_1 u_1 v_1ᵀ − S/p``.
* ``R_ill(S) = 1 / ((1/2k)‖S‖_F² − ½σ_k²)``, ``k = rank(S)`` (Eq. 12). Minimising it pushes
  ``σ_k`` down and the rest up: ``1/log κ ≤ σ_1² R_ill`` (Thm 4.1(2)).
  Gradient (unique σ_k), Thm 4.1(3): ``∇R_ill = (σ_k u_k v_kᵀ − S/k) / Δ²`` with
  ``Δ = (1/2k)‖S‖_F² − ½σ_k²``.

For symmetric ``S = Σ λ_i v_i v_iᵀ`` the SVD has ``u_i = sign(λ_i) v_i``, so
``σ_i u_i v_iᵀ = λ_i v_i v_iᵀ``.

:func:`r_well` and :func:`r_ill` install these hand-derived gradients as their
``jax.custom_vjp`` rule, so ``jax.grad`` in user code uses them (they stay finite on
rank-deficient S, where autodiff through ``eigh`` is NaN). The ``*_autodiff`` twins compute
the same values with plain JAX autodiff and exist only for cross-checks.

θ-level forms (Thm 4.2): with ``H = θᵀKθ`` and ``G = ∇_S R(H)`` (symmetric),
``∇_θ R(H(θ)) = 2KθG``; the K⁻¹-preconditioned direction of Alg. 1 is therefore
``K⁻¹∇_θ R = 2θG`` — no inverse needed, and defined even for singular K
(:func:`preconditioned_direction`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from immujax import spectral

Array = jax.Array


class ValueAndGrad(NamedTuple):
  """A regularizer value and its gradient with respect to S (same shape as S)."""
  value: Array
  grad: Array


def r_well_value_and_grad(s: Array, e: spectral.Extremes | None = None, *,
                          p: int | None = None) -> ValueAndGrad:
  """Closed-form ``R_well(S)`` and ``∇_S R_well = σ_1 u_1 v_1ᵀ − S/p``.

  Args:
    s: symmetric matrix, shape ``(n, n)``.
    e: precomputed :func:`spectral.extremes` of ``s`` (computed if omitted).
    p: the normaliser; defaults to ``n`` (= min dimension of a square S).

  Returns:
    ``ValueAndGrad(value, grad)``.
  """
  if e is None:
    e = spectral.extremes(s)
  p = s.shape[0] if p is None else p
  value = 0.5 * e.sigma_max**2 - e.frobenius_sq / (2 * p)
  grad = e.lambda_max * jnp.outer(e.v_max, e.v_max) - s / p
  return ValueAndGrad(value, grad)


def r_ill_value_and_grad(s: Array, e: spectral.Extremes | None = None, *,
                         k: int | None = None, rtol: float | None = None) -> ValueAndGrad:
  """Closed-form ``R_ill(S)`` and its gradient (Thm 4.1(3)).

  Singular points are guarded without NaN: if ``Δ = 0`` (all non-zero singular values equal,
  e.g. rank 1 or a multiple of a projector) ``R_ill = +inf`` and the returned gradient is 0.

  Args:
    s: symmetric matrix, shape ``(n, n)``.
    e: precomputed :func:`spectral.extremes` of ``s`` with the same ``rtol``.
    k: normaliser of the Frobenius term; defaults to ``rank(S)``. ``σ_min`` is always the
      smallest non-zero singular value (Eq. 12).
    rtol: relative "non-zero" tolerance (default ``n · eps``).

  Returns:
    ``ValueAndGrad(value, grad)``.
  """
  if e is None:
    e = spectral.extremes(s, rtol=rtol)
  kk = jnp.maximum(e.rank, 1).astype(s.dtype) if k is None else jnp.asarray(k, s.dtype)
  delta = e.frobenius_sq / (2 * kk) - 0.5 * e.sigma_min**2
  positive = delta > 0
  safe = jnp.where(positive, delta, 1.0)
  value = jnp.where(positive, 1.0 / safe, jnp.inf)
  grad = (e.lambda_min * jnp.outer(e.v_min, e.v_min) - s / kk) / safe**2
  grad = jnp.where(positive, grad, 0.0)
  return ValueAndGrad(value, grad)


# --- R_well with its hand-derived gradient as the VJP rule -------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _r_well(s, p):
  return r_well_value_and_grad(s, p=p).value


def _r_well_fwd(s, p):
  vg = r_well_value_and_grad(s, p=p)
  return vg.value, vg.grad


def _r_well_bwd(p, grad, g):
  del p
  return (g * grad,)


_r_well.defvjp(_r_well_fwd, _r_well_bwd)


def r_well(s, *, p: int | None = None) -> Array:
  """``R_well(S) = ½‖S‖₂² − (1/2p)‖S‖_F²`` (Eq. 3), gradient ``σ_1u_1v_1ᵀ − S/p``.

  Args:
    s: symmetric matrix, shape ``(n, n)``.
    p: normaliser, default ``n`` (the minimum dimension of S).

  Returns:
    Scalar ``R_well(S) ≥ 0``; zero iff all singular values are equal (and ``p = n``).

  Example:
    >>> import jax.numpy as jnp
    >>> float(r_well(jnp.eye(3)))
    0.0
  """
  s = spectral.check_symmetric_matrix(s, "s")
  return _r_well(s, p)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _r_ill(s, k, rtol):
  return r_ill_value_and_grad(s, k=k, rtol=rtol).value


def _r_ill_fwd(s, k, rtol):
  vg = r_ill_value_and_grad(s, k=k, rtol=rtol)
  return vg.value, vg.grad


def _r_ill_bwd(k, rtol, grad, g):
  del k, rtol
  return (g * grad,)


_r_ill.defvjp(_r_ill_fwd, _r_ill_bwd)


def r_ill(s, *, k: int | None = None, rtol: float | None = None) -> Array:
  """``R_ill(S) = 1 / ((1/2k)‖S‖_F² − ½σ_min²)`` (Eq. 12), gradient of Thm 4.1(3).

  Args:
    s: symmetric matrix, shape ``(n, n)``.
    k: Frobenius normaliser, default ``rank(S)``.
    rtol: relative "non-zero" tolerance for the rank and σ_min (default ``n · eps``).

  Returns:
    Scalar ``R_ill(S) ≥ 0``, ``+inf`` when all non-zero singular values are equal.

  Example:
    >>> import jax.numpy as jnp
    >>> float(r_ill(jnp.diag(jnp.array([2.0, 1.0, 0.0]))))  # 1 / ((4 + 1)/4 − 1/2)
    1.3333333333333333
  """
  s = spectral.check_symmetric_matrix(s, "s")
  return _r_ill(s, k, rtol)


# --- Plain-autodiff twins, for cross-checks only -----------------------------------------------

def _autodiff_sigmas(s, rtol):
  # σ via eigvalsh: JAX differentiates eigenvalues as diag(Vᵀ dS V) (finite for simple
  # extremes). The rank mask is a stop-gradient decision, as in the custom rule.
  lam = jnp.linalg.eigvalsh(s)
  sig = jnp.abs(lam)
  if rtol is None:
    rtol = spectral.default_rtol(s.shape, s.dtype)
  nonzero = jax.lax.stop_gradient(sig > rtol * jnp.max(sig))
  smin = jnp.min(jnp.where(nonzero, sig, jnp.inf))
  return jnp.max(sig), smin, jnp.sum(nonzero)


def r_well_autodiff(s, *, p: int | None = None) -> Array:
  """:func:`r_well` differentiated by plain JAX autodiff (reference for tests)."""
  smax, _, _ = _autodiff_sigmas(s, None)
  p = s.shape[0] if p is None else p
  return 0.5 * smax**2 - jnp.sum(s**2) / (2 * p)


def r_ill_autodiff(s, *, k: int | None = None, rtol: float | None = None) -> Array:
  """:func:`r_ill` differentiated by plain JAX autodiff (reference for tests)."""
  _, smin, rank = _autodiff_sigmas(s, rtol)
  kk = rank if k is None else k
  return 1.0 / (jnp.sum(s**2) / (2 * kk) - 0.5 * smin**2)


# --- θ-level forms (Theorems 4.2, 4.3) ---------------------------------------------------------

def theta_gradient(theta: Array, k: Array, grad_s: Array) -> Array:
  """``∇_θ R(θᵀKθ) = 2KθG`` for a symmetric ``G = ∇_S R`` (Thm 4.2).

  Args:
    theta: ``(D_in, D_hid)``; k: ``(D_in, D_in)`` symmetric; grad_s: ``(D_hid, D_hid)``.

  Returns:
    ``(D_in, D_hid)``.
  """
  return 2.0 * k @ (theta @ grad_s)


def preconditioned_direction(theta: Array, grad_s: Array) -> Array:
  """The K⁻¹-preconditioned direction of Alg. 1: ``K⁻¹∇_θ R(θᵀKθ) = 2θG``.

  The preconditioner multiplies the gradient from the left (input index), which cancels the
  ``K`` of Thm 4.2 exactly — the mechanism behind Thm 4.3. Written in closed form it needs no
  inverse and is well defined when K is singular (the normal case).

  Args:
    theta: ``(D_in, D_hid)``.
    grad_s: ``∇_S R`` at ``S = θᵀKθ``, shape ``(D_hid, D_hid)``, symmetric.

  Returns:
    ``(D_in, D_hid)``.
  """
  return 2.0 * theta @ grad_s

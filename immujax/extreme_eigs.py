"""Extreme eigenpairs of a probe Hessian without a full eigendecomposition, warm-started.

A training step needs, per Hessian ``S = BᵀB`` (``B = Rθ``, ``R`` a root of ``K``), only
``σ_max`` with its vector (R_well, κ), the smallest NON-ZERO ``σ_min`` with its vector
(R_ill, κ), ``‖S‖_F²`` and the rank. :func:`spectral.gram_extremes` reads them off a full
``eigh`` of the ``r × r`` Gram ``M = BBᵀ`` (same non-zero spectrum as ``S``); this module
computes them from Cholesky factorizations and a few block iterations instead:

* **bottom** — block inverse iteration ``Y ← M⁻¹Y`` (two triangular solves with the Cholesky
  factor of ``M``), with Rayleigh–Ritz in the inverse space (``YᵀM⁻¹Y = (L⁻¹Y)ᵀ(L⁻¹Y)``), so
  ``λ_min = 1/μ_max`` keeps the relative accuracy that a graded ``M`` allows (rows of ``R``
  are scaled by ``√γ_i``, which makes ``M`` graded downward; an absolute-accuracy Rayleigh
  quotient ``wᵀMw`` would lose ``κ · eps`` relative). The vector is lifted to ``S``'s space
  from ``M⁻¹y`` rather than ``y`` (``v ∝ BᵀM⁻¹y``), which damps exactly the components that
  ``Bᵀ`` amplifies. When the residual stops falling fast (Opt κ lifts the bottom of H_P
  into a cluster), the factor is recomputed with a shift just below ``λ_min``.
* **top** — block shift-and-invert ``X ← (σI − M)⁻¹X`` with ``σ`` just above ``λ_max``:
  ``σ = θ_1 + 2r²/(θ_1 − θ_2)`` from the current Ritz values (a Kato–Temple bound), the
  factor recomputed when progress stalls (a block Rayleigh-quotient iteration). R_well
  squeezes the top of the spectrum together (measured: ``λ_2/λ_1 = 0.98`` after 30 MNIST
  steps), where power or Lanczos iterations need hundreds of products. If ``σ`` falls below
  ``λ_max`` after all, ``σI − M`` is indefinite: the factorization is retried once with
  ``σ = ‖M‖_F ≥ λ_max``, and a failure that remains is flagged (``ok = False``), never hidden.

Both iterate in a ``lax.while_loop`` until a residual is below a tolerance (at most
``max_iters``), starting from the previous training step's blocks (:class:`Basis`), which
the caller keeps in its state: 2–4 iterations per end and step on the MNIST trajectories
(the bottom is always iterated at least once). Every call returns a :class:`Check` with the
residuals ``‖Sv − λv‖/‖S‖`` of both pairs, measured on ``S = BᵀB`` itself, and an ``ok``
flag that is False when a factorization failed, an iteration did not converge, or the
smallest eigenvalue is below the rank tolerance (a rank drop: the rank would differ from
``B``'s non-zero rows); the caller then recomputes with :func:`exact` (``immujax.sweep``
does it between chunks, for flagged runs only, because under ``vmap`` a ``lax.cond`` would
run both paths for every run). Inside this module the ``lax.cond``s are real branches: they
run per matrix inside the ``lax.map`` below, never under ``vmap``.

Batched calls (``vmap``) run as a sequential ``lax.map`` of unbatched LAPACK calls: jaxlib
0.10.x's batched CPU kernels for Cholesky, triangular solves and ``eigh`` deadlock when
several run at once (see ``spectral._eigh``). Parallelism across runs comes from devices.

Everything here is float64 math; no lower precision is supported.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from immujax import spectral

Array = jax.Array

DEFAULT_BLOCK = 4
DEFAULT_TOL = 1e-12          # top pair: ‖Mx − θx‖/θ
DEFAULT_TOL_BOTTOM = 1e-10   # bottom pair: ‖M⁻¹y − μy‖/μ (see the lift in _warm_one)
DEFAULT_MAX_ITERS = 20


class Basis(NamedTuple):
  """Warm-start blocks in Gram coordinates: orthonormal ``(r, b)`` near the extreme vectors.

  Attributes:
    bottom: columns near the eigenvectors of the ``b`` smallest non-zero eigenvalues of
      ``M = BBᵀ``, the smallest first.
    top: columns near the eigenvectors of the ``b`` largest, the largest first.
  """
  bottom: Array
  top: Array


class Check(NamedTuple):
  """How a call to :func:`warm` (or :func:`exact`) can be trusted.

  Attributes:
    residual_max: ``‖Sv − λv‖/‖S‖₂`` of the top pair, on ``S = BᵀB``.
    residual_min: the same for the bottom (smallest non-zero) pair.
    iterations: block iterations used (bottom + top; 0 for :func:`exact`).
    ok: False if a factorization failed, an iteration hit ``max_iters``, or the smallest
      eigenvalue is below the rank tolerance (the rank dropped); recompute with
      :func:`exact` then.
  """
  residual_max: Array
  residual_min: Array
  iterations: Array
  ok: Array


def _gram(b: Array) -> tuple[Array, Array]:
  m = b @ b.T
  m = 0.5 * (m + m.T)
  pad = jnp.diag(m) == 0  # zero rows of B (roots padded to a common size) or of θ
  return m, pad


def _lift(b: Array, w: Array) -> Array:
  v = b.T @ w
  norm = jnp.linalg.norm(v)
  return jnp.where(norm > 0, v / jnp.where(norm > 0, norm, 1.0),
                   jnp.zeros_like(v).at[0].set(1.0))


def _residual(b: Array, v: Array, lam: Array, scale: Array) -> Array:
  # ‖(BᵀB)v − λv‖ / ‖S‖₂ without forming the n × n S.
  r = b.T @ (b @ v) - lam * v
  return jnp.linalg.norm(r) / jnp.where(scale > 0, scale, 1.0)


def _orthonormal(x: Array) -> Array:
  return jnp.linalg.qr(x)[0]


def _finish(b, m, pad, lam_min, w_min, lam_max, w_max, rtol, iterations, converged):
  n = b.shape[1]
  if rtol is None:
    rtol = spectral.default_rtol((n, n), b.dtype)
  n_rows = jnp.sum(~pad).astype(jnp.int32)
  v_max, v_min = _lift(b, w_max), _lift(b, w_min)
  res_max = _residual(b, v_max, lam_max, lam_max)
  res_min = _residual(b, v_min, lam_min, lam_max)
  full_rank = lam_min > rtol * lam_max
  finite = jnp.isfinite(lam_min) & jnp.isfinite(lam_max) & jnp.all(jnp.isfinite(w_min)) \
      & jnp.all(jnp.isfinite(w_max))
  ok = converged & full_rank & finite & (n_rows > 0)
  e = spectral.Extremes(sigma_max=lam_max, sigma_min=lam_min, lambda_max=lam_max,
                        lambda_min=lam_min, v_max=v_max, v_min=v_min, rank=n_rows,
                        frobenius_sq=jnp.sum(m * m))
  return e, Check(res_max, res_min, jnp.asarray(iterations, jnp.int32), ok)


def _warm_one(b, bottom, top, *, rtol, tol, tol_bottom, max_iters):
  m, pad = _gram(b)
  dtype = b.dtype
  eye = jnp.eye(m.shape[0], dtype=dtype)
  # --- bottom: block inverse iteration, shifted once progress stalls ----------------------
  # Pads (zero rows of B) are lifted above the spectrum so they never look like the bottom.
  m_valid = m + jnp.diag(jnp.where(pad, jnp.trace(m), 0.0))
  unshifted = jnp.linalg.cholesky(m_valid)

  def inv_ritz(chol, y):
    # Rayleigh–Ritz of (M − σI)⁻¹ on span(y): μ descending, the rotated y, c = L⁻¹y.
    c = solve_triangular(chol, y, lower=True)
    mu, u = jnp.linalg.eigh(c.T @ c)
    mu, u = mu[::-1], u[:, ::-1]
    return mu, y @ u, c @ u

  def bottom_factor(shift, mu, res):
    # λ_min ≥ σ + 1/(μ_1 + 2ρ²/(μ_1 − μ_2)) with ρ = res·μ_1 (Kato–Temple on the inverse, whose
    # Ritz value μ_1 is a lower bound). A hair below that keeps M − σ'I positive definite; if
    # it is not after all, fall back to the unshifted factor (σ' = 0), which always is.
    rho = res * mu[0]
    gap = jnp.maximum(mu[0] - mu[1], rho)
    bound = shift + 1.0 / (mu[0] + 2.0 * rho**2 / jnp.where(gap > 0, gap, 1.0))
    new_shift = bound * (1.0 - 1e-9)
    chol = jnp.linalg.cholesky(m_valid - new_shift * eye)
    good = jnp.isfinite(chol[-1, -1]) & (new_shift > 0)
    # (0 · σ' rather than a constant 0: under shard_map both branches must be per-device.)
    return jax.lax.cond(good, lambda: (chol, new_shift), lambda: (unshifted, 0.0 * new_shift))

  def bottom_body(carry):
    y, c, mu, _, res, res_at_factor, chol, shift, it = carry
    # Re-factor with a shift next to λ_min only when the last factor stopped paying (the
    # residual fell < 100× since it was chosen), as for the top end below: R_well and Opt κ
    # cluster the extremes they act on, where unshifted iterations crawl.
    refactor = (it > 0) & (res > 1e-2 * res_at_factor)
    chol, shift, res_at_factor = jax.lax.cond(
        refactor, lambda: (*bottom_factor(shift, mu, res), res),
        lambda: (chol, shift, res_at_factor))
    y = _orthonormal(solve_triangular(chol.T, solve_triangular(chol, y, lower=True),
                                      lower=False))
    mu, y, c = inv_ritz(chol, y)
    z1 = solve_triangular(chol.T, c[:, 0], lower=False)            # (M − σI)⁻¹ y_1
    res = jnp.linalg.norm(z1 - mu[0] * y[:, 0]) / mu[0]
    return y, c, mu, z1, res, res_at_factor, chol, shift, it + 1

  def not_done(carry):
    *_, res, _, _, _, it = carry
    return (it < max_iters) & (res > tol_bottom) | (it < 1)

  mu0, y0, c0 = inv_ritz(unshifted, bottom)
  z0 = solve_triangular(unshifted.T, c0[:, 0], lower=False)
  res0 = jnp.linalg.norm(z0 - mu0[0] * y0[:, 0]) / mu0[0]
  yb, _, mub, z1, res_b, _, _, shift_b, it_b = jax.lax.while_loop(
      not_done, bottom_body,
      (y0, c0, mu0, z0, res0, res0, unshifted, 0.0 * res0, jnp.int32(0)))
  lam_min = shift_b + 1.0 / mub[0]
  # Lift the bottom vector from (M − σI)⁻¹y_1 rather than y_1: Bᵀ amplifies an error along
  # the eigenvector of λ_j by √(λ_j/λ_min), and the inverse damps it by ≈ λ_min/λ_j first
  # (measured on an MNIST Hessian with κ = 1e12: residual ‖Sv − λv‖/‖S‖ 3e-17 instead of
  # 9e-11).
  w_min = z1

  # --- top: block Rayleigh-quotient shift-and-invert ---------------------------------------
  frobenius = jnp.sqrt(jnp.sum(m * m))

  def ritz(x):
    t = x.T @ (m @ x)
    th, u = jnp.linalg.eigh(0.5 * (t + t.T))
    th, u = th[::-1], u[:, ::-1]
    x = x @ u
    res = jnp.linalg.norm(m @ x[:, 0] - th[0] * x[:, 0])
    return th, x, res

  def factor(th, res):
    # σ just above λ_max: the Ritz value θ_1 is a lower bound and λ_max − θ_1 ≲ r²/(θ_1 − θ_2)
    # (Kato–Temple), so σ = θ_1 + 2r²/(θ_1 − θ_2) + a hair is above it and close; each
    # iteration then gains (σ − λ_1)/(σ − λ_{b+1}). Should σ fall below λ_max after all,
    # σI − M is indefinite, its Cholesky factor is NaN, the residual is NaN and the check
    # fails (ok = False): never a silently wrong pair.
    gap = jnp.maximum(th[0] - th[1], res)
    shift = th[0] + 2.0 * res**2 / jnp.where(gap > 0, gap, 1.0) + 1e-11 * th[0]
    chol = jnp.linalg.cholesky(shift * eye - m)
    # A warm block far from the new top (a chaotic run, e.g. Opt κ) can put σ below λ_max.
    # Retry once with σ = ‖M‖_F ≥ λ_max, a rigorous bound that is close when λ_max dominates;
    # the next re-factorization moves σ back next to the improved Ritz value.
    return jax.lax.cond(jnp.isfinite(chol[-1, -1]), lambda: chol,
                        lambda: jnp.linalg.cholesky((1.0 + 1e-8) * frobenius * eye - m))

  def top_body(carry):
    x, th, res, res_at_factor, chol, it = carry
    # Re-factor with the current Ritz value only when the last shift stopped paying (the
    # residual fell < 100× since it was chosen): a Cholesky costs ~5 triangular-solve
    # iterations. Inside lax.map this cond runs one branch.
    refactor = (it == 0) | (res > 1e-2 * res_at_factor)
    chol, res_at_factor = jax.lax.cond(
        refactor, lambda: (factor(th, res), res), lambda: (chol, res_at_factor))
    z = solve_triangular(chol.T, solve_triangular(chol, x, lower=True), lower=False)
    th, x, res = ritz(_orthonormal(z))
    return x, th, res, res_at_factor, chol, it + 1

  def top_not_done(carry):
    _, th, res, _, _, it = carry
    return (it < max_iters) & (res > tol * th[0])

  th0, x0, r0 = ritz(top)
  xt, tht, res_t, _, _, it_t = jax.lax.while_loop(
      top_not_done, top_body,
      (x0, th0, r0, r0 + jnp.inf, 0.0 * m, jnp.int32(0)))
  res_t = res_t / tht[0]
  # A Cholesky failure (σ below λ_max) shows up as NaN in the iterate; a warm block that was
  # already converged makes no iteration and cannot see it, which is fine: it is converged.
  converged = (res_b <= tol_bottom) & (res_t <= tol)
  e, check = _finish(b, m, pad, lam_min, w_min, tht[0], xt[:, 0], rtol, it_b + it_t,
                     converged)
  return e, Basis(yb, xt), check


def warm(b: Array, basis: Basis, *, rtol: float | None = None, tol: float | None = None,
         tol_bottom: float | None = None, max_iters: int | None = None) -> tuple[spectral.Extremes, Basis, Check]:
  """Extremes of ``S = BᵀB`` from the warm-started blocks ``basis`` (values only, no gradient).

  Args:
    b: ``(r, n)`` with ``S = BᵀB``; zero rows (padding) are ignored, the other rows must
      make ``M = BBᵀ`` positive definite (true for ``B = Rθ`` with invertible ``θ``).
    basis: the previous step's :class:`Basis` (or that of :func:`exact`), blocks ``(r, b)``.
    rtol: "non-zero" tolerance relative to ``σ_max`` (default ``n · eps``, as
      :func:`spectral.gram_extremes`).
    tol: stop iterating the top end when ``‖Mx − θx‖/θ`` of its Ritz pair is below this
      (default ``DEFAULT_TOL``).
    tol_bottom: stop iterating the bottom end when ``‖M⁻¹y − μy‖/μ`` is below this (the
      relative residual of the inverse, which keeps its meaning at κ = 1e12; default
      ``DEFAULT_TOL_BOTTOM``).
    max_iters: at most this many block iterations per end (static; default
      ``DEFAULT_MAX_ITERS``).

  Returns:
    ``(extremes, next basis, check)``. ``extremes`` has the fields of
    :class:`spectral.Extremes`; trust it only where ``check.ok``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> b = jnp.diag(jnp.array([3.0, 2.0, 1.0, 0.5]))[:, :4]
    >>> e0, basis, _ = exact(b, block=2)
    >>> e, basis, check = warm(b, basis)
    >>> float(e.sigma_max), float(e.sigma_min), bool(check.ok)
    (9.0, 0.25, True)
  """
  b = jax.lax.stop_gradient(b)
  tol = DEFAULT_TOL if tol is None else tol
  tol_bottom = DEFAULT_TOL_BOTTOM if tol_bottom is None else tol_bottom
  max_iters = DEFAULT_MAX_ITERS if max_iters is None else max_iters
  return _warm_fn(rtol, tol, tol_bottom, max_iters)(b, basis.bottom, basis.top)


@functools.lru_cache(maxsize=None)
def _warm_fn(rtol, tol, tol_bottom, max_iters):
  """The solver for these static settings, with its sequential batching rule (cached)."""
  @jax.custom_batching.custom_vmap
  def f(b, bottom, top):
    return _warm_one(b, bottom, top, rtol=rtol, tol=tol, tol_bottom=tol_bottom,
                     max_iters=max_iters)

  @f.def_vmap
  def f_vmap(axis_size, in_batched, b, bottom, top):
    # Sequential unbatched LAPACK calls (see the module docstring): broadcast, then map.
    args = [a if batched else jnp.broadcast_to(a, (axis_size,) + a.shape)
            for a, batched in zip((b, bottom, top), in_batched)]
    out = jax.lax.map(lambda xs: f(*xs), tuple(args))
    return out, jax.tree.map(lambda _: True, out)

  return f


def exact(b: Array, *, block: int = DEFAULT_BLOCK,
          rtol: float | None = None) -> tuple[spectral.Extremes, Basis, Check]:
  """:func:`spectral.gram_extremes` (one ``eigh``), plus the :class:`Basis` to warm-start from.

  The reference path, and the fallback for runs whose :func:`warm` check failed.

  Args:
    b: ``(r, n)`` with ``S = BᵀB``.
    block: columns of each warm-start block (static), ``≤ r``.
    rtol: "non-zero" tolerance relative to ``σ_max`` (default ``n · eps``).

  Returns:
    ``(extremes, basis, check)``; ``check.ok`` is True and ``iterations`` 0.
  """
  b = jax.lax.stop_gradient(b)
  n = b.shape[1]
  if rtol is None:
    rtol = spectral.default_rtol((n, n), b.dtype)
  b = jnp.where(jnp.all(jnp.isfinite(b)), b, jnp.zeros_like(b))  # as spectral.extremes
  m, _ = _gram(b)
  lam, w = spectral.eigh_scaled(m)
  r = m.shape[0]
  block = min(block, r)
  # Bottom block: the `block` smallest eigenvalues above the rank tolerance (ascending).
  nonzero = jnp.abs(lam) > rtol * jnp.max(jnp.abs(lam))
  first = jnp.argmax(nonzero)            # eigh sorts ascending; zeros (padding) come first
  first = jnp.minimum(first, r - block)
  bottom = jax.lax.dynamic_slice_in_dim(w, first, block, axis=1)
  top = w[:, ::-1][:, :block]
  e = spectral.extremes_from_eigh(lam, w, rtol=rtol)
  e = e._replace(v_max=_lift(b, e.v_max), v_min=_lift(b, e.v_min))
  res_max = _residual(b, e.v_max, e.lambda_max, e.sigma_max)
  res_min = _residual(b, e.v_min, e.lambda_min, e.sigma_max)
  return e, Basis(bottom, top), Check(res_max, res_min, jnp.int32(0), jnp.bool_(True))

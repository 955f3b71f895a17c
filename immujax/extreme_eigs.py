"""Extreme eigenpairs of a probe Hessian without a full eigendecomposition, warm-started.

A training step needs, per Hessian ``S = BᵀB`` (``B = Rθ``, ``R`` a root of ``K``), only
``σ_max`` with its vector (R_well, κ), the smallest NON-ZERO ``σ_min`` with its vector
(R_ill, κ), ``‖S‖_F²`` and the rank. :func:`spectral.gram_extremes` reads them off a full
``eigh`` of the ``r × r`` Gram ``M = BBᵀ`` (same non-zero spectrum as ``S``); this module
computes them from Cholesky factorizations and a few block iterations instead:

* **top** (first) — a few block Krylov products first, ``[X, MX, …, MᵏX]`` with
  Rayleigh–Ritz (``k`` = :data:`DEFAULT_KRYLOV_STEPS`, matrix–block products only, each
  ≈ 1/50 of a Cholesky factorization at ``r = 596``): from the previous step's block this
  often meets the tolerance outright, and otherwise gives Ritz values good enough for the
  shift below to be valid. Then block shift-and-invert ``X ← (σI − M)⁻¹X`` with ``σ`` just
  above ``λ_max``: ``σ = θ_1 + 2r²/(θ_1 − θ_2)`` from the current Ritz values (a
  Kato–Temple bound), the factor recomputed when progress stalls (a block Rayleigh-quotient
  iteration). R_well squeezes the top of the spectrum together (measured: ``λ_2/λ_1 =
  0.98`` after 30 MNIST steps), where power or Lanczos iterations alone need hundreds of
  products. If ``σ`` falls below ``λ_max`` after all, ``σI − M`` is indefinite: the
  factorization is retried once with ``σ = ‖M‖_F ≥ λ_max``, and a failure that remains is
  flagged (``ok = False``). Without the Krylov phase, a warm block one training step old
  put the first shift below ``λ_max`` on more than half the paper-scale solves, and the
  retry's ``‖M‖_F`` (far above a flattened top) then stalled (BUILD_NOTES, issue 18).
* **bottom** — block inverse iteration ``Y ← (M − σI)⁻¹Y`` (two triangular solves with a
  Cholesky factor), with Rayleigh–Ritz in the inverse space (``Yᵀ(M − σI)⁻¹Y =
  (L⁻¹Y)ᵀ(L⁻¹Y)``), so ``λ = σ + 1/μ`` keeps the relative accuracy that a graded ``M``
  allows (rows of ``R`` are scaled by ``√γ_i``; an absolute-accuracy Rayleigh quotient
  ``wᵀMw`` would lose ``κ · eps`` relative). The vector is lifted to ``S``'s space from
  ``(M − σI)⁻¹y`` rather than ``y`` (``v ∝ Bᵀ(M − σI)⁻¹y``), which damps exactly the
  components that ``Bᵀ`` amplifies.

  **Rank drops.** The first factor is of ``M + τI`` with ``τ = rtol · λ_max``, the rank
  tolerance (a *guard shift*, ``σ = −τ``): ``M`` may hold eigenvalues at round-off level
  (Opt κ pushes ``σ_min(H_H)`` below the tolerance step after step; IMMA makes ``θ``
  nearly singular), where ``M``'s own Cholesky factor fails or loses the next pair, while
  ``M + τI`` stays positive definite by a margin of ``τ`` — ``n`` times the round-off of
  ``M``'s entries. Inverse iteration then converges to the block's ``b`` smallest
  eigenpairs, nulls included; Rayleigh–Ritz separates them, and the target is the first
  Ritz pair above ``τ`` (``k`` Ritz values at or below ``τ`` certify, by interlacing, at
  least ``k`` eigenvalues there, and the rank is the number of non-zero rows minus ``k``).
  The factor is recomputed with a shift just below the target when progress stalls (Opt κ
  lifts the bottom of H_P into a cluster), but only when no null is in the block: a shift
  above a null would make ``M − σI`` indefinite. The nulls stay in the block and are
  carried to the next step's warm start, where they are found at once. Tried first and
  dropped (BUILD_NOTES, "Extreme eigenpairs without eigh"): the unshifted factor, which at
  eigenvalues 1e-18 below the rest loses the next pair.

Both iterate in a ``lax.while_loop`` until a residual is below a tolerance (at most
``max_iters``), starting from the previous training step's blocks (:class:`Basis`), which
the caller keeps in its state: 2–4 iterations per end and step on the MNIST trajectories
(the bottom is always iterated at least once). Every call returns a :class:`Check` with the
residuals ``‖Sv − λv‖/‖S‖`` of both pairs, measured on ``S = BᵀB`` itself, and an ``ok``
flag that is False when a factorization failed, an iteration did not converge, or more
nulls than the block can hold left no non-zero pair in it; the caller then recomputes with
:func:`exact` (``immujax.sweep`` does it between chunks, for flagged runs only, because
under ``vmap`` a ``lax.cond`` would run both paths for every run).

**Batching** (``vmap``), chosen for the default backend when the step is traced
(:data:`BATCHING`):

* on a CPU, a sequential ``lax.map`` of the unbatched solver on LAPACK kernels; inside the
  map the ``lax.cond``s are real branches and every run iterates only as often as it needs.
  jaxlib 0.10.x's *batched* CPU LAPACK kernels deadlock when several run at once (see
  ``spectral._eigh``). The solver vmapped on the plain-XLA kernels of
  :mod:`immujax.linalg` (no custom call at all) is available, and used on a CPU below
  :data:`CPU_CROSSOVER_RANK`; measured on this project's 2-core CPU it is 3–5× slower
  than the map at every rank from 40 to 600 (the kernels alone break even at ``r ≤ 100``),
  so the crossover is 0;
* on GPU/TPU, the solver vmapped with the platform's native batched kernels
  (``jnp.linalg.cholesky``, ``solve_triangular``, ``eigh`` of the ``b × b`` Ritz matrix —
  below the 32 columns where a GPU's batched ``eigh`` stops being batched), and no QR.

Under a batched rule a ``lax.cond`` computes both branches (here: a Cholesky factor in
every iteration, where the map factors once every few) and a ``lax.while_loop`` iterates
until the slowest run of the batch has converged, the others holding their values.

Everything here is float64 math; no lower precision is supported.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from immujax import linalg
from immujax import spectral

Array = jax.Array

DEFAULT_BLOCK = 4
DEFAULT_TOL = 1e-12          # top pair: ‖Mx − θx‖/θ
DEFAULT_TOL_BOTTOM = 1e-10   # bottom pair: ‖M⁻¹y − μy‖/μ (see the lift in _warm_one)
DEFAULT_MAX_ITERS = 20
DEFAULT_KRYLOV_STEPS = 6     # block Krylov products before the top's shift-and-invert

#: How a batch of solves runs: ``"auto"`` (by platform and size, see the module docstring),
#: ``"map"`` (sequential LAPACK calls), ``"xla"`` (batched, :mod:`immujax.linalg`) or
#: ``"native"`` (batched ``jnp.linalg``; on a CPU that is jaxlib's batched LAPACK path).
#: Read when a step is traced.
BATCHING = "auto"

#: On a CPU, Gram ranks below this use the batched XLA kernels, the others the LAPACK map.
#: Measured (``benchmarks/sweep_benchmark.py --kernels``): the map wins at every rank from
#: 40 up on this project's CPU, so no rank uses the XLA kernels by default.
CPU_CROSSOVER_RANK = 0


class Basis(NamedTuple):
  """Warm-start blocks in Gram coordinates: orthonormal ``(r, b)`` near the extreme vectors.

  Attributes:
    bottom: columns near the eigenvectors of the ``b`` smallest eigenvalues of ``M = BBᵀ``
      that matter — the smallest non-zero ones, after any null (below the rank tolerance)
      the block holds — ascending.
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
    ok: False if a factorization failed, an iteration hit ``max_iters``, or the block held
      no eigenvalue above the rank tolerance; recompute with :func:`exact` then.
  """
  residual_max: Array
  residual_min: Array
  iterations: Array
  ok: Array


class _Kernels(NamedTuple):
  """The small dense kernels the solver is written against (one set per batching rule)."""
  cholesky: Callable          # a -> factor (a pytree)
  lower: Callable             # factor -> L
  solve_lower: Callable       # (factor, y) -> L⁻¹y
  solve_upper: Callable       # (factor, y) -> L⁻ᵀy
  eigh: Callable              # small symmetric t -> (ascending λ, vectors)


_LAPACK = _Kernels(
    cholesky=jnp.linalg.cholesky,
    lower=lambda f: f,
    solve_lower=lambda f, y: solve_triangular(f, y, lower=True),
    solve_upper=lambda f, y: solve_triangular(f, y, lower=True, trans=1),
    eigh=jnp.linalg.eigh)

_XLA = _Kernels(
    cholesky=linalg.cholesky,
    lower=lambda f: f.lower,
    solve_lower=linalg.solve_lower,
    solve_upper=linalg.solve_upper,
    eigh=linalg.eigh_small)


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


def _finish(b, m, n_rows, lam_min, w_min, lam_max, w_max, rtol, iterations, converged,
            nulls):
  v_max, v_min = _lift(b, w_max), _lift(b, w_min)
  res_max = _residual(b, v_max, lam_max, lam_max)
  res_min = _residual(b, v_min, lam_min, lam_max)
  nonzero = lam_min > rtol * lam_max
  finite = jnp.isfinite(lam_min) & jnp.isfinite(lam_max) & jnp.all(jnp.isfinite(w_min)) \
      & jnp.all(jnp.isfinite(w_max))
  ok = converged & nonzero & finite & (n_rows > nulls)
  e = spectral.Extremes(sigma_max=lam_max, sigma_min=lam_min, lambda_max=lam_max,
                        lambda_min=lam_min, v_max=v_max, v_min=v_min,
                        rank=(n_rows - nulls).astype(jnp.int32),
                        frobenius_sq=jnp.sum(m * m))
  return e, Check(res_max, res_min, jnp.asarray(iterations, jnp.int32), ok)


def _krylov_top(m: Array, x: Array, steps: int, kern: _Kernels
                ) -> tuple[Array, Array, Array]:
  """Top Ritz pairs of ``M`` on ``span[X, MX, …, MˢX]``: ``(θ descending (b,), X (r, b), res)``.

  ``X`` is orthonormal ``(r, b)``; ``res = ‖Mx₁ − θ₁x₁‖``. Each new block is
  orthogonalized twice against the ones before, then within itself; a column with nothing
  left (an invariant subspace reached) becomes zero, and its Ritz value 0 sorts below the
  top. The blocks fill a fixed ``(r, (s+1)·b)`` buffer in a loop (its unfilled columns are
  zero, so projecting on the whole buffer is projecting on the blocks so far): one copy of
  the step in the compiled program, not ``s``.
  """
  r, b = x.shape
  width = b * (steps + 1)
  q = jnp.zeros((r, width), x.dtype).at[:, :b].set(x)
  mq = 0.0 * q   # derived from x: under shard_map a loop carry must vary like its updates

  def step(i, carry):
    q, mq = carry
    mx = m @ jax.lax.dynamic_slice_in_dim(q, i * b, b, axis=1)
    w = mx
    for _ in range(2):
      w = w - q @ (q.T @ w)
    new = linalg.orthonormalize(w, drop_below=1e-10 * jnp.linalg.norm(mx, axis=0))
    return (jax.lax.dynamic_update_slice_in_dim(q, new, (i + 1) * b, axis=1),
            jax.lax.dynamic_update_slice_in_dim(mq, mx, i * b, axis=1))

  q, mq = jax.lax.fori_loop(0, steps, step, (q, mq))
  mq = mq.at[:, steps * b:].set(m @ q[:, steps * b:])
  t = q.T @ mq
  th, u = kern.eigh(0.5 * (t + t.T))
  th, u = th[::-1][:b], u[:, ::-1][:, :b]
  x = q @ u
  return th, x, jnp.linalg.norm(m @ x[:, 0] - th[0] * x[:, 0])


def _warm_one(b, bottom, top, *, kern, rtol, tol, tol_bottom, max_iters, krylov_steps):
  n = b.shape[1]
  if rtol is None:
    rtol = spectral.default_rtol((n, n), b.dtype)
  m, pad = _gram(b)
  dtype = b.dtype
  eye = jnp.eye(m.shape[0], dtype=dtype)
  n_rows = jnp.sum(~pad).astype(jnp.int32)
  frobenius = jnp.sqrt(jnp.sum(m * m))

  # --- top: block Rayleigh-quotient shift-and-invert ---------------------------------------
  def ritz(x):
    t = x.T @ (m @ x)
    th, u = kern.eigh(0.5 * (t + t.T))
    th, u = th[::-1], u[:, ::-1]
    x = x @ u
    res = jnp.linalg.norm(m @ x[:, 0] - th[0] * x[:, 0])
    return th, x, res

  def top_factor(th, res):
    # σ just above λ_max: the Ritz value θ_1 is a lower bound and λ_max − θ_1 ≲ r²/(θ_1 − θ_2)
    # (Kato–Temple), so σ = θ_1 + 2r²/(θ_1 − θ_2) + a hair is above it and close; each
    # iteration then gains (σ − λ_1)/(σ − λ_{b+1}). Should σ fall below λ_max after all,
    # σI − M is indefinite, its Cholesky factor is NaN, the residual is NaN and the check
    # fails (ok = False): never a silently wrong pair.
    gap = jnp.maximum(th[0] - th[1], res)
    shift = th[0] + 2.0 * res**2 / jnp.where(gap > 0, gap, 1.0) + 1e-11 * th[0]
    f = kern.cholesky(shift * eye - m)
    # A warm block far from the new top (a chaotic run, e.g. Opt κ) can put σ below λ_max.
    # Retry once with σ = ‖M‖_F ≥ λ_max, a rigorous bound that is close when λ_max dominates;
    # the next re-factorization moves σ back next to the improved Ritz value.
    return jax.lax.cond(jnp.isfinite(kern.lower(f)[-1, -1]), lambda: f,
                        lambda: kern.cholesky((1.0 + 1e-8) * frobenius * eye - m))

  def top_body(carry):
    x, th, res, res_at_factor, f, it = carry
    # Re-factor with the current Ritz value only when the last shift stopped paying (the
    # residual fell < 100× since it was chosen): a Cholesky costs ~5 triangular-solve
    # iterations. Inside lax.map this cond runs one branch.
    refactor = (it == 0) | (res > 1e-2 * res_at_factor)
    f, res_at_factor = jax.lax.cond(
        refactor, lambda: (top_factor(th, res), res), lambda: (f, res_at_factor))
    z = kern.solve_upper(f, kern.solve_lower(f, x))
    th, x, res = ritz(linalg.orthonormalize(z))
    return x, th, res, res_at_factor, f, it + 1

  def top_not_done(carry):
    _, th, res, _, _, it = carry
    return (it < max_iters) & (res > tol * th[0])

  # The Krylov phase only where the space fits well inside the Gram (not on tiny test
  # matrices, where it would exhaust the space).
  if krylov_steps and 4 * top.shape[1] * (krylov_steps + 1) <= m.shape[0]:
    th0, x0, r0 = _krylov_top(m, top, krylov_steps, kern)
  else:
    th0, x0, r0 = ritz(top)
  # (Zeros derived from m, not constants: under shard_map a loop's carry must vary with the
  # device like the values that replace it.)
  f0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype) + 0.0 * m[0, 0],
                    jax.eval_shape(kern.cholesky, m))
  xt, tht, res_t, _, _, it_t = jax.lax.while_loop(
      top_not_done, top_body, (x0, th0, r0, r0 + jnp.inf, f0, jnp.int32(0)))
  lam_max = tht[0]
  res_t = res_t / lam_max
  tau = rtol * lam_max   # the rank tolerance: σ ≤ τ counts as zero (spectral.extremes)

  # --- bottom: block inverse iteration from a guard shift; nulls found, then deflated -----
  # Pads (zero rows of B) are lifted above the spectrum so they never look like the bottom,
  # and so are deflated nulls (columns of `defl`, zero columns unused).
  lift = jnp.trace(m)
  m_valid = m + jnp.diag(jnp.where(pad, lift, 0.0))
  guard = -tau
  f_guard = kern.cholesky(m_valid - guard * eye)
  blk = bottom.shape[1]
  cols = jnp.arange(blk)

  def inv_ritz(f, y):
    # Rayleigh–Ritz of (M − σI)⁻¹ on span(y): μ descending, the rotated y, c = L⁻¹y.
    c = kern.solve_lower(f, y)
    mu, u = kern.eigh(c.T @ c)
    mu, u = mu[::-1], u[:, ::-1]
    return mu, y @ u, c @ u

  def target(f, shift, mu, y, c):
    # The smallest Ritz pair above the rank tolerance (the Ritz values at or below it are
    # nulls), its (M − σI)⁻¹y and inverse residual ‖(M − σI)⁻¹y − μy‖/μ. A μ ≤ 0 says that
    # M − σI was not positive definite after all (a shifted factor can succeed on a matrix
    # with an eigenvalue below σ by less than its round-off, or hide a null the block had
    # not revealed): such an iterate is never trusted (`bad`).
    lam = shift + 1.0 / mu
    above = (lam > tau) & (mu > 0)
    nulls = jnp.sum((lam <= tau) & (mu > 0)).astype(jnp.int32)
    j = jnp.argmin(jnp.where(above, lam, jnp.inf)).astype(jnp.int32)
    mu_j, y_j = mu[j], y[:, j]
    z = kern.solve_upper(f, c[:, j])
    bad = jnp.any(mu <= 0) | ~jnp.any(above)
    return nulls, j, z, jnp.linalg.norm(z - mu_j * y_j) / mu_j, bad

  def bottom_factor(shift, mu, res, j, y, nulls, defl):
    # A shift just below the target: λ_j ≥ σ + 1/(μ_j + 2ρ²/(μ_j − μ_{j+1})) with ρ = res·μ_j
    # (Kato–Temple on the inverse, whose Ritz value is a lower bound), minus a hair. Nulls in
    # the block (j of them) would make M − σ'I indefinite: they are deflated first, lifted
    # above the spectrum along their Ritz vectors (an error δ in such a vector moves the
    # target by a relative δ², and the lift Bᵀ annihilates null components). If the factor
    # is not positive definite after all, fall back to the guard factor, which always is.
    mu_j = mu[j]
    mu_next = mu[jnp.minimum(j + 1, blk - 1)]
    rho = res * mu_j
    gap = jnp.maximum(mu_j - mu_next, rho)
    bound = shift + 1.0 / (mu_j + 2.0 * rho**2 / jnp.where(gap > 0, gap, 1.0))
    new_shift = bound - 1e-9 * jnp.abs(bound)
    # New deflation columns: the block's null Ritz vectors, after those deflated before.
    place = (cols[:, None] < nulls) & (cols[None, :] == cols[:, None] + jnp.sum(
        jnp.any(defl != 0, axis=0)))
    new_defl = defl + y @ place.astype(dtype)
    f = kern.cholesky(m_valid + lift * (new_defl @ new_defl.T) - new_shift * eye)
    good = jnp.isfinite(kern.lower(f)[-1, -1]) & (new_shift > guard) \
        & (jnp.sum(jnp.any(new_defl != 0, axis=0)) + 1 < blk + 1)
    return jax.lax.cond(good, lambda: (f, new_shift, new_defl),
                        lambda: (f_guard, guard + 0.0 * bound, jnp.zeros_like(defl)))

  def bottom_body(carry):
    y, c, mu, _, res, res_prev, f, shift, defl, nulls, j, bad, it = carry
    # Re-factor with a shift next to the target when the last iteration gained less than
    # 10× (a Cholesky costs a few solve iterations) and the Ritz pair is close enough for
    # the Kato–Temple bound to hold (a warm block that missed a null reveals it first).
    # After an untrusted iterate (`bad`), go back to the guard factor.
    refactor = (it > 0) & (res > 0.1 * res_prev) & (res < 0.1) & ~bad
    f, shift, defl = jax.lax.cond(
        bad, lambda: (f_guard, guard + 0.0 * shift, jnp.zeros_like(defl)),
        lambda: jax.lax.cond(refactor, lambda: bottom_factor(shift, mu, res, j, y, nulls, defl),
                             lambda: (f, shift, defl)))
    res_prev = jnp.where(bad, jnp.inf, res)
    y = linalg.orthonormalize(kern.solve_upper(f, kern.solve_lower(f, y)))
    mu, y, c = inv_ritz(f, y)
    nulls, j, z, res, bad = target(f, shift, mu, y, c)
    return y, c, mu, z, res, res_prev, f, shift, defl, nulls, j, bad, it + 1

  def bottom_not_done(carry):
    *_, res, _, _, _, _, _, _, bad, it = carry
    return (it < max_iters) & ((res > tol_bottom) | bad) | (it < 1)

  y_in = linalg.orthonormalize(bottom)
  mu0, y0, c0 = inv_ritz(f_guard, y_in)
  nulls0, j0, z0, res0, bad0 = target(f_guard, guard, mu0, y0, c0)
  defl0 = jnp.zeros_like(bottom)
  yb, _, mub, zb, res_b, _, _, shift_b, defl, nulls, jb, bad_b, it_b = jax.lax.while_loop(
      bottom_not_done, bottom_body,
      (y0, c0, mu0, z0, res0, jnp.inf * res0, f_guard, guard, defl0, nulls0, j0, bad0,
       jnp.int32(0)))
  lam_min = shift_b + 1.0 / mub[jb]
  n_defl = jnp.sum(jnp.any(defl != 0, axis=0)).astype(jnp.int32)
  nulls = nulls + n_defl
  # Next step's block: the deflated nulls first, then the iterated block.
  after = (cols[None, :] == cols[:, None] + n_defl).astype(dtype)
  yb = defl + yb @ after
  # Lift the bottom vector from (M − σI)⁻¹y rather than y: Bᵀ amplifies an error along the
  # eigenvector of λ_i by √(λ_i/λ_min), and the inverse damps it by ≈ λ_min/λ_i first
  # (measured on an MNIST Hessian with κ = 1e12: residual ‖Sv − λv‖/‖S‖ 3e-17 instead of
  # 9e-11).
  converged = (res_b <= tol_bottom) & (res_t <= tol) & (nulls < blk) & ~bad_b
  e, check = _finish(b, m, n_rows, lam_min, zb, lam_max, xt[:, 0], rtol, it_b + it_t,
                     converged, nulls)
  return e, Basis(yb, xt), check


def warm(b: Array, basis: Basis, *, rtol: float | None = None, tol: float | None = None,
         tol_bottom: float | None = None, max_iters: int | None = None,
         batching: str | None = None, krylov_steps: int | None = None
         ) -> tuple[spectral.Extremes, Basis, Check]:
  """Extremes of ``S = BᵀB`` from the warm-started blocks ``basis`` (values only, no gradient).

  Args:
    b: ``(r, n)`` with ``S = BᵀB``; zero rows (padding) are ignored.
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
    batching: how a ``vmap`` of this call runs (static): ``"auto"``, ``"map"``, ``"xla"``
      or ``"native"`` (see :data:`BATCHING`, the default).
    krylov_steps: block Krylov products before the top's shift-and-invert (static;
      default ``DEFAULT_KRYLOV_STEPS``; 0 starts it from the basis' Ritz pairs). Used only
      when ``4 · b · (krylov_steps + 1)`` fits in the Gram's ``r`` rows.

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
  batching = BATCHING if batching is None else batching
  krylov_steps = DEFAULT_KRYLOV_STEPS if krylov_steps is None else int(krylov_steps)
  if krylov_steps < 0:
    raise ValueError(f"`krylov_steps` must be >= 0; got {krylov_steps}.")
  if batching not in ("auto", "map", "xla", "native"):
    raise ValueError(f"`batching` must be 'auto', 'map', 'xla' or 'native'; got {batching!r}.")
  return _warm_fn(rtol, tol, tol_bottom, max_iters, batching, krylov_steps)(
      b, basis.bottom, basis.top)


@functools.lru_cache(maxsize=None)
def _warm_fn(rtol, tol, tol_bottom, max_iters, batching, krylov_steps):
  """The solver for these static settings, with its batching rule (cached)."""
  def one(kern):
    return functools.partial(_warm_one, kern=kern, rtol=rtol, tol=tol, tol_bottom=tol_bottom,
                             max_iters=max_iters, krylov_steps=krylov_steps)

  @jax.custom_batching.custom_vmap
  def f(b, bottom, top):
    return one(_LAPACK)(b, bottom, top)

  @f.def_vmap
  def f_vmap(axis_size, in_batched, b, bottom, top):
    args = tuple(a if batched else jnp.broadcast_to(a, (axis_size,) + a.shape)
                 for a, batched in zip((b, bottom, top), in_batched))

    def mapped(*xs):   # sequential unbatched LAPACK calls (see the module docstring)
      return jax.lax.map(lambda x: f(*x), xs)

    def batched_xla(*xs):
      return jax.vmap(one(_XLA))(*xs)

    def native(*xs):
      return jax.vmap(one(_LAPACK))(*xs)

    rule = {"map": mapped, "xla": batched_xla, "native": native}
    if batching == "auto":
      out = rule[_auto_rule(b.shape[-2])](*args)
    else:
      out = rule[batching](*args)
    return out, jax.tree.map(lambda _: True, out)

  return f


def _auto_rule(rank: int) -> str:
  """The batching rule for the default backend, chosen when the step is traced.

  A trace-time choice: ``jax.lax.platform_dependent`` would pick at lowering time but traces
  every branch (measured: +1 s per chunk program, +3 s for a sweep's set-up). A program
  traced for the default backend but compiled for another one keeps this backend's rule.
  """
  if jax.default_backend() == "cpu":
    return "xla" if rank < CPU_CROSSOVER_RANK else "map"
  return "native"


def exact(b: Array, *, block: int = DEFAULT_BLOCK,
          rtol: float | None = None) -> tuple[spectral.Extremes, Basis, Check]:
  """:func:`spectral.gram_extremes` (one ``eigh``), plus the :class:`Basis` to warm-start from.

  The reference path, and the fallback for runs whose :func:`warm` check failed. The bottom
  block starts with up to ``block − 2`` of the largest nulls (eigenvalues below the rank
  tolerance that are not padding), so that a warm start after a rank drop finds them at
  once.

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
  m, pad = _gram(b)
  lam, w = spectral.eigh_scaled(m)
  r = m.shape[0]
  block = min(block, r)
  # Bottom block: non-pad eigenvectors in ascending order (eigenvectors of padding live on
  # the zero rows), from up to block − 2 nulls below the first non-zero eigenvalue.
  nonzero = jnp.abs(lam) > rtol * jnp.max(jnp.abs(lam))
  pad_vec = jnp.sum(jnp.where(pad[:, None], w * w, 0.0), axis=0) > 0.5
  order = jnp.argsort(jnp.where(pad_vec, jnp.inf, lam))
  nulls = jnp.sum(~nonzero & ~pad_vec)
  first = jnp.clip(nulls - max(block - 2, 0), 0, r - block)
  bottom = jax.lax.dynamic_slice_in_dim(w[:, order], first, block, axis=1)
  top = w[:, ::-1][:, :block]
  e = spectral.extremes_from_eigh(lam, w, rtol=rtol)
  e = e._replace(v_max=_lift(b, e.v_max), v_min=_lift(b, e.v_min))
  res_max = _residual(b, e.v_max, e.lambda_max, e.sigma_max)
  res_min = _residual(b, e.v_min, e.lambda_min, e.sigma_max)
  return e, Basis(bottom, top), Check(res_max, res_min, jnp.int32(0), jnp.bool_(True))

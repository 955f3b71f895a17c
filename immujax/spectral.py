"""Spectral primitives: data covariance, probe Hessian, extreme eigenpairs, condition numbers.

Conventions (see BUILD_NOTES.md, "Conventions"):

* A feature extractor is ``theta`` of shape ``(D_in, D_hid)``; features are ``X @ theta``.
* ``K = XᵀX`` (uncentred, unnormalised, Eq. 9) and the linear-probe Hessian is
  ``H(theta) = thetaᵀ K theta`` (the exact Hessian of ``‖Xθw − y‖²`` is ``2H``; κ ignores the 2).
* Every matrix handed to the spectral functions is symmetric (a Hessian or a Gram matrix). Its
  singular values are the absolute eigenvalues, ``σ_i = |λ_i|``.
* κ(S) = ‖S‖₂‖S†‖₂ = σ_max / σ_min over the **non-zero** spectrum (Eq. 1, pseudo-inverse
  convention). "Non-zero" means ``σ > rtol · σ_max`` with ``rtol`` defaulting to
  ``max(S.shape) · eps`` — numpy's ``matrix_rank`` convention — never a fixed absolute threshold.

Gradients of the extreme singular values are derived by hand (``dσ = sign(λ) vᵀ dS v`` for a
simple eigenvalue λ with unit eigenvector v), so they stay finite when the rest of the
spectrum is degenerate — the normal case here (rank-deficient Grams), where differentiating
through ``jnp.linalg.eigh`` yields NaN/inf (jax issues #669, #21896).

All spectral math is meant to run in float64: enable ``jax_enable_x64`` at program start.
Inputs are promoted to the widest enabled float type.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# The authors' recipe (utils/loss.py::condition_number): add 1e-6·I, then take the smallest
# eigenvalue above 1e-6 as σ_min. Kept only to reproduce what their code reports.
AUTHORS_SHIFT = 1e-6


class allow_float32:  # pylint: disable=invalid-name
  """Context manager: lets the spectral functions run in float32 when x64 is off.

  The spectral math's contract is float64: with ``jax_enable_x64`` off, every public
  function that validates its inputs (``covariance``, ``hessian``, ``condition_number``,
  ``r_ill``, ``relative_immunization_ratio``, ... — all that go through ``_as_float``) raises
  a ``ValueError`` rather than silently computing κ in float32 (RIR 78 instead of 324 on a
  κ ≈ 1e6 problem). Inside ``with allow_float32():`` they run in float32 instead, as
  before. With x64 on, this has no effect: inputs are promoted to float64 either way.

  The switch is process-wide (not per thread) and is read when a function is traced, so a
  ``jax.jit`` function traced inside the block keeps running in float32 afterwards.

  Example:
    >>> import jax.numpy as jnp
    >>> with allow_float32():  # a deliberate float32 experiment
    ...   k = covariance(jnp.eye(3, dtype=jnp.float32))
  """
  _depth = 0

  def __enter__(self):
    allow_float32._depth += 1
    return self

  def __exit__(self, *exc):
    allow_float32._depth -= 1
    return False


def _as_float(x, name: str) -> Array:
  if not isinstance(x, jax.Array):
    x = np.asarray(x)
  if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
    raise ValueError(f"`{name}` must be a real floating-point array; got dtype {x.dtype}.")
  if not jax.config.jax_enable_x64 and not allow_float32._depth:
    raise ValueError(
        f"`{name}`: float64 is disabled, so this spectral math would run in float32 and lose "
        "about half of κ's digits. Call jax.config.update(\"jax_enable_x64\", True) at "
        "program start, or opt in to float32 explicitly with `with immujax.allow_float32():`.")
  # float64; float32 only under allow_float32() (canonicalized: no truncation warning).
  dtype = jax.dtypes.canonicalize_dtype(jnp.promote_types(x.dtype, jnp.float64))
  return jnp.asarray(x, dtype=dtype)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_finite(x: Array, name: str) -> None:
  """Raises a ValueError if a concrete array holds NaN or inf (no-op under tracing)."""
  if _is_concrete(x) and not bool(jnp.all(jnp.isfinite(x))):
    raise ValueError(
        f"`{name}` contains NaN or inf; clean the data (e.g. fillna) or lower the learning "
        "rate that produced it.")


def check_symmetric_matrix(s, name: str = "s") -> Array:
  """Validates a symmetric matrix at the public edge and returns it as a float array.

  Shape and dtype are checked statically (also under ``jit``); finiteness and symmetry are
  checked only on concrete values, since a traced value cannot raise.

  Args:
    s: candidate ``(n, n)`` symmetric matrix.
    name: argument name used in error messages.

  Returns:
    ``s`` promoted to float (float64 when x64 is enabled).
  """
  s = _as_float(s, name)
  if s.ndim != 2:
    raise ValueError(
        f"`{name}` must be a 2-D matrix; got shape {s.shape}. For a batch of matrices use "
        "jax.vmap.")
  if s.shape[0] != s.shape[1]:
    raise ValueError(
        f"`{name}` must be a square (D, D) matrix such as a covariance K = XᵀX or a Hessian "
        f"θᵀKθ; got shape {s.shape}, which looks like a data or feature matrix (N, D): pass "
        "`immujax.covariance(X)` instead.")
  if s.shape[0] == 0:
    raise ValueError(f"`{name}` is empty; pass a non-empty square matrix.")
  if _is_concrete(s):
    check_finite(s, name)
    scale = float(jnp.max(jnp.abs(s)))
    asym = float(jnp.max(jnp.abs(s - s.T)))
    tol = float(np.sqrt(jnp.finfo(s.dtype).eps)) * max(scale, np.finfo(np.float64).tiny)
    if asym > tol:
      raise ValueError(
          f"`{name}` is not symmetric (max |S − Sᵀ| = {asym:.3g} > {tol:.3g}); these functions "
          "take symmetric matrices (θᵀKθ, XᵀX). Symmetrize with (S + S.T) / 2 if the asymmetry "
          "is round-off.")
  return s


def covariance(x) -> Array:
  """Uncentred, unnormalised data covariance ``K = XᵀX`` (Alg. 1, lines 1–2).

  Args:
    x: data matrix, shape ``(N, D_in)``.

  Returns:
    ``K``, shape ``(D_in, D_in)``, symmetric positive semi-definite.

  Example:
    >>> import jax.numpy as jnp
    >>> covariance(jnp.eye(3)).shape
    (3, 3)
  """
  x = _as_float(x, "x")
  if x.ndim != 2:
    raise ValueError(f"`x` must be a data matrix of shape (N, D_in); got shape {x.shape}.")
  check_finite(x, "x")
  return x.T @ x


def hessian(theta, k) -> Array:
  """Linear-probe Hessian ``H(θ) = θᵀ K θ`` (Eq. 9, up to the factor 2 of the ℓ2 loss).

  Args:
    theta: feature extractor, shape ``(D_in, D_hid)``; features are ``X @ theta``.
    k: data covariance ``XᵀX``, shape ``(D_in, D_in)``.

  Returns:
    ``H``, shape ``(D_hid, D_hid)``, symmetric (exactly: it is symmetrized to remove
    round-off, so downstream symmetry checks pass).
  """
  theta = _as_float(theta, "theta")
  k = _as_float(k, "k")
  if theta.ndim != 2 or k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(
        f"`theta` must be (D_in, D_hid) and `k` (D_in, D_in); got {theta.shape} and {k.shape}.")
  if theta.shape[0] != k.shape[0]:
    raise ValueError(
        f"`theta` has D_in={theta.shape[0]} rows but `k` is {k.shape}: theta must be "
        "(D_in, D_hid) with features = X @ theta (transpose a torch-style (out, in) weight).")
  h = theta.T @ (k @ theta)
  return 0.5 * (h + h.T)


def default_rtol(shape, dtype) -> float:
  """numpy ``matrix_rank`` tolerance factor: ``max(shape) · eps``."""
  return max(shape) * float(jnp.finfo(dtype).eps)


class Extremes(NamedTuple):
  """Extreme non-zero singular values of a symmetric matrix and their eigenvectors.

  Attributes:
    sigma_max: largest singular value ``σ_1 = max |λ|``.
    sigma_min: smallest non-zero singular value ``σ_k`` (``σ_1`` if ``k ≤ 1``).
    lambda_max: signed eigenvalue with ``|λ| = σ_1``.
    lambda_min: signed eigenvalue with ``|λ| = σ_k``.
    v_max: unit eigenvector of ``lambda_max``, shape ``(n,)``.
    v_min: unit eigenvector of ``lambda_min``, shape ``(n,)``.
    rank: numerical rank ``k`` (int32), the number of ``σ > rtol · σ_1``.
    frobenius_sq: ``‖S‖_F² = Σ σ_i²``.
  """
  sigma_max: Array
  sigma_min: Array
  lambda_max: Array
  lambda_min: Array
  v_max: Array
  v_min: Array
  rank: Array
  frobenius_sq: Array


@jax.custom_batching.custom_vmap
def _eigh(s: Array) -> tuple[Array, Array]:
  lam, vecs = jnp.linalg.eigh(s)
  return lam, vecs


@_eigh.def_vmap
def _eigh_vmap(axis_size, in_batched, s):
  # jaxlib's *batched* CPU eigh kernel parallelises over the batch on XLA's intra-op thread
  # pool and blocks until done; when every pool thread is inside such a kernel (two
  # concurrent eigh calls, or several devices simulated on one host) nothing is left to run
  # the sub-tasks and the process deadlocks (observed with jaxlib 0.10.2 on 2 cores). A
  # sequential map of unbatched calls has no nested parallelism. Parallelism across runs
  # comes from sharding the batch over devices instead (BUILD_NOTES.md, "XLA:CPU deadlock").
  # Other backends keep their native batched eigh (chosen for the default backend when the
  # program is traced).
  del axis_size
  if not in_batched[0]:
    return _eigh(s), (False, False)
  if jax.default_backend() == "cpu":
    return jax.lax.map(_eigh, s), (True, True)
  return jax.vmap(lambda m: tuple(jnp.linalg.eigh(m)))(s), (True, True)


def extremes(s: Array, *, rtol: float | None = None) -> Extremes:
  """Extreme non-zero eigenpairs of a symmetric matrix (no gradient: values only).

  One ``eigh`` call; everything downstream (κ, R_ill, R_well and their gradients) is read off
  its result, so a training step never decomposes the same matrix twice.

  Args:
    s: symmetric matrix, shape ``(n, n)``. Not validated here (internal building block).
    rtol: relative tolerance for "non-zero": ``σ > rtol · σ_max``. Defaults to
      ``n · eps`` (numpy's ``matrix_rank``).

  Returns:
    An :class:`Extremes`. For the zero matrix ``rank = 0`` and ``sigma_min = sigma_max = 0``.
  """
  s = jax.lax.stop_gradient(s)
  # A diverged run must not stall a batch: LAPACK's eigh can take pathologically long on
  # NaN/inf input. Decompose zeros instead; the caller's NaN state is already visible.
  s = jnp.where(jnp.all(jnp.isfinite(s)), s, jnp.zeros_like(s))
  lam, vecs = eigh_scaled(s)
  return extremes_from_eigh(lam, vecs, rtol=rtol)


def eigh_scaled(s: Array) -> tuple[Array, Array]:
  """``eigh`` of a symmetric ``S`` (ascending), decomposing ``S/max|S|`` for robustness.

  Entries of the scaled matrix below 1e-150 are flushed to zero: this changes eigenvalues by
  far less than any rank tolerance, and keeps subnormal floats (from runs that shrink θ
  towards 0) out of LAPACK, where they slowed ``eigh`` down by orders of magnitude. Safe
  under ``vmap`` (a sequential map of unbatched LAPACK calls, see ``_eigh``).
  """
  scale = jnp.max(jnp.abs(s))
  scale = jnp.where(scale > 0, scale, 1.0)
  s_n = s / scale
  s_n = jnp.where(jnp.abs(s_n) < 1e-150, 0.0, s_n)
  lam, vecs = _eigh(s_n)
  return lam * scale, vecs


def extremes_from_eigh(lam: Array, vecs: Array, *, rtol: float | None = None) -> Extremes:
  """:class:`Extremes` read off a full eigendecomposition ``(λ ascending, vectors)``."""
  if rtol is None:
    rtol = default_rtol((lam.shape[0], lam.shape[0]), lam.dtype)
  sig = jnp.abs(lam)
  i_max = jnp.argmax(sig)
  sigma_max = sig[i_max]
  nonzero = sig > rtol * sigma_max
  rank = jnp.sum(nonzero).astype(jnp.int32)
  # Smallest non-zero σ; fall back to σ_max when the non-zero spectrum is empty (zero matrix).
  i_min = jnp.argmin(jnp.where(nonzero, sig, jnp.inf))
  i_min = jnp.where(rank > 0, i_min, i_max)
  return Extremes(
      sigma_max=sigma_max,
      sigma_min=sig[i_min],
      lambda_max=lam[i_max],
      lambda_min=lam[i_min],
      v_max=vecs[:, i_max],
      v_min=vecs[:, i_min],
      rank=rank,
      frobenius_sq=jnp.sum(lam**2),
  )


def gram_extremes(b: Array, *, rtol: float | None = None) -> Extremes:
  """:func:`extremes` of ``S = BᵀB`` ``(n, n)``, computed from the small Gram ``BBᵀ`` ``(r, r)``.

  ``BᵀB`` and ``BBᵀ`` have the same non-zero eigenvalues, and an eigenvector ``w`` of
  ``BBᵀ`` with ``μ > 0`` maps to ``Bᵀw/√μ`` of ``BᵀB``. So for a probe Hessian
  ``θᵀKθ = (Rθ)ᵀ(Rθ)`` with a root ``R`` ``(r, D)`` of ``K`` (:func:`covariance_root`),
  one eigendecomposition of size ``r`` replaces one of size ``D``: (r/D)³ the cost (MNIST
  digits: r ≤ 596 of 784, ≈ 0.45×). Zero rows of ``B`` (padding) add exact zeros, which the
  rank tolerance drops. Values only (no gradient), like :func:`extremes`.

  Args:
    b: ``(r, n)`` with ``S = BᵀB``.
    rtol: "non-zero" tolerance relative to σ_max; default ``n · eps``, i.e. that of
      ``extremes(BᵀB)`` — the answer does not depend on how many rows ``B`` has.

  Returns:
    The :class:`Extremes` of ``BᵀB`` (vectors of length ``n``).
  """
  b = jax.lax.stop_gradient(b)
  n = b.shape[1]
  if rtol is None:
    rtol = default_rtol((n, n), b.dtype)
  m = b @ b.T
  e = extremes(0.5 * (m + m.T), rtol=rtol)

  def lift(w):
    v = b.T @ w
    norm = jnp.linalg.norm(v)
    # A zero B (rank 0) has no eigenvector to lift; any unit vector will do.
    return jnp.where(norm > 0, v / jnp.where(norm > 0, norm, 1.0),
                     jnp.zeros_like(v).at[0].set(1.0))

  return e._replace(v_max=lift(e.v_max), v_min=lift(e.v_min))


def covariance_root(k, *, rows: int | None = None, rtol: float | None = None) -> Array:
  """A square root ``R = Λ^½Vᵀ`` of a PSD ``K`` on its numerical range: ``RᵀR = K``.

  With it, ``θᵀKθ = (Rθ)ᵀ(Rθ)`` and the probe Hessian's spectrum comes from the ``r × r``
  Gram (:func:`gram_extremes`). The dropped directions have eigenvalues below
  ``rtol · λ_max``, i.e. below what ``K``'s own rank tolerance calls zero.

  Args:
    k: symmetric PSD ``(D, D)``, e.g. ``XᵀX``.
    rows: rows of ``R`` (static). Default: ``K``'s numerical rank (needs concrete ``k``).
      A larger value pads with zero rows, so that several roots share a shape for ``vmap``;
      a smaller value than the rank is an error (outside ``jit``).
    rtol: "non-zero" tolerance relative to ``λ_max`` (default ``D · eps``).

  Returns:
    ``R``, shape ``(rows, D)``, rows ordered by decreasing eigenvalue.
  """
  k = check_symmetric_matrix(k, "k")
  d = k.shape[0]
  if rtol is None:
    rtol = default_rtol(k.shape, k.dtype)
  lam, vecs = _eigh(0.5 * (k + k.T))
  lam, vecs = lam[::-1], vecs[:, ::-1]
  keep = lam > rtol * lam[0]
  if rows is None or _is_concrete(k):
    rank = int(jnp.sum(keep)) if _is_concrete(k) else None
    if rows is None:
      if rank is None:
        raise ValueError("`rows` must be given when `k` is traced (inside jit/vmap).")
      rows = rank
    elif rank is not None and rows < rank:
      raise ValueError(f"`rows`={rows} is below the numerical rank {rank} of `k`; pass "
                       f"rows >= {rank} (or None for exactly the rank).")
  root = jnp.where(keep, jnp.sqrt(jnp.where(keep, lam, 0.0)), 0.0)[:, None] * vecs.T
  if rows > d:
    root = jnp.concatenate([root, jnp.zeros((rows - d, d), root.dtype)])
  return root[:rows]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _sigma_extremes(s: Array, rtol: float | None) -> tuple[Array, Array]:
  e = extremes(s, rtol=rtol)
  return e.sigma_max, e.sigma_min


@_sigma_extremes.defjvp
def _sigma_extremes_jvp(rtol, primals, tangents):
  (s,), (ds,) = primals, tangents
  e = extremes(s, rtol=rtol)
  # dσ = sign(λ)·vᵀ dS v for a simple eigenvalue (first-order perturbation theory).
  d_max = jnp.sign(e.lambda_max) * (e.v_max @ ds @ e.v_max)
  d_min = jnp.sign(e.lambda_min) * (e.v_min @ ds @ e.v_min)
  return (e.sigma_max, e.sigma_min), (d_max, d_min)


def sigma_max_min(s, *, rtol: float | None = None) -> tuple[Array, Array]:
  """``(σ_max, σ_min)`` over the non-zero spectrum, differentiable with the hand-derived rule.

  Args:
    s: symmetric matrix, shape ``(n, n)``.
    rtol: relative "non-zero" tolerance (default ``n · eps``).

  Returns:
    Scalars ``σ_max`` and ``σ_min`` (the smallest singular value above ``rtol · σ_max``).
  """
  s = check_symmetric_matrix(s, "s")
  return _sigma_extremes(s, rtol)


def numerical_rank(s, *, rtol: float | None = None) -> Array:
  """Number of singular values above ``rtol · σ_max`` (numpy ``matrix_rank`` convention)."""
  s = check_symmetric_matrix(s, "s")
  return extremes(s, rtol=rtol).rank


def _check_nonzero(s: Array, name: str) -> None:
  if _is_concrete(s) and not bool(jnp.any(s != 0)):
    raise ValueError(
        f"`{name}` is the zero matrix, whose condition number is undefined; check that the "
        "data (X) and the extractor (theta) are not all zero.")


def log_condition_number(s, *, rtol: float | None = None) -> Array:
  """``log κ(S) = log σ_max − log σ_min`` over the non-zero spectrum (Eq. 1).

  Differentiable (hand-derived extreme-eigenvalue rule, finite on rank-deficient S).
  Inside ``jit`` the zero matrix gives ``0`` (empty spectrum, κ := 1) instead of an error.

  Args:
    s: symmetric matrix, shape ``(n, n)``.
    rtol: relative "non-zero" tolerance (default ``n · eps``).

  Returns:
    Scalar ``log κ(S) ≥ 0``.
  """
  s = check_symmetric_matrix(s, "s")
  _check_nonzero(s, "s")
  smax, smin = _sigma_extremes(s, rtol)
  positive = smin > 0
  # Double-where: the untaken branch must not produce NaN gradients (cf. optax.safe_norm).
  safe_max = jnp.where(positive, smax, 1.0)
  safe_min = jnp.where(positive, smin, 1.0)
  return jnp.where(positive, jnp.log(safe_max) - jnp.log(safe_min), 0.0)


def condition_number(s, *, rtol: float | None = None) -> Array:
  """κ(S) = ‖S‖₂‖S†‖₂ = σ_max / σ_min over the non-zero spectrum (Eq. 1).

  Args:
    s: symmetric matrix (a Hessian θᵀKθ or a Gram ΦᵀΦ), shape ``(n, n)``.
    rtol: relative "non-zero" tolerance; default ``n · eps`` (numpy ``matrix_rank``).

  Returns:
    Scalar κ ≥ 1.

  Raises:
    ValueError: for a non-square, non-symmetric, non-finite or zero matrix (outside jit).

  Example:
    >>> import jax.numpy as jnp
    >>> float(condition_number(jnp.diag(jnp.array([4.0, 2.0, 0.0]))))
    2.0
  """
  return jnp.exp(log_condition_number(s, rtol=rtol))


def log_condition_number_authors(s) -> Array:
  """The authors' ``log κ`` recipe (utils/loss.py::condition_number), for comparison only.

  ``eig = eigvalsh(S + 1e-6·I)``; ``σ_max = max(eig)``; ``σ_min = min(eig[eig > 1e-6])``.
  On a rank-deficient S the null-space eigenvalues come out as ``1e-6 ± O(eps‖S‖)``, so about
  half of them pass the test and ``σ_min ≈ 1e-6``: the result is ``≈ log(λ_max · 1e6)``, i.e.
  a ratio of largest eigenvalues rather than a condition number (digest §6 item 8).

  Args:
    s: symmetric matrix, shape ``(n, n)``.

  Returns:
    Scalar, the authors' ``log κ``.
  """
  s = check_symmetric_matrix(s, "s")
  eig = jnp.linalg.eigvalsh(s + AUTHORS_SHIFT * jnp.eye(s.shape[0], dtype=s.dtype))
  smin = jnp.min(jnp.where(eig > AUTHORS_SHIFT, eig, jnp.inf))
  return jnp.log(jnp.max(eig)) - jnp.log(smin)


def condition_number_authors(s) -> Array:
  """``exp`` of :func:`log_condition_number_authors` (what the authors' code reports)."""
  return jnp.exp(log_condition_number_authors(s))

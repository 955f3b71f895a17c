"""Small dense kernels in plain XLA operations: they batch across runs without LAPACK.

The warm-started extreme solver (:mod:`immujax.extreme_eigs`) needs, per probe Hessian and
step, a Cholesky factor of an ``r × r`` Gram, triangular solves with a few right-hand sides,
the orthonormalisation of a ``(r, b)`` block and the eigendecomposition of a ``b × b``
Rayleigh quotient (``b`` = 4). ``jnp.linalg`` sends each of these to a LAPACK custom call on
a CPU; under ``vmap`` jaxlib 0.10.x turns a batch of them into one batched call that
parallelises over XLA's intra-op thread pool and deadlocks when several run at once
(BUILD_NOTES, "XLA:CPU deadlock"), so the solver maps them one run at a time. The functions
here are written with matmuls, element-wise operations and loops of static length only, so
``vmap`` makes the run axis part of every operation (batched GEMMs) and no custom call is
involved: no deadlock, the same program on CPU, GPU and TPU.

* :func:`cholesky` — blocked left-looking Cholesky; it also returns the inverses of its
  diagonal blocks, so that :func:`solve_lower` and :func:`solve_upper` (``L X = Y`` and
  ``Lᵀ X = Y``) are pure block matmuls, the scheme of XLA's own triangular-solve expander.
* :func:`orthonormalize` — classical Gram–Schmidt applied twice, column by column (no QR).
* :func:`eigh_small` — cyclic Jacobi for a small symmetric matrix (ascending eigenvalues).

A matrix that is not positive definite gives NaN in :func:`cholesky` (as LAPACK's factor,
whose failure ``jnp.linalg.cholesky`` reports as NaN): callers test ``isfinite``.
Everything is float64 math (float32 works, with float32 accuracy).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

DEFAULT_BLOCK = 32


class Factor(NamedTuple):
  """A lower Cholesky factor and the inverses of its diagonal blocks.

  Attributes:
    lower: ``L`` ``(n, n)``, lower triangular, ``L Lᵀ = A``.
    inv_blocks: tuple of ``(k, k)`` inverses of the diagonal blocks of ``L``, in order.
  """
  lower: Array
  inv_blocks: tuple


def _blocks(n: int, block: int) -> list[tuple[int, int]]:
  return [(j, min(j + block, n)) for j in range(0, n, block)]


def _chol_unblocked(a: Array) -> Array:
  # Left-looking, one column per iteration; columns ≥ j of l are still zero.
  k = a.shape[-1]
  idx = jnp.arange(k)

  def body(j, l):
    v = a[:, j] - l @ l[j, :]
    d = jnp.sqrt(v[j])
    return l.at[:, j].set(jnp.where(idx >= j, v / d, 0.0))

  return jax.lax.fori_loop(0, k, body, jnp.zeros_like(a))


def _tri_inv(l: Array) -> Array:
  # L X = I by forward substitution, one row per iteration; rows ≥ i of x are still zero.
  k = l.shape[-1]
  eye = jnp.eye(k, dtype=l.dtype)

  def body(i, x):
    return x.at[i, :].set((eye[i] - l[i, :] @ x) / l[i, i])

  return jax.lax.fori_loop(0, k, body, jnp.zeros_like(l))


@functools.partial(jax.jit, static_argnames=("block",))
def cholesky(a: Array, *, block: int = DEFAULT_BLOCK) -> Factor:
  """Lower Cholesky factor of a symmetric positive definite ``a`` ``(n, n)``, in XLA ops.

  Args:
    a: symmetric positive definite ``(n, n)`` (only the lower triangle is read).
    block: diagonal block size (static).

  Returns:
    A :class:`Factor`; NaN entries if ``a`` is not (numerically) positive definite.

  Example:
    >>> import jax.numpy as jnp
    >>> a = jnp.array([[4.0, 2.0], [2.0, 5.0]])
    >>> cholesky(a).lower.tolist()
    [[2.0, 0.0], [1.0, 2.0]]
  """
  n = a.shape[-1]
  lower = jnp.zeros_like(a)
  invs = []
  for j0, j1 in _blocks(n, block):
    panel = a[j0:, j0:j1]
    if j0:
      panel = panel - lower[j0:, :j0] @ lower[j0:j1, :j0].T
    ljj = _chol_unblocked(panel[: j1 - j0])
    inv = _tri_inv(ljj)
    lower = lower.at[j0:j1, j0:j1].set(ljj)
    if j1 < n:
      lower = lower.at[j1:, j0:j1].set(panel[j1 - j0:] @ inv.T)
    invs.append(inv)
  return Factor(lower, tuple(invs))


def solve_lower(f: Factor, y: Array) -> Array:
  """``L⁻¹ y`` for ``y`` ``(n,)`` or ``(n, m)``: block forward substitution, matmuls only."""
  vec = y.ndim == 1
  y = y[:, None] if vec else y
  n = f.lower.shape[-1]
  block = f.inv_blocks[0].shape[-1]
  xs = []
  for (j0, j1), inv in zip(_blocks(n, block), f.inv_blocks):
    rhs = y[j0:j1]
    if j0:
      rhs = rhs - f.lower[j0:j1, :j0] @ jnp.concatenate(xs)
    xs.append(inv @ rhs)
  x = jnp.concatenate(xs)
  return x[:, 0] if vec else x


def solve_upper(f: Factor, y: Array) -> Array:
  """``L⁻ᵀ y`` for ``y`` ``(n,)`` or ``(n, m)``: block back substitution, matmuls only."""
  vec = y.ndim == 1
  y = y[:, None] if vec else y
  n = f.lower.shape[-1]
  block = f.inv_blocks[0].shape[-1]
  xs = []
  for (j0, j1), inv in reversed(list(zip(_blocks(n, block), f.inv_blocks))):
    rhs = y[j0:j1]
    if j1 < n:
      rhs = rhs - f.lower[j1:, j0:j1].T @ jnp.concatenate(xs)
    xs.insert(0, inv.T @ rhs)
  x = jnp.concatenate(xs)
  return x[:, 0] if vec else x


def orthonormalize(x: Array, *, drop_below: Array | None = None) -> Array:
  """Orthonormal columns spanning ``x`` ``(n, b)`` (Gram–Schmidt twice; no QR call).

  Column ``j`` is orthogonalised against columns ``< j`` twice ("twice is enough"), which
  keeps orthogonality at round-off for any numerically independent block — inverse
  iteration makes its blocks nearly dependent. The sign convention may differ from a QR's.

  Args:
    x: ``(n, b)``.
    drop_below: optional ``(b,)`` norms: a column whose remainder after orthogonalisation
      is not above ``drop_below[j]`` becomes zero instead of being normalised (a Krylov
      space that reached an invariant subspace: nothing new is left in it). Zero columns
      do not disturb later ones. Without it, a column must keep a non-zero remainder.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
    >>> orthonormalize(x, drop_below=jnp.array([0.0, 1e-10])).tolist()
    [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
  """
  n, b = x.shape
  q = jnp.zeros_like(x)
  for j in range(b):
    v = x[:, j]
    if j:
      for _ in range(2):
        v = v - q[:, :j] @ (q[:, :j].T @ v)
    norm = jnp.linalg.norm(v)
    if drop_below is None:
      q = q.at[:, j].set(v / norm)
    else:
      keep = norm > drop_below[j]
      q = q.at[:, j].set(jnp.where(keep, v / jnp.where(keep, norm, 1.0), 0.0))
  return q


def _jacobi_sweep(a, v):
  b = a.shape[-1]
  for p in range(b - 1):
    for q in range(p + 1, b):
      apq = a[p, q]
      small = apq == 0
      tau = (a[q, q] - a[p, p]) / (2.0 * jnp.where(small, 1.0, apq))
      t = jnp.sign(tau) / (jnp.abs(tau) + jnp.sqrt(1.0 + tau * tau))
      t = jnp.where(tau == 0, 1.0, t)
      t = jnp.where(small, 0.0, t)
      c = 1.0 / jnp.sqrt(1.0 + t * t)
      s = t * c
      rot = jnp.eye(b, dtype=a.dtype).at[p, p].set(c).at[q, q].set(c) \
          .at[p, q].set(s).at[q, p].set(-s)
      a = rot.T @ a @ rot
      a = a.at[p, q].set(0.0).at[q, p].set(0.0)
      v = v @ rot
  return a, v


def eigh_small(a: Array, *, sweeps: int = 8) -> tuple[Array, Array]:
  """Eigenvalues (ascending) and eigenvectors of a small symmetric ``a`` ``(b, b)``.

  Cyclic Jacobi rotations, ``sweeps`` full sweeps (static; convergence is quadratic, 8
  sweeps reach round-off for ``b ≤ 16``). Meant for ``b`` of a few columns (Rayleigh–Ritz
  of a warm-start block), not for large matrices.
  """
  b = a.shape[-1]
  a = 0.5 * (a + a.T)
  v = jnp.eye(b, dtype=a.dtype) + jnp.zeros_like(a)   # (derived from `a`: varies with it)

  def body(_, av):
    return _jacobi_sweep(*av)

  a, v = jax.lax.fori_loop(0, sweeps, body, (a, v))
  lam = jnp.diagonal(a)
  order = jnp.argsort(lam)
  return lam[order], v[:, order]

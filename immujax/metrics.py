"""Immunization metrics: RIR (Eq. 15), RIR_θ0 (Eq. 17), the closed-form RIR limit.

RIR compares the probe Hessians of an immunized extractor θ with a reference extractor
(the identity for Eq. 15, the pre-trained θ0 for Eq. 17)::

    RIR = [κ(H_H(θ)) / κ(H_H(ref))]  /  [κ(H_P(θ)) / κ(H_P(ref))]
              ratio (i), "ratio_h" ↑           ratio (ii), "ratio_p" ↓

Ratios are formed in log space, so RIR(θ0, θ0) is exactly 1 (the authors' released code
passes the same extractor twice and always prints 1.0; here the reference is an explicit
argument).

The limit (BUILD_NOTES.md, "The RIR limit", with proof): for positive-definite K_P and any
invertible θ, κ(θᵀK_Hθ)/κ(θᵀK_Pθ) ≤ γ_max/γ_min, the extreme generalized eigenvalues of the
pencil (K_H, K_P), with equality at the whitening θ = K_P^{-1/2}; hence
RIR ≤ (γ_max/γ_min)·κ(K_P)/κ(K_H). With singular K_P the pencil is restricted to range(K_P);
if null(K_P) ⊄ null(K_H), RIR is unbounded — a θ-direction in null(K_P) inflates κ(H_H)
without touching H_P — and :func:`rir_upper_bound` says so.

Argument convention (the whole public API): the one positional argument is the object being
evaluated (θ, S, X); covariances, references and any other same-shaped arrays whose swap
would change the answer are keyword-only::

    relative_immunization_ratio(theta, k_p=K_P, k_h=K_H)
    rir_from_hessians(h_p=..., h_h=..., h_p_ref=..., h_h_ref=...)
    rir_from_features(phi_p=..., phi_h=..., phi_p_ref=..., phi_h_ref=...)
    rir_upper_bound(k_p=K_P, k_h=K_H)

Extra positional arguments raise a ``TypeError`` showing the keyword form: the old
all-positional order ``relative_immunization_ratio(k_p, k_h, theta)`` was removed, since the
natural call ``relative_immunization_ratio(theta, K_P, K_H)`` would have been read in it.
Errors name the caller's arguments (``theta``, ``k_h``), never internal ones.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from immujax import spectral

Array = jax.Array
LogKappa = Callable[[Array], Array]


class RIR(NamedTuple):
  """Relative immunization ratio and its two factors (scalars or batched arrays)."""
  ratio_h: Array  # (i)  κ(H_H(θ)) / κ(H_H(ref)), want ≫ 1
  ratio_p: Array  # (ii) κ(H_P(θ)) / κ(H_P(ref)), want ≤ 1
  rir: Array      # (i) / (ii)


def _no_positional(fn: str, args: tuple, form: str) -> None:
  """Refuses extra positional arguments, showing the keyword form of the call."""
  if args:
    raise TypeError(f"{fn}() takes its arrays as keywords: {fn}({form}); got {len(args)} "
                    "extra positional argument(s). (The old positional order was removed: "
                    "it silently reinterpreted a natural call.)")


def _require(fn: str, given: dict) -> None:
  missing = [n for n, v in given.items() if v is None]
  if missing:
    raise TypeError(f"{fn}() is missing the keyword argument(s) "
                    f"{', '.join(f'{n}=' for n in missing)}.")


def _log_kappa_fn(kappa: str | LogKappa, rtol: float | None) -> LogKappa:
  if callable(kappa):
    return kappa
  if kappa == "pinv":
    return lambda s: spectral.log_condition_number(s, rtol=rtol)
  if kappa == "authors":
    return spectral.log_condition_number_authors
  raise ValueError(
      f"`kappa` must be 'pinv' (smallest non-zero singular value, Eq. 1), 'authors' (their "
      f"1e-6 recipe) or a callable S -> log κ(S); got {kappa!r}.")


def rir_from_hessians(*args, h_p=None, h_h=None, h_p_ref=None, h_h_ref=None,
                      kappa: str | LogKappa = "pinv", rtol: float | None = None) -> RIR:
  """RIR from the four probe Hessians (or feature Grams ΦᵀΦ, Eq. 18), all keyword-only.

  Args:
    *args: none (a positional argument raises ``TypeError`` showing the keyword form).
    h_p: ``H_P`` of the immunized extractor, ``(D, D)``.
    h_h: ``H_H`` of the immunized extractor, ``(D, D)``.
    h_p_ref: ``H_P`` of the reference extractor, ``(D', D')``.
    h_h_ref: ``H_H`` of the reference extractor, ``(D', D')``.
    kappa: ``"pinv"`` (default, Eq. 1), ``"authors"`` or a callable returning log κ.
    rtol: relative "non-zero" tolerance for ``"pinv"``.

  Returns:
    :class:`RIR`.
  """
  given = {"h_p": h_p, "h_h": h_h, "h_p_ref": h_p_ref, "h_h_ref": h_h_ref}
  _no_positional("rir_from_hessians", args, "h_p=..., h_h=..., h_p_ref=..., h_h_ref=...")
  _require("rir_from_hessians", given)
  h_p, h_h, h_p_ref, h_h_ref = given.values()
  log_kappa = _log_kappa_fn(kappa, rtol)
  mats = [spectral.check_symmetric_matrix(m, n) for m, n in
          ((h_p, "h_p"), (h_h, "h_h"), (h_p_ref, "h_p_ref"), (h_h_ref, "h_h_ref"))]
  if len({m.shape for m in mats}) == 1:
    # One batched eigendecomposition: several concurrent eigh calls in one XLA:CPU program
    # have deadlocked its small intra-op thread pool (BUILD_NOTES.md, "XLA:CPU deadlock").
    lk = jax.vmap(log_kappa)(jnp.stack(mats))
  else:
    lk = [log_kappa(m) for m in mats]
  log_p, log_h = lk[0] - lk[2], lk[1] - lk[3]
  return RIR(jnp.exp(log_h), jnp.exp(log_p), jnp.exp(log_h - log_p))


def _extractor(theta, name: str, d_in: int) -> Array:
  """``theta`` as a finite ``(D_in, D_hid)`` matrix (errors name the caller's argument)."""
  theta = jnp.asarray(theta)
  if theta.ndim != 2 or theta.shape[0] != d_in:
    raise ValueError(f"`{name}` must be (D_in, D_hid) with D_in = {d_in} (the size of `k_p`); "
                     f"got shape {theta.shape}. Features are X @ {name}: transpose a "
                     "torch-style (out, in) weight.")
  if not jnp.issubdtype(theta.dtype, jnp.floating):
    theta = theta.astype(jnp.result_type(float))
  spectral.check_finite(theta, name)
  return theta


def relative_immunization_ratio(theta, *args, k_p=None, k_h=None, theta0=None,
                                kappa: str | LogKappa = "pinv",
                                rtol: float | None = None) -> RIR:
  """RIR of a linear extractor (Eq. 15), or RIR_θ0 (Eq. 17) when ``theta0`` is given.

  Call it as ``relative_immunization_ratio(theta, k_p=K_P, k_h=K_H)``; any further positional
  argument raises ``TypeError`` showing that form.

  Args:
    theta: immunized extractor ``(D_in, D_hid)``.
    *args: none (see above).
    k_p: pre-training covariance ``X_PᵀX_P``, ``(D_in, D_in)`` (keyword-only).
    k_h: harmful covariance ``X_HᵀX_H``, ``(D_in, D_in)`` (keyword-only).
    theta0: reference extractor ``(D_in, D_hid')``; ``None`` means the identity (Eq. 15), so
      the reference Hessians are ``K_P`` and ``K_H`` themselves.
    kappa: ``"pinv"`` (default), ``"authors"`` or a callable returning log κ.
    rtol: relative "non-zero" tolerance for ``"pinv"``.

  Returns:
    :class:`RIR` with ``ratio_h`` (i), ``ratio_p`` (ii) and ``rir``.

  Example:
    >>> import jax.numpy as jnp
    >>> k = jnp.diag(jnp.array([3.0, 2.0, 1.0]))
    >>> float(relative_immunization_ratio(jnp.eye(3), k_p=k, k_h=k).rir)
    1.0
  """
  _no_positional("relative_immunization_ratio", args, "theta, k_p=K_P, k_h=K_H")
  _require("relative_immunization_ratio", {"k_p": k_p, "k_h": k_h})
  k_p = spectral.check_symmetric_matrix(k_p, "k_p")
  k_h = spectral.check_symmetric_matrix(k_h, "k_h")
  if k_p.shape != k_h.shape:
    raise ValueError(f"`k_p` {k_p.shape} and `k_h` {k_h.shape} must have the same shape "
                     "(D_in, D_in).")
  theta = _extractor(theta, "theta", k_p.shape[0])
  if theta0 is not None:
    theta0 = _extractor(theta0, "theta0", k_p.shape[0])
  h_p, h_h = spectral.hessian(theta, k_p), spectral.hessian(theta, k_h)
  if theta0 is None:
    # H(I) = K, symmetrized exactly as `hessian` does, so RIR(I) is exactly 1.
    h_p0, h_h0 = 0.5 * (k_p + k_p.T), 0.5 * (k_h + k_h.T)
  else:
    h_p0, h_h0 = spectral.hessian(theta0, k_p), spectral.hessian(theta0, k_h)
  return rir_from_hessians(h_p=h_p, h_h=h_h, h_p_ref=h_p0, h_h_ref=h_h0, kappa=kappa,
                           rtol=rtol)


def rir_from_features(*args, phi_p=None, phi_h=None, phi_p_ref=None, phi_h_ref=None,
                      kappa: str | LogKappa = "pinv", rtol: float | None = None) -> RIR:
  """RIR_θ0 of Eq. 17 from features: ``H̃(θ) = X̃(θ)ᵀX̃(θ)`` (Eq. 18), all keyword-only.

  Args:
    *args: none (a positional argument raises ``TypeError`` showing the keyword form).
    phi_p: features of a D_P sample under the immunized extractor, ``(N, D_hid)``.
    phi_h: features of a D_H sample under the immunized extractor, ``(N, D_hid)``.
    phi_p_ref: the same D_P sample under θ0, ``(N, D_hid)``.
    phi_h_ref: the same D_H sample under θ0, ``(N, D_hid)``.
    kappa, rtol: as :func:`rir_from_hessians`.

  Returns:
    :class:`RIR`.
  """
  given = {"phi_p": phi_p, "phi_h": phi_h, "phi_p_ref": phi_p_ref, "phi_h_ref": phi_h_ref}
  _no_positional("rir_from_features", args,
                 "phi_p=..., phi_h=..., phi_p_ref=..., phi_h_ref=...")
  _require("rir_from_features", given)
  g = [spectral.covariance(f) for f in given.values()]
  return rir_from_hessians(h_p=g[0], h_h=g[1], h_p_ref=g[2], h_h_ref=g[3], kappa=kappa,
                           rtol=rtol)


def _range_basis(k: Array, rtol: float | None):
  lam, q = jnp.linalg.eigh(k)
  if rtol is None:
    rtol = spectral.default_rtol(k.shape, k.dtype)
  keep = lam > rtol * jnp.max(lam)
  return lam, q, keep


def whitening_extractor(k_p, *, rtol: float | None = None) -> Array:
  """``θ_w = (K_P⁺)^{1/2}``: whitens K_P on its range, so ``θ_wᵀK_Pθ_w`` is a projector.

  It attains :func:`rir_upper_bound`: κ(H_P(θ_w)) = 1 and κ(H_H(θ_w)) = γ_max/γ_min.

  Args:
    k_p: ``(D_in, D_in)`` symmetric PSD.
    rtol: relative tolerance deciding the range of K_P (default ``D_in · eps``).

  Returns:
    ``(D_in, D_in)`` symmetric extractor.
  """
  k_p = spectral.check_symmetric_matrix(k_p, "k_p")
  lam, q, keep = _range_basis(k_p, rtol)
  inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
  return (q * inv_sqrt) @ q.T


class RIRBound(NamedTuple):
  """The closed-form RIR limit of linear extractors.

  Attributes:
    rir_on_range: ``κ(M)·κ(K_P)/κ(K_H)`` with ``M`` the pencil (K_H, K_P) whitened on
      range(K_P); the supremum of RIR over extractors that do not reach into null(K_P)
      (all invertible θ when K_P is positive definite), attained by
      :func:`whitening_extractor`.
    pencil_kappa: ``γ_max/γ_min`` = κ(M).
    bounded: False when null(K_P) ⊄ null(K_H), in which case RIR over all θ is unbounded.
    leak: ``max ‖K_H v‖ / ‖K_H‖`` over unit ``v ∈ null(K_P)`` (0 when bounded).
  """
  rir_on_range: Array
  pencil_kappa: Array
  bounded: Array
  leak: Array


def rir_upper_bound(*args, k_p=None, k_h=None, rtol: float | None = None) -> RIRBound:
  """Closed-form limit of RIR for linear extractors (see module docstring and BUILD_NOTES).

  Call it as ``rir_upper_bound(k_p=K_P, k_h=K_H)``; a positional argument raises
  ``TypeError`` showing that form.

  Args:
    *args: none.
    k_p: ``X_PᵀX_P``, ``(D_in, D_in)``.
    k_h: ``X_HᵀX_H``, ``(D_in, D_in)``.
    rtol: relative tolerance for ranges and null spaces (default ``D_in · eps``).

  Returns:
    :class:`RIRBound`.
  """
  given = {"k_p": k_p, "k_h": k_h}
  _no_positional("rir_upper_bound", args, "k_p=K_P, k_h=K_H")
  _require("rir_upper_bound", given)
  k_p = spectral.check_symmetric_matrix(given["k_p"], "k_p")
  k_h = spectral.check_symmetric_matrix(given["k_h"], "k_h")
  if k_p.shape != k_h.shape:
    raise ValueError(f"`k_p` {k_p.shape} and `k_h` {k_h.shape} must have the same shape.")
  w = whitening_extractor(k_p, rtol=rtol)
  m = spectral.hessian(w, k_h)
  log_pencil = spectral.log_condition_number(m, rtol=rtol)
  log_rir = (log_pencil + spectral.log_condition_number(k_p, rtol=rtol)
             - spectral.log_condition_number(k_h, rtol=rtol))
  lam, q, keep = _range_basis(k_p, rtol)
  null = q * jnp.where(keep, 0.0, 1.0)  # columns spanning null(K_P), zeros elsewhere
  norm_kh = jnp.linalg.norm(k_h, 2)
  leak = jnp.linalg.norm(k_h @ null, 2) / norm_kh
  tol = (rtol if rtol is not None else spectral.default_rtol(k_h.shape, k_h.dtype))
  bounded = leak <= jnp.sqrt(tol)
  return RIRBound(jnp.exp(log_rir), jnp.exp(log_pencil), bounded, leak)


def accuracy(logits, labels) -> Array:
  """Top-1 accuracy: ``logits`` ``(N, C)`` (or ``(N,)`` binary logits) against int ``labels``."""
  logits = jnp.asarray(logits)
  if logits.ndim == 1:
    pred = (logits > 0).astype(jnp.int32)
  else:
    pred = jnp.argmax(logits, axis=-1)
  return jnp.mean(pred == jnp.asarray(labels))

"""The authors' released training recipe, for comparison with the paper's Algorithm 1.

What their ``main.py`` does for the linear experiments (digest §3, §6), reproduced here:

* minibatches of 64 (shuffled per epoch, last partial batch dropped), D_P row i paired
  with D_H row i; Adam (lr 5e-3 house, 1e-3 MNIST) over θ, a bias b and ω;
* features ``Φ = Xθ + b`` (their ``nn.Linear`` with bias, PyTorch default init), ω ~ N(0, 1);
* regularizers on the *minibatch* feature Grams ``S = ΦᵀΦ`` with their eigenvalue recipe
  (``eigvalsh(S + 1e-6·I)``, σ_min = smallest eigenvalue above 1e-6, autodiff through
  ``eigvalsh``) and ``K`` = the last input dimension:
  ``r1 = λ_max²/2 − ‖S‖_F²/(2K)``, ``r2 = 1/(‖S‖_F²/(2K) − λ_min²/2)``;
* the "dummy layer": only on the regularizer paths, the θ-gradient is multiplied **from the
  right** by ``(X_bᵀX_b + λ_reg·I)⁻¹`` of the minibatch inputs (λ_reg = 1 for the D_P branch,
  ``lambda_reg`` for the D_H branch); the bias gradient is not preconditioned.

This is NOT the paper's method (BUILD_NOTES.md, "authors' code vs paper"); it exists so users
can measure the difference on the same data.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from immujax import immunize
from immujax import spectral

Array = jax.Array


class AuthorsParams(NamedTuple):
  theta: Array  # (D_in, D_hid)
  bias: Array   # (D_hid,)
  omega: Array  # (D_hid,)


def authors_regularizers(s: Array, k: int) -> tuple[Array, Array]:
  """Their ``r1`` (R_well) and ``r2`` (R_ill) on a Gram ``S``, with their 1e-6 recipe."""
  eig = jnp.linalg.eigvalsh(s + spectral.AUTHORS_SHIFT * jnp.eye(s.shape[0], dtype=s.dtype))
  lam_max = jnp.max(eig)
  lam_min = jnp.min(jnp.where(eig > spectral.AUTHORS_SHIFT, eig, jnp.inf))
  fro = jnp.sum(s**2)
  return 0.5 * lam_max**2 - fro / (2 * k), 1.0 / (fro / (2 * k) - 0.5 * lam_min**2)


def init_authors_params(key: Array, d_in: int, dtype=jnp.float64) -> AuthorsParams:
  """PyTorch ``nn.Linear(d_in, d_in)`` default init for θ and b; ω ~ N(0, 1)."""
  k1, k2, k3 = jax.random.split(key, 3)
  bound = 1.0 / jnp.sqrt(d_in)
  return AuthorsParams(jax.random.uniform(k1, (d_in, d_in), dtype, -bound, bound),
                       jax.random.uniform(k2, (d_in,), dtype, -bound, bound),
                       jax.random.normal(k3, (d_in,), dtype))


def _gradients(params, xb_p, yb_p, xb_h, *, loss, k, lambda_r1, lambda_r2, ridge_p, ridge_h):
  def sup(p):
    return immunize.LOSSES[loss]((xb_p @ p.theta + p.bias) @ p.omega, yb_p)

  def reg(p, x, which):
    phi = x @ p.theta + p.bias
    r1, r2 = authors_regularizers(phi.T @ phi, k)
    return lambda_r1 * r1 if which == 0 else lambda_r2 * r2

  g_sup = jax.grad(sup)(params)
  g_p = jax.grad(reg)(params, xb_p, 0)
  g_h = jax.grad(reg)(params, xb_h, 1)
  eye = jnp.eye(xb_p.shape[1], dtype=xb_p.dtype)
  # The dummy layer: right-multiply the θ-gradient of each regularizer by (XᵀX + λI)⁻¹
  # (symmetric, so solve on the transpose).
  right = lambda g, x, lam: jnp.linalg.solve(x.T @ x + lam * eye, g.T).T
  theta = g_sup.theta + right(g_p.theta, xb_p, ridge_p) + right(g_h.theta, xb_h, ridge_h)
  return AuthorsParams(theta, g_sup.bias + g_p.bias + g_h.bias, g_sup.omega)


@functools.partial(jax.jit, static_argnames=(
    "epochs", "batch_size", "loss", "learning_rate", "lambda_r1", "lambda_r2", "ridge_h"))
def train_authors(key: Array, x_p: Array, y_p: Array, x_h: Array, *, epochs: int = 10,
                  batch_size: int = 64, loss: str = "mse", learning_rate: float = 5e-3,
                  lambda_r1: float = 100.0, lambda_r2: float = 1e7,
                  ridge_h: float = 1.0) -> AuthorsParams:
  """The authors' training run (defaults: their ``configs/house_price.yaml``, 1 device).

  Args:
    key: PRNG key (init and per-epoch shuffles via ``fold_in``).
    x_p, y_p: D_P inputs ``(N, D)`` and targets ``(N,)``; x_h: D_H inputs ``(N, D)`` (paired
      row by row with D_P, as their dataset does).
    epochs, batch_size, loss, learning_rate, lambda_r1, lambda_r2: their config values.
    ridge_h: their ``lambda_reg`` (1 for house prices, 1e-7 for MNIST).

  Returns:
    Final :class:`AuthorsParams`.

  Loop over seeds in Python rather than vmapping this function on CPU: it differentiates
  through ``eigvalsh`` (their recipe), and jaxlib's batched CPU eigen kernels deadlock
  (BUILD_NOTES.md, "XLA:CPU deadlock").
  """
  n, d = x_p.shape
  steps_per_epoch = n // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"`batch_size` {batch_size} exceeds the {n} rows; lower it.")
  k_init, k_shuffle = jax.random.split(key)
  params = init_authors_params(k_init, d, x_p.dtype)
  tx = optax.adam(learning_rate)
  grads = functools.partial(_gradients, loss=loss, k=d, lambda_r1=lambda_r1,
                            lambda_r2=lambda_r2, ridge_p=1.0, ridge_h=ridge_h)

  def epoch(carry, e):
    perm = jax.random.permutation(jax.random.fold_in(k_shuffle, e), n)
    idx = perm[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)

    def step(carry, i):
      p, s = carry
      g = grads(p, x_p[i], y_p[i], x_h[i])
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(step, carry, idx)[0], None

  (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), jnp.arange(epochs))
  return params

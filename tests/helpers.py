"""Shared test utilities: random symmetric matrices and full-matrix finite differences."""
import textwrap

import numpy as np

# Python source, for the scripts that tests run in fresh processes: defines `toy_tasks(n)`,
# n small binary tasks with covariance roots (rank-deficient harmful side), stacked.
TOY_TASKS_SOURCE = textwrap.dedent("""
    def toy_tasks(n):
      import jax, jax.numpy as jnp, numpy as np
      from immujax import immunize, spectral
      rng = np.random.default_rng(0)
      tasks = []
      for _ in range(n):
        x_p = rng.normal(size=(40, 10)) * np.linspace(3, 0.1, 10)
        x_h = rng.normal(size=(30, 10)) * np.linspace(0.1, 3, 10) * (np.arange(10) < 8)
        t = immunize.make_task(x_p, (x_p[:, 2] > 0) * 1.0, x_h, (x_h[:, 1] > 0) * 1.0)
        tasks.append(t._replace(root_p=spectral.covariance_root(t.k_p, rows=10),
                                root_h=spectral.covariance_root(t.k_h, rows=10)))
      return jax.tree.map(lambda *a: jnp.stack(a), *tasks)
    """)


def random_psd(rng, n, rank=None, spread=10.0):
  """Random symmetric PSD matrix of the given rank with a spread-out, simple spectrum."""
  rank = n if rank is None else rank
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  lam = np.zeros(n)
  lam[:rank] = np.sort(np.exp(rng.uniform(0, np.log(spread), size=rank)))[::-1]
  lam[:rank] += np.linspace(0.3, 0.0, rank)  # keep eigenvalues well separated
  return (q * lam) @ q.T


def fd_gradient(f, x, h=None):
  """Central finite-difference gradient of scalar f at x, every entry (a full matrix)."""
  x = np.asarray(x, dtype=np.float64)
  h = 1e-5 * max(1.0, np.abs(x).max()) if h is None else h
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    e = np.zeros_like(x)
    e[idx] = h
    g[idx] = (float(f(x + e)) - float(f(x - e))) / (2 * h)
  return g


def fd_symmetric_gradient(f, s, h=None):
  """Gradient of f on the space of symmetric matrices, as the symmetric matrix G with
  <G, D> = df[D] for every symmetric D (perturbs S_ij and S_ji together)."""
  s = np.asarray(s, dtype=np.float64)
  h = 1e-5 * max(1.0, np.abs(s).max()) if h is None else h
  n = s.shape[0]
  g = np.zeros_like(s)
  for i in range(n):
    for j in range(i, n):
      d = np.zeros_like(s)
      d[i, j] = d[j, i] = h
      der = (float(f(s + d)) - float(f(s - d))) / (2 * h)
      g[i, j] = g[j, i] = der if i == j else der / 2
  return g

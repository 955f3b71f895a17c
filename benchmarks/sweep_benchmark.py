r"""Benchmark: the vmapped MNIST-pair sweep vs the same code looping pair by pair.

  python benchmarks/sweep_benchmark.py [--pairs 8] [--pool 4] [--steps 10]

Everything is measured in ONE run and printed as ratios: vmapped sweep vs pair-by-pair loop,
steps/s per pair, the achieved GFLOP/s of the sweep (counted matmul + eigh flops) next to the
machine's float64 matmul peak measured by this script, and the paper schedule extrapolated.
Uses the embedded MNIST sample (offline). Not a test: nothing here asserts.
"""

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the experiments package

from experiments import mnist_pairs  # pylint: disable=g-import-not-at-top
from experiments.configs import mnist_pairs as mnist_config  # pylint: disable=g-import-not-at-top
from immujax import sweep  # pylint: disable=g-import-not-at-top


def _time(f, *args, repeats=3):
  jax.block_until_ready(f(*args))  # compile + warm up
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    best = min(best, time.perf_counter() - t)
  return best


def matmul_peak(n=1024):
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)))
  f = jax.jit(lambda x: x @ x)
  return 2 * n**3 / _time(f, a) / 1e9


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--pairs", type=int, default=8)
  ap.add_argument("--pool", type=int, default=2)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--methods", default="ours")
  args = ap.parse_args()
  cfg = mnist_config.get_config()
  cfg.pool = args.pool
  cfg.methods = tuple(args.methods.split(","))
  cfg.pairs = tuple(map(tuple, np.asarray(mnist_pairs.mnist.ordered_pairs())[: args.pairs]))
  images, labels = mnist_pairs.load_images(cfg)
  tasks, pairs = mnist_pairs.build_tasks(cfg, images, labels)
  runs = mnist_pairs._runs(cfg, tasks)  # pylint: disable=protected-access
  d = tasks.k_p.shape[-1]
  n_runs = len(pairs) * len(cfg.methods)

  def sweep_fn(state):
    return sweep.run_chunk(state, tasks, runs.weights, steps=args.steps, loss="bce")

  def loop_fn(state):
    outs = []
    for t in range(len(pairs)):
      one = lambda tree, t=t: sweep.slice_tasks(tree, t, t + 1)
      outs.append(sweep.run_chunk(one(state), one(tasks), one(runs.weights),
                                  steps=args.steps, loss="bce"))
    return outs

  peak = matmul_peak()
  t_sweep = _time(sweep_fn, runs.state)
  t_loop = _time(loop_fn, runs.state)
  # Per run-step: 6 D×D×D matmuls (Kθ ×2, θᵀKθ ×2, two θ·G) and one 2-matrix eigh (~9D³ each).
  flops = n_runs * args.steps * (6 * 2 * d**3 + 2 * 9 * d**3)
  print(f"devices: {jax.device_count()} ({jax.devices()[0].platform}), D_in = {d}, "
        f"{len(pairs)} pairs × {len(cfg.methods)} method(s), {args.steps} steps")
  print(f"float64 matmul peak (1024³, this run): {peak:.1f} GFLOP/s")
  print(f"vmapped sweep: {t_sweep:.3f} s  → {n_runs * args.steps / t_sweep:.1f} run-steps/s, "
        f"{args.steps / t_sweep * len(pairs) / n_runs:.2f} steps/s per pair, "
        f"{flops / t_sweep / 1e9:.1f} GFLOP/s ({flops / t_sweep / 1e9 / peak:.0%} of peak)")
  print(f"pair-by-pair loop: {t_loop:.3f} s  → vmapped speed-up ×{t_loop / t_sweep:.2f}")
  per_run_step = t_sweep / (n_runs * args.steps)
  print(f"extrapolated: 90 pairs × 1 method × 30 steps at D_in={d}: "
        f"{90 * 30 * per_run_step:.1f} s")


if __name__ == "__main__":
  main()

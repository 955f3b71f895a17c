r"""Benchmark: the vmapped MNIST-pair sweep vs the same code looping pair by pair.

  python benchmarks/sweep_benchmark.py                       # main-job setting, offline
  python benchmarks/sweep_benchmark.py --pool 1 --pairs 4 --methods ours \
      --mnist_dir ../shared/data/mnist --n_per_digit 5421    # the paper setting

Everything is measured in ONE run and printed as ratios: the vmapped sweep vs the pair-by-pair
loop (same compiled step, same devices), the rank×rank-Gram path vs decomposing the D×D
Hessians, steps/s per pair, the achieved GFLOP/s of the sweep (counted matmul + eigh flops)
next to the machine's float64 matmul peak measured by this script, and the paper schedule
(90 pairs × 30 steps) extrapolated. Not a test: nothing here asserts.
"""

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the experiments (see their __init__)
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the experiments package

from experiments import mnist_pairs  # pylint: disable=g-import-not-at-top
from experiments.configs import mnist_pairs as mnist_config  # pylint: disable=g-import-not-at-top
from immujax import sweep  # pylint: disable=g-import-not-at-top


def _time(f, *args, repeats=2):
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
  return 2 * n**3 / _time(f, a, repeats=5) / 1e9


def _setup(cfg, images, labels, mesh):
  tasks, pairs = mnist_pairs.build_tasks(cfg, images, labels)
  tasks = sweep.shard_tasks(sweep.pad_tasks(tasks, mesh.size), mesh)
  runs = sweep.shard_tasks(mnist_pairs._runs(cfg, tasks), mesh)  # pylint: disable=protected-access
  return tasks, pairs, runs


def _flops_per_run_step(d, r, roots):
  # Matmuls (2mnk each) of one step, and ~9n³ per eigh (tridiagonalisation + vectors).
  if roots:   # B = Rθ ×2, S = BᵀB ×2, Gram BBᵀ ×2, θG
    return 2 * (2 * r * d * d) * 2 + 2 * (2 * r * r * d) + 2 * d**3 + 2 * 9 * r**3
  return 4 * (2 * d**3) + 2 * d**3 + 2 * 9 * d**3   # Kθ ×2, θᵀKθ ×2, θG


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--pairs", type=int, default=90)
  ap.add_argument("--pool", type=int, default=2)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--methods", default="ours,r_ill_only,opt_kappa,imma")
  ap.add_argument("--mnist_dir", default=None, help="full MNIST IDX files (default: sample)")
  ap.add_argument("--n_per_digit", type=int, default=500)
  args = ap.parse_args()
  cfg = mnist_config.get_config()
  cfg.pool = args.pool
  cfg.methods = tuple(args.methods.split(","))
  cfg.n_per_digit = args.n_per_digit
  if args.mnist_dir:
    cfg.source = "idx"
  cfg.pairs = tuple(map(tuple, np.asarray(mnist_pairs.mnist.ordered_pairs())[: args.pairs]))
  images, labels = mnist_pairs.load_images(cfg, args.mnist_dir)
  mesh = sweep.device_mesh()
  imma_steps = cfg.imma_steps if "imma" in cfg.methods else 0
  pre_only = set(cfg.methods) <= {"ours", "imma"}

  peak = matmul_peak()
  print(f"devices: {jax.device_count()} ({jax.devices()[0].platform}), "
        f"{len(cfg.pairs)} pairs × {len(cfg.methods)} method(s) {cfg.methods}, "
        f"{args.steps} steps, source {cfg.source}, {cfg.n_per_digit} images/digit")
  print(f"float64 matmul peak (1024³, this run): {peak:.1f} GFLOP/s")

  timings = {}
  for roots in (True, False):
    cfg.roots = roots
    tasks, pairs, runs = _setup(cfg, images, labels, mesh)
    d = tasks.k_p.shape[-1]
    r = tasks.root_p.shape[-2] if roots else d
    n_runs = len(pairs) * len(cfg.methods)
    run = lambda state, tasks=tasks, runs=runs: sweep.run_chunk(
        state, tasks, runs.weights, steps=args.steps, loss="bce", imma_steps=imma_steps,
        preconditioned_only=pre_only)
    t = _time(run, runs.state)
    timings[roots] = t
    flops = n_runs * args.steps * _flops_per_run_step(d, r, roots)
    label = f"rank×rank Grams (r = {r})" if roots else "D×D Hessians"
    print(f"vmapped sweep, {label}, D_in = {d}: {t:.3f} s → "
          f"{n_runs * args.steps / t:.1f} run-steps/s, "
          f"{args.steps / t:.2f} steps/s per pair (all its runs), "
          f"{flops / t / 1e9:.1f} GFLOP/s ({flops / t / 1e9 / peak:.0%} of peak)")
    if roots:
      per_run_step = t / (n_runs * args.steps)
      one = lambda tree, k: sweep.slice_tasks(tree, k, k + 1)

      def loop(state, tasks=tasks, runs=runs):
        return [sweep.run_chunk(one(state, k), one(tasks, k), one(runs.weights, k),
                                steps=args.steps, loss="bce", imma_steps=imma_steps,
                                preconditioned_only=pre_only) for k in range(len(pairs))]

      t_loop = _time(loop, runs.state, repeats=1)
      print(f"pair-by-pair loop (same compiled step): {t_loop:.3f} s → vmapped speed-up "
            f"×{t_loop / t:.2f}")
  print(f"rank×rank Grams vs D×D Hessians: ×{timings[False] / timings[True]:.2f}")
  print(f"extrapolated: 90 pairs × {len(cfg.methods)} method(s) × 30 steps at this D_in: "
        f"{90 * len(cfg.methods) * 30 * per_run_step:.0f} s of steps")


if __name__ == "__main__":
  main()

r"""Benchmark of the paper-scale training step: warm-started extremes vs eigh vs the matmul floor.

  python benchmarks/sweep_benchmark.py                                  # embedded sample, 28×28
  python benchmarks/sweep_benchmark.py --mnist_dir ../shared/data/mnist --json

Everything is measured in ONE run, so the ratios hold on a machine whose speed drifts: each
figure is the best of ``--repeats`` timings, and the paths are timed in turn (A, B, C, A, B,
C, ...). Printed, for D_in = 784 (28×28) and the rank-×-rank Gram path:

* ms per run-step of the warm-started extremes (``eig_solver="warm"``) and of the full-eigh
  path, for Ours alone and for the 4-method mix (each method a block with its own static
  flags, as ``experiments.mnist_pairs`` runs it), and their ratio ``speedup_vs_eigh``;
* the step's matmul floor: the same compiled step with the extremes replaced by a stand-in
  that only forms the Gram ``BBᵀ`` (so every matmul of the step is still done), and
  ``floor_ratio`` = warm / floor;
* the same step vmapped over the pairs vs looped pair by pair (``vmap_speedup``);
* achieved GFLOP/s (counted matmul flops) against this run's float64 matmul peak.

With ``--json`` the last line is one JSON object with at least ``speedup_vs_eigh``,
``floor_ratio`` and ``vmap_speedup``. Not a test: nothing here asserts.
"""

import argparse
import contextlib
import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the experiments (see their __init__)
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the experiments package

from immujax.studies import mnist_pairs  # pylint: disable=g-import-not-at-top
from experiments.configs import mnist_pairs as mnist_config  # pylint: disable=g-import-not-at-top
from immujax import extreme_eigs  # pylint: disable=g-import-not-at-top
from immujax import spectral  # pylint: disable=g-import-not-at-top
from immujax import sweep  # pylint: disable=g-import-not-at-top


def cpu_name() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def matmul_peak(n=1024, repeats=5):
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)))
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(a))
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best / 1e9


def _floor_extremes(b, basis, **_):
  """Stand-in for ``extreme_eigs.warm``: forms the Gram BBᵀ, returns cheap placeholders."""
  m = b @ b.T
  s = jnp.trace(m)
  v = b[0] / jnp.linalg.norm(b[0])
  e = spectral.Extremes(s, 1e-3 * s, s, 1e-3 * s, v, v, jnp.int32(b.shape[0]), jnp.sum(m * m))
  one = jnp.ones((), b.dtype)
  return e, basis, extreme_eigs.Check(0 * one, 0 * one, jnp.int32(0), jnp.bool_(True))


@contextlib.contextmanager
def floor_mode():
  real = extreme_eigs.warm
  extreme_eigs.warm = _floor_extremes
  try:
    yield
  finally:
    extreme_eigs.warm = real


def flops_per_run_step(d, r, method):
  """Counted matmul flops (2mnk each) of one step of ``method`` on the root path."""
  f = 2 * (2 * r * d * d)        # B = Rθ for P and H
  f += 2 * (2 * r * r * d)       # Grams BBᵀ
  f += 2 * (2 * d * d * r)       # H = BᵀB
  if method in ("ours", "imma"):
    f += 2 * d**3                # θ·G (preconditioned)
  else:
    f += 2 * (2 * d * d * r) + 2 * (2 * d**3)   # Kθ = Rᵀ(Rθ) and Kθ·G for P and H
  return f


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--pairs", type=int, default=4, help="digit pairs in the batch")
  ap.add_argument("--steps", type=int, default=3, help="steps per timed chunk")
  ap.add_argument("--repeats", type=int, default=2, help="timings per figure (best kept)")
  ap.add_argument("--mnist_dir", default=None, help="full MNIST IDX files (default: sample)")
  ap.add_argument("--n_per_digit", type=int, default=None)
  ap.add_argument("--pool", type=int, default=1, help="1 → 28×28 (D_in = 784)")
  ap.add_argument("--json", action="store_true", help="print one JSON object last")
  args = ap.parse_args()
  t_start = time.perf_counter()

  cfg = mnist_config.get_config("paper")
  cfg.pool = args.pool
  cfg.source = "idx" if args.mnist_dir else "sample"
  cfg.n_per_digit = args.n_per_digit or (5421 if args.mnist_dir else 500)
  cfg.pairs = tuple(map(tuple, np.asarray(mnist_pairs.mnist.ordered_pairs())[: args.pairs]))
  images, labels = mnist_pairs.load_images(cfg, args.mnist_dir)
  tasks, pairs = mnist_pairs.build_tasks(cfg, images, labels)
  d, r = tasks.k_p.shape[-1], tasks.root_p.shape[-2]
  n = len(pairs)
  peak = matmul_peak()
  print(f"CPU: {cpu_name()} ({os.cpu_count()} cores), {jax.device_count()} JAX device(s), "
        f"jax {jax.__version__}, float64")
  print(f"{n} pairs, D_in = {d}, Gram rank r = {r}, source {cfg.source} "
        f"({cfg.n_per_digit} images/digit), {args.steps} steps per chunk, best of "
        f"{args.repeats}; float64 matmul peak (1024³): {peak:.1f} GFLOP/s")

  methods = tuple(cfg.methods)
  runs = {s: mnist_pairs.init_runs(_with(cfg, eig_solver=s), tasks)
          for s in ("warm", "eigh")}

  def chunk_fn(solver, method_set, vmapped=True):
    state = sweep.split_by_method(runs[solver].state, methods, cfg.seeds)
    weights = sweep.split_by_method(runs[solver].weights, methods, cfg.seeds)
    blocks = [(state[i], weights[i], sweep.method_statics(m, imma_steps=cfg.imma_steps))
              for i, m in enumerate(methods) if m in method_set]

    def run():
      outs = []
      for st, w, flags in blocks:
        if vmapped:
          outs.append(sweep.run_chunk(st, tasks, w, steps=args.steps, loss="bce", **flags))
        else:
          one = lambda tree, k: sweep.slice_tasks(tree, k, k + 1)
          outs += [sweep.run_chunk(one(st, k), one(tasks, k), one(w, k), steps=args.steps,
                                   loss="bce", **flags) for k in range(n)]
      return outs
    return run

  def timed(fns):
    """Best time of each fn over `repeats`, timing them in turn (after one warm-up each)."""
    for f in fns.values():
      jax.block_until_ready(f())
    best = {k: np.inf for k in fns}
    for _ in range(args.repeats):
      for k, f in fns.items():
        t = time.perf_counter()
        jax.block_until_ready(f())
        best[k] = min(best[k], time.perf_counter() - t)
    return best

  results = {}
  for label, method_set in (("ours", ("ours",)), ("mix", methods)):
    fns = {"warm": chunk_fn("warm", method_set), "eigh": chunk_fn("eigh", method_set)}
    with floor_mode():
      jax.clear_caches()
      floor_fn = chunk_fn("warm", method_set)
      jax.block_until_ready(floor_fn())     # compiled with the stand-in, kept in its cache
      floor_t = timed({"floor": floor_fn})["floor"]
    jax.clear_caches()
    t = timed(fns)
    t["floor"] = floor_t
    run_steps = n * len(method_set) * cfg.seeds * args.steps
    flops = n * cfg.seeds * args.steps * sum(flops_per_run_step(d, r, m) for m in method_set)
    ms = {k: v / run_steps * 1e3 for k, v in t.items()}
    results[label] = dict(
        ms_per_run_step=ms, speedup_vs_eigh=t["eigh"] / t["warm"],
        floor_ratio=t["warm"] / t["floor"], gflops=flops / t["warm"] / 1e9)
    print(f"[{label}] ms per run-step: warm {ms['warm']:.1f}, eigh {ms['eigh']:.1f}, "
          f"matmul floor {ms['floor']:.1f} → warm is ×{t['eigh'] / t['warm']:.2f} faster "
          f"than eigh and ×{t['warm'] / t['floor']:.2f} the floor; "
          f"{flops / t['warm'] / 1e9:.1f} GFLOP/s ({flops / t['warm'] / 1e9 / peak:.0%} of "
          "peak)")

  tv = timed({"vmapped": chunk_fn("warm", ("ours",)),
              "looped": chunk_fn("warm", ("ours",), vmapped=False)})
  results["vmap_speedup"] = tv["looped"] / tv["vmapped"]
  print(f"[ours] vmapped over {n} pairs vs the same step looped pair by pair: "
        f"×{results['vmap_speedup']:.2f}")
  summary = {
      "cpu": cpu_name(), "cores": os.cpu_count(), "devices": jax.device_count(),
      "d_in": d, "rank": r, "pairs": n, "source": cfg.source, "peak_gflops": peak,
      "speedup_vs_eigh": results["ours"]["speedup_vs_eigh"],
      "floor_ratio": results["ours"]["floor_ratio"],
      "vmap_speedup": results["vmap_speedup"],
      "mix": results["mix"], "ours": results["ours"],
      "wall_s": time.perf_counter() - t_start}
  print(f"benchmark wall time {summary['wall_s']:.0f} s")
  if args.json:
    print(json.dumps(summary))


def _with(cfg, **fields):
  c = cfg.copy_and_resolve_references()
  for k, v in fields.items():
    c[k] = v
  return c


if __name__ == "__main__":
  main()

r"""Benchmark of the training step and of its small kernels: warm vs eigh vs the matmul floor.

  python benchmarks/sweep_benchmark.py --kernels                         # kernels + D = 196, 784
  python benchmarks/sweep_benchmark.py --mnist_dir ../shared/data/mnist --pools 2,1 --json

Everything is measured in ONE run, so the ratios hold on a machine whose speed drifts: each
figure is the best of ``--repeats`` timings, and the candidates of a figure are timed in
turn (A, B, C, A, B, C, ...). Printed:

* ``--kernels``: per run, ms of (a) one Cholesky factorization and two triangular solves
  with 4 columns and (b) one whole warm-started extreme solve (both ends, from the
  previous step's blocks), for a batch of ``--kernel_batch`` runs, under each batching rule
  of :mod:`immujax.extreme_eigs` — ``map`` (sequential LAPACK calls), ``xla`` (batched
  plain-XLA kernels, :mod:`immujax.linalg`), ``native`` (jaxlib's batched LAPACK path;
  CPU only on one device, see the deadlock note there) — at each rank of
  ``--kernel_ranks``, with the mean and the largest iteration count of the batch (a
  batched ``while_loop`` runs the largest for every run). ``crossover_rank``: the smallest
  rank from which the map is at least as fast as the batched XLA kernels.
* for each pooling factor of ``--pools`` (2 → D_in = 196, the README main job's size; 1 →
  784, paper scale), ms per run-step of the warm-started extremes and of the full-eigh
  path, for Ours alone and for the 4-method mix (each method a block with its own static
  flags, as ``experiments.mnist_pairs`` runs it, every method on the warm path), and the
  step's matmul floor: the same compiled step with the extremes replaced by a stand-in that
  only forms the Gram ``BBᵀ``; ``floor_ratio`` = warm / floor; achieved GFLOP/s (counted
  matmul flops) against this run's float64 matmul peak.
* ``--loop``: the Ours step vmapped over the pairs vs looped pair by pair (``vmap_speedup``).

With ``--json`` the last line is one JSON object. Not a test: nothing here asserts.
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
from immujax import linalg  # pylint: disable=g-import-not-at-top
from immujax import spectral  # pylint: disable=g-import-not-at-top
from immujax import sweep  # pylint: disable=g-import-not-at-top
from immujax.runner import devices  # pylint: disable=g-import-not-at-top

devices.compiler_flags()   # the binaries' XLA:CPU options, before the first computation


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


def timed(fns, repeats):
  """Best time of each fn over `repeats`, timing them in turn (after one warm-up each)."""
  for f in fns.values():
    jax.block_until_ready(f())
  best = {k: np.inf for k in fns}
  for _ in range(repeats):
    for k, f in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(f())
      best[k] = min(best[k], time.perf_counter() - t)
  return best


# --- the small kernels --------------------------------------------------------------------

def _kernel_inputs(rng, batch, r):
  """B's of rank r (graded roots, κ(K) = 1e6) at two nearby θ, like consecutive steps."""
  d = int(r * 1.3)
  b0, b1 = [], []
  for _ in range(batch):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    lam = np.sort(np.exp(rng.uniform(0, np.log(1e6), size=r)))[::-1]
    root = np.sqrt(lam)[:, None] * q[:, :r].T
    theta, _ = np.linalg.qr(rng.normal(size=(d, d)))
    b0.append(root @ theta)
    b1.append(root @ theta @ (np.eye(d) + 0.05 / np.sqrt(d) * rng.normal(size=(d, d))))
  return jnp.asarray(np.stack(b0)), jnp.asarray(np.stack(b1))


def kernels(args, rules):
  """Per-run ms of the kernels and of the whole warm solve, per batching rule and rank."""
  from jax.scipy.linalg import solve_triangular  # pylint: disable=g-import-not-at-top

  def lapack(a, y):
    l = jnp.linalg.cholesky(a)
    return solve_triangular(l, solve_triangular(l, y, lower=True), lower=True, trans=1)

  def xla(a, y):
    f = linalg.cholesky(a)
    return linalg.solve_upper(f, linalg.solve_lower(f, y))

  chol = {"map": jax.jit(lambda a, y: jax.lax.map(lambda x: lapack(*x), (a, y))),
          "xla": jax.jit(jax.vmap(xla)), "native": jax.jit(jax.vmap(lapack))}
  rng = np.random.default_rng(0)
  out = []
  for r in args.kernel_ranks:
    b0, b1 = _kernel_inputs(rng, args.kernel_batch, r)
    m = jnp.einsum("bij,bkj->bik", b1, b1)
    y = jnp.asarray(rng.normal(size=(args.kernel_batch, r, 4)))
    t_chol = timed({k: (lambda f=chol[k]: f(m, y)) for k in rules}, args.repeats)
    _, basis, _ = jax.jit(jax.vmap(extreme_eigs.exact))(b0)
    solve = {k: jax.jit(jax.vmap(lambda b, bs, k=k: extreme_eigs.warm(b, bs, batching=k)))
             for k in rules}
    iters = {}
    for k, f in solve.items():
      check = f(b1, basis)[2]
      iters[k] = (float(np.mean(check.iterations)), int(np.max(check.iterations)),
                  bool(np.all(check.ok)))
    t_solve = timed({k: (lambda f=solve[k]: f(b1, basis)) for k in rules}, args.repeats)
    row = {"rank": r, "batch": args.kernel_batch,
           "cholesky_2solves_ms": {k: v / args.kernel_batch * 1e3 for k, v in t_chol.items()},
           "warm_solve_ms": {k: v / args.kernel_batch * 1e3 for k, v in t_solve.items()},
           "iterations_mean_max_ok": iters}
    out.append(row)
    print(f"[kernels] r = {r}, per run: Cholesky + 2 solves "
          + ", ".join(f"{k} {v:.3f} ms" for k, v in row["cholesky_2solves_ms"].items())
          + "; whole warm solve "
          + ", ".join(f"{k} {v:.3f} ms" for k, v in row["warm_solve_ms"].items())
          + f"; iterations mean {iters[rules[0]][0]:.1f}, batch max {iters[rules[0]][1]}",
          flush=True)
  cross = next((row["rank"] for row in out
                if row["warm_solve_ms"]["map"] <= row["warm_solve_ms"].get("xla", np.inf)),
               None)
  return {"rows": out, "crossover_rank": cross}


# --- the training step --------------------------------------------------------------------

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
  """Counted matmul flops (2mnk each) of one step of ``method`` on the root path.

  As ``sweep.method_statics`` steps it (``immunize.direction``'s factored terms): Ours
  forms both Hessians and one θ·G; R_ill Only applies its S term as Rᵀ(BBᵀ)B on the
  harmful side only; Opt κ's and IMMA's terms are rank-one or absent (their O(rd) products
  and IMMA's attacker are not counted).
  """
  f = 2 * (2 * r * d * d)        # B = Rθ for P and H
  f += 2 * (2 * r * r * d)       # Grams BBᵀ (inside the extreme solver)
  if method == "ours":
    f += 2 * (2 * d * d * r)     # H = BᵀB for P and H
    f += 2 * d**3                # θ·G (preconditioned)
  elif method == "r_ill_only":
    f += 2 * (2 * r * r * d)     # the harmful Gram again and (BBᵀ)B
    f += 2 * d * r * d           # Rᵀ(·)
  return f


def step(args, pool, peak, *, eigh=True, mix=True):
  """ms per run-step of the warm path, the eigh path and the floor at this pooling."""
  cfg = mnist_config.get_config("paper")
  cfg.pool = pool
  cfg.source = "idx" if args.mnist_dir else "sample"
  cfg.n_per_digit = args.n_per_digit or (5421 if args.mnist_dir else 500)
  cfg.pairs = tuple(map(tuple, np.asarray(mnist_pairs.mnist.ordered_pairs())[: args.pairs]))
  images, labels = mnist_pairs.load_images(cfg, args.mnist_dir)
  tasks, pairs = mnist_pairs.build_tasks(cfg, images, labels)
  d, r = tasks.k_p.shape[-1], tasks.root_p.shape[-2]
  n = len(pairs)
  print(f"[D_in = {d}] {n} pairs, Gram rank r = {r}, source {cfg.source} "
        f"({cfg.n_per_digit} images/digit), {args.steps} steps per chunk", flush=True)
  methods = tuple(cfg.methods)
  solvers = ("warm", "eigh") if eigh else ("warm",)
  runs = {s: mnist_pairs.init_runs(_with(cfg, eig_solver=s), tasks)
          for s in solvers}

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

  results = {"d_in": d, "rank": r, "pairs": n}
  for label, method_set in (("ours", ("ours",)),) + ((("mix", methods),) if mix else ()):
    with floor_mode():
      jax.clear_caches()
      floor_fn = chunk_fn("warm", method_set)
      jax.block_until_ready(floor_fn())     # compiled with the stand-in, kept in its cache
      floor_t = timed({"floor": floor_fn}, args.repeats)["floor"]
    jax.clear_caches()
    t = timed({s: chunk_fn(s, method_set) for s in solvers}, args.repeats)
    t["floor"] = floor_t
    run_steps = n * len(method_set) * cfg.seeds * args.steps
    flops = n * cfg.seeds * args.steps * sum(flops_per_run_step(d, r, m) for m in method_set)
    ms = {k: v / run_steps * 1e3 for k, v in t.items()}
    res = dict(ms_per_run_step=ms, floor_ratio=t["warm"] / t["floor"],
               gflops=flops / t["warm"] / 1e9, peak_fraction=flops / t["warm"] / 1e9 / peak)
    if eigh:
      res["speedup_vs_eigh"] = t["eigh"] / t["warm"]
    results[label] = res
    print(f"[D_in = {d}, {label}] ms per run-step: warm {ms['warm']:.2f}"
          + (f", eigh {ms['eigh']:.2f}" if eigh else "")
          + f", matmul floor {ms['floor']:.2f} → "
          + (f"warm ×{t['eigh'] / t['warm']:.2f} faster than eigh, " if eigh else "")
          + f"×{res['floor_ratio']:.2f} the floor; {res['gflops']:.1f} GFLOP/s "
          f"({res['peak_fraction']:.0%} of peak)", flush=True)
  if args.loop:
    tv = timed({"vmapped": chunk_fn("warm", ("ours",)),
                "looped": chunk_fn("warm", ("ours",), vmapped=False)}, args.repeats)
    results["vmap_speedup"] = tv["looped"] / tv["vmapped"]
    print(f"[D_in = {d}, ours] vmapped over {n} pairs vs the same step looped pair by pair: "
          f"×{results['vmap_speedup']:.2f}", flush=True)
  return results


def _with(cfg, **fields):
  c = cfg.copy_and_resolve_references()
  for k, v in fields.items():
    c[k] = v
  return c


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--pairs", type=int, default=4, help="digit pairs in the batch")
  ap.add_argument("--steps", type=int, default=3, help="steps per timed chunk")
  ap.add_argument("--repeats", type=int, default=2, help="timings per figure (best kept)")
  ap.add_argument("--mnist_dir", default=None, help="full MNIST IDX files (default: sample)")
  ap.add_argument("--n_per_digit", type=int, default=None)
  ap.add_argument("--pools", default="2,1", help="pooling factors: 2 → D_in = 196, 1 → 784")
  ap.add_argument("--no_eigh", action="store_true", help="skip the full-eigh path")
  ap.add_argument("--no_mix", action="store_true", help="Ours only, not the 4-method mix")
  ap.add_argument("--loop", action="store_true", help="also time vmapped vs looped pairs")
  ap.add_argument("--kernels", action="store_true", help="time the small kernels too")
  ap.add_argument("--kernel_ranks", default="40,100,150,300,600")
  ap.add_argument("--kernel_batch", type=int, default=90)
  ap.add_argument("--kernel_rules", default=None,
                  help="batching rules to time (default: map,xla,native on a CPU with one "
                       "device, map,xla otherwise)")
  ap.add_argument("--json", action="store_true", help="print one JSON object last")
  args = ap.parse_args()
  args.kernel_ranks = [int(r) for r in args.kernel_ranks.split(",") if r]
  pools = [int(p) for p in args.pools.split(",") if p]
  t_start = time.perf_counter()
  peak = matmul_peak()
  dev = jax.devices()[0]
  print(f"CPU: {cpu_name()} ({os.cpu_count()} cores), {jax.device_count()} JAX device(s) "
        f"({dev.platform}, {dev.device_kind}), jax {jax.__version__}, float64; best of "
        f"{args.repeats}; float64 matmul peak (1024³): {peak:.1f} GFLOP/s", flush=True)
  summary = {"cpu": cpu_name(), "cores": os.cpu_count(), "devices": jax.device_count(),
             "platform": dev.platform, "device_kind": dev.device_kind,
             "source": "idx" if args.mnist_dir else "sample", "peak_gflops": peak}
  if args.kernels:
    rules = (args.kernel_rules.split(",") if args.kernel_rules else
             ["map", "xla", "native"] if jax.device_count() == 1 else ["map", "xla"])
    summary["kernels"] = kernels(args, rules)
    print(f"[kernels] the LAPACK map is at least as fast as the batched XLA kernels from "
          f"rank {summary['kernels']['crossover_rank']} up (None: never, in this range)")
  for pool in pools:
    summary[f"d{(28 // pool) ** 2}"] = step(args, pool, peak, eigh=not args.no_eigh,
                                            mix=not args.no_mix)
  summary["wall_s"] = time.perf_counter() - t_start
  print(f"benchmark wall time {summary['wall_s']:.0f} s")
  if args.json:
    print(json.dumps(summary))


if __name__ == "__main__":
  main()

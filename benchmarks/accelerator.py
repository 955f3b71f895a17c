r"""One command for a new machine: the step benchmark and the whole paper study, one JSON line.

  python benchmarks/accelerator.py --mnist_dir=/path/to/mnist --workdir=/tmp/acc
  python benchmarks/accelerator.py --tiny --workdir=/tmp/acc_tiny      # seconds, any machine

On whatever platform JAX finds (CPU, GPU, TPU), it runs, each in its own process:

1. the step benchmark (``benchmarks/sweep_benchmark.py`` at D_in = 784 with full MNIST: ms
   per run-step of the warm path for Ours and the 4-method mix, the matmul floor, achieved
   float64 FLOP/s against the measured matmul peak);
2. the whole ``:paper`` study through the binary's own command line,
   ``python -m experiments.mnist_pairs --config=experiments/configs/mnist_pairs.py:paper
   --mnist_dir=... --workdir=<workdir>/paper``, timed from outside, with its peak host memory
   (the process's maximum resident set) and, on an accelerator, the device's peak memory.

and prints ONE JSON object as its last line: ``platform``, ``device_kind``, ``devices``,
``ms_per_run_step`` (Ours and mix), ``floor_ratio``, ``gflops`` and ``peak_gflops``,
``study_wall_s``, ``study_peak_rss_gb``, ``study_device_peak_gb`` (None on a CPU),
``fallbacks`` (run-chunks recomputed exactly, from the study's ``results.json``) and
``study_rir_mean`` per method. ``--tiny`` runs the same on the embedded sample at 7×7 with
the ``:quick`` study (Ours only), to check the command itself in seconds.
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs the binary exactly as its command line does, then reports the device's peak memory
# (accelerators expose it; a CPU does not) on stderr when the process exits.
_WRAP = r"""
import atexit, json, runpy, sys
def _report():
  try:
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
  except Exception:  # pylint: disable=broad-except
    peak = None
  sys.stderr.write("\n[accelerator] " + json.dumps({"device_peak_bytes": peak}) + "\n")
atexit.register(_report)
sys.argv = ["experiments.mnist_pairs"] + sys.argv[1:]
runpy.run_module("experiments.mnist_pairs", run_name="__main__", alter_sys=True)
"""


def _run(cmd, env=None, timeout=None):
  """Runs ``cmd``; returns (stdout, stderr, wall seconds, peak RSS in GB of that process)."""
  t = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    raise RuntimeError(f"{cmd[:4]} timed out after {timeout} s") from None
  wall = time.perf_counter() - t
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd[:6])} … failed ({proc.returncode}):\n{err[-3000:]}")
  # The children's maximum RSS so far; this process's children run one at a time and the
  # study runs last, so the figure is the study's unless the benchmark used more.
  rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
  return out, err, wall, rss_gb


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--mnist_dir", default=None, help="the four MNIST IDX files")
  ap.add_argument("--workdir", required=True, help="where the study writes (a new directory)")
  ap.add_argument("--tiny", action="store_true",
                  help="embedded sample, 7×7, the :quick study: checks the command in seconds")
  ap.add_argument("--pairs", type=int, default=8, help="pairs in the step benchmark")
  ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per process")
  args = ap.parse_args()
  if not args.tiny and not args.mnist_dir:
    ap.error("--mnist_dir is required (or --tiny for a check on the embedded sample)")
  workdir = pathlib.Path(args.workdir)
  if (workdir / "paper").exists():
    ap.error(f"{workdir / 'paper'} exists; pass a new --workdir")
  env = dict(os.environ)

  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]

  bench = [sys.executable, str(ROOT / "benchmarks" / "sweep_benchmark.py"), "--json",
           "--no_eigh"]
  if args.tiny:
    bench += ["--pools", "4", "--pairs", "1", "--steps", "1", "--repeats", "1", "--no_mix"]
  else:
    bench += ["--pools", "1", "--pairs", str(args.pairs), "--mnist_dir", args.mnist_dir]
  out, _, bench_wall, _ = _run(bench, env, args.timeout)
  b = json.loads(out.strip().splitlines()[-1])
  step = next(v for k, v in b.items() if k.startswith("d") and isinstance(v, dict))

  config = "quick" if args.tiny else "paper"
  study = [sys.executable, "-c", _WRAP,
           f"--config={ROOT / 'experiments' / 'configs' / 'mnist_pairs.py'}:{config}",
           f"--workdir={workdir / 'paper'}"]
  if args.tiny:
    study.append("--config.methods=ours")
  else:
    study.append(f"--mnist_dir={args.mnist_dir}")
  _, err, wall, rss = _run(study, env, args.timeout)
  device_peak = None
  for line in err.splitlines():
    if line.startswith("[accelerator] "):
      device_peak = json.loads(line[len("[accelerator] "):])["device_peak_bytes"]
  results = json.loads((workdir / "paper" / "results.json").read_text())
  summary = {
      "platform": dev.platform, "device_kind": dev.device_kind,
      "devices": jax.device_count(), "jax": jax.__version__,
      "study": f"mnist_pairs:{config}",
      "ms_per_run_step": {k: step[k]["ms_per_run_step"]["warm"]
                          for k in ("ours", "mix") if k in step},
      "floor_ms_per_run_step": {k: step[k]["ms_per_run_step"]["floor"]
                                for k in ("ours", "mix") if k in step},
      "floor_ratio": {k: step[k]["floor_ratio"] for k in ("ours", "mix") if k in step},
      "gflops": {k: step[k]["gflops"] for k in ("ours", "mix") if k in step},
      "peak_gflops": b["peak_gflops"],
      "bench_d_in": step["d_in"], "bench_wall_s": bench_wall,
      "study_wall_s": wall,
      "study_peak_rss_gb": rss,
      "study_device_peak_gb": None if device_peak is None else device_peak / 2**30,
      "fallbacks": {m: r.get("eig_fallback_chunks") for m, r in results["methods"].items()},
      "study_rir_mean": {m: float(sum(r["mean_rir_per_seed"]) / len(r["mean_rir_per_seed"]))
                         for m, r in results["methods"].items()},
      "study_n_success": {m: r.get("n_success") for m, r in results["methods"].items()},
  }
  print(json.dumps(summary))


if __name__ == "__main__":
  main()

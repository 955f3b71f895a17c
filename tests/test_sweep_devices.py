"""A sweep split over 2 simulated CPU devices: no collective in any program, runs to the end.

A 2-device paper-scale run was once aborted by XLA:CPU's collective rendezvous timeout
("only 1 of 2 threads arrived", 40 s). The task axis of a sweep needs no communication, so
every program such a run executes — set-up, the chunk (all tasks at once or ``task_batch``
at a time), the exact fallback (whole batch and run by run), the evaluation — must compile
without a cross-device collective; this test dumps every compiled module of such a run and
greps them, while another process keeps a core busy.
"""
import os
import pathlib
import re
import subprocess
import sys
import textwrap

from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLLECTIVE = re.compile(
    r"\b(all-reduce|all-gather|collective-permute|all-to-all|reduce-scatter|"
    r"collective-broadcast)(-start)?\(")

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from immujax import extreme_eigs, immunize, spectral, sweep
    assert jax.device_count() == 2
    tasks = toy_tasks(3)   # 3 tasks: padded to 4, two per device
    mesh = sweep.device_mesh()
    tasks = sweep.shard_tasks(sweep.pad_tasks(tasks, 2), mesh)
    # Every check fails (tol = 0), so the run takes the exact fallback too: the whole
    # batch (bulk_fraction 0.25) and run by run (1.0).
    extreme_eigs.DEFAULT_TOL = 0.0
    runs = sweep.shard_tasks(sweep.init_runs(jax.random.key(0), tasks, ("ours",), 2,
                                             learning_rate=0.005, step_scale=0.5), mesh)
    kw = dict(steps=2, loss="bce", imma_steps=0, imma_inner_steps=0, preconditioned_only=True)
    out = [sweep.run_chunk_checked(runs.state, tasks, runs.weights, bulk_fraction=bulk, **kw)
           for bulk in (0.25, 1.0)]
    for new, terms, fb in out:
      assert fb.all() and new.params.theta.sharding == runs.state.params.theta.sharding
    np.testing.assert_allclose(out[1][0].params.theta, out[0][0].params.theta, rtol=1e-10)
    ev = sweep.evaluate(out[0][0], tasks, loss="bce")
    assert np.isfinite(np.asarray(ev.rir)).all()
    # The chunk that maps over one task at a time (memory-bounded layout): compiled only.
    mesh_ = sweep._task_mesh(tasks)
    assert mesh_ is not None
    sweep._run_chunk.lower(runs.state, tasks, runs.weights, rtol=None, task_batch=1,
                           mesh=mesh_, exact=False, all_steps=False, **kw).compile()
    print("done")
    """)


def test_two_devices_no_collective_in_any_program_and_a_loaded_core(tmp_path):
  dump = tmp_path / "hlo"
  # No persistent compilation cache: a program read from it is not compiled, hence not dumped.
  env = {**{k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"},
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
         "XLA_FLAGS": f"--xla_force_host_platform_device_count=2 --xla_dump_to={dump} "
                      "--xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*"}
  # Another process keeps one core busy, as the other jobs did when the abort happened.
  burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
  try:
    out = subprocess.run([sys.executable, "-c", helpers.TOY_TASKS_SOURCE + SCRIPT],
                         cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
  finally:
    burner.kill()
    burner.wait()
  assert out.returncode == 0 and "done" in out.stdout, out.stderr[-4000:]
  modules = sorted(dump.glob("*after_optimizations.txt"))
  names = " ".join(m.name for m in modules)
  for program in ("_init_runs", "_run_chunk", "_exact_run", "_evaluate"):
    assert program in names, f"no compiled {program} among {len(modules)} modules"
  found = {m.name: COLLECTIVE.findall(m.read_text()) for m in modules}
  assert not {k: v for k, v in found.items() if v}, "cross-device collectives compiled"

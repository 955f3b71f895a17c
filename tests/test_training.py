"""Tests for immujax/training.py: resume, the run's wall clock, start hook, ETA, bad steps."""
import time

import jax.numpy as jnp
import pytest

from immujax import checkpoint
from immujax import training


def _chunk(state, start):
  del start
  return {"x": state["x"] + 1.0}, {"value": state["x"]}


class _Recorder:
  def __init__(self):
    self.started, self.progress = [], []

  def start(self, p):
    self.started.append(p)

  def __call__(self, p):
    self.progress.append(p)


def test_wall_time_survives_a_kill_and_the_start_hook_runs_first(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  # First process: pretend it spent 1000 s before its chunks (set-up), then "dies" at step 2.
  first = training.WallClock(start=time.perf_counter() - 1000.0)
  rec = _Recorder()
  training.run_chunked(_chunk, {"x": jnp.zeros(())}, total_steps=2, chunk_steps=1,
                       checkpointer=ckpt, on_progress=rec, clock=first)
  assert [p.step for p in rec.started] == [0] and rec.started[0].metrics is None
  assert ckpt.restore_metadata(2)["wall_time_s"] >= 1000.0
  # Second process resumes: its clock starts now, but counts the first process's time.
  second = training.WallClock()
  rec = _Recorder()
  state, _ = training.run_chunked(_chunk, {"x": jnp.zeros(())}, total_steps=4, chunk_steps=1,
                                  checkpointer=ckpt, on_progress=rec, clock=second)
  assert float(state["x"]) == 4.0
  assert rec.started[0].step == rec.started[0].start_step == 2
  assert second.before >= 1000.0 and second.total() >= 1000.0
  assert all(p.wall_time >= 1000.0 and p.start_step == 2 for p in rec.progress)
  assert time.perf_counter() - second.start < 1000.0


def test_eta_excludes_the_first_chunk_which_includes_compilation():
  calls = []

  def slow_first(state, start):
    calls.append(start)
    time.sleep(0.5 if len(calls) == 1 else 0.01)
    return state, None

  rec = _Recorder()
  training.run_chunked(slow_first, jnp.zeros(()), total_steps=10, chunk_steps=1,
                       on_progress=rec)
  first, later = rec.progress[0], rec.progress[2]
  assert first.eta_is_bound and first.eta >= 0.5 * 9 * 0.9   # upper bound from chunk 1
  assert not later.eta_is_bound and later.eta < 0.5          # 7 chunks × ~0.01 s


@pytest.mark.parametrize("total, chunk, match", [
    (-5, 10, r"`total_steps` must be a positive int; got -5"),
    (10, 0, r"`chunk_steps` must be a positive int; got 0"),
    (25, 10, r"multiple of `chunk_steps` \(10\)"),
    (10.0, 5, r"`total_steps` must be a positive int"),
])
def test_bad_step_counts_are_named(total, chunk, match):
  with pytest.raises(ValueError, match=match):
    training.run_chunked(_chunk, {"x": jnp.zeros(())}, total_steps=total, chunk_steps=chunk)


def test_chunk_loop_with_checkpoints_traces_the_step_once(tmp_path, monkeypatch):
  # The binaries' loop: run_chunk_checked(all_steps=True) chunks driven by run_chunked with
  # an orbax checkpoint after each. The state a chunk returns (and the checkpoint save)
  # must hit the compiled program of the first chunk: one trace of the step function.
  import chex
  import jax
  import numpy as np
  from immujax import immunize
  from immujax import sweep
  rng = np.random.default_rng(3)
  tasks = jax.tree.map(lambda *a: jnp.stack(a), *[
      immunize.make_task(rng.normal(size=(30, 6)), rng.normal(size=30),
                         rng.normal(size=(30, 6)) * np.linspace(0.2, 2, 6), rng.normal(size=30))
      for _ in range(2)])
  runs = sweep.init_runs(jax.random.key(0), tasks, ("ours", "opt_kappa"), 2,
                         learning_rate=0.005, step_scale=0.3, eig_solver="eigh")
  chex.clear_trace_counter()   # (eigh: no warm basis, so no exact fallback re-traces)
  # One training step's direction (traced inside run_steps' scan body).
  monkeypatch.setattr(immunize, "direction", chex.assert_max_traces(immunize.direction, n=1))
  jax.clear_caches()
  seen = []

  def chunk(state, start):
    state, terms, fallback = sweep.run_chunk_checked(state, tasks, runs.weights, steps=3,
                                                     all_steps=True)
    chex.assert_shape(terms.supervised, (2, 4, 3))    # (T, R, steps): every step's terms
    chex.assert_type(terms.log_kappa_h, jnp.float64)
    seen.append(start)
    return state, terms

  state, _ = training.run_chunked(chunk, runs.state, total_steps=9, chunk_steps=3,
                                  checkpointer=checkpoint.Checkpointer(tmp_path / "c"))
  jax.clear_caches()
  assert seen == [0, 3, 6]
  chex.assert_tree_all_finite(state.params)


def test_restore_refuses_other_shapes_with_a_clear_error(tmp_path):
  # E.g. a run whose task axis was padded for 2 devices resumed with 3 devices in total.
  ckpt = checkpoint.Checkpointer(tmp_path / "c")
  ckpt.save(1, {"theta": jnp.zeros((4, 2))})
  with pytest.raises(ValueError, match=r"shape \(4, 2\) where this run has \(6, 2\).*devices"):
    ckpt.restore(1, like={"theta": jnp.zeros((6, 2))})
  restored = ckpt.restore(1, like={"theta": jnp.ones((4, 2))})
  assert float(jnp.abs(restored["theta"]).sum()) == 0.0

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

"""Chunked execution of compiled training runs, with checkpoints and progress between chunks.

A whole run is a pure function ``chunk(state, start, n) -> (state, metrics)`` compiled once
(``lax.scan`` over ``n`` steps, usually vmapped over seeds/pairs/methods). This driver calls
it repeatedly from Python so that progress reporting and orbax checkpoints happen between
chunks, outside compiled code, and a killed run resumes from the last saved chunk. Because
per-step randomness is derived with ``fold_in(key, step)``, a resumed run reproduces the
uninterrupted one bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from immujax.runner import checkpoints as checkpoint_lib

__all__ = [
    "Progress",
    "run_chunked",
    "run_in_workdir",
    "WallClock",
]


class Progress(NamedTuple):
  """What a progress callback is told after each chunk (and, optionally, once before).

  A callback object that also has a ``start`` method gets one ``Progress`` before the first
  chunk runs, i.e. before compilation, with ``metrics=None`` and ``step == start_step``.
  """
  step: int
  total: int
  elapsed: float        # seconds since this process started running chunks
  eta: float            # seconds, extrapolated from this process's chunks (nan: unknown)
  metrics: Any          # the chunk's metrics (device arrays), e.g. the last objective values
  start_step: int = 0   # the step this process started from (> 0 after a resume)
  wall_time: float = math.nan  # seconds of the whole run so far, earlier processes included
  eta_is_bound: bool = False   # True after a process's first chunk: its time includes
  #                              compilation, so ``eta`` is an upper bound


class WallClock:
  """Wall time of a run across kills and resumes.

  ``total()`` is the time of earlier processes (``before``, read from the checkpoint a run
  resumes from) plus the time since ``start`` in this process. Pass the ``time.perf_counter()``
  of the program's start to count its set-up (data loading) too.
  """

  def __init__(self, start: float | None = None):
    self.start = time.perf_counter() if start is None else float(start)
    self.before = 0.0

  def total(self) -> float:
    return self.before + time.perf_counter() - self.start


def _check_steps(total_steps, chunk_steps) -> None:
  for name, v in (("total_steps", total_steps), ("chunk_steps", chunk_steps)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"`{name}` must be a positive int; got {v!r}.")
  if total_steps % chunk_steps:
    raise ValueError(
        f"`total_steps` ({total_steps}) must be a multiple of `chunk_steps` ({chunk_steps}); "
        "round the number of steps or choose another chunk size.")


def run_chunked(chunk_fn: Callable[[Any, int], tuple[Any, Any]], state: Any, *,
                total_steps: int, chunk_steps: int,
                checkpointer: checkpoint_lib.Checkpointer | None = None,
                on_progress: Callable[[Progress], None] | None = None,
                clock: WallClock | None = None, phases=None) -> tuple[Any, list]:
  """Runs ``total_steps`` steps in chunks of ``chunk_steps``, resuming from a checkpoint.

  Args:
    chunk_fn: ``(state, start_step) -> (state, metrics)`` running ``chunk_steps`` steps
      (compiled once; ``total_steps`` must be a multiple of ``chunk_steps``).
    state: the initial state (ignored when a checkpoint exists).
    total_steps: number of steps in the whole run (a positive int).
    chunk_steps: steps per compiled chunk (a positive int).
    checkpointer: where to save after each chunk and resume from (optional). Each save also
      records the run's wall time so far (``clock``), so a resumed run's clock counts the
      killed process's time too.
    on_progress: callback receiving a :class:`Progress` after each chunk. If it has a
      ``start`` method, that is called once before the first chunk (before compilation).
    clock: the run's :class:`WallClock` (default: one started now). On resume its
      ``before`` is set from the checkpoint.
    phases: a :class:`immujax.runner.timing.Phases` that records the checkpoint saves
      (``"checkpoints"``) and progress reports (``"progress"``), or None.

  Returns:
    ``(final_state, metrics_per_chunk)`` — metrics of the chunks run by this process (a
    resumed run also returns the checkpointed metrics if they were saved in the state).
  """
  _check_steps(total_steps, chunk_steps)
  clock = WallClock() if clock is None else clock
  start = 0
  if checkpointer is not None:
    latest = checkpointer.latest_step()
    if latest is not None:
      state = checkpointer.restore(latest, like=state)
      start = latest
      meta = checkpointer.restore_metadata(latest) or {}
      clock.before = float(meta.get("wall_time_s", 0.0))
  on_start = getattr(on_progress, "start", None)
  if callable(on_start):
    on_start(Progress(start, total_steps, 0.0, math.nan, None, start, clock.total()))
  history = []
  t0 = time.perf_counter()
  first_chunk = None
  done_here = 0
  for step in range(start, total_steps, chunk_steps):
    state, metrics = chunk_fn(state, step)
    jax.block_until_ready(state)
    history.append(metrics)
    done_here += chunk_steps
    now = step + chunk_steps
    if checkpointer is not None:
      with _phase(phases, "checkpoints"):
        checkpointer.save(now, state, metadata={"step": now, "wall_time_s": clock.total()})
    if on_progress is not None:
      elapsed = time.perf_counter() - t0
      if first_chunk is None:
        first_chunk = elapsed
      if done_here > chunk_steps:
        # The first chunk includes compilation: rate from the later chunks only.
        rate = (elapsed - first_chunk) / (done_here - chunk_steps)
        bound = False
      else:
        rate, bound = elapsed / done_here, now < total_steps
      with _phase(phases, "progress"):
        on_progress(Progress(now, total_steps, elapsed, rate * (total_steps - now), metrics,
                             start, clock.total(), bound))
  return state, history


def _phase(phases, name):
  return contextlib.nullcontext() if phases is None else phases(name)


def run_in_workdir(chunk_fn: Callable[[Any, int], tuple[Any, Any]], state: Any, workdir, *,
                   total_steps: int, chunk_steps: int, max_chunks: int | None = None,
                   on_progress: Callable[[Progress], None] | None = None,
                   clock: WallClock | None = None, say: Callable[[str], None] | None = None,
                   phases=None):
  """:func:`run_chunked` checkpointed under ``workdir/checkpoints``; the final state, or None
  when ``max_chunks`` stopped it early (as if killed: rerunning resumes)."""
  import pathlib  # pylint: disable=g-import-not-at-top
  total = total_steps if max_chunks is None else min(total_steps, max_chunks * chunk_steps)
  ckpt = checkpoint_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints")
  try:
    state, _ = run_chunked(chunk_fn, state, total_steps=total, chunk_steps=chunk_steps,
                           checkpointer=ckpt, on_progress=on_progress, clock=clock,
                           phases=phases)
  finally:
    ckpt.close()
  if total < total_steps:
    if say is not None:
      say(f"stopped after {total} steps (--max_chunks); rerun to resume.")
    return None
  return state

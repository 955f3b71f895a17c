"""Chunked execution of compiled training runs, with checkpoints and progress between chunks.

A whole run is a pure function ``chunk(state, start, n) -> (state, metrics)`` compiled once
(``lax.scan`` over ``n`` steps, usually vmapped over seeds/pairs/methods). This driver calls
it repeatedly from Python so that progress reporting and orbax checkpoints happen between
chunks, outside compiled code, and a killed run resumes from the last saved chunk. Because
per-step randomness is derived with ``fold_in(key, step)``, a resumed run reproduces the
uninterrupted one bit for bit.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax

from immujax import checkpoint as checkpoint_lib


class Progress(NamedTuple):
  """What a progress callback is told after each chunk."""
  step: int
  total: int
  elapsed: float        # seconds since this process started running chunks
  eta: float            # seconds, extrapolated from this process's chunks
  metrics: Any          # the chunk's metrics (device arrays), e.g. the last objective values


def run_chunked(chunk_fn: Callable[[Any, int], tuple[Any, Any]], state: Any, *,
                total_steps: int, chunk_steps: int,
                checkpointer: checkpoint_lib.Checkpointer | None = None,
                on_progress: Callable[[Progress], None] | None = None) -> tuple[Any, list]:
  """Runs ``total_steps`` steps in chunks of ``chunk_steps``, resuming from a checkpoint.

  Args:
    chunk_fn: ``(state, start_step) -> (state, metrics)`` running ``chunk_steps`` steps
      (compiled once; ``total_steps`` must be a multiple of ``chunk_steps``).
    state: the initial state (ignored when a checkpoint exists).
    total_steps: number of steps in the whole run.
    chunk_steps: steps per compiled chunk.
    checkpointer: where to save after each chunk and resume from (optional).
    on_progress: callback receiving a :class:`Progress` after each chunk.

  Returns:
    ``(final_state, metrics_per_chunk)`` — metrics of the chunks run by this process (a
    resumed run also returns the checkpointed metrics if they were saved in the state).
  """
  if total_steps % chunk_steps:
    raise ValueError(
        f"`total_steps` ({total_steps}) must be a multiple of `chunk_steps` ({chunk_steps}); "
        "round the number of steps or choose another chunk size.")
  start = 0
  if checkpointer is not None:
    latest = checkpointer.latest_step()
    if latest is not None:
      state = checkpointer.restore(latest, like=state)
      start = latest
  history = []
  t0 = time.perf_counter()
  done_here = 0
  for step in range(start, total_steps, chunk_steps):
    state, metrics = chunk_fn(state, step)
    jax.block_until_ready(state)
    history.append(metrics)
    done_here += chunk_steps
    now = step + chunk_steps
    if checkpointer is not None:
      checkpointer.save(now, state)
    if on_progress is not None:
      elapsed = time.perf_counter() - t0
      eta = elapsed / done_here * (total_steps - now)
      on_progress(Progress(now, total_steps, elapsed, eta, metrics))
  return state, history

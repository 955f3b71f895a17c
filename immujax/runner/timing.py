"""Where a run's wall time goes: seconds per phase, and JAX's compilation time, per process.

A study wraps each phase of its run (set-up, each method's steps, fallbacks, evaluation,
checkpoints, outputs) in ``phases("name")`` and writes :meth:`Phases.as_dict` into its
``results.json`` as ``timings``, so that every run carries its own budget. Compilation is
counted separately through JAX's monitoring events (tracing, lowering, XLA compilation and
persistent-cache reads, summed over the whole process); it overlaps the phases that
compiled.

Example:
  >>> p = Phases()
  >>> with p("setup"):
  ...   pass
  >>> sorted(p.as_dict())
  ['compile', 'phases', 'total']
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time

_EVENTS = {   # JAX monitoring event → our name
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "xla_compile",
    "/jax/compilation_cache/cache_retrieval_time_sec": "cache_read",
}
_COMPILE = collections.Counter()   # seconds per event name, this process
_COUNT = collections.Counter()     # events per name (a cache read counts a hit)
_LOCK = threading.Lock()
_REGISTERED = False


def _listen(event: str, duration: float, **_) -> None:
  name = _EVENTS.get(event)
  if name is not None:
    with _LOCK:
      _COMPILE[name] += duration
      _COUNT[name] += 1


def _register() -> None:
  global _REGISTERED
  if not _REGISTERED:
    from jax import monitoring  # pylint: disable=g-import-not-at-top
    monitoring.register_event_duration_secs_listener(_listen)
    _REGISTERED = True


class Phases:
  """Wall seconds per named phase (a phase entered twice adds up), from its creation on."""

  def __init__(self):
    _register()
    self.start = time.perf_counter()
    self.seconds: dict[str, float] = {}
    with _LOCK:
      self._compile0, self._count0 = _COMPILE.copy(), _COUNT.copy()

  @contextlib.contextmanager
  def __call__(self, name: str):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.add(name, time.perf_counter() - t0)

  def add(self, name: str, seconds: float) -> None:
    self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)

  def as_dict(self) -> dict:
    """``{"total": s, "phases": {name: s}, "compile": {kind: s, "programs": n, ...}}``.

    ``total`` is the wall time since creation; ``phases`` need not add up to it (what is
    not in a phase is the rest); ``compile`` sums JAX's compile events since creation:
    ``trace``, ``lower``, ``xla_compile`` (XLA compilations and persistent-cache reads,
    ``programs`` of them) and ``cache_read`` (the cache reads alone, ``cache_hits`` of them).
    """
    with _LOCK:
      comp = {k: _COMPILE[k] - self._compile0[k] for k in _EVENTS.values()}
      n = {k: _COUNT[k] - self._count0[k] for k in _EVENTS.values()}
    out = {k: round(v, 3) for k, v in comp.items()}
    out.update(programs=n["xla_compile"], cache_hits=n["cache_read"])
    return {"total": round(time.perf_counter() - self.start, 3),
            "phases": {k: round(v, 3) for k, v in self.seconds.items()},
            "compile": out}

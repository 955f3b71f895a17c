"""One progress line per chunk: a bar, steps, elapsed time, ETA and a short summary."""

from __future__ import annotations

import math
import sys
import time

from immujax.runner import loop

__all__ = [
    "printer",
]


def fmt_seconds(s: float) -> str:
  """``m:ss`` or ``h:mm:ss``.

  Example:
    >>> fmt_seconds(75), fmt_seconds(3725)
    ('1:15', '1:02:05')
  """
  s = int(round(s))
  return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:d}:{s % 60:02d}"


class ProgressPrinter:
  """Prints one line per chunk with ``echo`` (default: stdout): a bar, steps, elapsed, ETA, ``summarize(metrics)``.

  Before the first chunk (:func:`immujax.runner.loop.run_chunked` calls :meth:`start`) it
  says whether the run starts fresh or resumes, and that the first chunk compiles, so
  something is printed before compilation. The first ETA of a process includes compilation
  and is printed as an upper bound (``ETA ≤``); later ones exclude the first chunk.
  ``wall_time`` is the whole run's wall time so far (earlier, killed processes included).
  """

  def __init__(self, label: str, summarize=None, echo=None):
    self.label, self.summarize = label, summarize
    self.echo = echo or (lambda text: print(text, file=sys.stdout, flush=True))
    self.start_time = time.perf_counter()
    self.wall_time = math.nan

  def _print(self, text: str) -> None:
    self.echo(f"[{self.label}] {text}")

  def start(self, p: loop.Progress) -> None:
    self.wall_time = p.wall_time
    if p.step >= p.total:
      what = f"resuming from step {p.step}: all {p.total} steps are done"
    elif p.step > 0:
      what = (f"resuming from step {p.step} of {p.total}; compiling the first chunk "
              "(no ETA until it is done)")
    else:
      what = f"starting {p.total} steps; compiling the first chunk (no ETA until it is done)"
    self._print(what)

  def __call__(self, p: loop.Progress) -> None:
    self.wall_time = p.wall_time
    frac = p.step / p.total
    bar = "#" * int(24 * frac) + "." * (24 - int(24 * frac))
    extra = f"  {self.summarize(p.metrics)}" if self.summarize else ""
    if not math.isfinite(p.eta):
      eta = "ETA after first chunk"
    else:
      eta = f"ETA {'≤ ' if p.eta_is_bound else ''}{fmt_seconds(p.eta)}"
    self._print(f"[{bar}] {p.step}/{p.total} steps  elapsed "
                f"{fmt_seconds(time.perf_counter() - self.start_time)}  {eta}{extra}")


def printer(echo, label: str, summarize=None):
  """A :class:`ProgressPrinter` when ``echo`` (the binary's print function) is given, else None."""
  return None if echo is None else ProgressPrinter(label, summarize, echo)

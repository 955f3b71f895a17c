"""Plumbing shared by the experiment binaries: float64, atomic outputs, progress with ETA."""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np

from immujax import training


def enable_float64() -> None:
  """All spectral math runs in float64 (call at program start, before creating arrays).

  Also quiets orbax's per-checkpoint INFO logging so progress lines stay readable.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  jax.config.update("jax_enable_x64", True)


def data_dir_from(flag_value: str | None, env_var: str, subdir: str) -> pathlib.Path | None:
  """A data directory from a flag, else ``$IMMUJAX_DATA_DIR/<subdir>`` or ``$<env_var>``."""
  if flag_value:
    return pathlib.Path(flag_value)
  if os.environ.get(env_var):
    return pathlib.Path(os.environ[env_var])
  if os.environ.get("IMMUJAX_DATA_DIR"):
    return pathlib.Path(os.environ["IMMUJAX_DATA_DIR"]) / subdir
  return None


def _atomic_write(path: pathlib.Path, write) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def to_jsonable(x: Any) -> Any:
  """Arrays → lists, NaN/inf → None (strict JSON), recursively."""
  if isinstance(x, dict):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    return to_jsonable(np.asarray(x).tolist())
  if isinstance(x, (np.floating, float)):
    return float(x) if np.isfinite(x) else None
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def write_json(path: pathlib.Path, obj: Any) -> None:
  data = json.dumps(to_jsonable(obj), indent=2, allow_nan=False).encode()
  _atomic_write(pathlib.Path(path), lambda f: f.write(data))


def write_text(path: pathlib.Path, text: str) -> None:
  _atomic_write(pathlib.Path(path), lambda f: f.write(text.encode()))


def save_figure(path: pathlib.Path, fig) -> None:
  """Saves a matplotlib figure as PNG atomically and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  _atomic_write(pathlib.Path(path), lambda f: fig.savefig(f, format="png", dpi=120,
                                                          bbox_inches="tight"))
  plt.close(fig)


def matplotlib_agg():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _fmt_seconds(s: float) -> str:
  s = int(round(s))
  return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:d}:{s % 60:02d}"


class ProgressPrinter:
  """Prints one line per chunk: a bar, steps, elapsed, ETA and an optional summary."""

  def __init__(self, label: str, summarize=None, stream=sys.stdout):
    self.label, self.summarize, self.stream = label, summarize, stream
    self.start = time.perf_counter()

  def __call__(self, p: training.Progress) -> None:
    frac = p.step / p.total
    bar = "#" * int(24 * frac) + "." * (24 - int(24 * frac))
    extra = f"  {self.summarize(p.metrics)}" if self.summarize else ""
    print(f"[{self.label}] [{bar}] {p.step}/{p.total} steps  elapsed "
          f"{_fmt_seconds(time.perf_counter() - self.start)}  ETA {_fmt_seconds(p.eta)}{extra}",
          file=self.stream, flush=True)


def mean_std(values) -> tuple[float, float]:
  v = np.asarray(values, dtype=float)
  return float(np.mean(v)), float(np.std(v, ddof=1)) if v.size > 1 else 0.0


def fmt_pm(values, digits: int = 4) -> str:
  m, s = mean_std(values)
  return f"{m:.{digits}g} ± {s:.{digits}g}"


def claim_workdir(workdir: pathlib.Path, config: dict, extra: dict | None = None) -> None:
  """Records the run's config in ``workdir/config.json``, or checks it on resume.

  Raises:
    ValueError: if the workdir holds checkpoints of a run with a different config (resuming
      them would restore arrays of the wrong shapes or mix two experiments).
  """
  workdir = pathlib.Path(workdir)
  record = {"config": to_jsonable(config), **(extra or {})}
  path = workdir / "config.json"
  if path.exists() and (workdir / "checkpoints").exists():
    old = json.loads(path.read_text()).get("config")
    if old != record["config"]:
      changed = sorted(k for k in set(old or {}) | set(record["config"])
                       if (old or {}).get(k) != record["config"].get(k))
      raise ValueError(
          f"--workdir {workdir} holds a run with a different config (changed: {changed}); "
          "use a fresh --workdir, or delete it to start over.")
  write_json(path, record)

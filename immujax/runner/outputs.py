"""Atomic writes of a run's outputs (JSON, text, bytes, figures) with the user's umask.

A file is written to a temporary name in its directory and renamed over the target when
complete, so a killed run never leaves a half-written ``results.json``. ``mkstemp`` creates
0600 files; outputs get the mode an ordinary ``open()`` would give them.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any, Callable

import jax
import numpy as np

__all__ = [
    "pyplot",
    "save_figure",
    "to_jsonable",
    "write_bytes",
    "write_json",
    "write_text",
]


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def atomic_write(path, write: Callable[[Any], None]) -> None:
  """Calls ``write(f)`` on a temporary file beside ``path``, then renames it to ``path``."""
  path = pathlib.Path(path)
  tmp = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException as e:
    if tmp is not None and os.path.exists(tmp):
      os.unlink(tmp)
    if isinstance(e, OSError) and e.errno and e.strerror:
      # Name the file the caller asked for, not the temporary one.
      raise type(e)(e.errno, e.strerror, str(path)) from e
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
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def write_bytes(path, data: bytes) -> None:
  atomic_write(path, lambda f: f.write(data))


def write_json(path, obj: Any) -> None:
  write_bytes(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False).encode())


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode())


def pyplot():
  """matplotlib's pyplot on the Agg backend (no display needed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save_figure(path, fig) -> None:
  """Saves a matplotlib figure as PNG atomically and closes it."""
  atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
  pyplot().close(fig)

"""What a run was computed from: its data, the package, the software stack, the devices.

:func:`record` returns the ``provenance`` block that ``config.json``, ``results.json`` and
``report.json`` carry::

    {"data": {"source", "files": [{"name", "path", "bytes", "sha256"}], "arrays_sha256",
              "notes": [...]},                     # immujax.data.fingerprint.data_record
     "immujax": "0.1.0", "git_commit": "625bdaf…" | "625bdaf…+dirty" | None,
     "python": "3.11.9", "jax": "0.10.2", "jaxlib": "0.10.2",
     "devices": {"platform": "cpu", "devices": 1, "local_devices": 1, "processes": 1,
                 "layout": "default: one device, …"}}

The data's ``arrays_sha256`` is the fingerprint a resume is checked against
(:mod:`immujax.runner.workdir`); the rest is recorded, not compared (a resume after an
upgrade of jax is allowed; the file says which versions computed which part).
"""

from __future__ import annotations

import functools
import pathlib
import platform
import subprocess
from typing import Optional

import jax

__all__ = [
    "notes",
    "record",
]


@functools.cache
def git_commit() -> Optional[str]:
  """The commit of the immujax checkout this package runs from (``+dirty`` if modified)."""
  root = pathlib.Path(__file__).resolve().parents[2]
  if not (root / ".git").exists():
    return None
  try:
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ("+dirty" if dirty else "") if head else None


def software() -> dict:
  """Package, git commit, Python, jax and jaxlib versions."""
  import immujax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  return {"immujax": immujax.__version__, "git_commit": git_commit(),
          "python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__}


def devices(layout: str = "", used: Optional[int] = None) -> dict:
  """The device layout of this run (every process sees the same global picture)."""
  return {"platform": jax.devices()[0].platform, "devices": used or jax.device_count(),
          "local_devices": jax.local_device_count(), "processes": jax.process_count(),
          "layout": layout}


def record(data: dict, *, layout: str = "", used_devices: Optional[int] = None) -> dict:
  """The provenance block: ``data`` (``immujax.data.fingerprint.data_record``) + the rest."""
  return {"data": data, **software(), "devices": devices(layout, used_devices)}


def notes(prov: dict) -> list[str]:
  """The data notes (files that differ from the paper's), to print and to put in tables."""
  return list(prov.get("data", {}).get("notes", []))

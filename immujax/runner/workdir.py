"""The workdir of a run: claimed once validated, checked on resume, put back on early failure.

:func:`claim` is called after every flag and config field has been validated and the data
loaded. It writes ``config.json`` (the config and the run's provenance) and remembers what
it created. A workdir that already holds a run (saved checkpoint steps, or finished outputs)
is checked first:

* a resumable run with another config is refused (resuming would restore arrays of the
  wrong shapes or mix two experiments);
* a run computed from other data (its ``provenance.data.arrays_sha256``) is refused, naming
  what changed (``D2.csv changed (359114 → 359120 bytes, …)``);
* both refusals name the two ways out: a new ``--workdir``, or ``--move_aside``, which renames
  the old run to ``<workdir>.old-<n>`` (nothing is ever deleted) and starts afresh.

If the program then fails before its first checkpoint (or output), :func:`release` restores
the workdir: a directory the claim created is removed, ``config.json`` gets its old bytes
back, an empty ``checkpoints/`` it created is removed, and a run it moved aside is moved
back.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from typing import Optional

from immujax.data import fingerprint
from immujax.runner import outputs

__all__ = [
    "claim",
    "forget",
    "next_aside",
    "release",
    "validate",
    "validate_data_dir",
]

OUTPUTS = ("results.json", "report.json", "extractors.npz")
"""Files whose presence means a run finished in the workdir."""


def validate(workdir, flag: str = "--workdir") -> pathlib.Path:
  """``workdir`` as a path; refuses an empty value and an existing non-directory."""
  if not workdir:
    raise ValueError(f"{flag} is empty; pass the output directory.")
  path = pathlib.Path(workdir)
  if path.exists() and not path.is_dir():
    raise NotADirectoryError(f"{flag} {str(path)!r} is a file; pass a directory.")
  for parent in path.parents:
    if parent.exists():
      if not parent.is_dir():
        raise NotADirectoryError(f"{flag} {str(path)!r}: {str(parent)!r} is a file.")
      break
  return path


def validate_data_dir(path, flag: str) -> Optional[pathlib.Path]:
  """An existing directory given by ``flag`` (None passes through)."""
  if path is None:
    return None
  path = pathlib.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"{flag}={str(path)!r} is not a directory; pass the folder "
                            "holding the data files.")
  return path


def saved_steps(workdir) -> frozenset:
  """Checkpoint steps saved under ``workdir/checkpoints`` (and one level of sub-runs)."""
  root = pathlib.Path(workdir) / "checkpoints"
  if not root.is_dir():
    return frozenset()
  found = set()
  for p in root.iterdir():
    if p.is_dir() and p.name.isdigit():
      found.add(p.name)
    elif p.is_dir():
      found.update(f"{p.name}/{q.name}" for q in p.iterdir() if q.is_dir() and q.name.isdigit())
  return frozenset(found)


def holds_run(workdir) -> bool:
  """True if ``workdir`` holds saved checkpoint steps or a finished run's outputs."""
  workdir = pathlib.Path(workdir)
  return bool(saved_steps(workdir)) or any((workdir / n).is_file() for n in OUTPUTS)


@dataclasses.dataclass
class Claim:
  """What :func:`claim` found and changed (so that :func:`release` can undo it)."""
  workdir: pathlib.Path
  created: Optional[pathlib.Path]      # topmost directory the claim created
  old_config: Optional[bytes]          # config.json's bytes before (None: absent)
  checkpoints_existed: bool
  old_steps: frozenset
  old_outputs: frozenset
  moved_to: Optional[pathlib.Path] = None   # where --move_aside put the old run
  resumed: bool = False                      # the workdir held this very run
  note: str = ""                             # e.g. an old workdir without a fingerprint

  def messages(self, label: str) -> list[str]:
    """What a binary tells the user about the claim (moved aside, an unchecked old run)."""
    return ([f"[{label}] moved the old run aside to {self.moved_to}"] if self.moved_to
            else []) + ([f"[{label}] note: {self.note}"] if self.note else [])


_CLAIMS: list[Claim] = []

REDEFINED_IN_0_2 = {"imma": "imma_unrolled", "opt_kappa": "opt_kappa_log"}
"""Methods whose name now means another objective (issue 20): the old objective's new name.

A run written before immujax 0.2.0 (its config.json records no provenance) under one of
these names is not resumed: its θ was trained by the old objective.
"""


def _methods(config: dict) -> list[str]:
  methods = config.get("methods") or ()
  return list(methods) if isinstance(methods, (list, tuple, dict)) else []


def _ways_out(workdir: pathlib.Path) -> str:
  return (f"use a new --workdir, or pass --move_aside to rename the old run to "
          f"{next_aside(workdir)} and start afresh")


def next_aside(workdir) -> pathlib.Path:
  """The first free ``<workdir>.old-<n>``."""
  workdir = pathlib.Path(workdir)
  n = 1
  while workdir.with_name(f"{workdir.name}.old-{n}").exists():
    n += 1
  return workdir.with_name(f"{workdir.name}.old-{n}")


def _check_resume(workdir: pathlib.Path, old_bytes: bytes, config: dict,
                  provenance: Optional[dict], resumable: bool, defaults: dict) -> str:
  try:
    old = json.loads(old_bytes)
    if not isinstance(old, dict):
      raise ValueError("not a JSON object")
  except ValueError as e:
    raise ValueError(f"--workdir {workdir}: config.json is not valid JSON ({e}); "
                     f"{_ways_out(workdir)}.") from e
  missing = object()
  was = old.get("config") or {}
  # A field added to the config after the run was written counts as its default then.
  changed = sorted(k for k in set(was) | set(config)
                   if was.get(k, defaults.get(k, missing)) != config.get(k))
  redefined = [m for m in _methods(was) if m in REDEFINED_IN_0_2]
  if resumable and redefined and old.get("provenance") is None:
    m = redefined[0]
    raise ValueError(f"--workdir {workdir} holds a run written before immujax 0.2.0, whose "
                     f"{m!r} is today's {REDEFINED_IN_0_2[m]!r} (issue 20 redefined {m!r}); "
                     f"{_ways_out(workdir)}.")
  if resumable and changed:
    raise ValueError(f"--workdir {workdir} holds a run with a different config (changed: "
                     f"{changed}); {_ways_out(workdir)}.")
  old_data = (old.get("provenance") or {}).get("data")
  new_data = (provenance or {}).get("data")
  if old_data is None or new_data is None:
    return ("this workdir records no data fingerprint (written before immujax recorded one): "
            "the data it was computed from cannot be checked") if new_data else ""
  if old_data.get("arrays_sha256") != new_data.get("arrays_sha256"):
    raise ValueError(f"--workdir {workdir} holds a run computed from other data: "
                     f"{fingerprint.describe_change(old_data, new_data)}; {_ways_out(workdir)}.")
  return ""


def claim(workdir, config: dict, *, provenance: Optional[dict] = None,
          extra: Optional[dict] = None, resumable: bool = True,
          move_aside: bool = False, defaults: Optional[dict] = None) -> Claim:
  """Checks ``workdir`` against this run and records the run in ``workdir/config.json``.

  Args:
    workdir: the run's output directory.
    config: the run's config (JSON-able); a resumable run must match it exactly.
    provenance: :func:`immujax.runner.provenance.record` of this run; its data fingerprint
      must match the one of a run already in the workdir.
    extra: more keys for ``config.json`` (e.g. the data directories used).
    resumable: False for binaries that recompute everything on a rerun (evaluate, attack
      suite): a different config is then allowed, other data are not.
    move_aside: rename a run already in the workdir to :func:`next_aside` and start afresh.
    defaults: the config file's defaults; a field missing from an older run's config.json
      (added to the config since) matches when this run leaves it at its default.

  Returns:
    The :class:`Claim` (``resumed`` tells whether the workdir held this run already).

  Raises:
    ValueError: one line naming what differs and the ways out.
    NotADirectoryError: if ``workdir`` is a file.
  """
  workdir = validate(workdir)
  moved_to = None
  if move_aside and workdir.is_dir() and (holds_run(workdir) or (workdir / "config.json").exists()):
    moved_to = next_aside(workdir)
    workdir.rename(moved_to)
  path = workdir / "config.json"
  ckpt_dir = workdir / "checkpoints"
  old_bytes = path.read_bytes() if path.is_file() else None
  note, resumed = "", False
  if old_bytes is not None and holds_run(workdir):
    note = _check_resume(workdir, old_bytes, outputs.to_jsonable(config), provenance,
                         resumable, outputs.to_jsonable(defaults or {}))
    resumed = resumable
  created = None
  for d in (workdir, *workdir.parents):
    if d.exists():
      break
    created = d
  c = Claim(workdir, created, old_bytes, ckpt_dir.exists(), saved_steps(workdir),
            frozenset(n for n in OUTPUTS if (workdir / n).is_file()), moved_to, resumed, note)
  workdir.mkdir(parents=True, exist_ok=True)
  _CLAIMS.append(c)
  outputs.write_json(path, {"config": config, **({"provenance": provenance} if provenance
                                                 else {}), **(extra or {})})
  return c


def claim_and_tell(workdir, config: dict, *, provenance: dict, label: str, say,
                   **kwargs) -> Claim:
  """:func:`claim`, telling the user (``say``) about data notes, a moved-aside run, a note."""
  for note in (provenance.get("data") or {}).get("notes", []):
    say(f"[{label}] warning: {note}")
  c = claim(workdir, config, provenance=provenance, **kwargs)
  for line in c.messages(label):
    say(line)
  return c


def _saved_since(c: Claim) -> bool:
  now_outputs = frozenset(n for n in OUTPUTS if (c.workdir / n).is_file())
  return bool(saved_steps(c.workdir) - c.old_steps) or bool(now_outputs - c.old_outputs)


def kept() -> list[pathlib.Path]:
  """Claimed workdirs in which something was saved since the claim (a rerun resumes)."""
  return [c.workdir for c in _CLAIMS if _saved_since(c)]


def release() -> None:
  """Restores every claimed workdir in which nothing was saved since the claim.

  Best effort: a file it cannot restore is left as it is (the error that ended the run is
  the one to report).
  """
  while _CLAIMS:
    c = _CLAIMS.pop()
    try:
      _restore(c)
    except OSError:
      pass


def _restore(c: Claim) -> None:
  if _saved_since(c):
    return   # a checkpoint or an output was written: keep everything
  if c.moved_to is not None:
    shutil.rmtree(c.workdir, ignore_errors=True)
    c.moved_to.rename(c.workdir)
    return
  if c.created is not None:
    shutil.rmtree(c.created, ignore_errors=True)
    return
  path = c.workdir / "config.json"
  if c.old_config is None:
    if path.is_file():
      path.unlink()
  elif not path.is_file() or path.read_bytes() != c.old_config:
    outputs.write_bytes(path, c.old_config)
  ckpt_dir = c.workdir / "checkpoints"
  if not c.checkpoints_existed and ckpt_dir.is_dir():
    shutil.rmtree(ckpt_dir, ignore_errors=True)


def forget() -> None:
  """Marks every claim as kept (once a run's outputs are written)."""
  _CLAIMS.clear()

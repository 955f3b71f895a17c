"""Checks of flag and config values; every message names the flag (``--config.steps=-5 ...``).

The binaries call these before anything touches the workdir, so a bad value costs nothing.
Each returns the (normalized) value or raises ``ValueError`` naming ``name`` and the fix.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "no_ignored_overrides",
    "positive_int",
]


def _is_int(value) -> bool:
  return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def positive_int(value, name: str, *, allow_none: bool = False) -> int | None:
  """``value`` if it is an int >= 1."""
  if value is None and allow_none:
    return None
  if not _is_int(value) or value < 1:
    raise ValueError(f"{name}={value!r} must be a positive integer; pass e.g. {name}=1.")
  return int(value)


def nonnegative_int(value, name: str) -> int:
  """``value`` if it is an int >= 0."""
  if not _is_int(value) or value < 0:
    raise ValueError(f"{name}={value!r} must be an integer >= 0.")
  return int(value)


def positive_float(value, name: str) -> float:
  """``value`` if it is a finite number > 0."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
      or not math.isfinite(value) or value <= 0:
    raise ValueError(f"{name}={value!r} must be a finite number > 0.")
  return float(value)


def choice(value, name: str, choices: Sequence[Any]) -> Any:
  """``value`` if it is one of ``choices``."""
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}.")
  return value


def boolean(value, name: str) -> bool:
  return choice(value, name, (True, False))


def subset(values, name: str, choices: Sequence[str]) -> tuple:
  """A non-empty, duplicate-free tuple of elements of ``choices``.

  A string, or a tuple element, holding commas is split: ``--config.methods=ours,imma``
  reaches the config as ``("ours,imma",)`` and means ``("ours", "imma")``.
  """
  if isinstance(values, str):
    values = (values,)
  values = tuple(v for x in values
                 for v in ([p.strip() for p in x.split(",")] if isinstance(x, str) else [x])
                 if v != "")
  bad = [v for v in values if v not in choices]
  if bad or not values:
    raise ValueError(f"{name}={','.join(map(str, values)) or '()'}: "
                     f"{'unknown ' + ', '.join(map(repr, bad)) if bad else 'empty'}; choose "
                     f"one or more of {', '.join(choices)} (comma-separated).")
  if len(set(values)) != len(values):
    raise ValueError(f"{name}={','.join(values)} lists a value twice; list each once.")
  return values


def steps(total, chunk, prefix: str = "--config.") -> None:
  """``steps`` and ``chunk_steps`` positive ints, ``steps`` a multiple of ``chunk_steps``."""
  positive_int(total, f"{prefix}steps")
  positive_int(chunk, f"{prefix}chunk_steps")
  if total % chunk:
    raise ValueError(
        f"{prefix}steps={total} must be a multiple of {prefix}chunk_steps={chunk}; "
        f"pass e.g. {prefix}steps={max(chunk, total // chunk * chunk)}.")


def run_fields(c, prefix: str = "--config.") -> None:
  """The fields every linear study's config shares: clip_factor, imma_steps, init.

  ``imma_steps`` (the unrolled attacker's steps) must be positive when ``c.methods``
  includes ``imma_unrolled``, else non-negative.
  """
  positive_float(c.clip_factor, f"{prefix}clip_factor")
  if "imma_unrolled" in tuple(c.methods):
    positive_int(c.imma_steps, f"{prefix}imma_steps")
  else:
    nonnegative_int(c.imma_steps, f"{prefix}imma_steps")
  choice(c.init, f"{prefix}init", ("orthogonal", "identity", "torch_default"))


def run_fields_ignored(c) -> dict:
  """The shared run fields a linear study's config ignores: ``imma_steps`` without
  ``imma_unrolled``,
  ``precondition_baselines`` without a baseline (for :func:`no_ignored_overrides`)."""
  out = {}
  if "imma_unrolled" not in tuple(c.methods):
    out["imma_steps"] = "--config.methods has no imma_unrolled (imma_steps are its unrolled steps)"
  if not set(c.methods) - {"ours"}:
    out["precondition_baselines"] = "--config.methods has no baseline"
  return out


def no_ignored_overrides(overrides: Mapping[str, Any], ignored: Mapping[str, str],
                         prefix: str = "--config.") -> None:
  """Refuses a field the user set on the command line that this configuration ignores.

  Args:
    overrides: ``{field path: value}`` set on the command line (``--config.<path>=...``).
    ignored: ``{field path: why this configuration does not use it}`` (a field path may
      end in ``.*`` to cover a whole sub-config).

  Raises:
    ValueError: ``--config.<path>=<value> has no effect: <why>; drop it.``
  """
  for path, value in overrides.items():
    for pattern, why in ignored.items():
      if path == pattern or (pattern.endswith(".*") and path.startswith(pattern[:-1])):
        raise ValueError(f"{prefix}{path}={value!r} has no effect: {why}; drop it.")


def unknown_fields(c, reference, prefix: str = "--config.") -> None:
  """Refuses fields of ``c`` that the config file's ``get_config()`` does not define."""
  unknown = sorted(set(c.keys()) - set(reference.keys()))
  if unknown:
    raise ValueError(f"the config has unknown fields {unknown}; remove them "
                     f"(e.g. {prefix}{unknown[0]}).")

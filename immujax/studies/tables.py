"""Formatting shared by the studies' tables: method names, mean ± std."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = [
    "fmt_pm",
    "mean_std",
    "name",
    "rows_of",
]

NAMES = {"ours": "Ours", "r_ill_only": "R_ill Only", "imma": "IMMA", "opt_kappa": "Opt κ",
         "opt_kappa_log": "Opt κ (log)", "opt_kappa_loglog": "Opt κ (log log)",
         "imma_unrolled": "IMMA (unrolled)", "identity": "Identity",
         "rotation": "Random rotation (control)"}


def name(method: str) -> str:
  """The display name of a method (the method itself when unknown)."""
  return NAMES.get(method, method)


def mean_std(values) -> tuple[float, float]:
  """Mean and sample std (ddof=1) of ``values``; the std is nan for a single value."""
  v = np.asarray(values, dtype=float)
  return float(np.mean(v)), float(np.std(v, ddof=1)) if v.size > 1 else math.nan


def fmt_pm(values, digits: int = 4) -> str:
  """``"mean ± std"``, or the value alone when there is one (no fake ``± 0``).

  Example:
    >>> fmt_pm([3.0]), fmt_pm([1.0, 3.0])
    ('3', '2 ± 1.414')
  """
  v = np.asarray(values, dtype=float).ravel()
  m, s = mean_std(v)
  if v.size == 1:
    return f"{m:.{digits}g}"
  return f"{m:.{digits}g} ± {s:.{digits}g}"


def rows_of(index: Sequence, method: str) -> list[int]:
  """Positions of ``method``'s runs in a run index of ``(method, seed)`` pairs."""
  return [i for i, (m, _) in enumerate(index) if m == method]

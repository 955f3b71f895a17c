"""Trade-off fronts: which points buy the most immunization for a given utility cost.

A point is a trained extractor with a *cost* (its D_P loss above the unimmunized optimum,
lower is better) and a *gain* (its RIR, higher is better). These helpers are pure NumPy on
1-D arrays, so they work on any cloud of points (one method, one seed, or everything).
Points whose cost or gain is not finite (a diverged run) are never on a front and never
within a budget.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def _finite(cost, gain) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  cost, gain = np.asarray(cost, float), np.asarray(gain, float)
  if cost.ndim != 1 or cost.shape != gain.shape:
    raise ValueError(f"`cost` and `gain` must be 1-D of the same length; got shapes "
                     f"{cost.shape} and {gain.shape}.")
  return cost, gain, np.isfinite(cost) & np.isfinite(gain)


def non_dominated(cost, gain) -> np.ndarray:
  """Mask of the points no other point beats: none has cost ≤ and gain ≥, one of them strictly.

  Ties (identical points) are all kept.

  >>> non_dominated([1.0, 2.0, 3.0, 2.5], [10.0, 30.0, 20.0, 40.0]).tolist()
  [True, True, False, True]
  >>> non_dominated([1.0, float("nan"), 1.0], [1.0, 5.0, 1.0]).tolist()
  [True, False, True]
  """
  cost, gain, ok = _finite(cost, gain)
  keep = np.zeros(cost.shape, bool)
  idx = np.flatnonzero(ok)
  if idx.size == 0:
    return keep
  # Sort by cost ascending, then gain descending: a point is on the front iff its gain is
  # above the best gain of every point strictly before it in this order (or equal to it
  # as an exact duplicate of the point that set it).
  order = idx[np.lexsort((-gain[idx], cost[idx]))]
  best_gain, best_cost = -np.inf, np.nan
  for i in order:
    if gain[i] > best_gain:
      keep[i] = True
      best_gain, best_cost = gain[i], cost[i]
    elif gain[i] == best_gain and cost[i] == best_cost:
      keep[i] = True   # an exact duplicate of a front point
  return keep


def best_within(cost, gain, budget: float) -> float:
  """The largest gain among points whose cost is at most ``budget`` (nan: none is).

  >>> best_within([0.0005, 0.02, 0.5], [100.0, 5000.0, 1e6], 0.01)
  100.0
  >>> best_within([0.5], [1e6], 0.01)
  nan
  """
  cost, gain, ok = _finite(cost, gain)
  sel = ok & (cost <= budget)
  return float(gain[sel].max()) if sel.any() else float("nan")


class Spread(NamedTuple):
  """A summary over groups (seeds or pairs): mean, std, min, max, median, how many had one."""
  mean: float
  std: float
  lo: float
  hi: float
  n: int      # groups with a point within the budget
  groups: int
  median: float = float("nan")


def best_within_by_group(cost, gain, groups, budget: float) -> Spread:
  """:func:`best_within` in each group (a seed or a pair), summarized over the groups.

  Groups with no point within the budget count in ``groups`` but not in ``n`` and do not
  enter the mean.

  >>> s = best_within_by_group([0.0, 0.1, 0.0, 0.1], [2.0, 9.0, 4.0, 9.0], [0, 0, 1, 1], 0.05)
  >>> (s.mean, s.std, s.median, s.n, s.groups)
  (3.0, 1.0, 3.0, 2, 2)
  """
  cost, gain, _ = _finite(cost, gain)
  groups = np.asarray(groups)
  labels = list(dict.fromkeys(groups.tolist()))
  vals = np.array([best_within(cost[groups == g], gain[groups == g], budget) for g in labels])
  have = vals[np.isfinite(vals)]
  if have.size == 0:
    return Spread(float("nan"), float("nan"), float("nan"), float("nan"), 0, len(labels))
  return Spread(float(have.mean()), float(have.std()), float(have.min()), float(have.max()),
                int(have.size), len(labels), float(np.median(have)))


def front_curve(cost, gain) -> tuple[np.ndarray, np.ndarray]:
  """The non-dominated points sorted by cost: ``(cost, gain)``, gain increasing with cost.

  >>> c, g = front_curve([3.0, 1.0, 2.0], [5.0, 1.0, 9.0])
  >>> c.tolist(), g.tolist()
  ([1.0, 2.0], [1.0, 9.0])
  """
  cost, gain, _ = _finite(cost, gain)
  keep = non_dominated(cost, gain)
  order = np.argsort(cost[keep], kind="stable")
  return cost[keep][order], gain[keep][order]


def dominance(fronts: dict, budgets) -> list:
  """Which front reaches the highest gain at each budget: ``[(budget, name or None)]``.

  ``fronts`` maps a name to ``(cost, gain)`` arrays; ``None`` where no front has a point
  within the budget.

  >>> dominance({"a": ([0.0, 1.0], [1.0, 3.0]), "b": ([0.5], [2.0])}, [0.1, 0.6, 2.0])
  [(0.1, 'a'), (0.6, 'b'), (2.0, 'a')]
  """
  out = []
  for b in budgets:
    best = {k: best_within(c, g, b) for k, (c, g) in fronts.items()}
    best = {k: v for k, v in best.items() if np.isfinite(v)}
    out.append((b, max(best, key=best.get) if best else None))
  return out

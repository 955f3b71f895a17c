"""Tests of the verdict logic (immujax.evaluation) and the verdict-first summaries (issue 17)."""
import numpy as np
import pytest

from immujax import evaluation
from immujax.studies import attack_suite
from immujax.studies import tables


@pytest.mark.parametrize("values, bounds, verdict", [
    ([9.5, 9.7, 10.2], ["exact"] * 3, "slowed ×9.7 [9.5–10.2]"),
    ([2.0], ["exact"], "slowed ×2"),
    ([1.05, 1.0], ["exact"] * 2, "not slowed (×1.02)"),
    ([0.5, 0.4], ["exact"] * 2, "faster (×0.45) [0.4–0.5]"),
    ([21.0, 25.0], ["lower", "exact"], "slowed ≥ ×23 [21–25]"),
    ([1.0, 1.0], ["lower", "lower"], "≥ ×1 (θ at the cap)"),
    ([0.2], ["upper"], "≤ ×0.2 (θ = I at the cap)"),
    ([1.0, 1.0], ["both", "both"], "no verdict (both at the cap)"),
    ([3.0, 1.0], ["exact", "both"], "slowed ×3"),
])
def test_slowdown_verdict(values, bounds, verdict):
  assert evaluation.slowdown_verdict(values, bounds) == verdict


def test_definition_31():
  assert evaluation.definition_31(2.0, 0.5, 0.1833, 0.1833) == (True, True, True)
  assert evaluation.definition_31(0.9, 1.2, 0.2, 0.1833) == (False, False, False)
  assert evaluation.definition_31(2.0, 1.0, 0.1833 * (1 + 1e-9), 0.1833)[2]


def _report(labels, slow, *, attackers=("gd", "cg"), eps=(1e-2, 1e-4)):
  """A minimal evaluation report: slow-downs per label (the same for every cell)."""
  cells = lambda f: {a: {"D_H": {f"{e:.0e}": {l: {"value": f(l, a), "bound": "exact"}
                                               for l in labels} for e in eps}}
                     for a in attackers}
  return {"extractors": list(labels), "attackers": list(attackers), "eps": list(eps),
          "rir": {l: 10.0 for l in labels}, "ratio_h": {l: 5.0 for l in labels},
          "ratio_p": {l: 0.5 for l in labels},
          "dp_probe": {"identity": {"train_mse": 1.0},
                       "extractor": {l: {"train_mse": 1.0} for l in labels}},
          "slowdown": cells(lambda l, a: slow[l.split("/")[0]] if a == attackers[0] else 1.0),
          "slowdown_excess": cells(lambda l, a: 1.0)}


def test_method_summary_aggregates_over_seeds_and_tasks():
  labels = ["ours/0", "ours/1", "imma/0"]
  reps = [_report(labels, {"ours": 4.0, "imma": 1.0}), _report(labels, {"ours": 6.0,
                                                                        "imma": 1.0})]
  s = evaluation.method_summary(reps)
  assert list(s) == ["ours", "imma"] and s["ours"]["n"] == 4
  assert s["ours"]["definition_31"] == (4, 4, 4)
  assert s["ours"]["verdicts"] == {"gd": "slowed ×5 [4–6]", "cg": "not slowed (×1)"}
  rows = evaluation.verdict_rows(s, ["gd", "cg"], names=tables.NAMES)
  assert rows[0] == "| Ours (4) | 10 | 4/4 · 4/4 · 4/4 | slowed ×5 [4–6] | not slowed (×1) |"


def test_attack_suite_summary_fits_in_15_lines_for_two_datasets():
  methods = ("ours", "r_ill_only", "opt_kappa", "imma", "rotation")
  labels = [f"{m}/{s}" for m in methods for s in range(3)]
  slow = {m: 2.0 for m in methods}
  attackers = tuple(f"a{i}" for i in range(8))
  results = {"datasets": {name: {"reports": [_report(labels, slow, attackers=attackers)] * k}
                          for name, k in (("house", 1), ("mnist", 10))}}
  lines = attack_suite.verdict_summary(results)
  assert len(lines) + 1 <= 15       # + the title line of table.md
  assert lines[0].startswith("## Verdict") and "house · Ours (3)" in lines[4]
  assert "mnist · Random rotation (control) (30)" in lines[-1]
  assert np.all(["slowed ×2" in ln for ln in lines[4:]])

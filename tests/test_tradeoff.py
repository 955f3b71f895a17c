"""Trade-off fronts (issue 19): the non-dominated set, the exact rescaling of the balanced
weights, and experiments/tradeoff.py end to end (quick config, real house data): every
reported RIR recomputed from the saved θ, resume after a kill, refusal on changed data."""
import json
import shutil

import jax
import numpy as np
import pytest

from immujax import fronts
from immujax import immunize
from immujax import metrics
from immujax.studies import evaluate
from immujax.studies import tradeoff
from tests.binaries import CONFIGS
from tests.binaries import run_binary
from tests.binaries import run_ok

QUICK = f"--config={CONFIGS / 'tradeoff.py'}:quick"


def _brute_force(cost, gain):
  n = len(cost)
  return np.array([np.isfinite(cost[i]) and np.isfinite(gain[i]) and not any(
      cost[j] <= cost[i] and gain[j] >= gain[i] and (cost[j] < cost[i] or gain[j] > gain[i])
      for j in range(n) if np.isfinite(cost[j]) and np.isfinite(gain[j])) for i in range(n)])


def test_non_dominated_on_hand_made_points():
  # (cost, gain): a staircase, points under it, a tie, a duplicate, a NaN and an inf.
  pts = [(0.1, 5.0), (0.2, 50.0), (0.2, 40.0), (0.5, 40.0), (1.0, 500.0), (1.0, 500.0),
         (0.05, 1.0), (0.05, 0.5), (2.0, 400.0), (np.nan, 1e9), (0.3, np.inf), (3.0, 501.0)]
  cost, gain = (np.array(v) for v in zip(*pts))
  expected = [True, True, False, False, True, True, True, False, False, False, False, True]
  assert fronts.non_dominated(cost, gain).tolist() == expected
  rng = np.random.default_rng(0)
  for _ in range(20):   # against the definition on random clouds with ties
    c, g = rng.integers(0, 6, 30).astype(float), rng.integers(0, 6, 30).astype(float)
    np.testing.assert_array_equal(fronts.non_dominated(c, g), _brute_force(c, g))
  assert fronts.best_within(cost, gain, 0.2) == 50.0
  s = fronts.best_within_by_group(cost, gain, [0] * 6 + [1] * 6, 0.1)
  assert (s.mean, s.n, s.groups) == (3.0, 2, 2)   # groups' bests 5.0 and 1.0
  with pytest.raises(ValueError, match="same length"):
    fronts.non_dominated([1.0], [1.0, 2.0])


def test_scaled_balanced_weights_equal_rebalancing():
  rng = np.random.default_rng(1)
  x_p, x_h = rng.normal(size=(30, 6)), rng.normal(size=(30, 6)) @ np.diag(np.arange(1, 7))
  task = immunize.make_task(x_p, rng.normal(size=30), x_h, rng.normal(size=30))
  p0 = immunize.init_params(jax.random.key(0), 6)
  kw = dict(learning_rate=0.01, imma_steps=2, imma_inner_steps=1)
  balance = jax.jit(lambda s, h: immunize.balanced_weights(p0, task, step_scale=s,
                                                           harmful_scale=h, **kw))
  base = balance(0.2, 1.0)
  for step, harm in ((3.0, 1.0), (1.0, 0.05), (0.5, 7.0)):
    want = balance(0.2 * step, harm)
    got = tradeoff.scale_balanced(base, step, harm)
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-12, err_msg=k)


@pytest.mark.xdist_group("tradeoff_quick")
def test_quick_house_fronts_end_to_end_resume_and_refusal(tmp_path, house_dir):
  data = tmp_path / "data"
  data.mkdir()
  for name in ("D1.csv", "D2.csv"):
    shutil.copy(house_dir / name, data)
  w = tmp_path / "w"
  args = ["--data=house", f"--workdir={w}", f"--data_dir={data}", QUICK]
  # "Kill" after one chunk, then resume to the end.
  run_ok("tradeoff", [*args, "--max_chunks=1"])
  assert not (w / "front.json").exists()
  out = run_ok("tradeoff", args)
  assert "resuming from step 5 of 10" in out
  for name in ("front.json", "fronts.npz", "fronts.png", "table.md"):
    assert (w / name).stat().st_size > 0
  res = json.loads((w / "front.json").read_text())
  pts = res["points"]
  assert len(pts) == (3 + 2 + 2 + 2) * 2 and len(res["unimmunized"]) == 2
  assert {p["method"] for p in pts} == {"ours", "r_ill_only", "opt_kappa", "imma"}
  for key in ("strength", "seed", "rir", "ratio_h", "ratio_p", "dp_loss", "dp_loss_rel",
              "heldout_dp_loss", "success"):
    assert all(key in p for p in pts), key
  # Each reported RIR is relative_immunization_ratio of the saved θ with the saved K's.
  z = np.load(w / "fronts.npz")
  assert z["theta"].shape == (len(pts), 79, 79)
  rir = jax.jit(jax.vmap(lambda t, k_p, k_h: metrics.relative_immunization_ratio(
      t, k_p=k_p, k_h=k_h).rir, in_axes=(0, None, None)))(z["theta"], z["k_p"][0], z["k_h"][0])
  np.testing.assert_allclose(rir, [p["rir"] for p in pts], rtol=1e-8)
  # The fronts are the non-dominated points of each method; the table leads with a verdict.
  for m, idx in res["fronts"].items():
    mine = [i for i, p in enumerate(pts) if p["method"] == m]
    keep = fronts.non_dominated([pts[i]["dp_loss_rel"] for i in mine],
                                [pts[i]["rir"] for i in mine])
    assert idx == [mine[j] for j in np.flatnonzero(keep)]
  assert (w / "table.md").read_text().splitlines()[2] == "**Verdict.**"
  # Any point goes to the attackers (experiments.evaluate --extractor=w --point=...).
  thetas, labels, info = evaluate.load_extractor(w, point="front:ours")
  assert [int(l.split("#")[1]) for l in labels] == res["fronts"]["ours"] == info["points"]
  np.testing.assert_array_equal(thetas, z["theta"][res["fronts"]["ours"]])
  assert evaluate.load_extractor(w, point="0,3")[1][1].endswith("#3")
  with pytest.raises(ValueError, match="--point='99'"):
    evaluate.load_extractor(w, point="99")
  # Resumed = uninterrupted: a fresh run to the end gives the same θ bit for bit.
  w2 = tmp_path / "w2"
  run_ok("tradeoff", ["--data=house", f"--workdir={w2}", f"--data_dir={data}", QUICK])
  np.testing.assert_array_equal(np.load(w2 / "fronts.npz")["theta"], z["theta"])
  # Changed data: refused in one line, the workdir untouched.
  lines = (data / "D2.csv").read_bytes().splitlines(keepends=True)
  (data / "D2.csv").write_bytes(b"".join(lines[:-1]))
  before = sorted(p.relative_to(w) for p in w.rglob("*"))
  code, _, err = run_binary("tradeoff", args)
  assert code == 2 and len(err.strip().splitlines()) == 1, err
  assert "holds a run computed from other data: D2.csv changed (" in err
  assert sorted(p.relative_to(w) for p in w.rglob("*")) == before


def test_bad_flags_are_one_line_errors(tmp_path):
  code, _, err = run_binary("tradeoff", [f"--workdir={tmp_path / 'w'}", QUICK])
  assert code == 2 and "pass --data=house or --data=mnist" in err
  code, _, err = run_binary("tradeoff", ["--data=house", f"--workdir={tmp_path / 'w'}", QUICK,
                                         "--config.house_strengths.ours=0,1"])
  assert code == 2 and "strengths must be positive" in err
  code, out, _ = run_binary("tradeoff", ["--help"])
  assert code == 0 and "--workdir:" in out and "--move_aside:" in out and "--data:" in out
  from immujax.runner import cli  # pylint: disable=g-import-not-at-top
  for path in cli.field_paths(cli.load_config(str(CONFIGS / "tradeoff.py"))):
    line = next((ln for ln in out.splitlines() if ln.strip().startswith(f"--config.{path}=")),
                None)
    assert line is not None and "(no description)" not in line, path

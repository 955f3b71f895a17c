"""End-to-end tests of experiments/house_price.py (quick config, real data) incl. resume."""
import json
import os
import subprocess
import sys
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(workdir, house_dir, *extra):
  cmd = [sys.executable, "-m", "experiments.house_price", f"--workdir={workdir}",
         f"--data_dir={house_dir}",
         f"--config={ROOT / 'experiments/configs/house_price.py'}:quick", *extra]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  return out.stdout


def test_quick_run_writes_results_and_resume_after_kill_is_identical(tmp_path, house_dir):
  full = tmp_path / "full"
  stdout = _run(full, house_dir)
  assert "ETA" in stdout
  # A line before compilation; the first ETA is an upper bound (it includes compilation).
  assert stdout.index("compiling the first chunk") < stdout.index("20/40 steps")
  assert "ETA ≤" in stdout
  for name in ("results.json", "table.md", "norm_ratio.png"):
    assert (full / name).stat().st_size > 0
  res = json.loads((full / "results.json").read_text())
  assert set(res["methods"]) == {"ours", "r_ill_only", "imma", "opt_kappa"}
  for m in res["methods"].values():
    assert len(m["rir"]) == len(m["ratio_h"]) == len(m["ratio_p"]) == len(m["dp_loss"]) == 2
  assert res["kappa"] == "pinv" and res["rir_upper_bound"] > 1
  # Ours immunizes even on the quick schedule: (i) up, (ii) down.
  ours = res["methods"]["ours"]
  assert min(ours["ratio_h"]) > 1 and max(ours["ratio_p"]) < 1
  assert "Ours" in (full / "table.md").read_text()

  # "Kill" after one chunk (nothing but checkpoints written), then resume.
  part = tmp_path / "part"
  assert "resuming" not in _run(part, house_dir, "--max_chunks=1")   # a fresh start
  assert not (part / "results.json").exists()
  stdout = _run(part, house_dir)
  assert "resuming from step 20 of 40" in stdout
  resumed = json.loads((part / "results.json").read_text())
  for m in res["methods"]:
    for key in ("rir", "ratio_h", "ratio_p", "dp_loss"):
      np.testing.assert_array_equal(resumed["methods"][m][key], res["methods"][m][key])


def test_resume_with_a_different_config_is_refused(tmp_path):
  from experiments import common
  import pytest
  common.claim_workdir(tmp_path, {"steps": 10})
  (tmp_path / "checkpoints" / "10").mkdir(parents=True)   # a saved step
  common.claim_workdir(tmp_path, {"steps": 10})  # same config: fine
  with pytest.raises(ValueError, match="different config.*steps"):
    common.claim_workdir(tmp_path, {"steps": 20})
  common.forget_workdirs()


def test_a_run_that_saved_nothing_does_not_block_its_workdir(tmp_path):
  """Issue 13: config.json and an empty checkpoints/ of a failed run are not a 'run'."""
  from experiments import common
  common.claim_workdir(tmp_path, {"steps": 10})
  (tmp_path / "checkpoints").mkdir()
  common.claim_workdir(tmp_path, {"steps": 20})   # nothing was saved: a new config is fine
  assert '"steps": 20' in (tmp_path / "config.json").read_text()
  common.forget_workdirs()


def test_release_restores_the_workdir_unless_a_checkpoint_was_saved(tmp_path):
  from experiments import common
  fresh = tmp_path / "a" / "b"
  common.claim_workdir(fresh, {"steps": 10})
  (fresh / "checkpoints").mkdir()
  common.release_workdirs()
  assert not (tmp_path / "a").exists()          # created by the claim: removed entirely
  old = tmp_path / "old"
  old.mkdir()
  (old / "notes.txt").write_text("mine")
  (old / "config.json").write_text('{"config": {"steps": 5}}')
  common.claim_workdir(old, {"steps": 10})
  (old / "checkpoints").mkdir()
  common.release_workdirs()
  assert sorted(p.name for p in old.iterdir()) == ["config.json", "notes.txt"]
  assert (old / "config.json").read_text() == '{"config": {"steps": 5}}'
  common.claim_workdir(old, {"steps": 10})
  (old / "checkpoints" / "10").mkdir(parents=True)  # a checkpoint was saved: keep everything
  common.release_workdirs()
  assert '"steps": 10' in (old / "config.json").read_text()
  assert (old / "checkpoints" / "10").is_dir()


def test_outputs_follow_the_umask_and_one_seed_has_no_plus_minus(tmp_path):
  from experiments import common
  old = os.umask(0o027)
  try:
    common.write_text(tmp_path / "t.md", "x")
  finally:
    os.umask(old)
  assert (tmp_path / "t.md").stat().st_mode & 0o777 == 0o640
  assert common.fmt_pm([3.0]) == "3"
  assert common.fmt_pm([1.0, 3.0]) == "2 ± 1.414"

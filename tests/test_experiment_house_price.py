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
  _run(part, house_dir, "--max_chunks=1")
  assert not (part / "results.json").exists()
  _run(part, house_dir)
  resumed = json.loads((part / "results.json").read_text())
  for m in res["methods"]:
    for key in ("rir", "ratio_h", "ratio_p", "dp_loss"):
      np.testing.assert_array_equal(resumed["methods"][m][key], res["methods"][m][key])


def test_resume_with_a_different_config_is_refused(tmp_path):
  from experiments import common
  common.claim_workdir(tmp_path, {"steps": 10})
  (tmp_path / "checkpoints").mkdir()
  common.claim_workdir(tmp_path, {"steps": 10})  # same config: fine
  import pytest
  with pytest.raises(ValueError, match="different config.*steps"):
    common.claim_workdir(tmp_path, {"steps": 20})

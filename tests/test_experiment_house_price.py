"""End-to-end tests of experiments/house_price.py (quick config, real data): resume, and a
rerun on changed data (issue 16's first case: refused, then moved aside)."""
import json
import shutil

import numpy as np
import pytest

from tests.binaries import CONFIGS
from tests.binaries import house_quick
from tests.binaries import run_binary
from tests.binaries import run_ok

QUICK = f"--config={CONFIGS / 'house_price.py'}:quick"


@pytest.mark.xdist_group("house_quick")
def test_quick_run_writes_results_and_resume_after_kill_is_identical(tmp_path, house_dir):
  full = house_quick(str(house_dir))
  stdout = (full.parent / "house.stdout").read_text()
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
  # The paper's files, recognized: no note; the fingerprint covers D1 and D2.
  data = res["provenance"]["data"]
  assert [f["name"] for f in data["files"]] == ["D1.csv", "D2.csv"] and data["notes"] == []

  # "Kill" after one chunk (nothing but checkpoints written), then resume.
  part = tmp_path / "part"
  args = [f"--workdir={part}", f"--data_dir={house_dir}", QUICK]
  assert "resuming" not in run_ok("house_price", [*args, "--max_chunks=1"])  # a fresh start
  assert not (part / "results.json").exists()
  stdout = run_ok("house_price", args)
  assert "resuming from step 20 of 40" in stdout and "WARNING" not in stdout
  resumed = json.loads((part / "results.json").read_text())
  for m in res["methods"]:
    for key in ("rir", "ratio_h", "ratio_p", "dp_loss"):
      np.testing.assert_array_equal(resumed["methods"][m][key], res["methods"][m][key])


@pytest.mark.xdist_group("house_quick")
def test_changed_data_is_noted_refused_on_resume_and_moved_aside(tmp_path, house_dir):
  data = tmp_path / "data"
  data.mkdir()
  lines = (house_dir / "D1.csv").read_bytes().splitlines(keepends=True)
  (data / "D1.csv").write_bytes(b"".join(lines[:-1]))      # one row fewer
  shutil.copy(house_dir / "D2.csv", data)
  w = tmp_path / "w"
  args = [f"--workdir={w}", f"--data_dir={data}", QUICK]
  out = run_ok("house_price", [*args, "--max_chunks=1"])
  note = ("D1.csv differs from the paper's split (the authors' D1.csv): 1 row fewer "
          "(308, not 309)")
  assert f"[house] warning: {note}" in out
  assert json.loads((w / "config.json").read_text())["provenance"]["data"]["notes"] == [note]
  # The user fixes the file and reruns the same command: refused, the workdir untouched.
  shutil.copy(house_dir / "D1.csv", data)
  before = sorted(p.relative_to(w) for p in w.rglob("*"))
  code, _, err = run_binary("house_price", args)
  assert code == 2 and len(err.strip().splitlines()) == 1, err
  assert "holds a run computed from other data: D1.csv changed (" in err
  assert "use a new --workdir, or pass --move_aside to rename the old run to" in err
  assert sorted(p.relative_to(w) for p in w.rglob("*")) == before
  # The way out: the old run is moved aside (kept), the corrected run starts afresh.
  out = run_ok("house_price", [*args, "--move_aside"])
  assert f"moved the old run aside to {tmp_path / 'w.old-1'}" in out and "resuming" not in out
  assert (tmp_path / "w.old-1" / "checkpoints" / "20").is_dir()
  res = json.loads((w / "results.json").read_text())
  assert res["provenance"]["data"]["notes"] == []
  assert "warning" not in (w / "table.md").read_text()

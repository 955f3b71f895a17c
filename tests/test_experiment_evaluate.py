"""Tests of experiments/evaluate.py (immujax/studies/evaluate.py): the report for any
extractor, verdict first, its plot, and bad inputs."""
import json
import pathlib

import numpy as np
import pytest

from immujax.studies import evaluate
from tests.binaries import run_binary

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _npz(path, *, d=5, n=60, classification=False, **override):
  rng = np.random.default_rng(0)
  arrays = {}
  for s in ("p", "h"):
    x = rng.normal(size=(n, d)) * np.linspace(1.0, 0.1, d)
    x_t = rng.normal(size=(30, d)) * np.linspace(1.0, 0.1, d)
    w = rng.normal(size=d)
    f = (lambda v: (v > 0).astype(float)) if classification else (lambda v: v)
    arrays.update({f"x_{s}": x, f"y_{s}": f(x @ w), f"x_{s}_test": x_t, f"y_{s}_test": f(x_t @ w)})
  arrays.update(override)
  arrays = {k: v for k, v in arrays.items() if v is not None}
  np.savez(path, **arrays)
  return path


def _run(*args):
  return run_binary("evaluate", args)   # in-process: (status, stdout, stderr)


def test_report_on_an_npy_extractor(tmp_path):
  data = _npz(tmp_path / "d.npz", classification=True)
  theta = np.diag([1.0, 1.0, 1.0, 0.3, 0.1])
  np.save(tmp_path / "theta.npy", np.stack([theta, theta * 2.0, np.eye(5)]))
  code, _, err = _run(f"--extractor={tmp_path / 'theta.npy'}", f"--data={data}",
                      f"--workdir={tmp_path / 'out'}",
                      f"--config={ROOT / 'experiments/configs/attack_suite.py'}:quick")
  assert code == 0, err[-3000:]
  rep = json.loads((tmp_path / "out" / "report.json").read_text())
  for key in ("rir", "ratio_h", "ratio_p", "rir_limit", "null_space_leak", "slowdown",
              "test_accuracy"):
    assert key in rep
  assert set(rep["slowdown"]) == {"gd_line_search", "cg", "closed_form"}
  assert set(rep["slowdown"]["cg"]) == {"D_H", "D_P"}
  assert set(rep["slowdown"]["cg"]["D_H"]) == {"1e-02", "1e-04"}
  acc = rep["test_accuracy"]["D_H"]["gd_line_search"]
  assert acc["metric"] == "accuracy" and set(acc) >= {"identity", "extractor", "steps"}
  assert len(acc["extractor"]["theta/0"]) == len(acc["steps"])
  # θ shrinks the small directions: κ grows on both sides, so GD slows down on D_H.
  assert rep["slowdown"]["gd_line_search"]["D_H"]["1e-04"]["theta/0"]["value"] > 1
  text = (tmp_path / "out" / "report.md").read_text()
  assert text.startswith("# Evaluation of")
  # Issue 17: the verdict first (≤ 15 lines), the detail after.
  head = text.split("## Detail")[0].strip().splitlines()
  assert len(head) <= 15 and head[2].startswith("## Verdict")
  row = next(r for r in head if r.startswith("| theta (3) |"))
  assert "| slowed " in row and "· 3/3 |" in row    # (c) kept: every θ here is invertible
  assert rep["provenance"]["data"]["files"][0]["name"] == "d.npz"
  # report.png: every extractor, grouped by method (here one method, 3 extractors).
  _check_report_png(rep, tmp_path / "out" / "report.png")


def _check_report_png(rep, path):
  """The plot groups the extractors per method and keeps the norm-ratio axis sane."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from unittest import mock
  figs = []
  real = plt.subplots
  with mock.patch.object(plt, "subplots", side_effect=lambda *a, **k: figs.append(
      real(*a, **k)) or figs[-1]), mock.patch.object(plt, "close"):
    evaluate.plot_report(rep, path)
  fig, axes = figs[0]
  ax = axes[0, 0]
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ["θ = I", "theta (3)"]
  assert ax.get_ylim()[0] >= 1e-3 * min(rep["eps"]) / 2 > 0   # no 1e-315
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("case, match", [
    ("shape", "--extractor has shape (4, 4) but the data have D_in = 5"),
    ("nan_theta", "--extractor: extractor(s) [0] contain NaN/inf"),
    ("nan_data", "array 'x_h' contains 1 NaN/inf"),
    ("missing", "has no array(s) ['y_p']"),
    ("one_class", "held-out 'y_h_test' has only class 1"),
])
def test_bad_inputs_raise_one_clear_error(tmp_path, case, match):
  theta = np.eye(5)
  kw = {}
  if case == "shape":
    theta = np.eye(4)
  elif case == "nan_theta":
    theta[0, 0] = np.nan
  elif case == "nan_data":
    x = np.random.default_rng(1).normal(size=(60, 5))
    x[3, 2] = np.inf
    kw["x_h"] = x
  elif case == "missing":
    kw["y_p"] = None
  elif case == "one_class":
    kw["y_h_test"] = np.ones(30)
  data = _npz(tmp_path / "d.npz", classification=True, **kw)
  np.save(tmp_path / "t.npy", theta)
  with pytest.raises(ValueError) as e:
    evaluate.load_inputs(str(tmp_path / "t.npy"), str(data))
  assert match in str(e.value)


def test_bad_input_from_the_command_line_is_one_line_and_writes_nothing(tmp_path):
  data = _npz(tmp_path / "d.npz")
  np.save(tmp_path / "t.npy", np.eye(3))
  code, _, err = _run(f"--extractor={tmp_path / 't.npy'}", f"--data={data}",
                      f"--workdir={tmp_path / 'out'}")
  assert code == 2
  err = err.strip().splitlines()
  assert len(err) == 1 and "--extractor has shape (3, 3)" in err[0] and "(5, D_hid)" in err[0]
  assert not (tmp_path / "out").exists()


def test_unknown_extractor_path_names_the_flag(tmp_path):
  with pytest.raises(FileNotFoundError, match="--extractor="):
    evaluate.load_inputs(str(tmp_path / "nope"), str(_npz(tmp_path / "d.npz")))
  (tmp_path / "t.txt").write_text("x")
  with pytest.raises(ValueError, match="not an .npy"):
    evaluate.load_inputs(str(tmp_path / "t.txt"), str(_npz(tmp_path / "d.npz")))
  np.save(tmp_path / "t.npy", np.eye(5))
  with pytest.raises(FileNotFoundError, match="--data="):
    evaluate.load_inputs(str(tmp_path / "t.npy"), str(tmp_path / "missing.npz"))

"""Tests for immujax/evaluation.py on tiny synthetic data."""
import numpy as np
import pytest

from immujax import evaluation


def _two_point(kappa0=10.0, factor=10.0, n=40, d=6, seed=0):
  """X = U diag(s), s ∈ {1, 1/√κ0}: κ(K) = κ0 on θ = I, and θ = diag(1, 1/√factor) on the
  small half multiplies κ by ``factor`` exactly."""
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.normal(size=(n, d)))
  half = d // 2
  s = np.r_[np.ones(half), np.full(d - half, kappa0 ** -0.5)]
  x = u * s
  y = x @ np.ones(d)
  x_t = rng.normal(size=(30, d)) * s
  stretch = np.diag(np.r_[np.ones(half), np.full(d - half, factor ** -0.5)])
  return x, y, x_t, x_t @ np.ones(d), stretch


def _data(**kw):
  x, y, x_t, y_t, _ = _two_point(**kw)
  return evaluation.validate_data(dict(x_p=x, y_p=y, x_h=x, y_h=y, x_p_test=x_t, y_p_test=y_t,
                                       x_h_test=x_t, y_h_test=y_t))


_KW = dict(attackers=("gd_constant", "cg", "closed_form"),
           test_attackers=("gd_constant", "closed_form"), eps=(1e-2, 1e-4),
           points_per_decade=4)


def test_evaluate_measures_the_kappa_slowdown_and_held_out_scores():
  x, y, x_t, y_t, stretch = _two_point()
  data = _data()
  rep = evaluation.evaluate(data, np.stack([stretch, 3 * stretch]), ["a", "b"],
                            caps={"default": 10**4}, **_KW)
  for key in ("rir", "ratio_h", "ratio_p", "rir_limit", "null_space_leak", "slowdown",
              "test_accuracy"):
    assert key in rep
  # GD with 2/(L+μ) on a two-point spectrum: 23 steps to 1e-4 at κ = 10, 231 at κ = 100.
  cell = rep["slowdown"]["gd_constant"]["D_H"]["1e-04"]
  assert cell["a"]["identity_steps"] == 23 and cell["a"]["steps"] == 231
  assert cell["a"]["bound"] == "exact" and cell["a"]["value"] == pytest.approx(231 / 23)
  assert cell["b"]["steps"] == 231                        # 3θ: same κ, same steps
  for name in ("cg", "closed_form"):                      # κ-free attackers: no slow-down
    assert rep["slowdown"][name]["D_H"]["1e-04"]["a"]["value"] == 1.0
  np.testing.assert_allclose(rep["ratio_h"]["a"], 10.0, rtol=1e-8)
  assert rep["rir"]["a"] == pytest.approx(1.0)            # same data on both sides
  # Held-out curves: on a recording grid that ends at the cap, for θ = I and each θ.
  curve = rep["test_accuracy"]["D_H"]["gd_constant"]
  assert curve["metric"] == "r2" and curve["steps"][0] == 0 and curve["steps"][-1] == 10**4
  # (the run stops at the smallest ε, so the final probe is 1e-4 from w* in norm ratio)
  assert curve["identity"][0] < 0.5 and curve["identity"][-1] == pytest.approx(1.0, abs=1e-3)
  ft = rep["fine_tuning"]["D_H"]["gd_constant"]["0.99"]
  assert ft["extractor"]["a"]["steps"] > ft["identity_steps"] > 0
  # Def. 3.1(c): an invertible θ keeps the closed-form probe's predictions, hence its score.
  assert rep["dp_probe"]["extractor"]["a"]["test_score"] == pytest.approx(
      rep["dp_probe"]["identity"]["test_score"], abs=1e-9)
  text = evaluation.report_markdown(rep)
  assert "n/a" not in text and "| gd_constant · a | κ | 1e+04 | 9." in text


def test_a_run_at_the_cap_is_a_bound_with_the_cap():
  _, _, _, _, stretch = _two_point()
  rep = evaluation.evaluate(_data(), stretch, caps={"default": 100}, **_KW)
  cell = rep["slowdown"]["gd_constant"]["D_H"]["1e-04"]["theta"]
  assert cell["bound"] == "lower" and cell["steps"] == 101 and cell["cap"] == 100
  assert "≥ 4.39 (cap 1e+02)" in evaluation.report_markdown(rep)


def test_slowdown_bounds():
  v, b = evaluation.slowdown([10, 101, 5, 101], [5, 5, 101, 101], cap_imm=100)
  np.testing.assert_allclose(v, [2.0, 101 / 5, 5 / 101, 1.0])
  assert b == ["exact", "lower", "upper", "both"]
  assert evaluation.fmt_slowdown([1.0], ["both"], 100) == "both > 1e+02 steps"
  assert evaluation.fmt_slowdown([2.0, 4.0], ["exact", "exact"], 100).startswith("3 ± 1.4")


def test_validate_data_names_the_bad_array_and_the_fix():
  x, y, x_t, y_t, _ = _two_point()
  good = dict(x_p=x, y_p=y, x_h=x, y_h=y)
  with pytest.raises(ValueError, match=r"no array\(s\) \['y_h'\].*np.savez"):
    evaluation.validate_data({k: v for k, v in good.items() if k != "y_h"})
  bad = dict(good, x_h=np.where(np.arange(x.size).reshape(x.shape) == 3, np.nan, x))
  with pytest.raises(ValueError, match="'x_h' contains 1 NaN/inf"):
    evaluation.validate_data(bad)
  with pytest.raises(ValueError, match="'x_p_test' but not 'y_p_test'"):
    evaluation.validate_data(dict(good, x_p_test=x_t))
  with pytest.raises(ValueError, match="'y_p' has 39"):
    evaluation.validate_data(dict(good, y_p=y[:-1]))
  labels = (y > 0).astype(float)
  cls = dict(x_p=x, y_p=labels, x_h=x, y_h=labels, x_h_test=x_t, y_h_test=np.ones(len(x_t)))
  with pytest.raises(ValueError, match="'y_h_test' has only class 1.*both classes"):
    evaluation.validate_data(cls)
  with pytest.raises(ValueError, match="R² is undefined"):
    evaluation.validate_data(dict(good, x_h_test=x_t, y_h_test=np.zeros(len(x_t))))
  assert evaluation.validate_data(dict(cls, y_h_test=(y_t > 0) * 1.0)).kind == "classification"


def test_validate_extractors_checks_shape_and_finiteness():
  with pytest.raises(ValueError, match=r"shape \(5, 3\) but the data have D_in = 6.*\(6, D_hid\)"):
    evaluation.validate_extractors(np.ones((5, 3)), 6)
  with pytest.raises(ValueError, match=r"extractor\(s\) \[1\] contain NaN/inf"):
    evaluation.validate_extractors(np.stack([np.eye(2), np.full((2, 2), np.inf)]), 2)
  assert evaluation.validate_extractors(np.eye(3)[:, :2], 3).shape == (1, 3, 2)


def test_non_square_extractor_is_compared_with_the_identity():
  x, y, x_t, y_t, _ = _two_point()
  theta = np.eye(6)[:, :4] * 2.0          # keeps the large half and one small direction
  rep = evaluation.evaluate(_data(), theta, caps={"default": 2000},
                            attackers=("cg",), test_attackers=("closed_form",), eps=(1e-4,))
  assert rep["slowdown"]["cg"]["D_H"]["1e-04"]["theta"]["bound"] == "exact"
  assert rep["dp_probe"]["extractor"]["theta"]["test_score"] < 1.0   # drops 2 directions


def test_one_vs_rest_is_balanced_and_excludes_the_other_digit():
  labels = np.repeat(np.arange(10), 5)
  images = labels[:, None] * np.ones((1, 3))
  x, y = evaluation.one_vs_rest(images, labels, 3, 8)
  assert y.sum() == 5 and len(y) == 10
  assert set(x[y == 0][:, 0]) <= set(range(10)) - {3, 8}
  assert set(x[y == 1][:, 0]) == {3}


def test_grids_and_steps_to_score():
  assert evaluation.record_grid(1000, 1).tolist() == [0, 1, 10, 100, 1000]
  s = evaluation.steps_to_score(np.array([[0.1, 0.5, 0.9], [0.1, 0.2, 0.3]]),
                                np.array([0, 10, 100]), np.array([0.5, 0.5]))
  assert s.tolist() == [10, 101]


def test_fine_tuning_targets_the_identitys_best_score_and_says_never():
  grid = np.array([0, 1, 10, 100])
  s_id = np.array([0.0, 0.9, 1.0, 0.5])           # overfits after step 10: best 1.0
  s_ext = [np.array([0.0, 0.1, 0.95, 0.99]),       # reaches 0.9 at step 10 and 0.99 at 100
           np.array([0.0, 0.1, 0.5, 0.6])]         # converged below the target
  ft = evaluation.fine_tuning(s_id, s_ext, ["a", "b"], grid, (0.9, 0.99),
                              converged=[True, True])
  assert ft["0.9"]["target"] == 0.9 and ft["0.9"]["identity_steps"] == 1
  assert ft["0.9"]["extractor"]["a"]["value"] == 10.0
  assert ft["0.99"]["extractor"]["a"]["value"] == 10.0     # 100 / 10
  assert ft["0.9"]["extractor"]["b"]["bound"] == "never"
  ft = evaluation.fine_tuning(s_id, s_ext, ["a", "b"], grid, (0.9,), converged=[False, False])
  assert ft["0.9"]["extractor"]["b"]["bound"] == "lower"   # still running at the cap
  ft = evaluation.fine_tuning(-np.arange(4.0), s_ext, ["a", "b"], grid, (0.9,))
  assert ft["0.9"]["extractor"]["a"]["bound"] == "no_gain"
  assert evaluation.fmt_slowdown([2.0, np.inf], ["exact", "never"], 10) == "2; never for 1/2"

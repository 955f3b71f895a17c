"""Smoke test of experiments/deep_nets.py: the `quick` config end to end, and the paper path."""
import json

import pytest

from experiments import deep_nets
from experiments.configs import deep_nets as configs


def test_quick_run_writes_all_outputs(tmp_path):
  cfg = configs.get_config("quick")
  out = deep_nets.run(cfg, tmp_path)
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["stand_in"] is True
  assert set(results["methods"]) == {"ours", "r_ill_only", "opt_kappa", "imma"}
  for r in results["methods"].values():
    for key in ("ratio_h", "ratio_p", "rir_theta0", "dp_accuracy"):
      assert len(r[key]) == cfg.immunize.seeds
  assert 0.0 <= results["theta0_dp_accuracy"] <= 100.0
  table = (tmp_path / "table.md").read_text()
  assert "Stand-in" in table and "Ours" in table and "different setting" in table
  assert (tmp_path / "finetune_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert out["stand_in"] is True
  # No temporary files are left behind by the atomic writes.
  assert not list(tmp_path.glob(".*.tmp"))


def test_paper_scale_config_without_data_fails_clearly(tmp_path):
  cfg = configs.get_config("resnet18_cars")
  assert cfg.immunize.batch_size == 64 and cfg.immunize.lr == 1e-5
  assert cfg.methods.ours.lambda_p == 5e-5 and cfg.methods.ours.lambda_h == 2e6
  with pytest.raises(ValueError, match="--imagenet_dir, --harmful_dir, --weights"):
    deep_nets.run(cfg, tmp_path)
  with pytest.raises(ValueError, match="not a directory"):
    deep_nets.run(cfg, tmp_path, imagenet_dir=str(tmp_path / "nope"),
                  harmful_dir=str(tmp_path), weights=str(tmp_path / "w.safetensors"))


def test_unknown_config_name():
  with pytest.raises(ValueError, match="stand_in"):
    configs.get_config("resnet50")

"""Smoke test of experiments/deep_nets.py: the `quick` config end to end, and the paper path."""
import json

import numpy as np
import pytest

from experiments.configs import deep_nets as configs
from immujax import deep
from immujax.studies import deep_nets as study
from tests.binaries import run_binary


class deep_nets:  # pylint: disable=invalid-name
  """The binary's path: validate the config, then the study."""

  @staticmethod
  def run(cfg, workdir, **kwargs):
    configs.validate(cfg)
    return study.run(cfg, workdir, **kwargs)


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
  assert (tmp_path / "attack_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert out["stand_in"] is True
  # Three attackers on θ0 and every method: per-seed curves over epochs 0..E, RFD, final acc.
  attacks = results["attacks"]
  assert set(attacks) == {"linear_probe", "full", "lora"}
  n_train = 5 * cfg.data.max_train_per_digit   # the sample has ≥ 50 images per digit
  for name, a in attacks.items():
    epochs = cfg.attacks[name].epochs
    per_epoch = n_train // cfg.attacks[name].batch_size
    assert a["steps"] == [per_epoch * e for e in range(epochs + 1)]
    assert set(a["curves"]) == {"theta0", "ours", "r_ill_only", "opt_kappa", "imma"}
    for curves in a["curves"].values():
      assert np.asarray(curves).shape == (cfg.immunize.seeds, epochs + 1)
      assert np.all((np.asarray(curves) >= 0) & (np.asarray(curves) <= 100))
      # Step 0: every model has the same zero head, so the same (chance) accuracy.
      np.testing.assert_array_equal(np.asarray(curves)[:, 0],
                                    np.asarray(a["curves"]["theta0"])[:, 0])
    assert set(a["rfd"]) == {"ours", "r_ill_only", "opt_kappa", "imma"}
    for m, rfd in a["rfd"].items():
      expected = deep.relative_finetuning_difficulty(
          np.asarray(a["curves"]["theta0"])[:, 1:], np.asarray(a["curves"][m])[:, 1:])
      np.testing.assert_allclose(rfd, expected, rtol=1e-12)
  assert results["finetune_curves"] == attacks["linear_probe"]["curves"]
  assert results["provenance"]["data"]["files"][0]["name"] == "mnist_5k.csv.gz"
  assert "RFD" in table and "LoRA" in table and "Full fine-tuning" in table
  # No temporary files are left behind by the atomic writes.
  assert not list(tmp_path.glob(".*.tmp"))


def test_paper_scale_config_without_data_fails_clearly(tmp_path):
  cfg = configs.get_config("resnet18_cars")
  assert cfg.immunize.batch_size == 64 and cfg.immunize.lr == 1e-5
  assert cfg.methods.ours.lambda_p == 5e-5 and cfg.methods.ours.lambda_h == 2e6
  with pytest.raises(ValueError, match="--imagenet_dir, --harmful_dir, --weights"):
    deep_nets.run(cfg, tmp_path)
  with pytest.raises(NotADirectoryError, match="not a directory"):
    deep_nets.run(cfg, tmp_path, imagenet_dir=str(tmp_path / "nope"),
                  harmful_dir=str(tmp_path), weights=str(tmp_path / "w.safetensors"))


def test_unknown_config_name():
  with pytest.raises(ValueError, match="stand_in"):
    configs.get_config("resnet50")


def test_bad_attack_config_fails_before_touching_the_workdir(tmp_path):
  cfg = configs.get_config("quick")
  cfg.attacks.lora.rank = 0
  with pytest.raises(ValueError, match="attacks.lora.rank"):
    deep_nets.run(cfg, tmp_path / "w")
  cfg = configs.get_config("resnet18_cars")
  cfg.attacks.run = ("linear_probe", "full")
  with pytest.raises(ValueError, match="linear probing only"):
    deep_nets.run(cfg, tmp_path / "w")
  assert not (tmp_path / "w").exists()


def test_binary_reports_a_bad_flag_in_one_line(tmp_path):
  code, _, err = run_binary("deep_nets", [
      "--config=experiments/configs/deep_nets.py:quick", "--config.attacks.full.lr=-1",
      f"--workdir={tmp_path / 'w'}"])
  assert code == 2, err
  assert err.strip().splitlines()[-1].startswith("error: --config.attacks.full.lr=")
  assert len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "w").exists()

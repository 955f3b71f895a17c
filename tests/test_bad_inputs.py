"""Issue 13: every bad input gives a named, one-line error and changes nothing (table-driven).

Three tables:

* ``BINARY_CASES`` run the binaries as subprocesses on tiny configs. Each case asserts exit
  status 2, a one-line ``error: ...`` on stderr naming the flag / field / file, no traceback,
  and an untouched workdir: absent stays absent, and a pre-existing workdir keeps exactly its
  listing and bytes. All cases fail before any compilation; they run two at a time.
* ``LOADER_CASES``: corrupt, missing and wrong-type data files → the exception type and a
  message naming the file (and the row/column for tables).
* ``FUNCTION_CASES``: public library functions called wrongly → the exception type and a
  message naming the argument; plus the float64 guard, checked in a subprocess with x64 off.
"""
import concurrent.futures
import csv
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

from tests.conftest import data_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOUSE = data_dir() / "house_price"
HAVE_HOUSE = (HOUSE / "D1.csv").is_file()
HOUSE_CFG = f"--config={ROOT / 'experiments/configs/house_price.py'}:quick"
MNIST_CFG = f"--config={ROOT / 'experiments/configs/mnist_pairs.py'}:quick"


# ------------------------------------------------------------------------------- fixtures


def _corrupt_d1(d: pathlib.Path, column="LotFrontage", row=5, value="abc") -> pathlib.Path:
  d.mkdir(parents=True, exist_ok=True)
  for name in ("D1.csv", "D2.csv"):
    shutil.copy(HOUSE / name, d / name)
  with open(d / "D1.csv", newline="") as f:
    rows = list(csv.reader(f))
  rows[row][rows[0].index(column)] = value
  with open(d / "D1.csv", "w", newline="") as f:
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

H, M = "experiments.house_price", "experiments.mnist_pairs"

# (id, module, args, message regex, workdir setup, needs real house data)
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
    ("house_unknown_field", H, ["--config.nope=1"],
     r"flag --config\.nope=1: the config has no field 'nope'", None, False),
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
    ("house_junk_in_numeric_column", H, ["--data_dir={tmp}/corrupt"],
     r"D1\.csv: row 5 \(line 6, Id 30\), column 'LotFrontage': 'abc' is not a number",
     None, True),
    ("house_n_train_too_large", H, ["--data_dir={house}", "--config.n_train=400"],
     r"n_train=400 exceeds the 309 rows of D1", None, True),
    ("house_other_run_in_workdir", H, ["--data_dir={house}"],
     r"--workdir .* holds a run with a different config", "other_run", True),
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


@pytest.fixture(scope="module")
def binary_results(tmp_path_factory):
  """Runs every binary case (two at a time) once; returns {id: (proc, before, after, wd)}."""
  tmp = tmp_path_factory.mktemp("bad_inputs")
  (tmp / "empty").mkdir()
  if HAVE_HOUSE:
    _corrupt_d1(tmp / "corrupt")
  _idx_dir(tmp / "idx_magic", corrupt="magic")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)

  def one(case):
    cid, module, args, _, setup, needs_house = case
    if needs_house and not HAVE_HOUSE:
      return cid, None
    workdir = tmp / "work" / cid
    _setup(setup, workdir)
    before = _snapshot(workdir)
    cfg = HOUSE_CFG if module == H else MNIST_CFG
    argv = [a.format(house=HOUSE, tmp=tmp) for a in args]
    if not any(a.startswith("--config=") for a in argv):
      argv = [cfg, *argv]
    if module == H and not any(a.startswith("--data_dir") for a in argv):
      argv.append(f"--data_dir={HOUSE if HAVE_HOUSE else tmp / 'empty'}")
    cmd = [sys.executable, "-m", module, f"--workdir={workdir}", *argv]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    return cid, (proc, before, _snapshot(workdir), workdir)

  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    return dict(pool.map(one, BINARY_CASES))


@pytest.mark.parametrize("case", BINARY_CASES, ids=[c[0] for c in BINARY_CASES])
def test_binary_rejects_bad_input_in_one_line_and_leaves_workdir(binary_results, case):
  cid, _, _, message, setup, _ = case
  result = binary_results[cid]
  if result is None:
    pytest.skip(f"real house-price data not found at {HOUSE}; set IMMUJAX_DATA_DIR")
  proc, before, after, workdir = result
  err = proc.stderr.strip()
  assert proc.returncode == 2, (proc.returncode, proc.stdout[-1500:], err[-3000:])
  assert "Traceback" not in proc.stderr, err
  lines = [ln for ln in err.splitlines() if ln.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert re.search(message, lines[0]), (message, lines[0])
  assert after == before, f"workdir {workdir} changed ({setup=})"
  if setup is None:
    assert not workdir.exists()


def test_verbose_shows_the_traceback(tmp_path):
  cmd = [sys.executable, "-m", H, f"--workdir={tmp_path / 'w'}", HOUSE_CFG,
         f"--data_dir={tmp_path}", "--verbose"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode != 0
  assert "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr
  assert not (tmp_path / "w").exists()


_FAIL_AFTER_CLAIM = """
import sys
from experiments import common
def main(argv):
  common.claim_workdir(sys.argv[1], {"steps": 10})
  (common.pathlib.Path(sys.argv[1]) / "checkpoints").mkdir()   # as orbax does, still empty
  raise ERROR
common.run(main)
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

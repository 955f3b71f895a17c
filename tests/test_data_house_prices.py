"""Tests for immujax/data/house_prices.py.

The real-data tests read ``../shared/data/house_price`` through the ``house_dir`` fixture
(skipped when absent). The others write tiny 81-column tables to ``tmp_path``. Nothing here
touches the network: the OpenML route runs on a fake fetcher.
"""
import csv
import functools
import hashlib
import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from immujax.data import house_prices as hp_lib


# ----------------------------------------------------------------------------- helpers


def _table(n_rl=4, n_other=3, seed=0):
  """A small, valid Kaggle-shaped table: random counts and random known categories."""
  rng = np.random.default_rng(seed)
  n = n_rl + n_other
  cols = {}
  for name in hp_lib.KAGGLE_COLUMNS:
    if name in hp_lib.CATEGORY_LEVELS:
      levels = hp_lib.CATEGORY_LEVELS[name]
      cols[name] = [levels[i] for i in rng.integers(0, len(levels), size=n)]
    else:
      cols[name] = rng.integers(0, 50, size=n).astype(np.int64)
  cols["Id"] = np.arange(1, n + 1)
  cols["MSZoning"] = ["RL"] * n_rl + ["RM"] * n_other
  cols["Street"] = ["Pave", "Grvl"] * (n // 2) + ["Pave"] * (n % 2)
  cols["Alley"] = [None] * n  # a category column that is entirely missing
  return pd.DataFrame(cols, columns=list(hp_lib.KAGGLE_COLUMNS))


def _write_train(tmp_path, frame):
  d = tmp_path / "house"
  d.mkdir()
  frame.to_csv(d / "train.csv", index=False)
  return d


def _authors_preprocess(data, label, features):
  """The authors' dataset.py::TabularDataset._preprocess, copied for comparison.

  The only change: pandas 3 reads text as the ``str`` dtype, which must be named explicitly
  in ``select_dtypes`` (pandas 2 read it as ``object``).
  """
  from sklearn.preprocessing import LabelEncoder  # pylint: disable=g-import-not-at-top
  data = data.fillna(0)
  for col in data.select_dtypes(include=["object", "category", "str"]).columns:
    data[col] = LabelEncoder().fit_transform(data[col].astype(str))
  numerical_cols = data[features].select_dtypes(include=["number"])
  mean = numerical_cols.mean()
  std = numerical_cols.std().replace(0, 1)
  data[features] = (data[features] - mean) / std
  label_mean = data[label].mean()
  label_std = data[label].std() or 1
  data[label] = (data[label] - label_mean) / label_std
  return data


# ------------------------------------------------------------------------ preprocessing


def test_label_encode_is_sorted_unique_rank():
  np.testing.assert_array_equal(hp_lib.label_encode(["b", "a", "0", "b", "C"]), [3, 2, 0, 3, 1])


def test_preprocess_frame_semantics():
  frame = pd.DataFrame({
      "num": [1.0, 2.0, 3.0],
      "const": [5, 5, 5],
      "cat": ["b", None, "a"],  # NaN -> "0", which sorts first: codes [2, 0, 1]
      "y": [10.0, 20.0, np.nan],  # label NaN -> 0 (fillna(0) runs on every column)
  })
  x, y, y_mean, y_std = hp_lib.preprocess_frame(
      frame, label="y", feature_names=["num", "const", "cat"])
  assert x.shape == (3, 3) and x.dtype == np.float64
  np.testing.assert_allclose(x[:, 0], [-1.0, 0.0, 1.0])  # ddof=1: std([1, 2, 3]) = 1
  np.testing.assert_array_equal(x[:, 1], [0.0, 0.0, 0.0])  # std 0 -> divided by 1
  np.testing.assert_allclose(x[:, 2], [1.0, -1.0, 0.0])  # codes [2, 0, 1], ddof=1 std = 1
  assert y_mean == pytest.approx(10.0)
  assert y_std == pytest.approx(10.0)  # ddof=1 std of [10, 20, 0]
  np.testing.assert_allclose(y, [0.0, 1.0, -1.0])


def test_preprocess_frame_errors():
  frame = pd.DataFrame({"a": [1.0, 2.0], "y": [1.0, 2.0]})
  with pytest.raises(ValueError, match=r"missing columns \['b'\]"):
    hp_lib.preprocess_frame(frame, label="y", feature_names=["a", "b"])
  with pytest.raises(ValueError, match="at least 2 rows"):
    hp_lib.preprocess_frame(frame.iloc[:1], label="y", feature_names=["a"])
  with pytest.raises(ValueError, match="not numeric"):
    hp_lib.preprocess_frame(
        pd.DataFrame({"a": [1.0, 2.0], "y": ["x", "z"]}), label="y", feature_names=["a"])


def test_synthetic_train_csv_route(tmp_path):
  frame = _table(n_rl=4, n_other=3)
  d = _write_train(tmp_path, frame)
  data = hp_lib.load_house_prices(d, n_train=2)
  assert data.x_p.shape == (2, 79) and data.x_h.shape == (2, 79)
  assert data.x_p_all.shape == (3, 79) and data.x_h_all.shape == (4, 79)
  np.testing.assert_array_equal(data.id_p_all, [5, 6, 7])
  np.testing.assert_array_equal(data.id_h_all, [1, 2, 3, 4])
  np.testing.assert_array_equal(data.x_p, data.x_p_all[:2])
  names = data.feature_names
  assert names[0] == "Id" and "LotArea" not in names and "SalePrice" not in names
  # MSZoning is constant within each split, and Alley is entirely missing: both z-score to 0.
  for col in ("MSZoning", "Alley"):
    j = names.index(col)
    np.testing.assert_array_equal(data.x_p_all[:, j], 0.0)
    np.testing.assert_array_equal(data.x_h_all[:, j], 0.0)
  rl = frame.iloc[:4]
  np.testing.assert_allclose(
      data.y_h_all, (rl.SalePrice - rl.SalePrice.mean()) / rl.SalePrice.std(ddof=1))
  assert not data.x_p.flags.writeable


def test_synthetic_d1_d2_route_takes_precedence(tmp_path):
  frame = _table()
  d = _write_train(tmp_path, frame)
  other = frame.iloc[::-1]  # reversed, so the D1/D2 files are recognisable by their Id order
  other[other.MSZoning != "RL"].to_csv(d / "D1.csv", index=False)
  other[other.MSZoning == "RL"].to_csv(d / "D2.csv", index=False)
  data = hp_lib.load_house_prices(d, n_train=3)
  np.testing.assert_array_equal(data.id_p_all, [7, 6, 5])


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("no_dir", FileNotFoundError, "not a directory"),
        ("no_files", FileNotFoundError, "neither D1.csv"),
        ("missing_column", ValueError, r"missing columns \['GarageCars', 'SalePrice'\]"),
        ("empty_split", ValueError, "is empty"),
        ("n_train_too_large", ValueError, "exceeds the 3 rows of D1"),
        ("n_train_zero", ValueError, "positive int"),
        ("no_zoning", ValueError, "has no 'MSZoning' column"),
        ("bad_csv", ValueError, "could not parse"),
    ],
)
def test_loader_errors(tmp_path, case, error, match):
  frame = _table(n_rl=4, n_other=3)
  kwargs = {}
  if case == "no_dir":
    d = tmp_path / "absent"
  elif case == "no_files":
    d = tmp_path
    (d / "test.csv").write_text("Id\n1\n")
  elif case == "missing_column":
    d = _write_train(tmp_path, frame.drop(columns=["GarageCars", "SalePrice"]))
  elif case == "empty_split":
    d = _write_train(tmp_path, frame.iloc[:4])
  elif case == "n_train_too_large":
    d = _write_train(tmp_path, frame)
    kwargs = {"n_train": 4}
  elif case == "n_train_zero":
    d = _write_train(tmp_path, frame)
    kwargs = {"n_train": 0}
  elif case == "no_zoning":
    d = _write_train(tmp_path, frame.drop(columns=["MSZoning"]))
  else:
    d = tmp_path
    (d / "train.csv").write_bytes(b'a,b\n"1,2\n3')
  with pytest.raises(error, match=match):
    hp_lib.load_house_prices(d, **kwargs)


# ----------------------------------------------------------------------------- OpenML


def _arff_from_frame(frame, *, drop_id=False):
  """Writes a dense ARFF the way OpenML serves a table: '?' for missing, quoted strings."""
  if drop_id:
    frame = frame.drop(columns=["Id"])
  lines = ["% fake OpenML house_prices", "@RELATION house_prices"]
  for col in frame.columns:
    if pd.api.types.is_numeric_dtype(frame[col].dtype):
      kind = "NUMERIC"
    else:
      values = sorted({str(v) for v in frame[col].dropna()})
      kind = "{" + ",".join(f"'{v}'" for v in values) + "}"
    lines.append(f"@ATTRIBUTE '{col}' {kind}")
  lines.append("@DATA")
  for row in frame.itertuples(index=False):
    fields = []
    for v in row:
      if pd.isna(v):
        fields.append("?")
      elif isinstance(v, str):
        fields.append("'" + v.replace("'", "\\'") + "'")
      else:
        fields.append(repr(float(v)) if isinstance(v, float) else str(v))
    lines.append(",".join(fields))
  return ("\n".join(lines) + "\n").encode()


def _fake_fetcher(payload, *, md5=True):
  desc = {"data_set_description": {"id": "42165", "file_id": "123"}}
  if md5:
    desc["data_set_description"]["md5_checksum"] = hashlib.md5(payload).hexdigest()
  urls = []

  def fetch(url):
    urls.append(url)
    if url == hp_lib.OPENML_DESCRIPTION_URL.format(data_id=42165):
      return json.dumps(desc).encode()
    if url == hp_lib.OPENML_DOWNLOAD_URL.format(file_id="123"):
      return payload
    raise OSError(f"unexpected url {url}")

  return fetch, urls


def test_parse_arff_quotes_and_missing():
  text = "@relation r\n@attribute 'a b' numeric\n@attribute c {'x y',z}\n@data\n1,'x y'\n?,?\n"
  names, rows = hp_lib.parse_arff(text)
  assert names == ["a b", "c"]
  assert rows == [["1", "x y"], ["", ""]]
  with pytest.raises(ValueError, match="not an ARFF"):
    hp_lib.parse_arff("a,b\n1,2\n")


@pytest.mark.parametrize("drop_id", [False, True])
def test_openml_route_with_fake_fetcher(tmp_path, drop_id):
  frame = _table(n_rl=5, n_other=4)
  frame.loc[0, "Street"] = None
  expected = hp_lib.load_house_prices(_write_train(tmp_path, frame), n_train=3)
  fetch, urls = _fake_fetcher(_arff_from_frame(frame, drop_id=drop_id))
  cache = tmp_path / "cache"
  got = hp_lib.load_house_prices(None, cache_dir=cache, n_train=3, fetch=fetch)
  assert len(urls) == 2 and (cache / "train.csv").is_file()
  for name in ("x_p_all", "y_p_all", "x_h_all", "y_h_all", "id_p_all", "id_h_all"):
    np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)
  # Second call: served from the cache, no fetch.
  hp_lib.load_house_prices(None, cache_dir=cache, n_train=3, fetch=fetch)
  assert len(urls) == 2


def test_openml_errors_without_network(tmp_path):
  with pytest.raises(ValueError, match="cache_dir"):
    hp_lib.load_house_prices(None)

  def offline(url):
    raise OSError(f"network is unreachable: {url}")

  with pytest.raises(FileNotFoundError, match="could not download OpenML dataset 42165"):
    hp_lib.load_house_prices(None, cache_dir=tmp_path / "empty", fetch=offline)
  fetch, _ = _fake_fetcher(b"@relation r\n@attribute a numeric\n@data\n1\n")
  bad = {"data_set_description": {"file_id": "123", "md5_checksum": "0" * 32}}

  def bad_md5(url):
    return json.dumps(bad).encode() if "json" in url else fetch(url)

  with pytest.raises(ValueError, match="md5"):
    hp_lib.download_openml_house_prices(tmp_path / "c", fetch=bad_md5)


# -------------------------------------------------------------------------- real data


@functools.lru_cache(maxsize=None)
def _load_cached(path):
  return hp_lib.load_house_prices(path)


def _load_real(house_dir):
  return _load_cached(str(house_dir))


def test_real_shapes_and_statistics(house_dir):
  data = _load_real(house_dir)
  assert data.x_p.shape == (200, 79) and data.x_h.shape == (200, 79)
  assert data.y_p.shape == (200,) and data.y_h.shape == (200,)
  assert data.x_p_all.shape == (309, 79) and data.x_h_all.shape == (1151, 79)
  assert data.feature_names[0] == "Id" and len(data.feature_names) == 79
  assert "LotArea" not in data.feature_names and "SalePrice" not in data.feature_names
  for a in (data.x_p_all, data.x_h_all, data.y_p_all, data.y_h_all):
    assert a.dtype == np.float64 and np.all(np.isfinite(a))
  # Labels and features are z-scored over the whole file (ddof=1).
  for y in (data.y_p_all, data.y_h_all):
    assert abs(y.mean()) < 1e-12 and y.std(ddof=1) == pytest.approx(1.0, rel=1e-12)
  np.testing.assert_allclose(data.x_h_all.mean(axis=0), 0.0, atol=1e-12)
  assert data.y_p_mean == pytest.approx(6587.09, abs=0.01)
  assert data.y_p_std == pytest.approx(3279.48, abs=0.01)
  assert data.y_h_mean == pytest.approx(191004.99, abs=0.01)
  assert data.y_h_std == pytest.approx(80766.34, abs=0.01)
  # D1 is MSZoning != RL, D2 is RL; together they are the 1460 Kaggle Ids, in Id order.
  ids = np.concatenate([data.id_p_all, data.id_h_all])
  np.testing.assert_array_equal(np.sort(ids), np.arange(1, 1461))
  assert np.all(np.diff(data.id_p_all) > 0) and np.all(np.diff(data.id_h_all) > 0)


def test_real_gram_rank_is_74(house_dir):
  data = _load_real(house_dir)
  for x in (data.x_p, data.x_h):
    assert np.linalg.matrix_rank(x.T @ x) == 74
    assert np.linalg.matrix_rank(x) == 74


def test_real_train_csv_route_equals_d1_d2_route(house_dir, tmp_path):
  shutil.copy(house_dir / "train.csv", tmp_path / "train.csv")
  a = _load_real(house_dir)
  b = hp_lib.load_house_prices(tmp_path)
  assert a.feature_names == b.feature_names
  for name in ("x_p_all", "y_p_all", "x_h_all", "y_h_all", "id_p_all", "id_h_all"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
  assert (a.y_p_mean, a.y_p_std, a.y_h_mean, a.y_h_std) == (
      b.y_p_mean, b.y_p_std, b.y_h_mean, b.y_h_std)


def test_real_matches_authors_code_bit_for_bit(house_dir):
  pytest.importorskip("sklearn", reason="the authors' code uses sklearn's LabelEncoder")
  data = _load_real(house_dir)
  d1 = pd.read_csv(house_dir / "D1.csv")
  features = [c for c in d1.columns if c not in ["LotArea", "SalePrice"]]
  with warnings.catch_warnings(action="ignore"):  # pandas 3 deprecation notes on this code
    p = _authors_preprocess(d1, "LotArea", features)
    h = _authors_preprocess(pd.read_csv(house_dir / "D2.csv"), "SalePrice", features)
  np.testing.assert_array_equal(p[features].to_numpy(np.float64), data.x_p_all)
  np.testing.assert_array_equal(h[features].to_numpy(np.float64), data.x_h_all)
  np.testing.assert_array_equal(p["LotArea"].to_numpy(np.float64), data.y_p_all)
  np.testing.assert_array_equal(h["SalePrice"].to_numpy(np.float64), data.y_h_all)


def test_real_openml_route_equals_train_csv(house_dir, tmp_path):
  """An ARFF written from the real train.csv goes through the OpenML route unchanged."""
  raw = pd.read_csv(house_dir / "train.csv", keep_default_na=False, dtype=str)
  with open(house_dir / "train.csv", newline="") as f:
    header = next(csv.reader(f))
  assert list(raw.columns) == header
  parsed = pd.read_csv(house_dir / "train.csv")
  lines = ["@relation house_prices"]
  for col in header:
    if pd.api.types.is_numeric_dtype(parsed[col].dtype):
      lines.append(f"@attribute '{col}' numeric")
    else:
      lines.append(f"@attribute '{col}' string")
  lines.append("@data")
  for row in raw.itertuples(index=False):
    lines.append(",".join("?" if v == "NA" else f"'{v}'" for v in row))
  fetch, _ = _fake_fetcher(("\n".join(lines) + "\n").encode())
  got = hp_lib.load_house_prices(None, cache_dir=tmp_path / "cache", fetch=fetch)
  want = _load_real(house_dir)
  for name in ("x_p_all", "y_p_all", "x_h_all", "y_h_all"):
    np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


# ------------------------------------------------------------------- validation (issue 13)

# sha256 (first 16 hex digits) of the arrays the loader returned on the shared files BEFORE
# validation was added (commit 8c5de2b). Validation must not change a single bit on valid data.
_HASHES_BEFORE_VALIDATION = {
    "x_p_all": "7c3677be1143c678", "y_p_all": "059a2da20852f66f",
    "x_h_all": "79d626573e8fbb1f", "y_h_all": "641888c5d2658706",
    "id_p_all": "c88a3a4708f4e0b6", "id_h_all": "8be332ccc71c68af",
}


def _hashes(data):
  return {k: hashlib.sha256(np.ascontiguousarray(getattr(data, k)).tobytes()).hexdigest()[:16]
          for k in _HASHES_BEFORE_VALIDATION}


def test_real_arrays_unchanged_by_validation_both_routes(house_dir, tmp_path):
  assert _hashes(_load_real(house_dir)) == _HASHES_BEFORE_VALIDATION
  shutil.copy(house_dir / "train.csv", tmp_path / "train.csv")
  assert _hashes(hp_lib.load_house_prices(tmp_path)) == _HASHES_BEFORE_VALIDATION


def test_numeric_and_category_columns_match_the_clean_files(house_dir):
  for name in ("train.csv", "D2.csv"):
    frame = pd.read_csv(house_dir / name)
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c].dtype)]
    assert tuple(numeric) == hp_lib.NUMERIC_COLUMNS, name
    assert set(frame.columns) - set(numeric) == set(hp_lib.CATEGORY_LEVELS), name
  assert set(hp_lib.NUMERIC_COLUMNS) | set(hp_lib.CATEGORY_LEVELS) == set(hp_lib.KAGGLE_COLUMNS)


def _corrupt_copy(house_dir, tmp_path, file, row, column, value):
  """Copies D1/D2 to tmp_path and sets data row ``row`` (1-based) of ``column`` in ``file``."""
  for name in ("D1.csv", "D2.csv"):
    shutil.copy(house_dir / name, tmp_path / name)
  with open(tmp_path / file, newline="") as f:
    rows = list(csv.reader(f))
  rows[row][rows[0].index(column)] = value
  with open(tmp_path / file, "w", newline="") as f:
    csv.writer(f, lineterminator="\n").writerows(rows)
  return tmp_path


@pytest.mark.parametrize("file, row, column, value, match", [
    ("D1.csv", 5, "LotFrontage", "abc",
     r"D1\.csv: row 5 \(line 6, Id 30\), column 'LotFrontage': 'abc' is not a number"),
    ("D2.csv", 7, "GrLivArea", "-5", r"D2\.csv: row 7 .*'GrLivArea': -5\.0 is negative"),
    ("D1.csv", 2, "MSSubClass", "inf", r"D1\.csv: row 2 .*'MSSubClass': inf is infinite"),
    ("D2.csv", 3, "Street", "Paved", r"D2\.csv: row 3 .*'Street': 'Paved' is not a category"),
    ("D1.csv", 9, "LotArea", "", r"D1\.csv: row 9 .*the target LotArea is missing"),
    ("D2.csv", 4, "Id", "1", r"D2\.csv: row 4 .*Id 1 is repeated"),
])
def test_corrupt_real_files_are_rejected_with_file_row_column(house_dir, tmp_path, file, row,
                                                              column, value, match):
  d = _corrupt_copy(house_dir, tmp_path, file, row, column, value)
  with pytest.raises(ValueError, match=match):
    hp_lib.load_house_prices(d)


def test_validate_frame_accepts_missing_values_and_rejects_numbers_in_categories():
  frame = _table()
  frame.loc[1, "LotFrontage"] = np.nan
  frame.loc[2, "Street"] = None
  hp_lib.validate_frame(frame, "t.csv", targets=("SalePrice",))
  frame["Alley"] = [1.0] * len(frame)  # numbers where a category belongs
  with pytest.raises(ValueError, match=r"t\.csv: row 1 .*'Alley': 1\.0 is not a category"):
    hp_lib.validate_frame(frame, "t.csv")

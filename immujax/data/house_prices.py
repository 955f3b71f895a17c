"""House Prices (Ames, Iowa) data for the linear-regression experiment (paper §5.1).

The Kaggle "House Prices: Advanced Regression Techniques" ``train.csv`` (1460 rows, 81
columns) is split by zoning, as in the authors' repository:

* ``D1 = rows with MSZoning != "RL"`` (309 rows). Pre-training task D_P: target ``LotArea``.
* ``D2 = rows with MSZoning == "RL"`` (1151 rows). Harmful task D_H: target ``SalePrice``.

The features are every column except ``LotArea`` and ``SalePrice``, **including** ``Id``,
which gives D_in = 79 (the authors' ``features_columns``; digest §6 item 11).

Each file is preprocessed on its own, with its own statistics, exactly as the authors'
``dataset.py::TabularDataset._preprocess``:

1. ``fillna(0)``.
2. Label-encode every non-numeric column on its ``astype(str)`` values. The codes index the
   sorted unique strings (sklearn ``LabelEncoder``), so a missing category becomes the string
   ``"0"``, which sorts before the letters.
3. z-score each feature with that file's mean and its pandas ``std()``. That std is the
   sample std (``ddof=1``), and a zero std is replaced by 1.
4. z-score the label the same way (``ddof=1``; a zero std is replaced by 1).

The result is bit-identical to the authors' pandas/sklearn code run on the same files with
the same pandas and numpy. The tests check this against a literal copy of that code when
scikit-learn is installed. The column-wise reductions follow pandas' summation order.

**Validation (not in the authors' code).** Before preprocessing, every file is checked
column by column (:func:`validate_frame`): a non-number, an infinite or a negative value in
one of the 38 :data:`NUMERIC_COLUMNS` (Kaggle's ``data_description.txt``; exactly the columns
pandas reads as numbers from the clean train.csv/test.csv), an unknown level in one of the 43
categorical columns (:data:`CATEGORY_LEVELS`, the levels of train.csv and test.csv), a
missing or repeated ``Id`` and a missing target raise a ``ValueError`` naming the file, row
and column. So does a numeric value that pandas would read as missing but the Ames data
never write so (``n/a``, ``null``, ``NaN``: only ``NA`` and an empty field are missing values
there, :data:`MISSING_MARKERS`). The authors' pipeline would instead label-encode a numeric
column that holds a single junk string, or fill an ``n/a`` with 0, silently. Valid files pass unchanged, so the arrays
stay bit-identical to the authors' pipeline (tested).

The statistics are computed on the **whole** file (309 or 1151 rows). Only then are the first
``n_train`` rows taken, in file (``Id``) order, as the training rows. The authors use
``Subset(range(200))`` on the pair dataset, so the training rows are D1[0:200] and
D2[0:200]. The κ/RIR evaluation uses the same rows.

Sources for ``data_dir`` (checked in this order):

* ``D1.csv`` + ``D2.csv``: the authors' files.
* ``train.csv``: Kaggle's file, split here by ``MSZoning``.

Both routes give identical arrays (``tests/test_data_house_prices.py`` checks this on the
real files). The two files write missing values differently. The authors' D1/D2 were
re-written by pandas, so Kaggle's literal ``NA`` categories are empty fields there. Both
forms are missing values under pandas' default NA parsing, and so are the literal
``None`` strings of ``MasVnrType`` (pandas >= 2.0, which the authors' requirements.txt
pins). After ``fillna(0)`` they all become the category ``"0"``. A column that is entirely
empty in D1 (``PoolQC``) is read as a float column of NaN there and becomes the constant 0.
In the train.csv route it is the constant category ``"0"`` → code 0. Both z-score to 0.

With ``data_dir=None`` the loader uses ``cache_dir``. If ``cache_dir/train.csv`` is absent,
it downloads OpenML dataset 42165 ("house_prices") as ARFF and writes it to
``cache_dir/train.csv``, which is then read like Kaggle's file. That is the only network
access in this module, and it happens only when ``data_dir`` is None.

Differences from the authors' code:

* The arrays here stay float64. The authors store the preprocessed arrays as
  ``torch.float32`` and cast them back to double in the model. Their inputs therefore carry
  float32 rounding (relative 6e-8). On the 200 training rows the rank of K = XᵀX under
  numpy's ``matrix_rank`` tolerance is 74 of 79 either way.
* Boolean columns (none in this data) are treated as numeric 0/1.

References:
  Zheng, Bai, Bullins, Yeh. Model immunization from a condition-number perspective.
  ICML 2025, §5.1. De Cock, Ames, Iowa: alternative to the Boston housing data.
  J. Statistics Education 19(3), 2011.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import tempfile
from typing import Callable, Optional, Sequence, Union
import urllib.request

import numpy as np

PathLike = Union[str, os.PathLike]
Fetcher = Callable[[str], bytes]

LABEL_P = "LotArea"
LABEL_H = "SalePrice"
ZONING_COLUMN = "MSZoning"
HARMFUL_ZONE = "RL"
ID_COLUMN = "Id"
N_FEATURES = 79
OPENML_DATA_ID = 42165

# The 81 columns of Kaggle's train.csv (and of the authors' D1.csv/D2.csv), in file order.
KAGGLE_COLUMNS = (
    "Id", "MSSubClass", "MSZoning", "LotFrontage", "LotArea", "Street", "Alley", "LotShape",
    "LandContour", "Utilities", "LotConfig", "LandSlope", "Neighborhood", "Condition1",
    "Condition2", "BldgType", "HouseStyle", "OverallQual", "OverallCond", "YearBuilt",
    "YearRemodAdd", "RoofStyle", "RoofMatl", "Exterior1st", "Exterior2nd", "MasVnrType",
    "MasVnrArea", "ExterQual", "ExterCond", "Foundation", "BsmtQual", "BsmtCond",
    "BsmtExposure", "BsmtFinType1", "BsmtFinSF1", "BsmtFinType2", "BsmtFinSF2", "BsmtUnfSF",
    "TotalBsmtSF", "Heating", "HeatingQC", "CentralAir", "Electrical", "1stFlrSF",
    "2ndFlrSF", "LowQualFinSF", "GrLivArea", "BsmtFullBath", "BsmtHalfBath", "FullBath",
    "HalfBath", "BedroomAbvGr", "KitchenAbvGr", "KitchenQual", "TotRmsAbvGrd", "Functional",
    "Fireplaces", "FireplaceQu", "GarageType", "GarageYrBlt", "GarageFinish", "GarageCars",
    "GarageArea", "GarageQual", "GarageCond", "PavedDrive", "WoodDeckSF", "OpenPorchSF",
    "EnclosedPorch", "3SsnPorch", "ScreenPorch", "PoolArea", "PoolQC", "Fence",
    "MiscFeature", "MiscVal", "MoSold", "YrSold", "SaleType", "SaleCondition", "SalePrice",
)
# The 38 numeric columns of the Ames data (Kaggle's data_description.txt; they are exactly the
# columns pandas reads as numbers from the clean train.csv and test.csv). Every value is a
# count, an area, a rating, a year, a month or a price: finite and >= 0.
NUMERIC_COLUMNS = (
    "Id", "MSSubClass", "LotFrontage", "LotArea", "OverallQual", "OverallCond", "YearBuilt",
    "YearRemodAdd", "MasVnrArea", "BsmtFinSF1", "BsmtFinSF2", "BsmtUnfSF", "TotalBsmtSF",
    "1stFlrSF", "2ndFlrSF", "LowQualFinSF", "GrLivArea", "BsmtFullBath", "BsmtHalfBath",
    "FullBath", "HalfBath", "BedroomAbvGr", "KitchenAbvGr", "TotRmsAbvGrd", "Fireplaces",
    "GarageYrBlt", "GarageCars", "GarageArea", "WoodDeckSF", "OpenPorchSF", "EnclosedPorch",
    "3SsnPorch", "ScreenPorch", "PoolArea", "MiscVal", "MoSold", "YrSold", "SalePrice",
)
# The other 43 columns are categorical. Their levels: every value that occurs in Kaggle's
# train.csv or test.csv (a missing value, i.e. an empty field or ``NA``, is always allowed).
CATEGORY_LEVELS = {
    "MSZoning": ('C (all)', 'FV', 'RH', 'RL', 'RM'),
    "Street": ('Grvl', 'Pave'),
    "Alley": ('Grvl', 'Pave'),
    "LotShape": ('IR1', 'IR2', 'IR3', 'Reg'),
    "LandContour": ('Bnk', 'HLS', 'Low', 'Lvl'),
    "Utilities": ('AllPub', 'NoSeWa'),
    "LotConfig": ('Corner', 'CulDSac', 'FR2', 'FR3', 'Inside'),
    "LandSlope": ('Gtl', 'Mod', 'Sev'),
    "Neighborhood": ('Blmngtn', 'Blueste', 'BrDale', 'BrkSide', 'ClearCr', 'CollgCr',
        'Crawfor', 'Edwards', 'Gilbert', 'IDOTRR', 'MeadowV', 'Mitchel', 'NAmes', 'NPkVill',
        'NWAmes', 'NoRidge', 'NridgHt', 'OldTown', 'SWISU', 'Sawyer', 'SawyerW', 'Somerst',
        'StoneBr', 'Timber', 'Veenker'),
    "Condition1": ('Artery', 'Feedr', 'Norm', 'PosA', 'PosN', 'RRAe', 'RRAn', 'RRNe', 'RRNn'),
    "Condition2": ('Artery', 'Feedr', 'Norm', 'PosA', 'PosN', 'RRAe', 'RRAn', 'RRNn'),
    "BldgType": ('1Fam', '2fmCon', 'Duplex', 'Twnhs', 'TwnhsE'),
    "HouseStyle": ('1.5Fin', '1.5Unf', '1Story', '2.5Fin', '2.5Unf', '2Story', 'SFoyer',
        'SLvl'),
    "RoofStyle": ('Flat', 'Gable', 'Gambrel', 'Hip', 'Mansard', 'Shed'),
    "RoofMatl": ('ClyTile', 'CompShg', 'Membran', 'Metal', 'Roll', 'Tar&Grv', 'WdShake',
        'WdShngl'),
    "Exterior1st": ('AsbShng', 'AsphShn', 'BrkComm', 'BrkFace', 'CBlock', 'CemntBd', 'HdBoard',
        'ImStucc', 'MetalSd', 'Plywood', 'Stone', 'Stucco', 'VinylSd', 'Wd Sdng', 'WdShing'),
    "Exterior2nd": ('AsbShng', 'AsphShn', 'Brk Cmn', 'BrkFace', 'CBlock', 'CmentBd', 'HdBoard',
        'ImStucc', 'MetalSd', 'Other', 'Plywood', 'Stone', 'Stucco', 'VinylSd', 'Wd Sdng',
        'Wd Shng'),
    "MasVnrType": ('BrkCmn', 'BrkFace', 'Stone'),
    "ExterQual": ('Ex', 'Fa', 'Gd', 'TA'),
    "ExterCond": ('Ex', 'Fa', 'Gd', 'Po', 'TA'),
    "Foundation": ('BrkTil', 'CBlock', 'PConc', 'Slab', 'Stone', 'Wood'),
    "BsmtQual": ('Ex', 'Fa', 'Gd', 'TA'),
    "BsmtCond": ('Fa', 'Gd', 'Po', 'TA'),
    "BsmtExposure": ('Av', 'Gd', 'Mn', 'No'),
    "BsmtFinType1": ('ALQ', 'BLQ', 'GLQ', 'LwQ', 'Rec', 'Unf'),
    "BsmtFinType2": ('ALQ', 'BLQ', 'GLQ', 'LwQ', 'Rec', 'Unf'),
    "Heating": ('Floor', 'GasA', 'GasW', 'Grav', 'OthW', 'Wall'),
    "HeatingQC": ('Ex', 'Fa', 'Gd', 'Po', 'TA'),
    "CentralAir": ('N', 'Y'),
    "Electrical": ('FuseA', 'FuseF', 'FuseP', 'Mix', 'SBrkr'),
    "KitchenQual": ('Ex', 'Fa', 'Gd', 'TA'),
    "Functional": ('Maj1', 'Maj2', 'Min1', 'Min2', 'Mod', 'Sev', 'Typ'),
    "FireplaceQu": ('Ex', 'Fa', 'Gd', 'Po', 'TA'),
    "GarageType": ('2Types', 'Attchd', 'Basment', 'BuiltIn', 'CarPort', 'Detchd'),
    "GarageFinish": ('Fin', 'RFn', 'Unf'),
    "GarageQual": ('Ex', 'Fa', 'Gd', 'Po', 'TA'),
    "GarageCond": ('Ex', 'Fa', 'Gd', 'Po', 'TA'),
    "PavedDrive": ('N', 'P', 'Y'),
    "PoolQC": ('Ex', 'Fa', 'Gd'),
    "Fence": ('GdPrv', 'GdWo', 'MnPrv', 'MnWw'),
    "MiscFeature": ('Gar2', 'Othr', 'Shed', 'TenC'),
    "SaleType": ('COD', 'CWD', 'Con', 'ConLD', 'ConLI', 'ConLw', 'New', 'Oth', 'WD'),
    "SaleCondition": ('Abnorml', 'AdjLand', 'Alloca', 'Family', 'Normal', 'Partial'),
}

OPENML_DESCRIPTION_URL = "https://api.openml.org/api/v1/json/data/{data_id}"
OPENML_DOWNLOAD_URL = "https://api.openml.org/data/v1/download/{file_id}"


@dataclasses.dataclass(frozen=True, eq=False)
class HousePrices:
  """Preprocessed D_P and D_H.

  Every array is a read-only float64 numpy array. The ``*_all`` arrays hold the whole
  preprocessed file. The others hold its first ``n_train`` rows.

  Attributes:
    x_p: (n_train, 79) D_P features, the first ``n_train`` rows of D1 (z-scored).
    y_p: (n_train,) D_P target: z-scored ``LotArea``.
    x_h: (n_train, 79) D_H features, the first ``n_train`` rows of D2 (z-scored).
    y_h: (n_train,) D_H target: z-scored ``SalePrice``.
    feature_names: the 79 feature column names, in file order (``Id`` first).
    x_p_all: (n_1, 79) all of D1, preprocessed (n_1 = 309 for the Kaggle data).
    y_p_all: (n_1,) all of D1's z-scored targets.
    x_h_all: (n_2, 79) all of D2, preprocessed (n_2 = 1151).
    y_h_all: (n_2,) all of D2's z-scored targets.
    id_p_all: (n_1,) int64 raw ``Id`` of the D1 rows.
    id_h_all: (n_2,) int64 raw ``Id`` of the D2 rows.
    y_p_mean: mean of D1's raw ``LotArea`` (to undo the z-score).
    y_p_std: the ddof=1 std of D1's raw ``LotArea`` (1 if that is 0).
    y_h_mean: mean of D2's raw ``SalePrice``.
    y_h_std: the ddof=1 std of D2's raw ``SalePrice`` (1 if that is 0).
  """
  x_p: np.ndarray
  y_p: np.ndarray
  x_h: np.ndarray
  y_h: np.ndarray
  feature_names: tuple[str, ...]
  x_p_all: np.ndarray
  y_p_all: np.ndarray
  x_h_all: np.ndarray
  y_h_all: np.ndarray
  id_p_all: np.ndarray
  id_h_all: np.ndarray
  y_p_mean: float
  y_p_std: float
  y_h_mean: float
  y_h_std: float

  @property
  def n_train(self) -> int:
    return int(self.x_p.shape[0])


def _pandas():
  try:
    import pandas as pd  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # pragma: no cover - pandas is installed with the package
    raise ImportError(
        "immujax.data.house_prices needs pandas to read the CSV files; install it with "
        "`pip install pandas`.") from e
  return pd


def label_encode(values: Sequence[str]) -> np.ndarray:
  """Encodes strings by their rank among the sorted unique values (sklearn LabelEncoder).

  Args:
    values: (n,) strings.

  Returns:
    (n,) int64 codes in [0, number of unique values).

  Example:
    >>> label_encode(["b", "a", "0", "b"]).tolist()
    [2, 1, 0, 2]
  """
  arr = np.asarray(values, dtype=str)
  if arr.ndim != 1:
    raise ValueError(f"values must be 1-D, got shape {arr.shape}; pass one column.")
  _, codes = np.unique(arr, return_inverse=True)
  return codes.astype(np.int64)


def _zscore(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """z-scores along axis 0 with pandas' ``std()`` (ddof=1); a zero std becomes 1.

  The reductions run over contiguous columns, as pandas does, so that the pairwise
  summation rounds like pandas' and the result matches it bit for bit.
  """
  cols = np.ascontiguousarray(np.moveaxis(a, 0, -1))
  mean = cols.mean(axis=-1)
  std = cols.std(axis=-1, ddof=1)
  std = np.where(std == 0, 1.0, std)
  return (a - mean) / std, mean, std


def _encode_frame(frame) -> dict[str, np.ndarray]:
  """Applies ``fillna(0)`` and label-encodes each column into a float64 array."""
  pd = _pandas()
  out = {}
  for name in frame.columns:
    col = frame[name]
    if pd.api.types.is_numeric_dtype(col.dtype):
      out[name] = col.to_numpy(dtype=np.float64, na_value=np.nan)
      out[name] = np.where(np.isnan(out[name]), 0.0, out[name])
    else:
      obj = col.astype(object).to_numpy()
      strs = np.array(["0" if pd.isna(v) else str(v) for v in obj], dtype=str)
      out[name] = label_encode(strs).astype(np.float64)
  return out


def preprocess_frame(frame, *, label: str, feature_names: Sequence[str]):
  """Preprocesses one file (D1 or D2) exactly as the authors' ``_preprocess``.

  The steps are ``fillna(0)``, then label encoding of the non-numeric columns, then a
  z-score of each feature and of the label with this frame's mean and ddof=1 std (a zero
  std becomes 1).

  Args:
    frame: a pandas DataFrame with n >= 2 rows, read with pandas' default NA parsing. It
      must contain ``label`` and every entry of ``feature_names``.
    label: the target column (``"LotArea"`` for D1, ``"SalePrice"`` for D2).
    feature_names: the d feature columns, in output order.

  Returns:
    ``(x, y, label_mean, label_std)``: x is a (n, d) float64 array, y a (n,) float64 array,
    and label_mean and label_std are the statistics used to z-score y.
  """
  missing = [c for c in [*feature_names, label] if c not in frame.columns]
  if missing:
    raise ValueError(
        f"frame is missing columns {missing}; pass a Kaggle House Prices table "
        "(train.csv, D1.csv or D2.csv).")
  if len(frame) < 2:
    raise ValueError(
        f"frame has {len(frame)} row(s); the ddof=1 z-score needs at least 2 rows.")
  pd = _pandas()
  if not pd.api.types.is_numeric_dtype(frame[label].dtype):
    raise ValueError(
        f"label column {label!r} is not numeric (dtype {frame[label].dtype}); pass a "
        "numeric target column.")
  encoded = _encode_frame(frame[list(dict.fromkeys([*feature_names, label]))])
  x = np.stack([encoded[c] for c in feature_names], axis=1)
  x, _, _ = _zscore(x)
  y, y_mean, y_std = _zscore(encoded[label])
  return x, y, float(y_mean), float(y_std)


def _read_csv(path: pathlib.Path):
  pd = _pandas()
  try:
    return pd.read_csv(path)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    detail = " ".join(str(e).split())
    raise ValueError(f"could not parse {path} as CSV ({detail}); pass an intact file.") from e


def _first(mask: np.ndarray) -> int:
  return int(np.flatnonzero(mask)[0])


def validate_frame(frame, source: str, *, targets: Sequence[str] = ()) -> None:
  """Checks a Kaggle-format table, as read by ``pd.read_csv``, column by column.

  The authors' pipeline label-encodes any column that is not numeric, so a single junk value
  in a numeric column (``LotFrontage = 'abc'``) silently turns the whole column into
  category codes. This check runs before it and rejects, naming the file, row and column:

  * a value in one of the :data:`NUMERIC_COLUMNS` that is not a number, or is infinite or
    negative, or a ``True``/``False`` column;
  * a value in a categorical column that is not one of its :data:`CATEGORY_LEVELS`
    (including numbers);
  * a missing or repeated ``Id``, and a missing value in a ``targets`` column.

  Missing values elsewhere (empty fields, ``NA``) are allowed: the pipeline fills them with
  0 as the authors do. Columns this module does not know are not checked.

  Args:
    frame: the raw table (pandas default NA parsing).
    source: how to name the table in messages, e.g. the file's path.
    targets: columns that must have no missing values (``LotArea`` for D1, ``SalePrice``
      for D2).

  Raises:
    ValueError: naming ``source``, the data row (1-based; line = row + 1, after the header),
      the column, the value and the fix.
  """
  pd = _pandas()

  def where(i: int, name: str) -> str:
    ident = ""
    if ID_COLUMN in frame.columns and name != ID_COLUMN:
      ident = f", Id {frame[ID_COLUMN].iloc[i]}"
    return f"{source}: row {i + 1} (line {i + 2}{ident}), column {name!r}"

  for name in NUMERIC_COLUMNS:
    if name not in frame.columns:
      continue
    col = frame[name]
    present = col.notna().to_numpy()
    if pd.api.types.is_bool_dtype(col.dtype):
      raise ValueError(f"{where(_first(present), name)}: holds True/False; {name} is a "
                       "numeric Ames column. Pass the Kaggle values.")
    if pd.api.types.is_numeric_dtype(col.dtype):
      values = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
      values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
      junk = present & np.isnan(values)
      if junk.any():
        i = _first(junk)
        raise ValueError(
            f"{where(i, name)}: {col.iloc[i]!r} is not a number ({int(junk.sum())} such "
            f"value(s) in the column); {name} is a numeric column of the Ames data. Fix the "
            "value, or leave the field empty for a missing value.")
    bad = np.isinf(values) | (values < 0)
    if bad.any():
      i = _first(bad)
      what = "infinite" if np.isinf(values[i]) else "negative"
      raise ValueError(
          f"{where(i, name)}: {float(values[i])!r} is {what}; every numeric Ames column "
          "(counts, areas, ratings, years, prices) is finite and >= 0. Fix the value, or "
          "leave the field empty for a missing value.")
  for name, levels in CATEGORY_LEVELS.items():
    if name not in frame.columns:
      continue
    col = frame[name]
    present = col.notna().to_numpy()
    known = set(levels)
    values = col.astype(object).to_numpy()
    unknown = present & np.array([v not in known for v in values], dtype=bool)
    if unknown.any():
      i = _first(unknown)
      raise ValueError(
          f"{where(i, name)}: {values[i]!r} is not a category of {name} ({int(unknown.sum())} "
          f"such value(s); known: {', '.join(levels)}). Fix the value, or leave the field "
          "empty for a missing value.")
  if ID_COLUMN in frame.columns:
    ids = frame[ID_COLUMN]
    if ids.isna().any():
      raise ValueError(f"{where(_first(ids.isna().to_numpy()), ID_COLUMN)}: the Id is missing; "
                       "every row needs its Kaggle Id.")
    dup = ids.duplicated().to_numpy()
    if dup.any():
      i = _first(dup)
      raise ValueError(f"{where(i, ID_COLUMN)}: Id {ids.iloc[i]} is repeated; every row needs "
                       "its own Kaggle Id (remove the duplicate row).")
  for name in targets:
    if name in frame.columns and frame[name].isna().any():
      i = _first(frame[name].isna().to_numpy())
      raise ValueError(f"{where(i, name)}: the target {name} is missing (the pipeline would "
                       "fill it with 0); drop the row or fill in the value.")


MISSING_MARKERS = ("", "NA")
"""How the Ames data write a missing value: an empty field (the authors' D1/D2) or ``NA``
(Kaggle's files). pandas reads more strings as missing (``n/a``, ``null``, ``NaN``, ...); in a
numeric column those are errors (:func:`check_missing_markers`), not silent missing values."""


def check_missing_markers(raw, frame, source: str) -> None:
  """Refuses a numeric value that pandas read as missing but the Ames data never write so.

  Args:
    raw: the table read as strings without NA parsing (``keep_default_na=False``).
    frame: the same table with pandas' default NA parsing (what the pipeline uses).
    source: how to name the table in messages.

  Raises:
    ValueError: naming ``source``, the row, the column and the value (e.g. ``'n/a'``).
  """
  for name in NUMERIC_COLUMNS:
    if name not in frame.columns or name not in raw.columns:
      continue
    values = raw[name].to_numpy(dtype=object)
    odd = frame[name].isna().to_numpy() & ~np.isin(values, MISSING_MARKERS)
    if odd.any():
      i = _first(odd)
      ident = f", Id {frame[ID_COLUMN].iloc[i]}" if ID_COLUMN in frame.columns else ""
      raise ValueError(
          f"{source}: row {i + 1} (line {i + 2}{ident}), column {name!r}: {values[i]!r} is not "
          f"a number ({int(odd.sum())} such value(s) in the column); the Ames data mark a "
          "missing value with NA or an empty field only. Fix the value, or write NA.")


def _read_table(path: pathlib.Path, targets: Sequence[str]):
  frame = _read_csv(path)
  validate_frame(frame, str(path), targets=targets)
  numeric = [c for c in NUMERIC_COLUMNS if c in frame.columns]
  raw = _pandas().read_csv(path, usecols=numeric, dtype=str, keep_default_na=False)
  check_missing_markers(raw, frame, str(path))
  return frame


def data_files(data_dir: PathLike) -> list[pathlib.Path]:
  """The files :func:`load_house_prices` reads from ``data_dir`` (D1 + D2, else train.csv)."""
  d = pathlib.Path(data_dir)
  if (d / "D1.csv").is_file() and (d / "D2.csv").is_file():
    return [d / "D1.csv", d / "D2.csv"]
  return [d / "train.csv"] if (d / "train.csv").is_file() else []


def read_d1_d2(data_dir: PathLike):
  """Reads D1 (MSZoning != "RL") and D2 (MSZoning == "RL") as raw pandas frames.

  Args:
    data_dir: a directory holding ``D1.csv`` and ``D2.csv`` (the authors' files), or
      Kaggle's ``train.csv``. D1/D2 take precedence when both are present.

  Returns:
    ``(d1, d2, source)``: the two frames in file order, and the name of the route used,
    ``"D1/D2"`` or ``"train.csv"``.
  """
  d = pathlib.Path(data_dir)
  if not d.is_dir():
    raise FileNotFoundError(
        f"data_dir {str(d)!r} is not a directory; pass the folder holding D1.csv and D2.csv "
        "(or Kaggle's train.csv).")
  if (d / "D1.csv").is_file() and (d / "D2.csv").is_file():
    return (_read_table(d / "D1.csv", (LABEL_P,)), _read_table(d / "D2.csv", (LABEL_H,)),
            "D1/D2")
  if (d / "train.csv").is_file():
    frame = _read_table(d / "train.csv", (LABEL_P, LABEL_H))
    if ZONING_COLUMN not in frame.columns:
      raise ValueError(
          f"{d / 'train.csv'} has no {ZONING_COLUMN!r} column, which the D1/D2 split "
          "needs; pass Kaggle's House Prices train.csv.")
    harmful = (frame[ZONING_COLUMN] == HARMFUL_ZONE).fillna(False).to_numpy(dtype=bool)
    d1 = frame.loc[~harmful].reset_index(drop=True)
    d2 = frame.loc[harmful].reset_index(drop=True)
    return d1, d2, "train.csv"
  names = sorted(p.name for p in d.iterdir())
  present = names[:8] + (["..."] if len(names) > 8 else [])
  raise FileNotFoundError(
      f"data_dir {str(d)!r} holds neither D1.csv + D2.csv nor train.csv (found {present}); "
      "pass the folder of the authors' data/house_price files or of Kaggle's train.csv.")


def _feature_columns(columns: Sequence[str]) -> list[str]:
  return [c for c in columns if c not in (LABEL_P, LABEL_H)]


def _readonly(a: np.ndarray) -> np.ndarray:
  a = np.ascontiguousarray(a)
  a.flags.writeable = False
  return a


def load_house_prices(
    data_dir: Optional[PathLike] = None,
    *,
    n_train: int = 200,
    cache_dir: Optional[PathLike] = None,
    fetch: Optional[Fetcher] = None,
) -> HousePrices:
  """Loads and preprocesses D_P (D1 → LotArea) and D_H (D2 → SalePrice).

  Args:
    data_dir: a directory with ``D1.csv`` + ``D2.csv`` or with Kaggle's ``train.csv``. If
      None, ``cache_dir`` is used, and OpenML dataset 42165 is downloaded into it when
      ``cache_dir/train.csv`` is missing.
    n_train: the number of leading rows of each file used for training and for the κ/RIR
      evaluation (the authors use 200). Must be between 1 and min(len(D1), len(D2)).
    cache_dir: the download cache, used only when ``data_dir`` is None.
    fetch: ``url -> bytes``, used only when downloading (defaults to ``urllib``). Tests pass a
      fake here.

  Returns:
    A ``HousePrices`` whose ``x_p``/``x_h`` have shape (n_train, 79) and whose
    ``y_p``/``y_h`` have shape (n_train,).

  Example:
    >>> hp = load_house_prices("../shared/data/house_price")  # doctest: +SKIP
    >>> hp.x_p.shape, hp.x_h_all.shape  # doctest: +SKIP
    ((200, 79), (1151, 79))
  """
  if isinstance(n_train, bool) or not isinstance(n_train, (int, np.integer)) or n_train < 1:
    raise ValueError(f"n_train must be a positive int, got {n_train!r}.")
  if data_dir is None:
    if cache_dir is None:
      raise ValueError(
          "data_dir is None and so is cache_dir; pass data_dir (a folder with D1.csv + D2.csv "
          "or train.csv) or cache_dir (where OpenML dataset 42165 is, or will be, cached).")
    cache = pathlib.Path(cache_dir)
    if not (cache / "train.csv").is_file():
      download_openml_house_prices(cache, fetch=fetch)
    data_dir = cache
  d1, d2, _ = read_d1_d2(data_dir)
  for name, frame in (("D1 (MSZoning != 'RL')", d1), ("D2 (MSZoning == 'RL')", d2)):
    if len(frame) == 0:
      raise ValueError(
          f"split {name} is empty in {str(data_dir)!r}; the table needs rows of both zoning "
          "groups.")
  for name, frame in (("D1", d1), ("D2", d2)):
    missing = [c for c in KAGGLE_COLUMNS if c not in frame.columns]
    if missing:
      raise ValueError(
          f"{name} in {str(data_dir)!r} is missing columns {missing}; pass the 81-column "
          "Kaggle House Prices table (Id, ..., LotArea, ..., SalePrice).")
  # The authors take the feature list from D1's header (all but the two targets).
  features = _feature_columns(list(d1.columns))
  extra = [c for c in features if c not in KAGGLE_COLUMNS]
  if extra:
    raise ValueError(
        f"D1 in {str(data_dir)!r} has unexpected columns {extra}; pass the 81-column Kaggle "
        "table unchanged (the feature dimension must be 79).")
  for name, frame in (("D1", d1), ("D2", d2)):
    if n_train > len(frame):
      raise ValueError(
          f"n_train={n_train} exceeds the {len(frame)} rows of {name}; pass n_train <= "
          f"{min(len(d1), len(d2))}.")
  x_p_all, y_p_all, y_p_mean, y_p_std = preprocess_frame(
      d1, label=LABEL_P, feature_names=features)
  x_h_all, y_h_all, y_h_mean, y_h_std = preprocess_frame(
      d2, label=LABEL_H, feature_names=features)
  return HousePrices(
      x_p=_readonly(x_p_all[:n_train]),
      y_p=_readonly(y_p_all[:n_train]),
      x_h=_readonly(x_h_all[:n_train]),
      y_h=_readonly(y_h_all[:n_train]),
      feature_names=tuple(features),
      x_p_all=_readonly(x_p_all),
      y_p_all=_readonly(y_p_all),
      x_h_all=_readonly(x_h_all),
      y_h_all=_readonly(y_h_all),
      id_p_all=_readonly(d1[ID_COLUMN].to_numpy(dtype=np.int64)),
      id_h_all=_readonly(d2[ID_COLUMN].to_numpy(dtype=np.int64)),
      y_p_mean=y_p_mean, y_p_std=y_p_std, y_h_mean=y_h_mean, y_h_std=y_h_std,
  )


# ------------------------------------------------------------------------------ OpenML


def _urllib_fetch(url: str) -> bytes:
  with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - fixed https URLs
    return response.read()


def parse_arff(text: str) -> tuple[list[str], list[list[str]]]:
  """Parses a dense ARFF file into column names and rows of strings.

  Missing values (``?``) become empty strings, which pandas reads as NaN. Quoted names and
  values (single or double quotes) are unquoted.

  Args:
    text: the ARFF file's text.

  Returns:
    ``(names, rows)``: the attribute names, and one list of ``len(names)`` strings per row.
  """
  names, rows, in_data = [], [], False
  data_lines = []
  for raw in text.splitlines():
    line = raw.strip()
    if not line or line.startswith("%"):
      continue
    if in_data:
      data_lines.append(line)
      continue
    low = line.lower()
    if low.startswith("@attribute"):
      rest = line[len("@attribute"):].strip()
      if rest[:1] in ("'", '"'):
        q = rest[0]
        end = rest.index(q, 1)
        names.append(rest[1:end])
      else:
        names.append(rest.split(None, 1)[0])
    elif low.startswith("@data"):
      in_data = True
  if not names or not in_data:
    raise ValueError("text is not an ARFF file (no @attribute or @data section); pass the "
                     "OpenML ARFF download.")
  reader = csv.reader(data_lines, quotechar="'", escapechar="\\", skipinitialspace=True)
  for i, fields in enumerate(reader):
    if fields and fields[0].startswith("{"):
      raise ValueError("sparse ARFF rows are not supported; pass a dense ARFF file.")
    if len(fields) != len(names):
      raise ValueError(
          f"ARFF data row {i} has {len(fields)} values for {len(names)} attributes; pass an "
          "intact file.")
    rows.append(["" if f == "?" else f.strip('"') for f in fields])
  return names, rows


def download_openml_house_prices(
    cache_dir: PathLike,
    *,
    fetch: Optional[Fetcher] = None,
    data_id: int = OPENML_DATA_ID,
) -> pathlib.Path:
  """Downloads OpenML "house_prices" and writes it as Kaggle-style ``train.csv``.

  The function fetches the dataset description (JSON) and then the ARFF file, and checks the
  ARFF against the description's md5 when one is given. If the table lacks an ``Id`` column,
  one is added as 1..n, which is how Kaggle numbers the rows. The CSV is written atomically.

  Args:
    cache_dir: the directory to write ``train.csv`` into (created if needed).
    fetch: ``url -> bytes`` (defaults to ``urllib``). Inject a fake in tests.
    data_id: the OpenML dataset id (42165 = house_prices).

  Returns:
    The path of the written ``train.csv``.
  """
  fetch = _urllib_fetch if fetch is None else fetch
  cache = pathlib.Path(cache_dir)
  desc_url = OPENML_DESCRIPTION_URL.format(data_id=data_id)
  try:
    desc = json.loads(fetch(desc_url).decode("utf-8"))["data_set_description"]
    file_url = (OPENML_DOWNLOAD_URL.format(file_id=desc["file_id"]) if "file_id" in desc
                else desc["url"])
    payload = fetch(file_url)
  except (OSError, KeyError, ValueError) as e:
    raise FileNotFoundError(
        f"could not download OpenML dataset {data_id} ({type(e).__name__}: {e}); pass "
        "data_dir pointing at D1.csv + D2.csv or train.csv, or put Kaggle's train.csv in "
        f"cache_dir={str(cache)!r}.") from e
  md5 = desc.get("md5_checksum")
  if md5 and hashlib.md5(payload).hexdigest() != md5:
    raise ValueError(
        f"the OpenML download {file_url} fails its md5 check; delete cache_dir "
        f"{str(cache)!r} and retry.")
  names, rows = parse_arff(payload.decode("utf-8"))
  if ID_COLUMN not in names:
    names = [ID_COLUMN, *names]
    rows = [[str(i + 1), *r] for i, r in enumerate(rows)]
  cache.mkdir(parents=True, exist_ok=True)
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(names)
  writer.writerows(rows)
  fd, tmp = tempfile.mkstemp(dir=cache, suffix=".csv.tmp")
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write(buf.getvalue())
  mask = os.umask(0o022)
  os.umask(mask)
  os.chmod(tmp, 0o666 & ~mask)   # the user's umask, not mkstemp's 0600
  target = cache / "train.csv"
  os.replace(tmp, target)
  return target

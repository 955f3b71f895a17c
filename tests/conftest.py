"""Test configuration: float64 everywhere, and the location of the real data.

Real data lives outside the repository. Point ``IMMUJAX_DATA_DIR`` at a directory holding
``house_price/`` and ``mnist/`` (from the project root that is ``../shared/data``); when the
variable is unset the fixtures look there, and reproduction tests skip with a reason when the
data is absent.
"""
import atexit
import os
import pathlib
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_enable_x64", True)

from immujax.runner import devices  # pylint: disable=g-import-not-at-top,wrong-import-position

# The binaries' XLA:CPU compiler options (immujax.runner.devices), here too: the tests then
# run what the binaries run, and compile faster. Subprocesses inherit them.
devices.compiler_flags(os.environ)

_DEFAULT = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The binaries turn JAX's persistent compilation cache on (immujax.runner.devices): the
# tests' binaries, in-process and as subprocesses, use a fresh directory of this session,
# never the user's cache.
_CACHE = tempfile.mkdtemp(prefix="immujax-test-jax-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


def data_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("IMMUJAX_DATA_DIR", _DEFAULT))


@pytest.fixture
def house_dir():
  d = data_dir() / "house_price"
  if not (d / "D1.csv").exists():
    pytest.skip(f"real house-price data not found at {d}; set IMMUJAX_DATA_DIR")
  return d


@pytest.fixture
def mnist_dir():
  d = data_dir() / "mnist"
  if not (d / "train-images-idx3-ubyte.gz").exists():
    pytest.skip(f"real MNIST IDX files not found at {d}; set IMMUJAX_DATA_DIR")
  return d

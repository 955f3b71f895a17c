"""Experiment binaries (absl flags and configs live here, never in the library)."""

import os

# LAPACK (every eigh) runs through the OpenBLAS bundled with scipy, which starts its own
# thread pool. The sweeps already run one computation per core (one simulated device each),
# and the extra BLAS threads oversubscribe them: a 784×784 eigh took 2.5× longer than with
# one thread when measured beside a running sweep. This must be set before jax/scipy load
# OpenBLAS; a value already in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

"""Experiment binaries: flags and config in, one call into ``immujax.studies``, results out."""

import os

# LAPACK (every eigh) runs through the OpenBLAS bundled with scipy, which starts its own
# thread pool; next to XLA's own threads the extra BLAS threads oversubscribe the cores
# (measured, BUILD_NOTES.md). This must be set before jax/scipy load OpenBLAS; a value
# already in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

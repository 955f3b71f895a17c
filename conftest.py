"""Root test configuration: float64 for the doctests of ``immujax`` (``--doctest-modules``).

``tests/conftest.py`` does the same for the test files; the docstring examples need it too
because all spectral math is float64.
"""
import jax

jax.config.update("jax_enable_x64", True)

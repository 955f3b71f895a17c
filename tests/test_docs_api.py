"""The API pages (docs/api/*.rst) list every public name of immujax.

The same check runs inside the docs build (docs/ext/coverage_check.py, on what Sphinx
documented); this test reads the page sources, so a missing name fails the test suite too,
without Sphinx.
"""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _coverage_check():
  spec = importlib.util.spec_from_file_location(
      "coverage_check", ROOT / "docs" / "ext" / "coverage_check.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_public_name_is_on_an_api_page():
  cc = _coverage_check()
  names, modules = cc.documented_in_sources(ROOT / "docs" / "api")
  assert cc.missing_names(names, modules) == []


def test_a_missing_name_or_module_is_reported():
  cc = _coverage_check()
  names, modules = cc.documented_in_sources(ROOT / "docs" / "api")
  assert "immujax.spectral.gram_extremes" in cc.public_symbols()
  missing = cc.missing_names(names - {"immujax.spectral.gram_extremes"},
                             modules - {"immujax.extreme_eigs"})
  assert missing == ["module immujax.extreme_eigs", "immujax.spectral.gram_extremes"]


def test_a_reexport_counts_under_either_path():
  cc = _coverage_check()
  names, modules = cc.documented_in_sources(ROOT / "docs" / "api")
  assert "immujax.covariance" in names                       # documented at the top level
  assert "immujax.spectral.covariance" not in names          # not again under its module
  assert "immujax.spectral.covariance" in cc.public_symbols()

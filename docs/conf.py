"""Sphinx configuration of the immujax docs site.

Build (from the repository root, with the ``docs`` extra installed)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

``-W`` turns every warning into an error. The tutorials (``docs/tutorials/*.md``, MyST
notebooks) are executed during the build on the CPU; the API pages are generated from the
docstrings (``autosummary``), and ``ext/coverage_check.py`` fails the build when a public
name of the library is missing from them.
"""

import os
import pathlib
import sys

_HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))      # the checkout's immujax, not an installed copy
sys.path.insert(0, str(_HERE / "ext"))

import immujax  # pylint: disable=g-import-not-at-top,wrong-import-position

# Tutorials and autodoc import the library in float64, as every binary does.
os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "immujax"
author = "immujax contributors"
copyright = "2025–2026, immujax contributors"  # pylint: disable=redefined-builtin
version = immujax.__version__
release = immujax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
    "coverage_check",
]

master_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}

# -- API reference ---------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
add_module_names = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# The library's docstrings are Google style with unicode math; type annotations that name
# private aliases (``Array = jax.Array``) are not cross-referenced.
nitpicky = False

# -- Notebooks (MyST-NB) ---------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "force"            # every build runs every tutorial
nb_execution_timeout = 240             # seconds per cell
nb_execution_raise_on_error = True     # a failing cell fails the build
nb_execution_show_tb = True
nb_merge_streams = True
nb_render_markdown_format = "myst"   # markdown outputs with tables

# -- HTML ------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"immujax {immujax.__version__}"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "home_page_in_toc": True,
}

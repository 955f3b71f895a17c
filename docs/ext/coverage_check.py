"""Fails the docs build when a public name of immujax is missing from the API pages.

Public names:

* every name in ``immujax.__all__``;
* for every public module (no ``_``-prefixed part in its dotted name): its ``__all__`` when it
  has one, else every function, class and jitted function defined in it whose name does not
  start with ``_``.

A name counts as documented when the API pages document it under its exported path
(``immujax.covariance``) or under any other path that resolves to the same object
(``immujax.spectral.covariance``). Every public module must also have a ``py:module`` entry.
Runs after all pages are read (``env-check-consistency``) and reports each missing name as a
warning, which the docs command's ``-W`` turns into a failed build. To fix a failure, add the
names it lists to the right page under ``docs/api/``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from sphinx.util import logging

LOGGER = logging.getLogger(__name__)
PACKAGE = "immujax"


def _is_public_module(name: str) -> bool:
  return not any(part.startswith("_") for part in name.split("."))


def _defined_here(module) -> list[str]:
  names = []
  for name, obj in vars(module).items():
    if name.startswith("_"):
      continue
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or callable(obj)):
      continue
    if inspect.ismodule(obj):
      continue
    if getattr(obj, "__module__", None) == module.__name__:
      names.append(name)
  return names


def public_modules() -> list[str]:
  package = importlib.import_module(PACKAGE)
  names = [PACKAGE]
  for info in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
    if _is_public_module(info.name):
      names.append(info.name)
  return sorted(names)


def public_symbols() -> dict[str, Any]:
  """``{dotted public name: object}`` for the whole package."""
  symbols = {}
  for module_name in public_modules():
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    names = list(exported) if exported is not None else _defined_here(module)
    for name in names:
      symbols[f"{module_name}.{name}"] = getattr(module, name)
  return symbols


def _resolve(dotted: str):
  parts = dotted.split(".")
  for i in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:i]))
    except ImportError:
      continue
    try:
      for attr in parts[i:]:
        obj = getattr(obj, attr)
    except AttributeError:
      return None
    return obj
  return None


def _check(app, env) -> None:
  del app
  domain = env.get_domain("py")
  documented = set(domain.objects)
  documented_ids = {id(obj) for obj in map(_resolve, documented) if obj is not None}
  missing = []
  for name, obj in sorted(public_symbols().items()):
    if name in documented:
      continue
    # Constants (tuples, dicts, ints) are compared by name only: equal literals share ids.
    if (inspect.isfunction(obj) or inspect.isclass(obj) or callable(obj)) and \
        id(obj) in documented_ids:
      continue
    missing.append(name)
  modules = set(domain.modules)
  missing = [f"module {m}" for m in public_modules() if m not in modules] + missing
  for name in missing:
    LOGGER.warning("coverage_check: %s is public but missing from the API pages; add it to "
                   "the autosummary list of its page under docs/api/", name,
                   type="coverage_check", subtype="missing")
  if not missing:
    LOGGER.info("coverage_check: %d public names and %d modules documented",
                len(public_symbols()), len(public_modules()))


def setup(app):
  app.connect("env-check-consistency", _check)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

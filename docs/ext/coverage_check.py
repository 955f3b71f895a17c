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
import pathlib
import pkgutil
import re
from typing import Any

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


def missing_names(documented: set[str], documented_modules: set[str]) -> list[str]:
  """Public names (and ``module X`` entries) that ``documented`` does not cover."""
  ids = {id(obj) for obj in map(_resolve, documented) if obj is not None}
  missing = [f"module {m}" for m in public_modules() if m not in documented_modules]
  for name, obj in sorted(public_symbols().items()):
    if name in documented:
      continue
    # Constants (tuples, dicts, ints) count by name only: equal literals may share an id.
    if callable(obj) and id(obj) in ids:
      continue
    missing.append(name)
  return missing


def documented_in_sources(api_dir) -> tuple[set[str], set[str]]:
  """Names listed by the ``autosummary`` blocks and modules named by ``automodule`` in
  ``api_dir/*.rst`` — the same coverage read from the sources, without Sphinx (a test)."""
  names, modules = set(), set()
  for path in sorted(pathlib.Path(api_dir).glob("*.rst")):
    current, in_list = None, False
    for line in path.read_text(encoding="utf-8").splitlines():
      if m := re.match(r"\.\. (currentmodule|automodule):: (\S+)", line):
        if m.group(1) == "automodule":
          modules.add(m.group(2))
        else:
          current = m.group(2)
        in_list = False
      elif line.startswith(".. autosummary::"):
        in_list = True
      elif in_list and (m := re.match(r"   ([A-Za-z_][\w.]*)\s*$", line)):
        names.add(f"{current}.{m.group(1)}")
      elif in_list and line and not line.startswith(" "):
        in_list = False
  return names, modules


def _check(app, env) -> None:
  del app
  from sphinx.util import logging  # pylint: disable=g-import-not-at-top
  logger = logging.getLogger(__name__)
  domain = env.get_domain("py")
  missing = missing_names(set(domain.objects), set(domain.modules))
  for name in missing:
    logger.warning("coverage_check: %s is public but missing from the API pages; add it to "
                   "the autosummary list of its page under docs/api/", name,
                   type="coverage_check", subtype="missing")
  if not missing:
    logger.info("coverage_check: %d public names and %d modules documented",
                len(public_symbols()), len(public_modules()))


def setup(app):
  app.connect("env-check-consistency", _check)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

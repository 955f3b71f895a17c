"""The absl edge of every binary: flags in, one-line errors out, ``--help`` from the config.

A binary defines its flags in ``define(fv)`` and reads them in ``main(fv)``; :func:`run` does
the rest:

* ``--help`` (``-h``, ``--helpfull``) prints the binary's docstring, its flags and **every
  config field** with its default and a one-line meaning, and exits 0. The meanings are the
  comments on the lines of the config file that set the fields (:func:`field_meanings`), so
  the help is generated from the config, never kept by hand beside it.
* A flag that does not parse, an unknown ``--config.<field>`` (with the closest field:
  ``--config.stpes: unknown field; did you mean --config.steps?``), and any known error of
  ``main`` (``ValueError``, an OS error, a layout error) print ONE line, ``error: ...``, to
  stderr and exit with status 2. An OS error names the flag whose path it concerns
  (``--workdir=/x: Permission denied (/x/config.json)``). ``--verbose`` shows the traceback.
* Whatever ``main`` raises (also Ctrl-C), workdirs claimed by :mod:`immujax.runner.workdir`
  in which nothing was saved yet are put back as they were.

``run(define, main, argv=[...], flag_values=flags.FlagValues())`` runs a binary in-process
(tests); it ends with ``SystemExit`` like the program.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import pathlib
import re
import sys
import traceback
from typing import Any, Callable, Optional, Sequence

from absl import flags

from immujax.runner import checkpoints
from immujax.runner import devices
from immujax.runner import distributed
from immujax.runner import workdir as workdir_lib

__all__ = [
    "data_dir",
    "defaults",
    "Definer",
    "echo",
    "field_meanings",
    "field_paths",
    "launch",
    "load_config",
    "meaning_of",
    "os_error_line",
    "overrides",
    "run",
]

KNOWN_ERRORS = (ValueError, OSError)
HELP_ARGS = ("--help", "-h", "-?", "--helpfull", "--helpshort")


# ------------------------------------------------------------------------- defining flags


class Definer:
  """``DEFINE_*`` on one ``FlagValues`` (so a binary can also be run in-process)."""

  def __init__(self, fv: flags.FlagValues, argv: Sequence[str]):
    self.fv, self.argv = fv, list(argv)

  def string(self, name, default, help_text, **kw):
    return flags.DEFINE_string(name, default, help_text, flag_values=self.fv, **kw)

  def integer(self, name, default, help_text, **kw):
    return flags.DEFINE_integer(name, default, help_text, flag_values=self.fv, **kw)

  def boolean(self, name, default, help_text, **kw):
    return flags.DEFINE_bool(name, default, help_text, flag_values=self.fv, **kw)

  def enum(self, name, default, values, help_text, **kw):
    return flags.DEFINE_enum(name, default, values, help_text, flag_values=self.fv, **kw)

  def config(self, default: Optional[str], help_text: str = "Experiment configuration.",
             **kw):
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    return config_flags.DEFINE_config_file("config", default, help_text, flag_values=self.fv,
                                           sys_argv=self.argv, **kw)

  def workdir(self, help_text: str = "Output directory (created if absent).") -> None:
    self.string("workdir", None, help_text)
    self.boolean("move_aside", False,
                 "If --workdir already holds a run, rename it to WORKDIR.old-N (nothing is "
                 "deleted) and start afresh, instead of resuming it or refusing.")

  def house_dir(self, usage: str = "", also: str = "") -> None:
    """``--data_dir``: the house-price data (its environment defaults: :func:`data_dir`)."""
    self.string("data_dir", None, f"{usage}Directory with D1.csv/D2.csv or Kaggle's train.csv "
                f"(default: $IMMUJAX_HOUSE_DIR, else $IMMUJAX_DATA_DIR/house_price{also}).")

  def mnist_dir(self, usage: str, also: str = "") -> None:
    """``--mnist_dir``: the MNIST IDX folder (its environment defaults: :func:`data_dir`)."""
    self.string("mnist_dir", None, f"{usage} (default: $IMMUJAX_MNIST_DIR, else "
                f"$IMMUJAX_DATA_DIR/mnist{also}).")

  def max_chunks(self) -> None:
    self.integer("max_chunks", None,
                 "Stop after this many chunks, as if killed (for resume tests).")

  def distributed(self) -> None:
    self.string("coordinator_address", None,
                "host:port of process 0, for a run as several processes (jax.distributed); "
                "give it with --num_processes and --process_id. Absent on Slurm or a TPU "
                "pod: detected from the environment.")
    self.integer("num_processes", None, "Number of processes of a multi-process run.")
    self.integer("process_id", None, "This process's index, 0 … num_processes − 1.")
    self.integer("distributed_timeout_s", 300,
                 "Seconds to wait for the other processes to connect, and without a "
                 "heartbeat before a process counts as dead (the others then exit).")


def launch(fv) -> distributed.Launch:
  """The multi-process launch the flags ask for."""
  return distributed.Launch(fv.coordinator_address, fv.num_processes, fv.process_id,
                            fv.distributed_timeout_s)


def overrides(fv, name: str = "config") -> dict:
  """``{field path: value}`` of the ``--config.<field>=value`` flags given."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:
    return dict(config_flags.get_override_values(fv[name]))
  except (KeyError, AttributeError, TypeError):
    return {}


def defaults(fv, name: str = "config") -> dict:
  """The config file's own values (``--config=path[:variant]`` without the overrides)."""
  try:
    return load_config(fv[name].config_filename).to_dict()
  except Exception:  # pylint: disable=broad-except
    return {}


def data_dir(value: Optional[str], env_var: str, subdir: str) -> Optional[pathlib.Path]:
  """A data directory from a flag, else ``$<env_var>``, else ``$IMMUJAX_DATA_DIR/<subdir>``."""
  if value:
    return pathlib.Path(value)
  if os.environ.get(env_var):
    return pathlib.Path(os.environ[env_var])
  if os.environ.get("IMMUJAX_DATA_DIR"):
    return pathlib.Path(os.environ["IMMUJAX_DATA_DIR"]) / subdir
  return None


def echo(text: str = "") -> None:
  """What a binary prints: one line to stdout, flushed (progress stays readable)."""
  print(text, flush=True)


# ------------------------------------------------------------------------ the config help


def load_config(spec: str):
  """``get_config(variant)`` of ``path[:variant]`` (as ``--config`` reads it)."""
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_immujax_help_config", path)
  if module_spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f"--config={spec!r}: no such config file.")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def field_paths(cfg, prefix: str = "") -> list[str]:
  """Every leaf field of a ConfigDict as a dotted path."""
  out = []
  for k in sorted(cfg.keys()) if hasattr(cfg, "keys") else []:
    v = cfg[k]
    if hasattr(v, "keys") and not isinstance(v, dict) or isinstance(v, dict) and v:
      out += field_paths(v, f"{prefix}{k}.")
    else:
      out.append(f"{prefix}{k}")
  return out


def _get(cfg, path: str):
  for part in path.split("."):
    cfg = cfg[part]
  return cfg


_ATTR = re.compile(r"^\s*(?:c|cfg|config)\.([\w.]+)\s*=(?!=)")
_KEYWORD = re.compile(r"^\s*(\w+)\s*=(?!=)")
_KEY = re.compile(r"""^\s*["'](\w+)["']\s*:""")
_PARAM = re.compile(r"^\s*(?:def \w+\()?\s*(?:\*,\s*)?(\w+)\s*[,=)]")


def field_meanings(source: str) -> dict[str, str]:
  r"""``{field path: meaning}`` from the comments of a config file's source.

  A field's meaning is the comment on the line that sets it (``c.steps = 30  # meaning``,
  ``steps=30,  # meaning`` inside ``ConfigDict(dict(...))``, ``"steps": 30,  # meaning``, a
  parameter of a helper on its own line) or, without one, the first line of the comment block
  right above it. Fields inside ``c.<name> = ConfigDict(...)`` are keyed ``<name>.<field>``;
  a helper's parameters ``()<name>`` and fields of nested dicts also ``*<name>`` (found by
  :func:`meaning_of` after the paths).

  Example:
    >>> field_meanings("c.steps = 30  # GD steps\n# chunk size\nc.chunk_steps = 10")
    {'steps': 'GD steps', 'chunk_steps': 'chunk size'}
  """
  out: dict[str, str] = {}
  above: list[str] = []
  prefix, depth = "", 0
  for line in source.splitlines():
    if line.strip().startswith("#"):
      above.append(line.strip().lstrip("#").strip())
      continue
    code, _, comment = line.partition("  #")
    comment = comment.strip().lstrip("#").strip()
    meaning = comment or (above[0] if above else "")
    above = []
    keys = []
    m = _ATTR.match(code)
    if m:
      keys.append(m.group(1))
      rest = code[m.end():]
      if "ConfigDict" in rest and depth <= 0:
        depth = rest.count("(") + rest.count("{") - rest.count(")") - rest.count("}")
        prefix = f"{m.group(1)}." if depth > 0 else ""
        rest = ""
    elif prefix and depth > 0:
      m = _KEYWORD.match(code) or _KEY.match(code)
      if m:
        keys += [prefix + m.group(1), "*" + m.group(1)]
      depth += code.count("(") + code.count("{") - code.count(")") - code.count("}")
      if depth <= 0:
        prefix = ""
    else:
      m = _PARAM.match(code)
      if m and comment:
        keys.append("()" + m.group(1))
    for key in keys:
      if meaning:
        out.setdefault(key, meaning)
  return out


def meaning_of(path: str, meanings: dict[str, str]) -> str:
  """The meaning of a dotted field path: by the path or a suffix of it, then a helper's
  parameter or a nested dict's field of its name, then its parent's meaning."""
  parts = path.split(".")
  leaf = parts[-1]
  for key in [".".join(parts[i:]) for i in range(len(parts))] + [f"(){leaf}", f"*{leaf}"]:
    if meanings.get(key):
      return meanings[key]
  for j in range(len(parts) - 1, 0, -1):
    m = meanings.get(".".join(parts[:j])) or meanings.get(f"*{parts[j - 1]}")
    if m:
      return m
  return ""


def _fmt_default(v) -> str:
  if hasattr(v, "to_dict"):
    v = v.to_dict()
  text = repr(tuple(v) if isinstance(v, list) else v)
  return text if len(text) <= 60 else text[:57] + "..."


def config_help(spec: str) -> list[str]:
  """One line per config field: ``--config.<field>=<default>  <meaning>``."""
  cfg = load_config(spec)
  meanings = field_meanings(pathlib.Path(spec.partition(":")[0]).read_text())
  lines = []
  for path in field_paths(cfg):
    lines.append(f"  --config.{path}={_fmt_default(_get(cfg, path))}"
                 f"    {meaning_of(path, meanings) or '(no description)'}")
  return lines


def _config_spec(fv, argv: Sequence[str]) -> Optional[str]:
  for a in argv:
    if a.startswith("--config="):
      return a.split("=", 1)[1]
  if "config" not in fv:
    return None
  try:
    return fv["config"].config_filename
  except Exception:  # pylint: disable=broad-except
    text = (getattr(fv["config"], "default_as_str", None) or "").strip("'\"")
    return text if text and text != "None" else None


def help_text(doc: str, fv, own: Sequence[str], argv: Sequence[str]) -> str:
  """The ``--help`` page: docstring, the binary's flags, every config field."""
  lines = [doc.strip(), "", "flags:"]
  for name in own:
    fl = fv[name]
    default = "" if fl.default is None or name == "config" else f" (default: {fl.default!r})"
    lines.append(f"  --{name}: {fl.help}{default}")
  spec = _config_spec(fv, argv)
  if spec:
    lines += ["", f"config fields of --config={spec} (override with --config.<field>=value):"]
    lines += config_help(spec)
  lines += ["", "On a bad flag or input the binary prints one line, error: ..., and exits with "
            "status 2 (--verbose: the traceback)."]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- the errors


def _one_line(text: str) -> str:
  """The first line of ``text`` and, if it embeds a traceback, its last line."""
  lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
  if not lines:
    return ""
  if len(lines) > 1 and any(ln.startswith("Traceback") for ln in lines):
    head = lines[0]
    return f"{head} {lines[-1]}" if head != lines[-1] else head
  return " ".join(lines)


def _unknown_field(argv: Sequence[str], fv) -> Optional[str]:
  """``--config.stpes: unknown field; did you mean --config.steps?`` for a bad override."""
  spec = _config_spec(fv, argv)
  if spec is None:
    return None
  try:
    cfg = load_config(spec)
  except Exception:  # pylint: disable=broad-except
    return None
  known = field_paths(cfg)
  nodes = set(known) | {".".join(p.split(".")[:i]) for p in known
                        for i in range(1, p.count(".") + 1)}
  for a in argv:
    m = re.match(r"^--(?:no)?config\.([\w.]+)", a)
    if m and m.group(1) not in nodes:
      close = difflib.get_close_matches(m.group(1), sorted(nodes), n=1)
      hint = f"; did you mean --config.{close[0]}?" if close else (
          "; --help lists every field.")
      return f"--config.{m.group(1)}: unknown field{hint}"
  return None


def os_error_line(e: OSError, fv) -> str:
  """An OS error as one line naming the flag whose path it concerns."""
  target = getattr(e, "filename", None)
  what = e.strerror or type(e).__name__
  if not target:
    return _one_line(str(e)) or what
  target = os.path.abspath(os.fspath(target))
  best = None
  for name in list(fv):
    try:
      value = fv[name].value
    except Exception:  # pylint: disable=broad-except
      continue
    if not isinstance(value, str) or not value or "/" not in value and not os.path.exists(value):
      continue
    path = os.path.abspath(value)
    if (target == path or target.startswith(path.rstrip("/") + "/")) and (
        best is None or len(path) > len(best[1])):
      best = (name, path, value)
  if best is None:
    return f"{what}: {target}" if e.strerror else _one_line(str(e))
  return f"--{best[0]}={best[2]}: {what} ({target})"


def _fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _verbose(argv: Sequence[str]) -> bool:
  return any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1")
             for a in argv)


def _flag_error(e: BaseException, argv, fv) -> str:
  return _unknown_field(argv, fv) or _one_line(str(e))


# ------------------------------------------------------------------------------ the run


def run(define: Callable[[Definer], None], main: Callable[[Any], Any], *,
        doc: str = "", argv: Optional[Sequence[str]] = None,
        flag_values: Optional[flags.FlagValues] = None) -> None:
  """Defines the flags, handles ``--help``, parses, runs ``main(fv)``; one-line errors.

  Args:
    define: defines the binary's flags on the :class:`Definer` it is given.
    main: the binary's body, called with the parsed ``FlagValues``.
    doc: the binary's docstring (the head of ``--help``).
    argv: the command line (default ``sys.argv``).
    flag_values: where to define the flags (default absl's global ``FLAGS``).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv if argv is None else argv)
  fv = flags.FLAGS if flag_values is None else flag_values
  wants_help = any(a in HELP_ARGS for a in argv[1:])
  clean = [a for a in argv if a not in HELP_ARGS]
  if wants_help:
    clean = [a for a in clean if not a.startswith(("--config.", "--noconfig."))]
  before = set(fv)
  try:
    define(Definer(fv, clean))
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    if _verbose(argv):
      raise
    _fail(_flag_error(e, argv, fv))
  own = [n for n in fv if n not in before]
  if "verbose" not in fv:
    flags.DEFINE_bool("verbose", False, "On error, show the full traceback, not one line.",
                      flag_values=fv)
  if wants_help:
    try:
      fv(clean, known_only=True)
    except flags.Error:
      pass
    print(help_text(doc, fv, own + ["verbose"], clean))
    sys.exit(0)
  try:
    rest = fv(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    if _verbose(argv):
      raise
    _fail(_flag_error(e, argv, fv))
  logging.set_verbosity(logging.WARNING)   # orbax's INFO lines would drown the progress
  jax.config.update("jax_enable_x64", True)  # all spectral math in float64
  devices.compiler_flags(os.environ)        # before any computation starts XLA
  # Compile once per machine: JAX's persistent cache in a user directory (devices.py).
  cache_line = devices.compilation_cache(os.environ)
  if not ("process_id" in fv and fv["process_id"].value):   # process 0 (or alone) says it
    echo(cache_line)
  try:
    if len(rest) > 1:
      raise ValueError(f"unexpected positional arguments {rest[1:]}; every option is a --flag.")
    main(fv)
  except BaseException as e:  # pylint: disable=broad-except
    if isinstance(e, SystemExit) and not e.code:
      workdir_lib.forget()
      raise
    kept = workdir_lib.kept()
    workdir_lib.release()
    known = isinstance(e, KNOWN_ERRORS) or isinstance(e, checkpoints.LayoutError)
    line = (os_error_line(e, fv) if isinstance(e, OSError) else _one_line(str(e))) or \
        type(e).__name__
    if distributed.is_initialized():
      # Several processes: exit now. The normal exit would wait at jax.distributed's
      # shutdown barrier for processes that may be dead or stuck.
      if fv.verbose or not known:
        traceback.print_exc()
      print(f"error: process {jax.process_index()}: {line}", file=sys.stderr)
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(2 if known else 1)
    if fv.verbose or isinstance(e, SystemExit):
      raise
    if known:
      _fail(line)
    if isinstance(e, KeyboardInterrupt):
      print("error: interrupted; " + (
          f"rerun the same command to resume from {kept[0]}." if kept
          else "nothing was saved, the workdir is as it was."), file=sys.stderr)
      sys.stdout.flush()
      sys.stderr.flush()
      # Not sys.exit: tearing the interpreter down while XLA is still compiling on its own
      # threads can crash (observed: SIGSEGV after Ctrl-C during compilation).
      os._exit(130)
    raise
  workdir_lib.forget()
  sys.exit(0)

"""Plumbing shared by the experiment binaries: float64, atomic outputs, progress with ETA.

Bad input at the binary edge (issue 13):

* :func:`run` replaces ``absl.app.run``. A known error (``ValueError``, a missing file or
  directory, a config mismatch, a flag that does not parse) prints ONE line,
  ``error: ...``, to stderr and exits with status 2. ``--verbose`` shows the traceback.
* ``validate_*`` check flags and config fields (each message names the flag and the fix);
  binaries call them before touching the workdir.
* :func:`claim_workdir` writes ``config.json`` (after validation) and remembers what it
  created; if the run then fails before its first checkpoint, :func:`run` puts the workdir
  back as it found it (no ``config.json``, no empty ``checkpoints/``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np

from immujax import training


def enable_float64() -> None:
  """All spectral math runs in float64 (call at program start, before creating arrays).

  Also quiets orbax's per-checkpoint INFO logging so progress lines stay readable.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  jax.config.update("jax_enable_x64", True)


def data_dir_from(flag_value: str | None, env_var: str, subdir: str) -> pathlib.Path | None:
  """A data directory from a flag, else ``$IMMUJAX_DATA_DIR/<subdir>`` or ``$<env_var>``."""
  if flag_value:
    return pathlib.Path(flag_value)
  if os.environ.get(env_var):
    return pathlib.Path(os.environ[env_var])
  if os.environ.get("IMMUJAX_DATA_DIR"):
    return pathlib.Path(os.environ["IMMUJAX_DATA_DIR"]) / subdir
  return None


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def _atomic_write(path: pathlib.Path, write) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    # mkstemp creates 0600 files; outputs get the mode an ordinary open() would give them.
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def to_jsonable(x: Any) -> Any:
  """Arrays → lists, NaN/inf → None (strict JSON), recursively."""
  if isinstance(x, dict):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    return to_jsonable(np.asarray(x).tolist())
  if isinstance(x, (np.floating, float)):
    return float(x) if np.isfinite(x) else None
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def write_json(path: pathlib.Path, obj: Any) -> None:
  data = json.dumps(to_jsonable(obj), indent=2, allow_nan=False).encode()
  _atomic_write(pathlib.Path(path), lambda f: f.write(data))


def write_text(path: pathlib.Path, text: str) -> None:
  _atomic_write(pathlib.Path(path), lambda f: f.write(text.encode()))


def save_figure(path: pathlib.Path, fig) -> None:
  """Saves a matplotlib figure as PNG atomically and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  _atomic_write(pathlib.Path(path), lambda f: fig.savefig(f, format="png", dpi=120,
                                                          bbox_inches="tight"))
  plt.close(fig)


def matplotlib_agg():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _fmt_seconds(s: float) -> str:
  s = int(round(s))
  return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:d}:{s % 60:02d}"


class ProgressPrinter:
  """Prints one line per chunk: a bar, steps, elapsed, ETA and an optional summary.

  Before the first chunk (``training.run_chunked`` calls :meth:`start`) it says whether the
  run starts fresh or resumes, and that the first chunk compiles, so something is printed
  before compilation. The first ETA of a process includes compilation and is printed as an
  upper bound (``ETA ≤``); later ones exclude the first chunk. ``wall_time`` is the whole
  run's wall time so far (earlier, killed processes included) when the driver knows it.
  """

  def __init__(self, label: str, summarize=None, stream=sys.stdout):
    self.label, self.summarize, self.stream = label, summarize, stream
    self.start_time = time.perf_counter()
    self.wall_time = math.nan

  def start(self, p: training.Progress) -> None:
    self.wall_time = p.wall_time
    if p.step >= p.total:
      what = f"resuming from step {p.step}: all {p.total} steps are done"
    elif p.step > 0:
      what = (f"resuming from step {p.step} of {p.total}; compiling the first chunk "
              "(no ETA until it is done)")
    else:
      what = f"starting {p.total} steps; compiling the first chunk (no ETA until it is done)"
    print(f"[{self.label}] {what}", file=self.stream, flush=True)

  def __call__(self, p: training.Progress) -> None:
    self.wall_time = p.wall_time
    frac = p.step / p.total
    bar = "#" * int(24 * frac) + "." * (24 - int(24 * frac))
    extra = f"  {self.summarize(p.metrics)}" if self.summarize else ""
    if not math.isfinite(p.eta):
      eta = "ETA after first chunk"
    else:
      eta = f"ETA {'≤ ' if p.eta_is_bound else ''}{_fmt_seconds(p.eta)}"
    print(f"[{self.label}] [{bar}] {p.step}/{p.total} steps  elapsed "
          f"{_fmt_seconds(time.perf_counter() - self.start_time)}  {eta}{extra}",
          file=self.stream, flush=True)


def mean_std(values) -> tuple[float, float]:
  """Mean and sample std (ddof=1) of ``values``; the std is nan for a single value."""
  v = np.asarray(values, dtype=float)
  return float(np.mean(v)), float(np.std(v, ddof=1)) if v.size > 1 else math.nan


def fmt_pm(values, digits: int = 4) -> str:
  """``"mean ± std"``, or the value alone when there is one (no fake ``± 0``)."""
  v = np.asarray(values, dtype=float).ravel()
  m, s = mean_std(v)
  if v.size == 1:
    return f"{m:.{digits}g}"
  return f"{m:.{digits}g} ± {s:.{digits}g}"


# ------------------------------------------------------------------- validation of flags


def _is_int(value) -> bool:
  return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def validate_positive_int(value, name: str, *, allow_none: bool = False) -> int | None:
  """Returns ``value`` if it is an int >= 1, else raises a ValueError naming ``name``."""
  if value is None and allow_none:
    return None
  if not _is_int(value) or value < 1:
    raise ValueError(f"{name}={value!r} must be a positive integer; pass e.g. {name}=1.")
  return int(value)


def validate_nonnegative_int(value, name: str) -> int:
  """Returns ``value`` if it is an int >= 0, else raises a ValueError naming ``name``."""
  if not _is_int(value) or value < 0:
    raise ValueError(f"{name}={value!r} must be an integer >= 0.")
  return int(value)


def validate_positive_float(value, name: str) -> float:
  """Returns ``value`` if it is a finite number > 0, else raises a ValueError naming it."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
      or not math.isfinite(value) or value <= 0:
    raise ValueError(f"{name}={value!r} must be a finite number > 0.")
  return float(value)


def validate_choice(value, name: str, choices: Sequence[Any]) -> Any:
  """Returns ``value`` if it is one of ``choices``, else raises a ValueError naming them."""
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}.")
  return value


def validate_subset(values, name: str, choices: Sequence[str]) -> tuple:
  """A non-empty, duplicate-free tuple of elements of ``choices``.

  A string, or a tuple element, holding commas is split: ``--config.methods=ours,imma``
  reaches the config as ``("ours,imma",)`` and means ``("ours", "imma")``.
  """
  if isinstance(values, str):
    values = (values,)
  values = tuple(v for x in values
                 for v in ([p.strip() for p in x.split(",")] if isinstance(x, str) else [x])
                 if v != "")
  bad = [v for v in values if v not in choices]
  if bad or not values:
    raise ValueError(f"{name}={','.join(map(str, values)) or '()'}: "
                     f"{'unknown ' + ', '.join(map(repr, bad)) if bad else 'empty'}; choose "
                     f"one or more of {', '.join(choices)} (comma-separated).")
  if len(set(values)) != len(values):
    raise ValueError(f"{name}={','.join(values)} lists a value twice; list each once.")
  return values


def validate_run_fields(c, prefix: str = "--config.") -> None:
  """The run fields every linear binary's config shares: clip_factor, imma_steps, init.

  ``imma_steps`` must be positive when ``c.methods`` includes IMMA, else non-negative.
  """
  validate_positive_float(c.clip_factor, f"{prefix}clip_factor")
  if "imma" in tuple(c.methods):
    validate_positive_int(c.imma_steps, f"{prefix}imma_steps")
  else:
    validate_nonnegative_int(c.imma_steps, f"{prefix}imma_steps")
  validate_choice(c.init, f"{prefix}init", ("orthogonal", "identity", "torch_default"))


def validate_steps(steps, chunk_steps, prefix: str = "--config.") -> None:
  """``steps`` and ``chunk_steps`` positive ints, ``steps`` a multiple of ``chunk_steps``."""
  validate_positive_int(steps, f"{prefix}steps")
  validate_positive_int(chunk_steps, f"{prefix}chunk_steps")
  if steps % chunk_steps:
    raise ValueError(
        f"{prefix}steps={steps} must be a multiple of {prefix}chunk_steps={chunk_steps}; "
        f"pass e.g. {prefix}steps={max(chunk_steps, steps // chunk_steps * chunk_steps)}.")


def validate_workdir(workdir) -> pathlib.Path:
  """``--workdir`` as a path; refuses an empty value and an existing non-directory."""
  if not workdir:
    raise ValueError("--workdir is empty; pass the output directory.")
  path = pathlib.Path(workdir)
  if path.exists() and not path.is_dir():
    raise NotADirectoryError(f"--workdir {str(path)!r} is a file; pass a directory.")
  for parent in path.parents:
    if parent.exists():
      if not parent.is_dir():
        raise NotADirectoryError(f"--workdir {str(path)!r}: {str(parent)!r} is a file.")
      break
  return path


def validate_data_dir(path, flag: str) -> pathlib.Path | None:
  """An existing directory given by ``flag`` (None passes through)."""
  if path is None:
    return None
  path = pathlib.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"{flag}={str(path)!r} is not a directory; pass the folder "
                            "holding the data files.")
  return path


# ------------------------------------------------------------------------ the workdir


@dataclasses.dataclass
class _Claim:
  workdir: pathlib.Path
  created: pathlib.Path | None       # topmost directory this run created (None: it existed)
  old_config: bytes | None           # config.json's bytes before the run (None: absent)
  checkpoints_existed: bool
  old_steps: frozenset


_CLAIMS: list[_Claim] = []


def _step_dirs(directory: pathlib.Path) -> frozenset:
  if not directory.is_dir():
    return frozenset()
  return frozenset(p.name for p in directory.iterdir() if p.name.isdigit())


def claim_workdir(workdir: pathlib.Path, config: dict, extra: dict | None = None) -> None:
  """Records the run's config in ``workdir/config.json``, or checks it on resume.

  Call it after every flag and config field has been validated. It remembers what it
  created; if the program then fails before its first checkpoint, :func:`run` (or
  :func:`release_workdirs`) restores the workdir: the directory is removed if this call
  created it, otherwise ``config.json`` gets its old bytes back (or is removed) and a
  ``checkpoints/`` directory without any saved step is removed if it was not there before.

  Raises:
    ValueError: if the workdir holds checkpoints of a run with a different config (resuming
      them would restore arrays of the wrong shapes or mix two experiments).
    NotADirectoryError: if ``workdir`` is a file.
  """
  workdir = validate_workdir(workdir)
  record = {"config": to_jsonable(config), **(extra or {})}
  path = workdir / "config.json"
  ckpt_dir = workdir / "checkpoints"
  old_bytes = path.read_bytes() if path.is_file() else None
  if old_bytes is not None and _step_dirs(ckpt_dir):
    try:
      old = json.loads(old_bytes).get("config")
    except (ValueError, AttributeError) as e:
      raise ValueError(f"--workdir {workdir}: config.json is not valid JSON ({e}); use a fresh "
                       "--workdir, or delete it to start over.") from e
    if old != record["config"]:
      changed = sorted(k for k in set(old or {}) | set(record["config"])
                       if (old or {}).get(k) != record["config"].get(k))
      raise ValueError(
          f"--workdir {workdir} holds a run with a different config (changed: {changed}); "
          "use a fresh --workdir, or delete it to start over.")
  created = None
  for d in (workdir, *workdir.parents):
    if d.exists():
      break
    created = d
  claim = _Claim(workdir, created, old_bytes, ckpt_dir.exists(), _step_dirs(ckpt_dir))
  workdir.mkdir(parents=True, exist_ok=True)
  _CLAIMS.append(claim)
  write_json(path, record)


def release_workdirs() -> None:
  """Restores every claimed workdir in which no checkpoint was saved since the claim."""
  while _CLAIMS:
    c = _CLAIMS.pop()
    ckpt_dir = c.workdir / "checkpoints"
    if _step_dirs(ckpt_dir) - c.old_steps:
      continue   # a checkpoint was written: keep everything, rerunning resumes from it
    if c.created is not None:
      shutil.rmtree(c.created, ignore_errors=True)
      continue
    path = c.workdir / "config.json"
    if c.old_config is None:
      path.unlink(missing_ok=True)
    elif not path.is_file() or path.read_bytes() != c.old_config:
      _atomic_write(path, lambda f, b=c.old_config: f.write(b))
    if not c.checkpoints_existed and ckpt_dir.is_dir():
      shutil.rmtree(ckpt_dir, ignore_errors=True)


def forget_workdirs() -> None:
  """Marks every claim as kept (e.g. once results are written); used by tests."""
  _CLAIMS.clear()


# --------------------------------------------------------------------- the binary edge

KNOWN_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                PermissionError, FileExistsError)


def _one_line(text: str) -> str:
  """The first line of ``text`` and, if it embeds a traceback, its last line."""
  lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
  if not lines:
    return ""
  if len(lines) > 1 and any(ln.startswith("Traceback") for ln in lines):
    head = lines[0]
    return f"{head} {lines[-1]}" if head != lines[-1] else head
  return " ".join(lines)


def _verbose_requested(argv: Sequence[str]) -> bool:
  return any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1")
             for a in argv)


def _fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _flag_error(e: BaseException, argv: Sequence[str]) -> str:
  """One line for a flag that does not parse (absl) or names an unknown config field."""
  if isinstance(e, (AttributeError, KeyError)):
    # ml_collections raises these for --config.<field> overrides of unknown fields.
    key = str(e).strip("\"' ")
    bad = [a for a in argv[1:] if a.startswith("--config.") and key and key in a]
    where = f"flag {bad[0]}: " if bad else ""
    return (f"{where}the config has no field {key!r}; check the spelling (the config file "
            "lists the fields).")
  return _one_line(str(e))


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors (``error: flag --x: ...``, exit status 2)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    if _verbose_requested(argv):
      raise
    _fail(_flag_error(e, argv))
  return []  # unreachable


def run(main: Callable[[list[str]], Any], *, define_flags: Callable[[], None] | None = None,
        known_errors: Iterable[type[BaseException]] = KNOWN_ERRORS) -> None:
  """``absl.app.run(main)`` with one-line errors and a clean workdir on early failure.

  * A flag that does not parse (also an unknown ``--config.<field>``, which
    ``config_flags`` reports while the flags are defined, so pass ``define_flags``), and
    any of ``known_errors`` raised by ``main``, print ``error: <message>`` (one line) to
    stderr and exit with status 2. With ``--verbose`` the traceback is shown instead.
  * Whatever ``main`` raises (also Ctrl-C), workdirs claimed with :func:`claim_workdir` in
    which no checkpoint was saved yet are restored first (:func:`release_workdirs`).
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if define_flags is not None:
    try:
      define_flags()
    except (flags.Error, AttributeError, KeyError) as e:
      if _verbose_requested(sys.argv):
        raise
      _fail(_flag_error(e, sys.argv))
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "On error, show the full traceback, not one line.")
  known = tuple(known_errors)

  def wrapped(argv):
    try:
      return main(argv)
    except BaseException as e:  # pylint: disable=broad-except
      kept = [c.workdir for c in _CLAIMS
              if _step_dirs(c.workdir / "checkpoints") - c.old_steps]
      release_workdirs()
      if _distributed():
        # Several processes: exit now. The normal exit would wait at jax.distributed's
        # shutdown barrier for processes that may be dead or stuck.
        if flags.FLAGS.verbose or not isinstance(e, known):
          traceback.print_exc()
        print(f"error: process {jax.process_index()}: "
              f"{_one_line(str(e)) or type(e).__name__}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2 if isinstance(e, known) else 1)
      if flags.FLAGS.verbose:
        raise
      if isinstance(e, known):
        _fail(_one_line(str(e)) or type(e).__name__)
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

  app.run(wrapped, flags_parser=_parse_flags)


# ------------------------------------------------------- several processes (jax.distributed)

# Environment variables that mean "a cluster launched this process": with none of the three
# flags given, jax.distributed.initialize() then finds the coordinator by itself.
_CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS", "CLOUD_TPU_TASK_ID")


def define_distributed_flags() -> None:
  """Defines ``--coordinator_address``, ``--num_processes``, ``--process_id`` and a timeout."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string(
      "coordinator_address", None, "host:port of process 0, for a run as several processes "
      "(jax.distributed); give it with --num_processes and --process_id. Absent on Slurm or a "
      "TPU pod: detected from the environment.")
  flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index, 0 … num_processes − 1.")
  flags.DEFINE_integer(
      "distributed_timeout_s", 300, "Seconds to wait for the other processes to connect, and "
      "without a heartbeat before a process counts as dead (the others then exit).")


def validate_distributed(address, num_processes, process_id, timeout_s) -> bool:
  """Checks the three flags together; True if they ask for a multi-process run."""
  given = [v is not None for v in (address, num_processes, process_id)]
  validate_positive_int(timeout_s, "--distributed_timeout_s")
  if not any(given):
    return False
  if not all(given):
    missing = [n for n, g in zip(("--coordinator_address", "--num_processes", "--process_id"),
                                 given) if not g]
    raise ValueError(f"{', '.join(missing)} missing: --coordinator_address, --num_processes "
                     "and --process_id go together; pass all three, or none.")
  host, sep, port = str(address).rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"--coordinator_address={address!r} must be host:port, e.g. "
                     "localhost:12345 (the address of process 0).")
  validate_positive_int(num_processes, "--num_processes")
  if not _is_int(process_id) or not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id!r} must be in 0 … {num_processes - 1} "
                     f"(--num_processes={num_processes}).")
  return True


def init_distributed() -> None:
  """``jax.distributed.initialize`` from the flags (or the cluster's environment).

  Call before any JAX computation. With none of the three flags and no cluster in the
  environment this does nothing (one process). The CPU collectives implementation is set
  to gloo explicitly: a multi-process CPU run needs one to exchange the small results.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  address, num, pid = f.coordinator_address, f.num_processes, f.process_id
  timeout = f.distributed_timeout_s
  explicit = validate_distributed(address, num, pid, timeout)
  if not explicit and not any(os.environ.get(v) for v in _CLUSTER_ENV):
    return
  if not explicit and os.environ.get("SLURM_JOB_ID") and int(
      os.environ.get("SLURM_NTASKS", os.environ.get("SLURM_NPROCS", "1"))) <= 1:
    return   # one Slurm task: nothing to coordinate
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # A dead process is noticed within `timeout` (heartbeats); at a normal exit the others
  # wait up to 5 minutes for process 0, which writes the results last.
  kwargs = dict(initialization_timeout=timeout, heartbeat_timeout_seconds=timeout,
                shutdown_timeout_seconds=max(timeout, 300))
  if explicit:
    jax.distributed.initialize(address, num, pid, **kwargs)
  else:
    jax.distributed.initialize(**kwargs)


def _distributed() -> bool:
  try:
    return bool(jax.distributed.is_initialized())
  except Exception:  # pylint: disable=broad-except
    return False


def is_main_process() -> bool:
  """True on process 0, the one process that writes results, tables, plots and metrics."""
  return jax.process_index() == 0


def to_host(tree):
  """Every leaf as a numpy array holding the whole (global) array, on every process.

  Arrays split over several processes are gathered (``process_allgather``, a collective:
  every process must call this at the same point); everything else is ``np.asarray``.
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def leaf(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)
  return jax.tree.map(leaf, tree)


def local_rows(mesh, rows: int) -> tuple[int, int]:
  """``[lo, hi)``: the rows of a ``rows``-long axis split over ``mesh`` held by this process.

  The rows of the process's devices must be contiguous (``jax.devices()`` lists devices
  by process, so a mesh over it is); otherwise ``(0, rows)``.
  """
  devices = list(mesh.devices.flat)
  per = rows // len(devices)
  mine = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
  if not mine or mine != list(range(mine[0], mine[-1] + 1)) or rows % len(devices):
    return 0, rows
  return mine[0] * per, (mine[-1] + 1) * per


def put_global(tree, mesh, axes=None, *, first_row: int = 0, rows: int | None = None):
  """Places host copies of a batch on ``mesh``, split along axis 0.

  By default every process holds the whole batch (the same values: they computed them
  identically) and keeps only the rows of its own devices. With ``rows``, the host arrays
  hold only rows ``first_row …`` of a ``rows``-long global axis, which must include this
  process's rows (:func:`local_rows`). ``axes`` is a pytree prefix of ``tree`` of 0 (split)
  or None (replicate), e.g. ``sweep.task_axes(tasks)``; default: split every leaf.
  """
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  split = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
  whole = NamedSharding(mesh, PartitionSpec())

  def leaf(a, ax):
    if a is None:
      return None
    host = np.asarray(a) if not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else None
    if host is None:   # typed PRNG keys: move their raw data
      data = put_global(jax.random.key_data(a), mesh, ax, first_row=first_row, rows=rows)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
    if ax is None:
      return jax.make_array_from_callback(host.shape, whole, lambda idx: host[idx])
    n = host.shape[0] if rows is None else rows
    off = 0 if rows is None else first_row

    def rows_of(idx):
      first = idx[0]
      start = (first.start or 0) - off
      stop = (n if first.stop is None else first.stop) - off
      if start < 0 or stop > host.shape[0]:
        raise ValueError(f"put_global: rows {start + off}:{stop + off} are not on this host "
                         f"(it holds {off}:{off + host.shape[0]}).")
      return host[(slice(start, stop),) + tuple(idx[1:])]
    return jax.make_array_from_callback((n,) + host.shape[1:], split, rows_of)

  if axes is None:
    return jax.tree.map(lambda a: leaf(a, 0), tree)
  return jax.tree.map(lambda ax, a: leaf(a, ax), axes, tree, is_leaf=lambda x: x is None)


def barrier(name: str) -> None:
  """Waits until every process reaches this point (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)

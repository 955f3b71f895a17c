"""The CPU device layout of a process, set before JAX starts.

XLA:CPU shows one device per process unless ``--xla_force_host_platform_device_count`` says
otherwise. That one device runs each large matmul on XLA's intra-op thread pool (one thread
per core), but executes its program's other operations one after another — among them the
warm solver's LAPACK calls, mapped one run at a time (``immujax.extreme_eigs``), on ONE
core. Which layout is faster depends on the job (BUILD_NOTES.md, "Every core by default",
has the numbers): so the binary chooses a default for its job and :func:`configure` applies
it unless the user said otherwise — an ``XLA_FLAGS`` device count in the environment
always wins, then ``--devices=N``, then the binary's ``default``. It must run before the
first JAX computation (backends start lazily). On GPU/TPU hosts the setting only concerns
the CPU platform and is harmless.
"""

from __future__ import annotations

import os

__all__ = [
    "compiler_flags",
    "configure",
    "describe",
]

_FLAG = "--xla_force_host_platform_device_count"


def configure(devices: int | None = None, *, default: int | None = None,
              why: str = "") -> str:
  """Sets this process's CPU device count; no JAX call.

  Args:
    devices: the binary's ``--devices`` flag, or None.
    default: the count the binary chose for its job when ``devices`` is None (None or 1:
      one device); at most the core count.
    why: a few words on that choice, for :func:`describe`.

  Returns:
    Where the layout comes from, for :func:`describe`.
  """
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  flags = os.environ.get("XLA_FLAGS", "")
  if _FLAG in flags:
    return "XLA_FLAGS"
  if xla_bridge._backends:  # pylint: disable=protected-access
    return "set before this call"
  cores = os.cpu_count() or 1
  if devices is None and default and 1 < default <= cores:
    os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={default}".strip()
    return f"default for this job: {why or f'{default} devices'}; --devices=1 for one"
  if devices is None or devices < 1 or devices > cores:
    # More simulated devices than cores only oversubscribe them: leave the count alone, and
    # the binary's own check reports the flag.
    return "default: one device, every core through XLA's intra-op threads"
  os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={devices}".strip()
  return "--devices"


def describe(source: str, devices: int | None = None) -> str:
  """One line for the start of a run: devices used, where that came from, cores, threads."""
  import jax  # pylint: disable=g-import-not-at-top
  n = jax.local_device_count()
  use = n if not devices else min(devices, n)
  return (f"{use} of {n} local {jax.devices()[0].platform.upper()} device(s) ({source}); "
          f"{os.cpu_count()} core(s); OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")


# ------------------------------------------------------------------ XLA:CPU's compiler

# XLA:CPU options every binary starts with, unless ``XLA_FLAGS`` names the same option.
# XLA's own defaults spend compile time that these jobs never win back: these options
# compile the README main job's 115 programs faster with the steps as fast and results
# equal up to rounding (BUILD_NOTES.md, "Compiler options"). The legacy loop emitters
# compile small fusions faster than the new MLIR fusion emitters; LLVM's level 1 drops
# passes that found nothing to gain in these programs (the large products run in library
# kernels, YNNPACK and Eigen, whatever the level; level 0 made every step twice as slow).
CPU_COMPILER_FLAGS = (
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_backend_optimization_level=1",
)
# The level above applies to every XLA backend: set it only where no accelerator plugin
# could start (jax finds GPU plugins as ``jax_plugins`` entry points or modules, TPUs by
# ``libtpu``), or where ``JAX_PLATFORMS`` asks for the CPU alone.
_ALL_BACKENDS = ("--xla_backend_optimization_level",)


def _cpu_only(environ) -> bool:
  if environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
    return True
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  if any(importlib.util.find_spec(m) is not None for m in ("jax_plugins", "libtpu")):
    return False
  return not importlib.metadata.entry_points(group="jax_plugins")


def compiler_flags(environ=None) -> tuple[str, ...]:
  """Adds :data:`CPU_COMPILER_FLAGS` to ``XLA_FLAGS``; returns the ones added. No JAX call.

  An option already in ``XLA_FLAGS`` (any value) is the user's and is left alone; so is a
  process whose JAX backends have started (XLA reads its flags once). Called by the
  binaries' edge (``immujax.runner.cli.run``) and by the test suite's ``conftest.py``.

  Args:
    environ: the environment to read and update (default ``os.environ``).
  """
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  environ = os.environ if environ is None else environ
  if xla_bridge._backends:  # pylint: disable=protected-access
    return ()
  flags = environ.get("XLA_FLAGS", "")
  cpu_only = None
  added = []
  for flag in CPU_COMPILER_FLAGS:
    name = flag.split("=")[0]
    if name in flags:
      continue
    if name in _ALL_BACKENDS:
      cpu_only = _cpu_only(environ) if cpu_only is None else cpu_only
      if not cpu_only:
        continue
    added.append(flag)
  if added:
    environ["XLA_FLAGS"] = " ".join([flags.strip(), *added]).strip()
  return tuple(added)


# ------------------------------------------------------------------ the compilation cache

ENV_CACHE_DIR = "JAX_COMPILATION_CACHE_DIR"
# Programs that compile faster than this are not written to the cache. JAX's default, 1 s,
# leaves the many small set-up and evaluation programs to compile again in every run (55 of
# the 64 programs of a quick MNIST run); caching all 64 takes 1.4 MB.
MIN_COMPILE_TIME_S = 0.0


def default_cache_dir(environ) -> str:
  """``$XDG_CACHE_HOME/immujax/jax``, else ``~/.cache/immujax/jax``."""
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "immujax", "jax")


def _writable(path: str) -> str:
  """'' if ``path`` can hold the cache (created if absent), else why not."""
  import tempfile  # pylint: disable=g-import-not-at-top
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
      pass
  except OSError as e:
    return e.strerror or type(e).__name__
  return ""


def compilation_cache(environ) -> str:
  """Turns JAX's persistent compilation cache on; returns one line saying where (or why not).

  The directory is ``$JAX_COMPILATION_CACHE_DIR`` when set (an empty value turns the cache
  off), else :func:`default_cache_dir`. A directory that cannot be created or written gives
  a warning line and the run continues without a cache. Called once by the binaries' edge
  (``immujax.runner.cli.run``) before any computation; ``environ`` is the process
  environment it read.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if ENV_CACHE_DIR in environ:
    path, source = environ[ENV_CACHE_DIR], ENV_CACHE_DIR
    if not path.strip():
      jax.config.update("jax_compilation_cache_dir", None)
      return f"[cache] JAX compilation cache off (empty ${ENV_CACHE_DIR})"
  else:
    path, source = default_cache_dir(environ), "default; $JAX_COMPILATION_CACHE_DIR overrides"
  path = os.path.abspath(os.path.expanduser(path))
  why = _writable(path)
  if why:
    jax.config.update("jax_compilation_cache_dir", None)
    return (f"[cache] warning: JAX compilation cache {path} is not usable ({why}); running "
            "without a compilation cache")
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES" not in environ:
    # JAX's default adds XLA's GPU autotuning cache under the cache directory, and its path
    # enters every program's cache key: a cache moved or copied elsewhere would never hit.
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in environ:   # the user's wins
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
  return f"[cache] JAX compilation cache: {path} ({source})"


# ------------------------------------------------------------------------------ memory


def available_memory() -> int | None:
  """Bytes of memory available to a new allocation now (``MemAvailable``), or None."""
  try:
    import psutil  # pylint: disable=g-import-not-at-top
    return int(psutil.virtual_memory().available)
  except ImportError:
    pass
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None

"""One program over several processes (``jax.distributed``): start-up, gathering, placement.

Every process runs the same command. The task axis of a study is split over the devices of
all processes (one global ``jax.sharding.Mesh``); process 0 alone writes the workdir's
files. The three values (coordinator address, process count, process id) come from the
binary's flags, or — with none given — from the cluster's environment (Slurm, a TPU pod).
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import jax
import numpy as np

from immujax.runner import validate as check

__all__ = [
    "barrier",
    "initialize",
    "is_initialized",
    "is_main_process",
    "is_multi_process",
    "Launch",
    "local_rows",
    "put_global",
    "to_host",
    "validate",
]

# Environment variables that mean "a cluster launched this process": with none of the three
# values given, jax.distributed.initialize() then finds the coordinator by itself.
CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
               "MEGASCALE_COORDINATOR_ADDRESS", "CLOUD_TPU_TASK_ID")


class Launch(NamedTuple):
  """How this process was launched (the binary's flags)."""
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  timeout_s: int = 300


def validate(address, num_processes, process_id, timeout_s) -> bool:
  """Checks the three flags together; True if they ask for a multi-process run."""
  given = [v is not None for v in (address, num_processes, process_id)]
  check.positive_int(timeout_s, "--distributed_timeout_s")
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
  check.positive_int(num_processes, "--num_processes")
  if not check._is_int(process_id) or not 0 <= process_id < num_processes:  # pylint: disable=protected-access
    raise ValueError(f"--process_id={process_id!r} must be in 0 … {num_processes - 1} "
                     f"(--num_processes={num_processes}).")
  return True


def is_multi_process(launch: Launch, environ=None) -> bool:
  """True if :func:`initialize` will start a multi-process run (no JAX call).

  The three flags given, or a cluster in the environment (``CLUSTER_ENV``) other than a
  one-task Slurm job.
  """
  environ = os.environ if environ is None else environ
  if validate(*launch):
    return True
  if not any(environ.get(v) for v in CLUSTER_ENV):
    return False
  return not (environ.get("SLURM_JOB_ID") and int(
      environ.get("SLURM_NTASKS", environ.get("SLURM_NPROCS", "1"))) <= 1)


def initialize(launch: Launch, environ=None) -> None:
  """``jax.distributed.initialize`` from ``launch`` (or the cluster's environment ``environ``).

  Call before any JAX computation. With none of the three values and no cluster in the
  environment this does nothing (one process). The CPU collectives implementation is set
  to gloo explicitly: a multi-process CPU run needs one to exchange the small results.
  """
  environ = os.environ if environ is None else environ
  if not is_multi_process(launch, environ):
    return
  explicit = validate(*launch)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # A dead process is noticed within `timeout` (heartbeats); at a normal exit the others
  # wait up to 5 minutes for process 0, which writes the results last.
  timeout = launch.timeout_s
  kwargs = dict(initialization_timeout=timeout, heartbeat_timeout_seconds=timeout,
                shutdown_timeout_seconds=max(timeout, 300))
  if explicit:
    jax.distributed.initialize(launch.coordinator_address, launch.num_processes,
                               launch.process_id, **kwargs)
  else:
    jax.distributed.initialize(**kwargs)


def is_initialized() -> bool:
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

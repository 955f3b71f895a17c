"""The CPU device layout of a process, set before JAX starts: one device unless asked.

XLA:CPU shows one device per process unless ``--xla_force_host_platform_device_count`` says
otherwise. That one device already uses every core: XLA runs each large matmul on its
intra-op thread pool (one thread per core), which measured faster than several simulated
devices on this project's machines (BUILD_NOTES.md, "Every core by default", has the
numbers). So the default is ONE device per process, and :func:`configure` only changes it
when the user asks: an ``XLA_FLAGS`` device count in the environment always wins; otherwise
``--devices=N`` creates N CPU devices (no environment prefix needed). It must run before
the first JAX computation (backends start lazily). On GPU/TPU hosts the setting only
concerns the CPU platform and is harmless.
"""

from __future__ import annotations

import os

__all__ = [
    "configure",
    "describe",
]

_FLAG = "--xla_force_host_platform_device_count"


def configure(devices: int | None = None) -> str:
  """Sets this process's CPU device count if the user asked for one; no JAX call.

  Args:
    devices: the binary's ``--devices`` flag, or None (the default layout).

  Returns:
    Where the layout comes from, for :func:`describe`.
  """
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  flags = os.environ.get("XLA_FLAGS", "")
  if _FLAG in flags:
    return "XLA_FLAGS"
  if xla_bridge._backends:  # pylint: disable=protected-access
    return "set before this call"
  if devices is None or devices < 1 or devices > (os.cpu_count() or 1):
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

"""Orbax checkpoints of whole training states (pytrees of arrays), written atomically.

A run saves its state after every chunk of compiled steps; a killed run restarts from the
latest complete checkpoint (orbax writes into a temporary directory and renames it when the
write is complete, so a kill never leaves a half-written checkpoint that looks valid).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Latest-step checkpoints of a pytree under ``directory``.

  Example::

    ckpt = Checkpointer(workdir / "checkpoints")
    step = ckpt.latest_step()            # None on a fresh run
    state = ckpt.restore(step, like=state) if step is not None else state
    ckpt.save(step + chunk, state)
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
    directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    self._manager = ocp.CheckpointManager(directory, options=options)
    self.directory = directory

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, *, metadata: dict | None = None) -> None:
    """Saves ``state`` (a pytree of arrays) as step ``step`` and waits until it is on disk."""
    args = {"state": ocp.args.StandardSave(state)}
    if metadata is not None:
      args["metadata"] = ocp.args.JsonSave(metadata)
    self._manager.save(step, args=ocp.args.Composite(**args), force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, like: Any) -> Any:
    """Restores step ``step`` into the structure, shapes and dtypes of ``like``."""
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def spec(x):
      # Restore onto `like`'s placement (e.g. a run saved on 2 devices resumed on 1, or the
      # reverse), not the topology recorded in the checkpoint.
      sharding = getattr(x, "sharding", None) or default
      dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
      return jax.ShapeDtypeStruct(np.shape(x), dtype, sharding=sharding)

    abstract = jax.tree.map(spec, like)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    return restored["state"]

  def restore_metadata(self, step: int) -> dict | None:
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    except Exception:  # pylint: disable=broad-except
      return None
    return restored["metadata"]

  def close(self) -> None:
    self._manager.close()

"""Orbax checkpoints of whole training states (pytrees of arrays), written atomically.

A run saves its state after every chunk of compiled steps; a killed run restarts from the
latest complete checkpoint (orbax writes into a temporary directory and renames it when the
write is complete, so a kill never leaves a half-written checkpoint that looks valid).

Several processes (``jax.distributed``): every process calls :meth:`Checkpointer.save` and
:meth:`Checkpointer.restore` at the same point with the same pytree of *global* arrays; each
writes and reads the shards of its own devices (orbax's multi-process checkpointing), and
host (numpy) leaves are written by process 0. A restore places the arrays on ``like``'s
shardings, so a run saved by 2 processes × 1 device resumes on 1 process × 2 devices, or the
reverse; shapes must match, otherwise :meth:`restore` raises a ``ValueError``.
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
    """Restores step ``step`` into the structure, shapes and dtypes of ``like``.

    Raises:
      ValueError: if the checkpoint holds arrays of other shapes than ``like`` (e.g. a run
        whose task axis was padded for another device count).
    """
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def spec(x):
      # Restore onto `like`'s placement (e.g. a run saved on 2 devices resumed on 1, or the
      # reverse, or split over other processes), not the topology recorded in the checkpoint.
      if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
      dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
      return jax.ShapeDtypeStruct(np.shape(x), dtype, sharding=default)

    abstract = jax.tree.map(spec, like)
    self._check_shapes(step, abstract)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    return restored["state"]

  def _check_shapes(self, step: int, abstract: Any) -> None:
    try:
      saved = self._manager.item_metadata(step)["state"]
      pairs = zip(jax.tree.leaves(saved, is_leaf=lambda x: hasattr(x, "shape")),
                  jax.tree.leaves(abstract))
      mismatch = [(tuple(m.shape), tuple(a.shape)) for m, a in pairs
                  if tuple(m.shape) != tuple(a.shape)]
    except Exception:  # pylint: disable=broad-except
      return   # no readable metadata: let orbax's own checks speak
    if mismatch:
      saved_shape, want = mismatch[0]
      raise ValueError(
          f"checkpoint step {step} under {self.directory} holds arrays of shape {saved_shape} "
          f"where this run has {want}: it was written by a run with another config or another "
          "total device count (the task axis is padded to a multiple of it). Resume with the "
          "same number of devices in total (processes × devices per process), or use a fresh "
          "--workdir.")

  def restore_metadata(self, step: int) -> dict | None:
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    except Exception:  # pylint: disable=broad-except
      return None
    return restored["metadata"]

  def close(self) -> None:
    self._manager.close()

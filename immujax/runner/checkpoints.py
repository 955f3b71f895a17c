"""Versioned orbax checkpoints of whole training states, written atomically.

A run saves its state after every chunk of compiled steps; a killed run restarts from the
latest complete checkpoint (orbax writes into a temporary directory and renames it when the
write is complete, so a kill never leaves a half-written checkpoint that looks valid).

**Layout versions.** Every save records ``layout_version`` (:data:`STATE_VERSION`) in its
metadata: the layout of :class:`immujax.immunize.State`, which the linear studies'
checkpoints hold. :data:`STATE_MIGRATIONS` maps each older version to what changed after
it and to a function that migrates a restored state of that version to the next, or to None
when it cannot be migrated. A checkpoint of an older version is migrated step by step on
restore, or refused with one line naming both versions and the way out — never a
tree-structure traceback. Checkpoints written before versions were recorded are recognized
by their tree (no ``basis``: version 1; no ``harmful_head``: version 2). Adding a field to
``State`` is one entry here, as version 2's ``harmful_head`` shows.

Checkpoints without any ``State`` in them (the deep nets' ``TrainState``) are not versioned.

Several processes (``jax.distributed``): every process calls :meth:`Checkpointer.save` and
:meth:`Checkpointer.restore` at the same point with the same pytree of *global* arrays; each
writes and reads the shards of its own devices, and host (numpy) leaves are written by
process 0. A restore places the arrays on ``like``'s shardings, so a run saved by 2
processes × 1 device resumes on 1 process × 2 devices, or the reverse; shapes must match,
otherwise :meth:`Checkpointer.restore` raises a one-line ``ValueError``.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = [
    "add_state_field",
    "Checkpointer",
    "LayoutError",
    "STATE_MIGRATIONS",
    "STATE_VERSION",
]

Migration = Optional[Callable[[dict], dict]]

STATE_FIELDS = frozenset({"params", "opt_state", "step"})
"""The fields by which a (restored, dict-shaped) ``immunize.State`` is recognized."""


def add_state_field(name: str, make: Callable[[dict], Any]) -> Callable[[dict], dict]:
  """A migration that adds field ``name = make(state)`` to every ``State`` of a tree."""
  def migrate(state: dict) -> dict:
    return state if name in state else {**state, name: make(state)}
  return migrate


STATE_MIGRATIONS: dict[int, tuple[str, Migration]] = {
    # version: (what changed after it, migration to version + 1 or None: refused)
    1: ("immunize.State gained `basis`, the warm-start blocks of the extreme eigenvectors "
        "(commit 700b643); they depend on the tasks, so a checkpoint without them is not "
        "migrated", None),
    2: ("immunize.State gained `harmful_head`, IMMA's warm-started harmful probe (issue 20); "
        "zero for every other method, so it is added as zeros",
        add_state_field("harmful_head", lambda s: np.zeros(
            s["params"]["theta"].shape[:-2] + s["params"]["theta"].shape[-1:],
            np.asarray(s["params"]["theta"]).dtype))),
}
"""Each older ``State`` layout version: (what changed after it, its migration or None)."""
STATE_VERSION = max(STATE_MIGRATIONS) + 1
"""The ``State`` layout this immujax writes (3: ``State`` with ``basis`` and ``harmful_head``)."""


def _key(k) -> str:
  for attr in ("name", "key", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _flat(tree, is_leaf=None) -> dict:
  """``{"a/b/0": leaf}``: a tree's leaves by path, NamedTuple fields and dict keys alike."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return {"/".join(_key(k) for k in path): leaf for path, leaf in leaves}


def _states(tree, fn):
  """Applies ``fn`` to every dict of ``tree`` that is a ``State`` (recursively)."""
  if isinstance(tree, dict):
    if STATE_FIELDS <= set(tree):
      return fn(tree)
    return {k: _states(v, fn) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return type(tree)(_states(v, fn) for v in tree)
  return tree


def _state_prefixes(paths) -> list[str]:
  """Path prefixes of the States in a flat tree: parents holding params/, opt_state/, step."""
  out = set()
  for p in paths:
    parts = p.split("/")
    for i, part in enumerate(parts):
      if part == "params":
        out.add("/".join(parts[:i]))
  return sorted(o for o in out if any(q == (o + "/step" if o else "step") for q in paths))


def _like_placement(restored, like):
  """``restored`` placed like ``like``: an uncommitted array (a fresh run's state) stays
  uncommitted, so a resumed run hits the chunk program the fresh run compiled."""
  if (isinstance(like, jax.Array) and not like.committed and isinstance(restored, jax.Array)
      and not jax.dtypes.issubdtype(like.dtype, jax.dtypes.prng_key)):
    return jax.numpy.asarray(np.asarray(restored))
  return restored


class LayoutError(ValueError):
  """A checkpoint of a layout this immujax cannot restore (one line: versions, way out)."""


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
    """Saves ``state`` as step ``step`` (with the layout version) and waits until it is on disk."""
    meta = {"layout_version": STATE_VERSION, **(metadata or {})}
    args = {"state": ocp.args.StandardSave(state), "metadata": ocp.args.JsonSave(meta)}
    self._manager.save(step, args=ocp.args.Composite(**args), force=True)
    self._manager.wait_until_finished()

  def restore_metadata(self, step: int) -> dict | None:
    """The JSON metadata saved with ``step`` (None if there is none)."""
    path = pathlib.Path(self.directory) / str(step) / "metadata" / "metadata"
    try:
      return json.loads(path.read_text())
    except (OSError, ValueError):
      return None

  def _saved(self, step: int) -> dict:
    """The saved tree's array metadata by path (read quietly, without the manager)."""
    from etils import epath  # pylint: disable=g-import-not-at-top
    meta = ocp.StandardCheckpointHandler().metadata(
        epath.Path(self.directory) / str(step) / "state")
    return _flat(getattr(meta, "tree", meta), is_leaf=lambda x: hasattr(x, "shape"))

  def _where(self, step: int) -> str:
    return f"checkpoint step {step} under {self.directory}"

  def layout_version(self, step: int, saved: dict, wanted: dict) -> int:
    """The ``State`` layout version of ``step``: this run's when the trees agree, else the
    recorded one, else recognized by its tree (a ``State`` without ``basis``: version 1)."""
    if set(saved) == set(wanted):
      return STATE_VERSION     # the same tree as this run's (or no State in it): nothing to do
    recorded = (self.restore_metadata(step) or {}).get("layout_version")
    if recorded is not None:
      return int(recorded)
    prefixes = _state_prefixes(saved)

    def lacks(field):   # some State of the checkpoint has no `field`
      def has(pre):
        key = f"{pre}/{field}" if pre else field
        return any(p == key or p.startswith(key + "/") for p in saved)
      return any(not has(pre) for pre in prefixes)
    if prefixes and lacks("basis"):
      return 1
    if prefixes and lacks("harmful_head"):
      return 2
    return STATE_VERSION

  def restore(self, step: int, like: Any) -> Any:
    """Restores step ``step`` into the structure, shapes, dtypes and placement of ``like``.

    Raises:
      LayoutError: the checkpoint's layout is older than :data:`STATE_VERSION` and cannot
        be migrated, or newer than this immujax reads.
      ValueError: the checkpoint holds arrays of other shapes than ``like`` (e.g. a run
        whose task axis was padded for another device count).
    """
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def spec(x):
      # Restore onto `like`'s placement (a run saved on 2 devices resumed on 1, or the
      # reverse, or split over other processes), not the topology recorded in the checkpoint.
      if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
      dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
      return jax.ShapeDtypeStruct(np.shape(x), dtype, sharding=default)

    abstract = jax.tree.map(spec, like)
    wanted = _flat(abstract)
    saved = self._saved(step)
    version = self.layout_version(step, saved, wanted)
    if version > STATE_VERSION:
      raise LayoutError(
          f"{self._where(step)} has state layout version {version}, written by a newer "
          f"immujax; this one reads version {STATE_VERSION}. Upgrade immujax to resume it.")
    if version < STATE_VERSION:
      return self._migrate(step, version, abstract, wanted, like)
    self._check_tree(step, saved, wanted, version)
    args = {"state": ocp.args.StandardRestore(abstract)}
    if self.restore_metadata(step) is not None:
      args["metadata"] = ocp.args.JsonRestore()   # restored together: no "not restored" warning
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))["state"]
    return jax.tree.map(_like_placement, restored, like)

  def _check_tree(self, step: int, saved: dict, wanted: dict, version: int) -> None:
    missing = sorted(set(wanted) - set(saved))
    extra = sorted(set(saved) - set(wanted))
    if missing or extra:
      what = (f"has no {missing[0]!r}" if missing else f"holds {extra[0]!r}, which this run "
              "does not have")
      raise LayoutError(
          f"{self._where(step)} (state layout version {version}) {what}: it was written by a "
          "run with another config or method set. Use a new --workdir, or --move_aside.")
    for path, want in wanted.items():
      got = tuple(saved[path].shape)
      if got != tuple(want.shape):
        raise ValueError(
            f"{self._where(step)} holds arrays of shape {got} where this run has "
            f"{tuple(want.shape)} ({path}): it was written by a run with another config or "
            "another total device count (the task axis is padded to a multiple of it). Resume "
            "with the same number of devices in total (processes × devices per process), or "
            "use a fresh --workdir.")

  def _migrate(self, step: int, version: int, abstract: Any, wanted: dict, like: Any) -> Any:
    for v in range(version, STATE_VERSION):
      what, fn = STATE_MIGRATIONS[v]
      if fn is None:
        raise LayoutError(
            f"{self._where(step)} has state layout version {version}; this immujax reads "
            f"version {STATE_VERSION} and cannot migrate it ({what}). Use a new --workdir or "
            "--move_aside to start afresh, or finish the old run with the immujax that wrote "
            "it.")
    raw = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), metadata=ocp.args.JsonRestore()))["state"]
    for v in range(version, STATE_VERSION):
      raw = _states(raw, STATE_MIGRATIONS[v][1])
    got = _flat(raw)
    self._check_tree(step, {k: np.asarray(v) for k, v in got.items()}, wanted, STATE_VERSION)

    def place(path, a):
      host = np.asarray(got["/".join(_key(k) for k in path)], dtype=a.dtype)
      if getattr(a, "sharding", None) is None:
        return host
      return jax.make_array_from_callback(a.shape, a.sharding, lambda idx: host[idx])
    return jax.tree.map(_like_placement, jax.tree_util.tree_map_with_path(place, abstract), like)

  def close(self) -> None:
    self._manager.close()

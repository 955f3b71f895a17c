"""Many linear immunization runs as one compiled program: tasks × methods × seeds.

Layout: ``tasks`` carry a leading axis ``T`` (e.g. the 90 MNIST digit pairs, or 1 for house
prices); states and weights carry ``(T, R)`` with ``R = len(methods) · seeds`` runs per task.
The program is ``jit(vmap_T(vmap_R(run_steps)))`` — each task's matrices are stored once and
broadcast over its runs. With a device mesh the ``T`` axis is sharded over devices
(``jax.sharding.NamedSharding``); ``T`` is padded to a multiple of the device count.

Pooled tasks (``Task.rows`` given, ``x_p`` 2-D) share one input pool across the batch: the
pool has no ``T`` axis, is broadcast by ``vmap`` (:func:`task_axes`) and replicated on every
device, while everything else is batched and sharded.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from immujax import immunize
from immujax import metrics
from immujax import spectral

Array = jax.Array


class Runs(NamedTuple):
  """Batched training state and per-run weights, leading axes ``(T, R)``."""
  state: immunize.State
  weights: immunize.Weights


def run_index(methods: Sequence[str], seeds: int) -> list[tuple[str, int]]:
  """The (method, seed) of each of the ``R`` runs of a task, in batch order."""
  return [(m, s) for m in methods for s in range(seeds)]


def task_axes(tasks: immunize.Task) -> immunize.Task:
  """``vmap`` axes of a batch of tasks: 0 for every field, ``None`` for a shared pool.

  A batch shares its pool when ``rows`` is given and ``x_p`` is 2-D ``(M, D_in)`` (one
  pool) rather than 3-D ``(T, M, D_in)`` (one pool per task).
  """
  shared = tasks.rows is not None and tasks.x_p.ndim == 2
  axes = {f: 0 for f in immunize.Task._fields}
  axes.update(x_p=None if shared else 0, rows=None if tasks.rows is None else 0)
  return immunize.Task(**axes)


def init_runs(key: Array, tasks: immunize.Task, methods: Sequence[str], seeds: int, *,
              learning_rate: float, step_scale: float, clip_factor: float = 1.0,
              imma_steps: int = 5, imma_inner_steps: int = immunize.IMMA_INNER_STEPS,
              init: str = "orthogonal",
              precondition_baselines: bool = False, adaptive: bool = False,
              harmful_scale: float = 1.0, eig_solver: str = "warm",
              task_batch: int | None = None) -> Runs:
  """Initial states and balanced weights for every (task, method, seed).

  Seed ``s`` uses the same θ0 for every task and method (common random numbers), so methods
  differ only by their objective.

  Args:
    key: PRNG key.
    tasks: batched :class:`immunize.Task` with leading axis ``T``.
    methods: method names (see ``immunize.METHODS``).
    seeds: runs per method.
    learning_rate: η.
    step_scale: R_well step as a fraction of its stability limit (balancing).
    clip_factor: each run's update norm is capped at ``clip_factor`` × its first step's norm
      (``inf`` disables).
    imma_steps: the unrolled IMMA's attacker steps (``imma_unrolled``).
    imma_inner_steps: IMMA's attacker steps per outer step (``imma``).
    init: θ0 initialisation (``immunize.init_params``).
    precondition_baselines: ablation flag (``immunize.balanced_method_weights``).
    adaptive: Ours re-balances its λ's at every step (``immunize.Weights``).
    harmful_scale: multiplies every harmful-side weight after balancing
      (``immunize.balanced_weights``).
    eig_solver: ``"warm"`` runs the steps with warm-started extremes
      (``immujax.extreme_eigs``; tasks with roots only, else ``"eigh"`` is used), ``"eigh"``
      with a full eigendecomposition per Hessian and step (the reference path).
    task_batch: set up this many tasks at a time (``lax.map``) instead of all at once:
      balancing holds a dozen ``D × D`` temporaries per run (270 runs at D = 784 ran out of
      24 GB).

  Returns:
    :class:`Runs` with leading axes ``(T, R)``.
  """
  for m in methods:
    if m not in immunize.METHODS:
      raise ValueError(f"unknown method {m!r} in `methods`; choose from {immunize.METHODS}.")
  if "imma_unrolled" in methods and imma_steps <= 0:
    raise ValueError(f"`imma_steps`={imma_steps}: imma_unrolled needs at least one unrolled "
                     "attacker step; pass imma_steps >= 1.")
  if "imma" in methods and imma_inner_steps <= 0:
    raise ValueError(f"`imma_inner_steps`={imma_inner_steps}: IMMA needs at least one inner "
                     "attacker step per outer step; pass imma_inner_steps >= 1.")
  # Balancing and the first-step norms run each IMMA's attacker only if a run uses it.
  imma_steps = imma_steps if "imma_unrolled" in methods else 0
  imma_inner_steps = imma_inner_steps if "imma" in methods else 0
  if eig_solver not in ("warm", "eigh"):
    raise ValueError(f"`eig_solver` must be 'warm' or 'eigh'; got {eig_solver!r}.")
  warm = eig_solver == "warm" and tasks.root_p is not None
  axes = task_axes(tasks)
  # lax.map maps every leaf over its leading axis: a shared pool goes in by closure.
  pool = tasks.x_p if axes.x_p is None else None
  batched = tasks._replace(x_p=None) if pool is not None else tasks
  # One module-level jitted function: a second call with the same settings and shapes (a
  # resume, restore_runs, another study in the same process) compiles nothing.
  states, ws = _init_runs(key, batched, pool, methods=tuple(methods), seeds=int(seeds),
                          learning_rate=float(learning_rate), step_scale=float(step_scale),
                          clip_factor=float(clip_factor), imma_steps=int(imma_steps),
                          imma_inner_steps=int(imma_inner_steps), init=init,
                          precondition_baselines=bool(precondition_baselines),
                          adaptive=bool(adaptive), harmful_scale=float(harmful_scale),
                          warm=bool(warm), task_batch=task_batch or None,
                          mesh=_task_mesh(tasks))
  return Runs(states, ws)


@functools.partial(jax.jit, static_argnames=(
    "methods", "seeds", "learning_rate", "step_scale", "clip_factor", "imma_steps",
    "imma_inner_steps", "init", "precondition_baselines", "adaptive", "harmful_scale", "warm",
    "task_batch", "mesh"))
def _init_runs(key, batched, pool, *, methods, seeds, learning_rate, step_scale, clip_factor,
               imma_steps, imma_inner_steps, init, precondition_baselines, adaptive,
               harmful_scale, warm, task_batch, mesh):
  """:func:`init_runs` after its checks: ``(states, weights)`` with leading axes ``(T, R)``."""
  d_in = batched.k_p.shape[-1]
  keys = jax.random.split(key, seeds)

  def one_task(task):
    def one_seed(k):
      params0 = immunize.init_params(k, d_in, init=init)
      # One exact eigh pair per (task, seed); balancing and the first-step norms reuse its
      # vectors through the warm path, which is converged at once.
      basis = immunize.initial_basis(params0.theta, task) if warm else None
      bal = immunize.balanced_weights(params0, task, learning_rate=learning_rate,
                                      step_scale=step_scale, imma_steps=imma_steps,
                                      imma_inner_steps=imma_inner_steps,
                                      harmful_scale=harmful_scale, basis=basis)
      ws = [immunize.balanced_method_weights(
          m, bal, precondition_baselines=precondition_baselines, adaptive=adaptive,
          learning_rate=learning_rate, step_scale=step_scale) for m in methods]
      ws = jax.tree.map(lambda *a: jnp.stack(a), *ws)  # (M,)
      # IMMA's first outer step uses the head after its first inner steps from 0.
      head1 = (immunize.adapt_harmful_head(params0.theta, jnp.zeros_like(params0.omega), task,
                                           immunize.method_weights("imma", imma=1.0),
                                           steps=imma_inner_steps)
               if imma_inner_steps > 0 else None)
      norms = jax.vmap(lambda w: immunize.direction_norm(
          params0, task, w, imma_steps=imma_steps, basis=basis, harmful_head=head1))(ws)
      states = jax.vmap(lambda n: immunize.init_state(params0, learning_rate,
                                                      clip_factor * n, basis=basis))(norms)
      return states, ws
    states, ws = jax.vmap(one_seed)(keys)  # (S, M, ...)
    # Reorder to (M, S) then flatten to R = M·S (method-major, like run_index).
    flat = lambda a: jnp.swapaxes(a, 0, 1).reshape((-1,) + a.shape[2:])
    return jax.tree.map(flat, states), jax.tree.map(flat, ws)

  def local(batched, pool):
    with_pool = lambda t: t if pool is None else t._replace(x_p=pool)
    if not task_batch:
      t = with_pool(batched)
      return jax.vmap(one_task, in_axes=(task_axes(t),))(t)
    # Memory-bounded: task_batch tasks at a time.
    return jax.lax.map(lambda t: one_task(with_pool(t)), batched, batch_size=task_batch)

  return _per_device(local, mesh)(batched, pool)


def _task_mesh(tree) -> Mesh | None:
  """The mesh whose first axis splits the task axis of ``tree``'s arrays, if several devices.

  A batch placed with :func:`shard_tasks` (or split over processes) is computed with
  ``shard_map`` over that mesh: each device steps its own tasks and the compiled program
  holds no collective. Under plain ``jit`` XLA's partitioner would instead gather the
  batch inside the solvers' sequential maps (an all-gather in every step), and a vmapped
  ``while_loop`` over a split batch needs its predicate reduced across devices in every
  iteration — collectives that stall (XLA:CPU aborts a rendezvous after 40 s) when one
  device runs behind.
  """
  for a in jax.tree.leaves(tree):
    sharding = getattr(a, "sharding", None)
    if (isinstance(sharding, NamedSharding) and sharding.mesh.size > 1
        and len(sharding.spec) and sharding.spec[0] is not None):
      return sharding.mesh
  return None


def _per_device(local, mesh: Mesh | None):
  """``local(batched, pool)`` on every device's share of the task axis (or as it is)."""
  if mesh is None:
    return local
  split = PartitionSpec(mesh.axis_names[0])
  return jax.shard_map(local, mesh=mesh, in_specs=(split, PartitionSpec()), out_specs=split,
                       check_vma=False)


def split_by_method(tree, methods: Sequence[str], seeds: int) -> tuple:
  """Splits ``(T, R, ...)`` leaves into one ``(T, seeds, ...)`` tree per method.

  Runs are method-major (:func:`run_index`), so each method is a contiguous block of ``R``.
  Stepping each block with its own static flags (:func:`method_statics`) skips the work a
  method does not need — IMMA's unrolled attacker, the plain-gradient products ``KθG`` —
  which a single vmapped batch would compute for every run of every method.
  """
  return tuple(jax.tree.map(lambda a, i=i: a[:, i * seeds:(i + 1) * seeds], tree)
               for i in range(len(methods)))


def join_methods(trees: Sequence) -> object:
  """Inverse of :func:`split_by_method`: concatenates the per-method blocks along ``R``."""
  return jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *trees)


def method_statics(method: str, *, imma_steps: int, precondition_baselines: bool = False,
                   exact_methods: Sequence[str] = (),
                   imma_inner_steps: int = immunize.IMMA_INNER_STEPS) -> dict:
  """The static :func:`run_chunk` flags a batch of ``method`` runs alone can use.

  Args:
    method: one of ``immunize.METHODS``.
    imma_steps: the unrolled IMMA's attacker steps (``imma_unrolled``).
    precondition_baselines: every method's spectral terms are preconditioned.
    exact_methods: methods whose runs take the full-``eigh`` extremes even when they carry
      a warm-start basis (a method whose checks fail on most chunks would otherwise pay for
      both paths).
    imma_inner_steps: IMMA's attacker steps per outer step (``imma``).

  Returns:
    ``dict(imma_steps=..., imma_inner_steps=..., preconditioned_only=..., exact=...,
    spectral_terms=...)``: each IMMA's attacker only for its own runs; no plain-gradient
    products for methods whose spectral terms are all preconditioned or absent (Ours, both
    IMMAs, or every method with ``precondition_baselines``); only the method's own
    spectral terms, in factored form where cheaper (``immunize.direction``: Opt κ and the
    IMMAs form no ``D × D`` Hessian). The weights must be the method's own
    (``immunize.balanced_method_weights``): these are promises about them.
  """
  for m in (method, *exact_methods):
    if m not in immunize.METHODS:
      raise ValueError(f"unknown method {m!r}; choose from {immunize.METHODS}.")
  return dict(imma_steps=imma_steps if method == "imma_unrolled" else 0,
              imma_inner_steps=imma_inner_steps if method == "imma" else 0,
              preconditioned_only=(precondition_baselines
                                   or method in ("ours", "imma", "imma_unrolled")),
              exact=method in exact_methods,
              spectral_terms=tuple(t for t in immunize.method_terms(method)
                                   if t in immunize.SPECTRAL_TERMS))


def device_mesh(devices=None) -> Mesh:
  """A 1-D mesh named ``"tasks"`` over the given (default: all) devices."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("tasks",))


def _map_batched(fn, tree):
  # fn(leaf, axis) over a task batch (axis None for a shared pool) or any axis-0 batch.
  if not isinstance(tree, immunize.Task):
    return jax.tree.map(lambda a: fn(a, 0), tree)
  return jax.tree.map(lambda ax, a: None if a is None else fn(a, ax), task_axes(tree), tree,
                      is_leaf=lambda x: x is None)


def slice_tasks(tree, start: int, stop: int):
  """Tasks ``start:stop`` of a batch (a shared pool is kept whole)."""
  return _map_batched(lambda a, ax: a if ax is None else a[start:stop], tree)


def pad_tasks(tree, multiple: int):
  """Pads the leading (task) axis to a multiple of ``multiple`` by repeating the last task.

  A shared pool (see :func:`task_axes`) has no task axis and is left as it is.
  """
  t = (tree.k_p if isinstance(tree, immunize.Task) else jax.tree.leaves(tree)[0]).shape[0]
  pad = (-t) % multiple
  if pad == 0:
    return tree
  return _map_batched(
      lambda a, ax: a if ax is None else jnp.concatenate([a, jnp.repeat(a[-1:], pad, 0)]),
      tree)


def shard_tasks(tree, mesh: Mesh):
  """Places a pytree with a leading task axis on ``mesh``, split along that axis.

  A shared pool (see :func:`task_axes`) is replicated on every device.
  """
  split = NamedSharding(mesh, PartitionSpec("tasks"))
  replicated = NamedSharding(mesh, PartitionSpec())
  return _map_batched(
      lambda a, ax: jax.device_put(a, replicated if ax is None else split), tree)


def run_chunk(state: immunize.State, tasks: immunize.Task, weights: immunize.Weights, *,
              steps: int, loss: str = "mse", imma_steps: int = 5,
              imma_inner_steps: int = immunize.IMMA_INNER_STEPS, rtol: float | None = None,
              preconditioned_only: bool = False, task_batch: int | None = None,
              mesh: Mesh | None = None, exact: bool = False,
              all_steps: bool = False, spectral_terms: tuple[str, ...] | None = None
              ) -> tuple[immunize.State, immunize.Terms]:
  """``steps`` steps of every run: ``vmap_T(vmap_R(immunize.run_steps))``.

  Args:
    state, tasks, weights: batched with leading axes ``(T, R)`` (tasks: ``T``).
    steps: steps in this chunk (static).
    loss, imma_steps, imma_inner_steps, rtol: see ``immunize.run_steps`` (static).
    preconditioned_only: static promise that every run's spectral terms are
      preconditioned (a batch of Ours and IMMA runs), see ``immunize.direction``.
    task_batch: bound memory: hold only this many tasks' runs at once (``lax.map`` with
      ``batch_size`` over the task axis, one compiled program still). ``None`` vmaps all
      ``T`` tasks at once, which on a CPU is no faster than groups (see README,
      "Performance") but needs every run's temporaries together: 360 runs at D = 784 take
      more than 24 GB.
    mesh: the mesh the task axis is sharded over (``device_mesh``): each device steps its
      own tasks (``jax.shard_map``), all at once or ``task_batch`` at a time, and the
      compiled chunk holds no cross-device collective. Default: the mesh the inputs are
      placed on (:func:`shard_tasks`), if it has several devices.
    exact: force the full-``eigh`` extremes on runs that carry a warm-start basis.
    all_steps: return every step's terms, shape ``(T, R, steps)``, instead of the last.
    spectral_terms: static promise that only these spectral weights are non-zero (see
      ``immunize.direction``; :func:`method_statics` gives a method's). ``None``: any.

  Returns:
    The new state and the last step's :class:`immunize.Terms`, shape ``(T, R)`` — except
    ``eig_ok`` and ``eig_residual``, which summarize the whole chunk (all steps ok; largest
    residual) so that a failed check anywhere in the chunk is seen.
  """
  if task_batch is not None and task_batch < 1:
    raise ValueError(f"`task_batch` must be a positive number of tasks; got {task_batch}.")
  if mesh is None:
    mesh = _task_mesh((state, tasks, weights))
  return _run_chunk(state, tasks, weights, steps=steps, loss=loss, imma_steps=imma_steps,
                    imma_inner_steps=imma_inner_steps, rtol=rtol, preconditioned_only=preconditioned_only,
                    task_batch=task_batch, mesh=mesh, exact=exact, all_steps=all_steps,
                    spectral_terms=spectral_terms)


@functools.partial(jax.jit, static_argnames=("steps", "loss", "imma_steps", "imma_inner_steps",
                                             "rtol", "preconditioned_only", "task_batch",
                                             "mesh", "exact", "all_steps", "spectral_terms"))
def _run_chunk(state, tasks, weights, *, steps, loss, imma_steps, imma_inner_steps, rtol,
               preconditioned_only, task_batch, mesh, exact, all_steps,
               spectral_terms=None):
  def per_run(s, task, w):
    s, terms = immunize.run_steps(s, task, w, steps=steps, loss=loss,
                                  imma_steps=imma_steps, imma_inner_steps=imma_inner_steps,
                                  rtol=rtol, preconditioned_only=preconditioned_only,
                                  exact=exact, spectral_terms=spectral_terms)
    return s, terms if all_steps else _chunk_summary(terms)
  per_task = jax.vmap(per_run, in_axes=(0, None, 0))
  # lax.map maps every leaf over its leading axis: pass a shared pool by closure instead.
  pool = tasks.x_p if task_axes(tasks).x_p is None else None
  batched = tasks._replace(x_p=None) if pool is not None else tasks

  def local(state, batched, weights, pool):
    with_pool = lambda t: t if pool is None else t._replace(x_p=pool)
    if task_batch is None:
      t = with_pool(batched)
      return jax.vmap(per_task, in_axes=(0, task_axes(t), 0))(state, t, weights)

    def one(args):
      s, t, w = args
      return per_task(s, with_pool(t), w)
    return jax.lax.map(one, (state, batched, weights), batch_size=task_batch)

  if mesh is None:
    return local(state, batched, weights, pool)
  split, whole = PartitionSpec(mesh.axis_names[0]), PartitionSpec()
  # check_vma=False: nothing here communicates (every device steps its own tasks), and the
  # solvers' loops start from constants that the varying-axes check would reject.
  return jax.shard_map(local, mesh=mesh, in_specs=(split, split, split, whole),
                       out_specs=split, check_vma=False)(state, batched, weights, pool)


# The compiled chunks (one per static configuration), as on a jitted function.
run_chunk._cache_size = _run_chunk._cache_size  # pylint: disable=protected-access


@functools.partial(jax.jit, static_argnames=("steps", "loss", "imma_steps", "imma_inner_steps",
                                             "rtol", "preconditioned_only", "all_steps",
                                             "spectral_terms"))
def _exact_run(state, task, weights, *, steps, loss, imma_steps, imma_inner_steps, rtol,
               preconditioned_only, all_steps, spectral_terms=None):
  new, terms = immunize.run_steps(state, task, weights, steps=steps, loss=loss,
                                  imma_steps=imma_steps, imma_inner_steps=imma_inner_steps,
                                  rtol=rtol, preconditioned_only=preconditioned_only,
                                  exact=True, spectral_terms=spectral_terms)
  return new, terms if all_steps else _chunk_summary(terms)


def _chunk_summary(terms: immunize.Terms) -> immunize.Terms:
  """The last step's terms, with the eigen checks summarized over the whole chunk."""
  last = jax.tree.map(lambda a: a[-1], terms)
  return last._replace(eig_ok=jnp.all(terms.eig_ok), eig_residual=jnp.max(terms.eig_residual))


def run_chunk_checked(state: immunize.State, tasks: immunize.Task,
                      weights: immunize.Weights, *, bulk_fraction: float = 0.25,
                      timings: dict | None = None, **kwargs
                      ) -> tuple[immunize.State, immunize.Terms, np.ndarray]:
  """:func:`run_chunk`, then an exact recompute of every run whose extremes failed a check.

  Runs with a warm-start basis (``state.basis``) take the fast path
  (``immujax.extreme_eigs.warm``). A run any of whose steps failed a check (a Cholesky
  failure, no convergence within ``max_iters``, or a rank drop) is recomputed from the
  chunk's starting state with the full ``eigh`` path, alone, between chunks; the other runs
  keep their results. Under ``vmap`` a per-run ``lax.cond`` would run both paths for every
  run, which is why the fallback happens here.

  Args:
    state, tasks, weights: as :func:`run_chunk`.
    bulk_fraction: when more than this fraction of the runs was flagged, the whole batch is
      recomputed as one vmapped exact chunk instead of run by run.
    timings: if given, ``timings["fallback"]`` is increased by the wall seconds of the exact
      recomputes (the warm chunk is waited for first, so they are not mixed up).
    **kwargs: :func:`run_chunk`'s keyword arguments.

  Returns:
    ``(state, terms, fallback)`` where ``fallback`` is a ``(T, R)`` bool array: the runs that
    were recomputed exactly in this chunk (their ``terms.eig_ok`` stays False, as a record).
  """
  new, terms = run_chunk(state, tasks, weights, **kwargs)
  return check_chunk(state, tasks, weights, new, terms, bulk_fraction=bulk_fraction,
                     timings=timings, **kwargs)


def check_chunk(state: immunize.State, tasks: immunize.Task, weights: immunize.Weights,
                new: immunize.State, terms: immunize.Terms, *, bulk_fraction: float = 0.25,
                timings: dict | None = None, **kwargs
                ) -> tuple[immunize.State, immunize.Terms, np.ndarray]:
  """The second half of :func:`run_chunk_checked`, for a chunk already dispatched.

  ``(new, terms) = run_chunk(state, tasks, weights, **kwargs)`` returns as soon as its
  program is dispatched. A study with several blocks (one per method) dispatches every
  block's chunk first and checks them after: the host then traces and compiles the next
  block's program while the devices step the block before (a device runs its programs one
  after another, so the blocks' temporaries are not held at once).

  Args:
    state, tasks, weights: the chunk's inputs, as given to :func:`run_chunk`.
    new, terms: what :func:`run_chunk` returned for them.
    bulk_fraction: as :func:`run_chunk_checked`.
    timings: as :func:`run_chunk_checked`.
    **kwargs: the keyword arguments ``run_chunk`` was given.

  Returns:
    As :func:`run_chunk_checked`.
  """
  ok = terms.eig_ok
  if isinstance(ok, jax.Array) and not ok.is_fully_addressable:
    # Split over several processes (jax.distributed): every process gathers the flags, so
    # all of them recompute the same runs below.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = multihost_utils.process_allgather(ok, tiled=True)
  ok = np.asarray(ok)
  ok = ok.all(axis=-1) if kwargs.get("all_steps") else ok
  if state.basis is None or kwargs.get("exact") or ok.all():
    return new, terms, np.zeros(ok.shape, bool)
  if timings is None:
    return _fall_back(ok, state, tasks, weights, new, terms, bulk_fraction, kwargs)
  jax.block_until_ready(new)
  t0 = time.perf_counter()
  out = _fall_back(ok, state, tasks, weights, new, terms, bulk_fraction, kwargs)
  jax.block_until_ready(out[0])
  timings["fallback"] = timings.get("fallback", 0.0) + time.perf_counter() - t0
  return out


def _fall_back(ok, state, tasks, weights, new, terms, bulk_fraction, kwargs):
  """The exact recompute of the runs flagged in ``ok`` (see :func:`run_chunk_checked`)."""
  if (~ok).sum() > bulk_fraction * ok.size:
    # Many flagged runs: one vmapped exact chunk of the whole batch is cheaper than one
    # compiled call per run. The unflagged runs then get the reference result too; eig_ok
    # keeps the warm path's record.
    new, exact_terms = run_chunk(state, tasks, weights, **{**kwargs, "exact": True})
    return new, exact_terms._replace(eig_ok=terms.eig_ok), ~ok
  static = {k: kwargs.get(k, d) for k, d in (
      ("steps", None), ("loss", "mse"), ("imma_steps", 5),
      ("imma_inner_steps", immunize.IMMA_INNER_STEPS), ("rtol", None),
      ("preconditioned_only", False), ("all_steps", False), ("spectral_terms", None))}
  for t, r in np.argwhere(~ok):
    new, terms = _recompute_run(int(t), int(r), state, tasks, weights, new, terms, static)
  return new, terms, ~ok


def _shards_with_row(a, t: int):
  """``[(shard data, local row)]`` of the addressable shards of ``a`` holding row ``t``."""
  if not isinstance(a, jax.Array):
    return [(jnp.asarray(a), t)]
  out = []
  for sh in a.addressable_shards:
    rows = sh.index[0] if sh.index else slice(None)
    start = rows.start or 0
    stop = a.shape[0] if rows.stop is None else rows.stop
    if start <= t < stop:
      out.append((sh.data, t - start))
  return out


def _recompute_run(t, r, state, tasks, weights, new, terms, static):
  """Recomputes run ``(t, r)`` exactly on a device that holds it; returns ``(new, terms)``.

  Every array is indexed shard by shard, so no program spans two devices: indexing a split
  array as a whole compiles to a select and an all-reduce across devices, a collective that
  a loaded device can stall past XLA:CPU's 40 s rendezvous timeout. A run held by another
  process is left to that process.
  """
  held = _shards_with_row(jax.tree.leaves(new)[0], t)
  if not held:
    return new, terms
  device = next(iter(held[0][0].devices()))

  def row(a, *index):
    # a[index] from a shard of `a` on `device` (else from any shard holding it, moved there).
    found = _shards_with_row(a, index[0])
    data, i = next(((d, i) for d, i in found if device in d.devices()), found[0])
    return jax.device_put(data[(i,) + index[1:]], device)

  def whole(a):
    # A shared pool: this device's copy.
    shards = a.addressable_shards if isinstance(a, jax.Array) else []
    mine = [sh.data for sh in shards if sh.device == device]
    return mine[0] if mine else jax.device_put(a, device)

  run = lambda tree: jax.tree.map(lambda a: row(a, t, r), tree)
  task = jax.tree.map(lambda ax, a: None if a is None else (whole(a) if ax is None
                                                             else row(a, t)),
                      task_axes(tasks), tasks, is_leaf=lambda x: x is None)
  fixed, fixed_terms = _exact_run(run(state), task, run(weights), **static)
  fixed_terms = fixed_terms._replace(eig_ok=jnp.zeros_like(fixed_terms.eig_ok))

  def put(a, value):
    # Writes `value` into row (t, r) of every local shard holding row t; rebuilds `a`.
    # (An array of several processes may have one local shard: it is rebuilt the same way.)
    if not isinstance(a, jax.Array) or (len(a.addressable_shards) == 1
                                        and a.is_fully_addressable):
      return jnp.asarray(a).at[t, r].set(value)
    parts = []
    for sh in a.addressable_shards:
      rows = sh.index[0] if sh.index else slice(None)
      start = rows.start or 0
      stop = a.shape[0] if rows.stop is None else rows.stop
      data = sh.data
      if start <= t < stop:
        data = data.at[t - start, r].set(jax.device_put(value, sh.device))
      parts.append(data)
    return jax.make_array_from_single_device_arrays(a.shape, a.sharding, parts)

  return (jax.tree.map(put, new, fixed), jax.tree.map(put, terms, fixed_terms))


class Evaluation(NamedTuple):
  """Final metrics per run, shape ``(T, R)``."""
  rir: Array
  ratio_h: Array
  ratio_p: Array
  dp_loss: Array          # L(D_P, ω_T, θ_T), the trained model
  finite: Array           # False if the run diverged


def evaluate(state: immunize.State, tasks: immunize.Task, *, loss: str = "mse",
             kappa: str = "pinv", task_batch: int | None = None) -> Evaluation:
  """RIR (Eq. 15, against the identity) and the D_P loss of every run.

  κ(K_P), κ(K_H) are computed once per task; with roots (``Task.root_p``) every κ comes from
  the small Grams (``spectral.gram_extremes``), the same non-zero spectra. A batch split
  over several devices is evaluated device by device (``shard_map``, no collective).
  ``task_batch`` bounds memory as in :func:`run_chunk`: only that many tasks' runs are
  evaluated at once (``None``: all; a 7-method paper-scale job evaluated at once needed
  more than 24 GB).
  """
  if task_batch is not None and task_batch < 1:
    raise ValueError(f"`task_batch` must be a positive number of tasks; got {task_batch}.")
  return _evaluate(state.params, tasks, loss=loss, kappa=kappa, task_batch=task_batch,
                   mesh=_task_mesh((state.params, tasks)))


@functools.partial(jax.jit, static_argnames=("loss", "kappa", "task_batch", "mesh"))
def _evaluate(params, tasks, *, loss, kappa, task_batch, mesh):
  def per_task(params, task):
    lk_p0, lk_h0 = _log_kappas(None, task, kappa)

    def per_run(params):
      theta = params.theta
      finite = jnp.all(jnp.isfinite(theta)) & jnp.all(jnp.isfinite(params.omega))
      safe = jnp.where(finite, theta, jnp.eye(*theta.shape, dtype=theta.dtype))
      lk_p, lk_h = _log_kappas(safe, task, kappa)
      log_h, log_p = lk_h - lk_h0, lk_p - lk_p0
      r = metrics.RIR(jnp.exp(log_h), jnp.exp(log_p), jnp.exp(log_h - log_p))
      r = metrics.RIR(*(jnp.where(finite, v, jnp.nan) for v in r))
      dp = immunize.supervised_loss(theta, params.omega, task, loss)
      return Evaluation(r.rir, r.ratio_h, r.ratio_p, dp, finite)

    return jax.vmap(per_run)(params)

  pool = tasks.x_p if task_axes(tasks).x_p is None else None
  batched = tasks._replace(x_p=None) if pool is not None else tasks

  def local(args, pool):
    params, batched = args
    with_pool = lambda t: t if pool is None else t._replace(x_p=pool)
    if task_batch is None:
      t = with_pool(batched)
      return jax.vmap(per_task, in_axes=(0, task_axes(t)))(params, t)
    return jax.lax.map(lambda a: per_task(a[0], with_pool(a[1])), (params, batched),
                       batch_size=task_batch)

  return _per_device(local, mesh)((params, batched), pool)


def _log_kappas(theta, task, kappa):
  """``(log κ(θᵀK_Pθ), log κ(θᵀK_Hθ))``; ``theta=None`` gives ``log κ(K_P), log κ(K_H)``.

  One batched eigendecomposition of both matrices (concurrent eigh calls can deadlock
  XLA:CPU, see ``spectral._eigh``).
  """
  if kappa == "pinv" and task.root_p is not None:
    roots = jnp.stack([task.root_p, task.root_h])
    b = roots if theta is None else roots @ theta
    e = jax.vmap(spectral.gram_extremes)(b)
    positive = e.sigma_min > 0
    lk = jnp.where(positive, jnp.log(jnp.where(positive, e.sigma_max, 1.0))
                   - jnp.log(jnp.where(positive, e.sigma_min, 1.0)), 0.0)
    return lk[0], lk[1]
  ks = jnp.stack([task.k_p, task.k_h])
  h = ks if theta is None else jax.vmap(spectral.hessian, in_axes=(None, 0))(theta, ks)
  log_kappa = (spectral.log_condition_number if kappa == "pinv"
               else spectral.log_condition_number_authors)
  lk = jax.vmap(log_kappa)(h)
  return lk[0], lk[1]

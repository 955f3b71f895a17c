r"""All ordered MNIST digit pairs × methods × seeds as one sharded, vmapped job (Table 2, Fig. 2).

  python -m experiments.mnist_pairs --workdir=/tmp/mnist            # embedded sample, offline
  python -m experiments.mnist_pairs --workdir=/tmp/mnist_paper \
      --config=experiments/configs/mnist_pairs.py:paper --mnist_dir=../shared/data/mnist

Writes ``results.json``, ``table.md`` and ``heatmap_<method>.png`` into ``--workdir``;
checkpoints after every chunk and resumes when rerun. The task axis (pairs) is sharded over
every available device (``jax.sharding``), so the same command uses 8 GPUs or a TPU slice,
and over the devices of several processes with ``--coordinator_address``,
``--num_processes`` and ``--process_id`` (README, "Scaling out"). Per-step terms go to
``metrics.jsonl``, ``tensorboard/`` and ``metrics_runs/`` (``experiments/metrics_log.py``).
"""

from __future__ import annotations

import functools
import json
import pathlib
import time

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from experiments import common
from experiments import host
from experiments import metrics_log
from experiments import mnist_report
from immujax import checkpoint
from immujax import immunize
from immujax import spectral
from immujax import sweep
from immujax import training
from immujax.data import mnist


def _define_flags():
  # Flags are defined only when this module runs as a program, so several binaries can
  # be imported side by side (tests, the attack suite) without duplicate-flag errors.
  global _CONFIG, _WORKDIR, _MNIST_DIR, _TFDS_DIR, _MAX_CHUNKS, _DEVICES
  _CONFIG = config_flags.DEFINE_config_file(
      "config", str(pathlib.Path(__file__).parent / "configs" / "mnist_pairs.py"),
      "Experiment configuration.")
  _WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
  _MNIST_DIR = flags.DEFINE_string(
      "mnist_dir", None, "Directory of the four MNIST IDX files (source 'idx'; default "
      "$IMMUJAX_MNIST_DIR or $IMMUJAX_DATA_DIR/mnist).")
  _TFDS_DIR = flags.DEFINE_string("tfds_data_dir", None, "tfds data dir (source 'tfds').")
  _MAX_CHUNKS = flags.DEFINE_integer(
      "max_chunks", None, "Stop after this many chunks, as if killed (for resume tests).")
  _DEVICES = flags.DEFINE_integer("devices", None, "Use only the first N devices.")
  common.define_distributed_flags()


NAMES = mnist_report.NAMES


def load_images(cfg, mnist_dir=None, tfds_dir=None):
  """Normalized MNIST training images (optionally average-pooled) and labels."""
  if cfg.source == "idx" and mnist_dir is None:
    raise ValueError("config source 'idx' needs --mnist_dir (or $IMMUJAX_MNIST_DIR) pointing "
                     "at the four MNIST IDX files; or use the default embedded sample.")
  images, labels = mnist.load_mnist(cfg.source, mnist_dir=mnist_dir, tfds_data_dir=tfds_dir)
  if cfg.pool > 1:
    if 28 % cfg.pool:
      raise ValueError(f"config pool={cfg.pool} must divide 28.")
    side = 28 // cfg.pool
    images = images.reshape(-1, side, cfg.pool, side, cfg.pool).mean((2, 4)).reshape(
        len(images), -1)
  return images, labels


def build_tasks(cfg, images, labels, seed: int = 0):
  """Batched, pooled :class:`immunize.Task` for every configured pair, and the pairs (T, 2).

  All pairs share ONE pool of ``10 × n_per_digit`` images (``Task.rows`` picks each pair's
  supervised inputs), so full MNIST costs one 0.3 GB pool rather than 6 GB of per-pair
  copies. K_P and K_H are the per-digit ``XᵀX`` (as the authors); with ``cfg.roots`` each
  also gets its range root (``spectral.covariance_root``, padded to the largest digit rank)
  so that every eigendecomposition is of size rank ≤ D. The harmful task enters only
  through its sufficient statistics (IMMA), computed from per-digit Grams
  (``mnist.harmful_statistics``) without forming any pair's inputs.
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


def _runs(cfg, tasks):
  return sweep.init_runs(jax.random.key(0), tasks, tuple(cfg.methods), cfg.seeds,
                         learning_rate=cfg.learning_rate, step_scale=cfg.step_scale,
                         clip_factor=cfg.clip_factor,
                         imma_steps=cfg.imma_steps if "imma" in cfg.methods else 0,
                         init=cfg.init, precondition_baselines=cfg.precondition_baselines,
                         adaptive=cfg.adaptive, harmful_scale=cfg.get("harmful_scale", 1.0),
                         eig_solver=cfg.get("eig_solver", "warm"),
                         task_batch=cfg.get("task_batch") or None)


def restore_runs(workdir):
  """Rebuilds a finished (or interrupted) run: ``(tasks, state, index, pairs, cfg)``.

  Reads ``config.json`` written at the start of the run and the latest orbax checkpoint.
  """
  workdir = pathlib.Path(workdir)
  meta = json.loads((workdir / "config.json").read_text())
  cfg = ml_collections.ConfigDict(meta["config"])
  images, labels = load_images(cfg, meta.get("mnist_dir"), meta.get("tfds_data_dir"))
  tasks, pairs = build_tasks(cfg, images, labels)
  runs = _runs(cfg, tasks)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {workdir / 'checkpoints'}")
  blocks = ckpt.restore(step, like=initial_blocks(cfg, runs, tasks))
  state = sweep.join_methods(blocks["state"])
  return tasks, state, sweep.run_index(tuple(cfg.methods), cfg.seeds), pairs, cfg


def initial_blocks(cfg, runs, tasks) -> dict:
  """The checkpointed state: per-method run blocks, fallback counts, largest residual."""
  methods = tuple(cfg.methods)
  return {"state": sweep.split_by_method(runs.state, methods, cfg.seeds),
          "fallbacks": tuple(np.zeros((tasks.k_p.shape[0], cfg.seeds), np.int32)
                             for _ in methods),
          "max_residual": np.zeros((), np.float64)}


def main(argv):
  del argv
  common.enable_float64()
  cfg = _CONFIG.value
  t0 = time.perf_counter()
  layout = host.configure(_DEVICES.value)   # CPU devices: before JAX starts its backend
  common.init_distributed()   # several processes: before any JAX computation
  multi = jax.process_count() > 1
  main_process = common.is_main_process()
  if main_process:
    print(f"[mnist] {host.describe(layout, _DEVICES.value)}", flush=True)
  clock = training.WallClock(t0)   # the whole run's wall time, across resumes
  # Validate every flag and config field, and load the data, BEFORE touching the workdir.
  from experiments.configs import mnist_pairs as config_lib  # pylint: disable=g-import-not-at-top
  config_lib.validate(cfg)
  workdir = common.validate_workdir(_WORKDIR.value)
  common.validate_positive_int(_MAX_CHUNKS.value, "--max_chunks", allow_none=True)
  common.validate_positive_int(_DEVICES.value, "--devices", allow_none=True)
  if _DEVICES.value and multi:
    raise ValueError("--devices cannot be combined with a multi-process run; every "
                     "process's devices are used (set the device count per process instead).")
  if _DEVICES.value and _DEVICES.value > jax.device_count():
    raise ValueError(
        f"--devices={_DEVICES.value} but only {jax.device_count()} device(s) exist; pass fewer, "
        "or set XLA_FLAGS=--xla_force_host_platform_device_count=N on a CPU.")
  mnist_dir = common.data_dir_from(_MNIST_DIR.value, "IMMUJAX_MNIST_DIR", "mnist")
  mnist_dir = str(mnist_dir) if (mnist_dir is not None and cfg.source == "idx") else None
  common.validate_data_dir(mnist_dir, "--mnist_dir")
  if cfg.source == "tfds":
    common.validate_data_dir(_TFDS_DIR.value, "--tfds_data_dir")
  images, labels = load_images(cfg, mnist_dir, _TFDS_DIR.value)
  fewest = int(np.bincount(labels, minlength=10).min())
  if cfg.n_per_digit > fewest:
    raise ValueError(f"--config.n_per_digit={cfg.n_per_digit} but the data hold only {fewest} "
                     f"images of their rarest digit; pass --config.n_per_digit<={fewest}.")
  print(f"[mnist] {len(labels)} images loaded (source {cfg.source}); building the tasks",
        flush=True)
  methods = tuple(cfg.methods)
  if main_process:   # process 0 owns the workdir's files; the others wait for it
    common.claim_workdir(workdir, cfg.to_dict(), {"mnist_dir": mnist_dir,
                                                   "tfds_data_dir": _TFDS_DIR.value})
  common.barrier("mnist_pairs: workdir claimed")

  devices = jax.devices()[: _DEVICES.value] if _DEVICES.value else jax.devices()
  mesh = sweep.device_mesh(devices)
  tasks, pairs = build_tasks(cfg, images, labels)
  n_pairs = len(pairs)
  tasks = sweep.pad_tasks(tasks, len(devices))
  if multi:
    # Every process built the same tasks and keeps its devices' rows of the global arrays
    # (the task axis is split over all processes' devices); it initialises only its own
    # pairs' runs (init_runs is per pair: the whole batch's values, up to round-off).
    lo, hi = common.local_rows(mesh, tasks.k_p.shape[0])
    runs = _runs(cfg, sweep.slice_tasks(tasks, lo, hi))
    runs = common.put_global(runs, mesh, first_row=lo, rows=tasks.k_p.shape[0])
    tasks = common.put_global(tasks, mesh, sweep.task_axes(tasks))
  else:
    tasks = sweep.shard_tasks(tasks, mesh)
    runs = _runs(cfg, tasks)
    runs = sweep.shard_tasks(runs, mesh)
  index = sweep.run_index(methods, cfg.seeds)
  if main_process:
    print(f"[mnist] {n_pairs} pairs × {len(methods)} methods × {cfg.seeds} seeds = "
          f"{n_pairs * len(index)} runs, D_in = {tasks.k_p.shape[-1]}, {len(devices)} "
          f"device(s) in {jax.process_count()} process(es), source = {cfg.source}", flush=True)

  # Each method's runs step as their own block with their own static flags: no IMMA
  # attacker outside IMMA, no plain-gradient products for preconditioned methods.
  statics = [sweep.method_statics(m, imma_steps=cfg.imma_steps,
                                  precondition_baselines=cfg.precondition_baselines,
                                  exact_methods=tuple(cfg.eig_exact_methods))
             for m in methods]
  task_batch = cfg.get("task_batch") or None   # pairs per device held in memory at once
  if multi and task_batch is None:
    # All of a device's pairs at once, as one shard_map: no step communicates across
    # processes (the pairs are independent).
    task_batch = tasks.k_p.shape[0] // len(devices)
  log = metrics_log.MetricsLog(workdir, [m for m, _ in index], n_tasks=n_pairs,
                               enabled=main_process)
  blocks = initial_blocks(cfg, runs, tasks)
  weights = sweep.split_by_method(runs.weights, methods, cfg.seeds)

  def chunk(blocks, start):
    states, fallbacks, terms = [], [], []
    resid = np.asarray(blocks["max_residual"])
    for st, w, fb, flags in zip(blocks["state"], weights, blocks["fallbacks"], statics):
      st, t, flagged = sweep.run_chunk_checked(
          st, tasks, w, steps=cfg.chunk_steps, loss="bce", task_batch=task_batch,
          mesh=mesh if task_batch else None, all_steps=True, **flags)
      t = common.to_host(t)   # every step's terms (T, R_m, steps), gathered from all processes
      states.append(st)
      fallbacks.append(np.asarray(fb) + flagged)
      terms.append(t)
      resid = np.maximum(resid, t.eig_residual.max())
    new = {"state": tuple(states), "fallbacks": tuple(fallbacks), "max_residual": resid}
    terms = jax.tree.map(lambda *a: np.concatenate(a, axis=1), *terms)
    log.write(start, terms)   # before the checkpoint: a resume drops what follows it
    return new, jax.tree.map(lambda a: a[..., -1], terms)

  def summarize(terms):
    sup = np.asarray(terms.supervised)[:n_pairs]
    return "D_P loss " + " ".join(
        f"{m}={np.nanmean(sup[:, [i for i, (mm, _) in enumerate(index) if mm == m]]):.3g}"
        for m in methods)

  total = cfg.steps
  if _MAX_CHUNKS.value is not None:
    total = min(total, _MAX_CHUNKS.value * cfg.chunk_steps)
  blocks, _ = training.run_chunked(
      chunk, blocks, total_steps=total, chunk_steps=cfg.chunk_steps,
      checkpointer=checkpoint.Checkpointer(workdir / "checkpoints"),
      on_progress=common.ProgressPrinter("mnist", summarize) if main_process else None,
      clock=clock)
  log.close()
  if total < cfg.steps:
    if main_process:
      print(f"stopped after {total} steps (--max_chunks); rerun to resume.")
    return
  state = sweep.join_methods(blocks["state"])

  ev = jax.tree.map(lambda a: a[:n_pairs], common.to_host(
      sweep.evaluate(state, tasks, loss="bce", kappa=cfg.kappa)))
  if not main_process:
    return   # process 0 alone writes the results
  results = {"methods": {}, "seeds": cfg.seeds, "source": cfg.source, "config": cfg.to_dict(),
             "kappa": cfg.kappa, "n_pairs": n_pairs, "devices": len(devices),
             "processes": jax.process_count(),
             "layout": mnist_report.LAYOUT,
             "eig_solver": cfg.eig_solver if tasks.root_p is not None else "eigh",
             "eig_max_residual": float(blocks["max_residual"])}
  for m, fb in zip(methods, blocks["fallbacks"]):
    cols = [i for i, (mm, _) in enumerate(index) if mm == m]
    results["methods"][m] = mnist_report.method_results(ev, pairs, cols)
    # Chunks of a run recomputed with the exact eigh path because a warm check failed.
    results["methods"][m]["eig_fallback_chunks"] = int(np.asarray(fb)[:n_pairs].sum())
  results["eig_fallback_chunks"] = sum(r["eig_fallback_chunks"]
                                       for r in results["methods"].values())
  results["wall_time_s"] = clock.total()   # includes earlier processes of a resumed run
  common.write_json(workdir / "results.json", results)
  common.write_text(workdir / "table.md", mnist_report.table_markdown(
      results, methods, seeds=cfg.seeds, source=cfg.source, d_in=(28 // cfg.pool) ** 2,
      steps=cfg.steps))
  for m in methods:
    common.save_figure(workdir / f"heatmap_{m}.png",
                       mnist_report.heatmap_figure(results["methods"][m], NAMES[m]))
  print((workdir / "table.md").read_text())
  print(f"eigen-extremes: {results['eig_solver']}, {results['eig_fallback_chunks']} run-chunk(s) "
        f"recomputed exactly, largest residual {results['eig_max_residual']:.1e}")
  print(f"wrote {workdir}/results.json, table.md, heatmap_*.png, metrics.jsonl, tensorboard/ "
        f"({results['wall_time_s']:.1f} s)")


if __name__ == "__main__":
  common.run(main, define_flags=_define_flags)

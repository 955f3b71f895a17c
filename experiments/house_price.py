r"""House prices (Table 1, Fig. 1): Algorithm 1 and the baselines over N seeds in one job.

  python -m experiments.house_price --workdir=/tmp/house \
      --data_dir=../shared/data/house_price [--config=experiments/configs/house_price.py:quick]

Writes ``results.json``, ``table.md`` and ``norm_ratio.png`` into ``--workdir``; checkpoints
after every chunk under ``--workdir/checkpoints`` and resumes from them when rerun. Per-step
terms go to ``metrics.jsonl``, ``tensorboard/`` and ``metrics_runs/`` (experiments.metrics_log).

As several processes (``--coordinator_address``, ``--num_processes``, ``--process_id``;
README, "Scaling out"): there is one task, so the runs (methods × seeds) take the place of
the task axis, the one task repeated per run, split over every device of every process.
"""

from __future__ import annotations

import pathlib

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from experiments import common
from experiments import metrics_log
from experiments.configs import house_price as config_lib
from immujax import attacks
from immujax import checkpoint
from immujax import immunize
from immujax import metrics
from immujax import sweep
from immujax import training
from immujax.data import house_prices


def _define_flags():
  # Flags are defined only when this module runs as a program, so several binaries can
  # be imported side by side (tests, the attack suite) without duplicate-flag errors.
  global _CONFIG, _WORKDIR, _DATA_DIR, _CACHE_DIR, _MAX_CHUNKS
  _CONFIG = config_flags.DEFINE_config_file(
      "config", str(pathlib.Path(__file__).parent / "configs" / "house_price.py"),
      "Experiment configuration.")
  _WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
  _DATA_DIR = flags.DEFINE_string(
      "data_dir", None, "Directory with D1.csv/D2.csv or Kaggle's train.csv "
      "(default: $IMMUJAX_HOUSE_DIR or $IMMUJAX_DATA_DIR/house_price).")
  _CACHE_DIR = flags.DEFINE_string(
      "cache_dir", None, "With no data dir: download OpenML house_prices (id 42165) here.")
  _MAX_CHUNKS = flags.DEFINE_integer(
      "max_chunks", None, "Stop after this many chunks, as if killed (for resume tests).")
  common.define_distributed_flags()


# Table 1 of the paper (means; digest §5.1).
PAPER_TABLE1 = {
    "r_ill_only": (90.02, 72.42, 1.24),
    "imma": (7.05, 3.55, 2.00),
    "opt_kappa": (1.52, 0.016, 92.58),
    "ours": (18.92, 0.053, 356.20),
}
NAMES = {"ours": "Ours", "r_ill_only": "R_ill Only", "imma": "IMMA", "opt_kappa": "Opt κ"}


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected positional arguments {argv[1:]}; every option is a --flag.")
  common.enable_float64()
  clock = training.WallClock()   # the whole run's wall time, across resumes
  common.init_distributed()   # several processes: before any JAX computation
  multi = jax.process_count() > 1
  main_process = common.is_main_process()

  # Validate every flag and config field, and load the data, BEFORE touching the workdir.
  cfg = _CONFIG.value
  config_lib.validate(cfg)
  workdir = common.validate_workdir(_WORKDIR.value)
  common.validate_positive_int(_MAX_CHUNKS.value, "--max_chunks", allow_none=True)
  data_dir = common.data_dir_from(_DATA_DIR.value, "IMMUJAX_HOUSE_DIR", "house_price")
  if data_dir is None and _CACHE_DIR.value is None:
    raise ValueError("no house-price data: pass --data_dir (the folder with D1.csv and D2.csv "
                     "or Kaggle's train.csv), set $IMMUJAX_HOUSE_DIR or $IMMUJAX_DATA_DIR, or "
                     "pass --cache_dir to download OpenML dataset 42165.")
  common.validate_data_dir(data_dir, "--data_dir")
  data = house_prices.load_house_prices(
      None if data_dir is None else str(data_dir), n_train=cfg.n_train,
      cache_dir=_CACHE_DIR.value)
  if main_process:   # process 0 owns the workdir's files; the others wait for it
    common.claim_workdir(workdir, cfg.to_dict())
  common.barrier("house_price: workdir claimed")
  task = immunize.make_task(data.x_p, data.y_p, data.x_h, data.y_h)
  tasks = jax.tree.map(lambda a: a[None], task)  # T = 1
  methods = tuple(cfg.methods)
  runs = sweep.init_runs(jax.random.key(0), tasks, methods, cfg.seeds,
                         learning_rate=cfg.learning_rate, step_scale=cfg.step_scale,
                         clip_factor=cfg.clip_factor, imma_steps=cfg.imma_steps,
                         init=cfg.init, precondition_baselines=cfg.precondition_baselines)
  index = sweep.run_index(methods, cfg.seeds)
  n_runs, devices = len(index), jax.devices()
  run_tasks, step_kwargs = tasks, {}
  to_runs = lambda a: a[0]    # (T = 1, R, ...) -> (R, ...)
  if multi:
    # The R runs become the batch axis, (1, R) -> (R, 1), each with its own copy of the one
    # (small) task, padded to a multiple of the device count and split over all devices.
    # (One process keeps the (1, R) layout of its checkpoints, which other binaries read.)
    runs = sweep.pad_tasks(jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), runs), len(devices))
    batch = runs.state.step.shape[0]
    mesh = sweep.device_mesh(devices)
    run_tasks = common.put_global(jax.tree.map(lambda a: jnp.repeat(a, batch, axis=0), tasks),
                                  mesh)
    runs = common.put_global(runs, mesh)
    step_kwargs = dict(task_batch=batch // len(devices), mesh=mesh)
    to_runs = lambda a: a[:n_runs, 0]
  log = metrics_log.MetricsLog(workdir, [m for m, _ in index], n_tasks=1,
                               enabled=main_process)

  def chunk(state, start):
    state, terms, _ = sweep.run_chunk_checked(
        state, run_tasks, runs.weights, steps=cfg.chunk_steps, loss="mse",
        imma_steps=cfg.imma_steps, all_steps=True, **step_kwargs)
    # Every step's terms on the host as (T = 1, R, steps), gathered by every process.
    terms = jax.tree.map(lambda a: to_runs(a)[None], common.to_host(terms))
    log.write(start, terms)   # before the checkpoint: a resume drops what follows it
    return state, jax.tree.map(lambda a: a[..., -1], terms)

  def summarize(terms):
    sup = np.asarray(terms.supervised)[0]
    return "D_P loss " + " ".join(
        f"{m}={np.nanmean(sup[[i for i, (mm, _) in enumerate(index) if mm == m]]):.4g}"
        for m in methods)

  total = cfg.steps
  if _MAX_CHUNKS.value is not None:
    total = min(total, _MAX_CHUNKS.value * cfg.chunk_steps)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
  state, _ = training.run_chunked(
      chunk, runs.state, total_steps=total, chunk_steps=cfg.chunk_steps, checkpointer=ckpt,
      on_progress=common.ProgressPrinter("house", summarize) if main_process else None,
      clock=clock)
  log.close()
  if total < cfg.steps:
    if main_process:
      print(f"stopped after {total} steps (--max_chunks); rerun to resume.")
    return

  ev, params = common.to_host((sweep.evaluate(state, run_tasks, kappa=cfg.kappa),
                               state.params))
  ev, params = jax.tree.map(to_runs, (ev, params))   # (R, ...) per run
  if not main_process:
    return   # process 0 alone writes the results
  bound = metrics.rir_upper_bound(k_p=task.k_p, k_h=task.k_h)

  # Definition 3.1(c): the D_P loss a fresh probe reaches on θ_I, vs on the identity.
  def probe_optimum(theta):
    phi = task.x_p @ theta
    w = jnp.linalg.lstsq(phi, task.y_p)[0]
    return jnp.mean((phi @ w - task.y_p) ** 2)
  dp_opt_identity = float(probe_optimum(jnp.eye(task.x_p.shape[1])))
  dp_probe = np.asarray(jax.vmap(probe_optimum)(params.theta))

  results = {"methods": {}, "kappa": cfg.kappa, "config": cfg.to_dict(),
             "devices": len(devices), "processes": jax.process_count(),
             "rir_upper_bound": float(bound.rir_on_range),
             "rir_upper_bound_bounded": bool(bound.bounded),
             "null_space_leak": float(bound.leak),
             "dp_loss_optimum_identity": dp_opt_identity,
             "data_dir": str(data_dir) if data_dir else None}
  for m in methods:
    rows = [i for i, (mm, _) in enumerate(index) if mm == m]
    results["methods"][m] = {
        "ratio_h": ev.ratio_h[rows], "ratio_p": ev.ratio_p[rows], "rir": ev.rir[rows],
        "dp_loss": ev.dp_loss[rows], "dp_loss_probe_optimum": dp_probe[rows],
        "diverged": ~ev.finite[rows],
    }

  # Fig. 1: norm-ratio curves of the paper's attacker (GD + exact line search), seed 0.
  attack = jax.jit(attacks.gd_exact_line_search, static_argnames=("steps",))
  curves = {"identity": {}}
  for side, x, y in (("D_P", task.x_p, task.y_p), ("D_H", data.x_h, data.y_h)):
    curves["identity"][side] = np.asarray(attack(x, y, steps=cfg.attack_steps).norm_ratio)
    for m in methods:
      i = index.index((m, 0))
      theta = params.theta[i]
      if not np.all(np.isfinite(theta)):
        continue
      curves.setdefault(m, {})[side] = np.asarray(
          attack(x @ theta, y, steps=cfg.attack_steps).norm_ratio)
  results["norm_ratio_seed0"] = curves
  results["wall_time_s"] = clock.total()   # includes the time of killed earlier processes

  workdir.mkdir(parents=True, exist_ok=True)
  common.write_json(workdir / "results.json", results)
  common.write_text(workdir / "table.md", _table(results, methods, cfg))
  _plot(curves, workdir / "norm_ratio.png")
  print((workdir / "table.md").read_text())
  print(f"wrote {workdir}/results.json, table.md, norm_ratio.png "
        f"({results['wall_time_s']:.1f} s)")


def _table(results, methods, cfg) -> str:
  lines = [
      (f"# House prices — Table 1 (mean ± std over {cfg.seeds} seeds, κ = {cfg.kappa})"
       if cfg.seeds > 1 else f"# House prices — Table 1 (1 seed, n = 1, κ = {cfg.kappa})"), "",
      "| Method | (i) κ ratio D_H ↑ | (ii) κ ratio D_P ↓ | RIR ↑ | D_P loss (trained) | "
      "paper (i) | paper (ii) | paper RIR |",
      "|---|---|---|---|---|---|---|---|"]
  for m in methods:
    r = results["methods"][m]
    p = PAPER_TABLE1[m]
    lines.append(f"| {NAMES[m]} | {common.fmt_pm(r['ratio_h'])} | {common.fmt_pm(r['ratio_p'])}"
                 f" | {common.fmt_pm(r['rir'])} | {common.fmt_pm(r['dp_loss'])} | {p[0]} | "
                 f"{p[1]} | {p[2]} |")
  lines += [
      "",
      f"- RIR limit for extractors that stay in range(K_P) (closed form, whitening θ = "
      f"K_P^+1/2): **{results['rir_upper_bound']:.4g}**; null(K_P) ⊄ null(K_H): "
      f"{'no' if results['rir_upper_bound_bounded'] else 'yes — RIR over all θ is unbounded'}.",
      f"- D_P loss optimum with the identity: {results['dp_loss_optimum_identity']:.6g} "
      "(Definition 3.1(c)); a fresh probe on θ_I reaches "
      + ", ".join(f"{NAMES[m]} {common.fmt_pm(results['methods'][m]['dp_loss_probe_optimum'], 6)}"
                  for m in methods) + ".",
  ]
  return "\n".join(lines) + "\n"


def _plot(curves, path):
  plt = common.matplotlib_agg()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, side, note in ((axes[0], "D_P", "fast convergence preferred"),
                         (axes[1], "D_H", "slow convergence preferred")):
    for name, c in curves.items():
      if side in c:
        ax.semilogy(np.maximum(c[side], 1e-300), label=NAMES.get(name, "Identity"))
    ax.set_title(f"Norm ratio on {side} ({note})")
    ax.set_xlabel("GD + exact line search iterations")
    ax.set_ylabel("‖w_t − w*‖² / ‖w_0 − w*‖²")
    ax.legend(fontsize=8)
  common.save_figure(path, fig)


if __name__ == "__main__":
  common.run(main, define_flags=_define_flags)

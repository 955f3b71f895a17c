"""House prices (Table 1, Fig. 1): Algorithm 1 and the baselines over N seeds in one job.

:func:`run` trains every method × seed of a config on the authors' D1/D2 split (or Kaggle's
train.csv), checkpoints after every chunk and resumes when rerun, then writes
``results.json``, ``table.md`` and ``norm_ratio.png``. As several processes there is one
task, so the runs (methods × seeds) take the place of the task axis, the one task repeated
per run, split over every device of every process. :func:`load_workdir` reads the
extractors of a finished run back (for ``experiments.evaluate`` and the attack suite).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from immujax import attacks
from immujax import immunize
from immujax import metrics
from immujax import sweep
from immujax.data import fingerprint
from immujax.data import house_prices
from immujax.runner import checkpoints
from immujax.runner import distributed
from immujax.runner import loop
from immujax.runner import metrics_log
from immujax.runner import outputs
from immujax.runner import progress
from immujax.runner import provenance
from immujax.runner import workdir as workdir_lib
from immujax.studies import tables

__all__ = [
    "Extractors",
    "load",
    "load_workdir",
    "run",
    "train_in_process",
]

# Table 1 of the paper (means; digest §5.1).
PAPER_TABLE1 = {
    "r_ill_only": (90.02, 72.42, 1.24),
    "imma": (7.05, 3.55, 2.00),
    "opt_kappa": (1.52, 0.016, 92.58),
    "ours": (18.92, 0.053, 356.20),
}
Echo = Optional[Callable[[str], None]]


def load(data_dir, n_train: int, cache_dir=None) -> tuple[house_prices.HousePrices, dict]:
  """The preprocessed data and the data part of the run's provenance."""
  data = house_prices.load_house_prices(None if data_dir is None else str(data_dir),
                                        n_train=n_train, cache_dir=cache_dir)
  where = data_dir if data_dir is not None else f"the OpenML download in {cache_dir}"
  files = house_prices.data_files(data_dir if data_dir is not None else cache_dir)
  record = fingerprint.data_record(
      f"house prices ({', '.join(f.name for f in files)}) in {where}", files,
      (data.x_p_all, data.y_p_all, data.x_h_all, data.y_h_all))
  return data, record


def init_runs(hcfg, tasks):
  return sweep.init_runs(jax.random.key(0), tasks, tuple(hcfg.methods), hcfg.seeds,
                         learning_rate=hcfg.learning_rate, step_scale=hcfg.step_scale,
                         clip_factor=hcfg.clip_factor, imma_steps=hcfg.imma_steps,
                         init=hcfg.init, precondition_baselines=hcfg.precondition_baselines)


def _tasks(data):
  task = immunize.make_task(data.x_p, data.y_p, data.x_h, data.y_h)
  return task, jax.tree.map(lambda a: a[None], task)   # T = 1


def run(cfg, workdir, *, data_dir=None, cache_dir=None, max_chunks: Optional[int] = None,
        move_aside: bool = False, echo: Echo = None,
        clock: Optional[loop.WallClock] = None, defaults: Optional[dict] = None
        ) -> Optional[dict]:
  """Trains every method × seed of a validated ``cfg``; writes the workdir.

  ``defaults`` (the config file's values) stand for fields added since an older run.

  Returns:
    The results written to ``results.json`` (process 0), else None (other processes, or a
    run stopped by ``max_chunks``).
  """
  clock = clock or loop.WallClock()
  main = distributed.is_main_process()
  say = echo if (echo is not None and main) else (lambda _: None)
  multi = jax.process_count() > 1
  data, record = load(data_dir, cfg.n_train, cache_dir)
  prov = provenance.record(record)
  if main:   # process 0 owns the workdir's files; the others wait for it
    workdir_lib.claim_and_tell(workdir, cfg.to_dict(), provenance=prov, label="house", say=say,
                               move_aside=move_aside, defaults=defaults)
  distributed.barrier("house_price: workdir claimed")
  workdir = pathlib.Path(workdir)
  task, tasks = _tasks(data)
  methods = tuple(cfg.methods)
  runs = init_runs(cfg, tasks)
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
    run_tasks = distributed.put_global(
        jax.tree.map(lambda a: jnp.repeat(a, batch, axis=0), tasks), mesh)
    runs = distributed.put_global(runs, mesh)
    step_kwargs = dict(task_batch=batch // len(devices), mesh=mesh)
    to_runs = lambda a: a[:n_runs, 0]
  log = metrics_log.MetricsLog(workdir, [m for m, _ in index], n_tasks=1, enabled=main)

  def chunk(state, start):
    state, terms, _ = sweep.run_chunk_checked(
        state, run_tasks, runs.weights, steps=cfg.chunk_steps, loss="mse",
        imma_steps=cfg.imma_steps, all_steps=True, **step_kwargs)
    # Every step's terms on the host as (T = 1, R, steps), gathered by every process.
    terms = jax.tree.map(lambda a: to_runs(a)[None], distributed.to_host(terms))
    log.write(start, terms)   # before the checkpoint: a resume drops what follows it
    return state, jax.tree.map(lambda a: a[..., -1], terms)

  def summarize(terms):
    sup = np.asarray(terms.supervised)[0]
    return "D_P loss " + " ".join(f"{m}={np.nanmean(sup[tables.rows_of(index, m)]):.4g}"
                                  for m in methods)

  state = loop.run_in_workdir(
      chunk, runs.state, workdir, total_steps=cfg.steps, chunk_steps=cfg.chunk_steps,
      max_chunks=max_chunks, on_progress=progress.printer(echo if main else None, "house",
                                                          summarize), clock=clock, say=say)
  log.close()
  if state is None:
    return None
  ev, params = distributed.to_host((sweep.evaluate(state, run_tasks, kappa=cfg.kappa),
                                    state.params))
  ev, params = jax.tree.map(to_runs, (ev, params))   # (R, ...) per run
  if not main:
    return None   # process 0 alone writes the results
  results = results_of(cfg, data, task, ev, params.theta, index)
  results.update(devices=len(devices), processes=jax.process_count(), provenance=prov,
                 data_dir=str(data_dir) if data_dir else None, wall_time_s=clock.total())
  outputs.write_json(workdir / "results.json", results)
  outputs.write_text(workdir / "table.md", table(results, methods, cfg))
  plot(results["norm_ratio_seed0"], workdir / "norm_ratio.png")
  say((workdir / "table.md").read_text())
  say(f"wrote {workdir}/results.json, table.md, norm_ratio.png ({results['wall_time_s']:.1f} s)")
  return results


def results_of(cfg, data, task, ev, thetas, index) -> dict:
  """The per-method numbers, the RIR limit, Definition 3.1(c) and Fig. 1's curves."""
  methods = tuple(cfg.methods)
  bound = metrics.rir_upper_bound(k_p=task.k_p, k_h=task.k_h)

  # Definition 3.1(c): the D_P loss a fresh probe reaches on θ_I, vs on the identity.
  def probe_optimum(theta):
    phi = task.x_p @ theta
    w = jnp.linalg.lstsq(phi, task.y_p)[0]
    return jnp.mean((phi @ w - task.y_p) ** 2)
  dp_probe = np.asarray(jax.vmap(probe_optimum)(thetas))
  results = {"methods": {}, "kappa": cfg.kappa, "config": cfg.to_dict(),
             "rir_upper_bound": float(bound.rir_on_range),
             "rir_upper_bound_bounded": bool(bound.bounded),
             "null_space_leak": float(bound.leak),
             "dp_loss_optimum_identity": float(probe_optimum(jnp.eye(task.x_p.shape[1])))}
  for m in methods:
    rows = tables.rows_of(index, m)
    results["methods"][m] = {
        "ratio_h": ev.ratio_h[rows], "ratio_p": ev.ratio_p[rows], "rir": ev.rir[rows],
        "dp_loss": ev.dp_loss[rows], "dp_loss_probe_optimum": dp_probe[rows],
        "diverged": ~ev.finite[rows]}
  # Fig. 1: norm-ratio curves of the paper's attacker (GD + exact line search), seed 0.
  attack = jax.jit(attacks.gd_exact_line_search, static_argnames=("steps",))
  curves = {"identity": {}}
  for side, x, y in (("D_P", task.x_p, task.y_p), ("D_H", data.x_h, data.y_h)):
    curves["identity"][side] = np.asarray(attack(x, y, steps=cfg.attack_steps).norm_ratio)
    for m in methods:
      theta = thetas[index.index((m, 0))]
      if np.all(np.isfinite(theta)):
        curves.setdefault(m, {})[side] = np.asarray(
            attack(x @ theta, y, steps=cfg.attack_steps).norm_ratio)
  results["norm_ratio_seed0"] = curves
  return results


def table(results, methods, cfg) -> str:
  """``table.md``: Table 1 beside the paper's numbers, the RIR limit, Definition 3.1(c)."""
  lines = [
      (f"# House prices — Table 1 (mean ± std over {cfg.seeds} seeds, κ = {cfg.kappa})"
       if cfg.seeds > 1 else f"# House prices — Table 1 (1 seed, n = 1, κ = {cfg.kappa})"), "",
      "| Method | (i) κ ratio D_H ↑ | (ii) κ ratio D_P ↓ | RIR ↑ | D_P loss (trained) | "
      "paper (i) | paper (ii) | paper RIR |",
      "|---|---|---|---|---|---|---|---|"]
  for m in methods:
    r = results["methods"][m]
    p = PAPER_TABLE1.get(m, ("—",) * 3)
    lines.append(f"| {tables.name(m)} | {tables.fmt_pm(r['ratio_h'])} | "
                 f"{tables.fmt_pm(r['ratio_p'])} | {tables.fmt_pm(r['rir'])} | "
                 f"{tables.fmt_pm(r['dp_loss'])} | {p[0]} | {p[1]} | {p[2]} |")
  lines += [
      "",
      f"- RIR limit for extractors that stay in range(K_P) (closed form, whitening θ = "
      f"K_P^+1/2): **{results['rir_upper_bound']:.4g}**; null(K_P) ⊄ null(K_H): "
      f"{'no' if results['rir_upper_bound_bounded'] else 'yes — RIR over all θ is unbounded'}.",
      f"- D_P loss optimum with the identity: {results['dp_loss_optimum_identity']:.6g} "
      "(Definition 3.1(c)); a fresh probe on θ_I reaches "
      + ", ".join(f"{tables.name(m)} "
                  f"{tables.fmt_pm(results['methods'][m]['dp_loss_probe_optimum'], 6)}"
                  for m in methods) + ".",
  ]
  lines += [f"- warning: {n}" for n in provenance.notes(results.get("provenance", {}))]
  return "\n".join(lines) + "\n"


def plot(curves, path) -> None:
  """``norm_ratio.png`` (Fig. 1): the attacker's norm ratio on D_P and D_H, seed 0."""
  plt = outputs.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, side, note in ((axes[0], "D_P", "fast convergence preferred"),
                         (axes[1], "D_H", "slow convergence preferred")):
    floor = 1e-16
    for name, c in curves.items():
      if side in c:
        ax.semilogy(np.maximum(c[side], floor), label=tables.name(name))
    ax.set_ylim(bottom=floor)
    ax.set_title(f"Norm ratio on {side} ({note})")
    ax.set_xlabel("GD + exact line search iterations")
    ax.set_ylabel("‖w_t − w*‖² / ‖w_0 − w*‖²")
    ax.legend(fontsize=8)
  outputs.save_figure(path, fig)


# --------------------------------------------------------------------- a finished workdir


@dataclasses.dataclass
class Extractors:
  """The extractors of a finished house-price run and what they were evaluated on."""
  cfg: ml_collections.ConfigDict
  data: house_prices.HousePrices
  tasks: immunize.Task
  state: immunize.State
  source: str
  record: dict      # the data part of the provenance (fingerprint.data_record)


def load_workdir(house_workdir, data_dir=None, *, flag: str = "--house_workdir") -> Extractors:
  """Extractors of a finished ``experiments.house_price`` run.

  Rebuilds the run's tasks from its ``results.json`` config and the data, and restores the
  latest orbax checkpoint of the batched state.

  Args:
    house_workdir: the house_price ``--workdir``.
    data_dir: the house-price data; None → the ``data_dir`` recorded in results.json.
    flag: how to name ``house_workdir`` in messages.
  """
  house_workdir = pathlib.Path(house_workdir)
  res_path = house_workdir / "results.json"
  if not res_path.exists():
    raise ValueError(
        f"{flag}={house_workdir} has no results.json, so it is not a finished "
        "house_price run. Run `python -m experiments.house_price --workdir=...` to the end "
        "first, or pass --recompute.")
  res = json.loads(res_path.read_text())
  hcfg = ml_collections.ConfigDict(res["config"])
  if data_dir is None and res.get("data_dir"):
    data_dir = pathlib.Path(res["data_dir"])
  if data_dir is None or not pathlib.Path(data_dir).is_dir():
    raise ValueError(
        f"house-price data not found (got {data_dir}); pass --data_dir=<directory with "
        "D1.csv/D2.csv or train.csv> — the one the house_price run used.")
  data, record = load(data_dir, hcfg.n_train)
  recorded = (res.get("provenance") or {}).get("data", {}).get("arrays_sha256")
  if recorded and recorded != record["arrays_sha256"]:
    raise ValueError(
        f"{flag}={house_workdir} was trained on other data than --data_dir={data_dir}: "
        f"{fingerprint.describe_change(res['provenance']['data'], record)}; pass the "
        "--data_dir the run used.")
  _, tasks = _tasks(data)
  ckpt = checkpoints.Checkpointer(house_workdir / "checkpoints")
  latest = ckpt.latest_step()
  if latest is None or latest != hcfg.steps:
    raise ValueError(
        f"{flag}={house_workdir}: latest checkpoint is step {latest}, but its config "
        f"trains {hcfg.steps} steps. Rerun experiments.house_price on that workdir to finish.")
  like = jax.eval_shape(lambda t: init_runs(hcfg, t), tasks).state
  state = ckpt.restore(latest, like=like)
  ckpt.close()
  return Extractors(hcfg, data, tasks, state, f"{house_workdir} (step {latest})", record)


def train_in_process(data_dir, hcfg, *, echo: Echo = None) -> Extractors:
  """Trains house-price extractors of ``hcfg`` in this process (no workdir)."""
  data, record = load(data_dir, hcfg.n_train)
  _, tasks = _tasks(data)
  runs = init_runs(hcfg, tasks)

  def chunk(state, start):
    del start
    return sweep.run_chunk(state, tasks, runs.weights, steps=hcfg.chunk_steps, loss="mse",
                           imma_steps=hcfg.imma_steps)

  state, _ = loop.run_chunked(chunk, runs.state, total_steps=hcfg.steps,
                              chunk_steps=hcfg.chunk_steps,
                              on_progress=progress.printer(echo, "train house"))
  return Extractors(hcfg, data, tasks, state, "recomputed", record)

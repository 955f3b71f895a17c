"""Trade-off fronts (issue 19): how much immunization each method buys per unit of utility.

:func:`run` trains, in ONE vmapped job, every (method, strength, seed) of a config on house
prices (one task) or every (pair, method, strength, seed) on MNIST digit pairs; a
*strength* multiplies a method's balanced regularizer weights (its *knob*, see
``experiments/configs/tradeoff.py``). One extra block of runs per task and seed has every
regularizer weight at zero: the unimmunized model on the same schedule. Each final θ is a
point — D_P loss above the unimmunized optimum (cost) against RIR (gain) — and
:mod:`immujax.fronts` picks each method's non-dominated points.

Writes ``front.json`` (every point and each method's front), ``fronts.npz`` (θ of every
point in the same order, with the ``k_p``/``k_h`` it was evaluated with), ``fronts.png`` and
``table.md``. Checkpoints after every chunk and resumes; a rerun on other data is refused
(``--move_aside``). :func:`load_points` reads a finished workdir's points back (for the
attack suite and ``experiments.evaluate``).
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

from immujax import fronts
from immujax import immunize
from immujax import metrics
from immujax import sweep
from immujax.runner import loop
from immujax.runner import outputs
from immujax.runner import progress
from immujax.runner import provenance
from immujax.runner import workdir as workdir_lib
from immujax.studies import tables

Echo = Optional[Callable[[str], None]]
BUDGETS = (0.001, 0.01, 0.1)   # +0.1 %, +1 %, +10 % D_P loss over the optimum
REFERENCE = "unimmunized"      # the zero-weight block (not a method of the fronts)
# Default operating points: the paper's Table 1 RIRs (house; no D_P loss given) and the
# issue's record of immujax's Table 1 job (RIR, D_P loss) at strength 1.
PAPER_RIR = {"house": {"ours": 356.20, "opt_kappa": 92.58, "imma": 2.00, "r_ill_only": 1.24}}
# The harmful-side entries of immunize.balanced_weights (× step_scale × harmful_scale); the
# others (× step_scale only). Both are exact: the weights are linear in both scales.
_HARMFUL = ("r_ill", "r_ill_plain", "log_kappa_h", "inv_log_kappa_h", "inv_log_log_kappa_h",
            "imma", "imma_unrolled")


def scale_balanced(balanced: dict, step: float, harmful: float) -> dict:
  """``balanced_weights`` at ``step`` × its step scale and ``harmful`` × its harmful scale.

  ``immunize.balanced_weights`` is linear in both (λ_P ∝ step_scale, every other weight ∝ a
  goal norm that is λ_P's, times ``harmful_scale`` on the harmful side), so one balancing
  per seed serves every strength.
  """
  return {k: v * step * (harmful if k in _HARMFUL else 1.0) for k, v in balanced.items()}


def knob_scales(knob: str, strength: float) -> tuple[float, float]:
  """``(step multiplier, harmful multiplier)`` of a strength under ``knob``."""
  return (strength, 1.0) if knob == "all" else (1.0, strength)


# ------------------------------------------------------------------------------ settings


@dataclasses.dataclass
class Setting:
  """What ``--data`` builds: the tasks, the schedule and the reference numbers."""
  data: str                     # "house" | "mnist"
  tasks: immunize.Task          # leading axis T (1 for house)
  n_tasks: int                  # real tasks (before padding to the device count)
  pairs: Optional[np.ndarray]   # (T, 2) digit pairs (MNIST)
  loss: str
  steps: int
  chunk_steps: int
  step_scale: float
  seeds: int
  strengths: dict               # method -> tuple of strengths
  record: dict                  # the data part of the provenance
  optimum: Optional[np.ndarray]  # (T,) the unimmunized optimum of the D_P loss (house)
  held_out: Optional[tuple]     # (x, y) held-out D_P rows (house)
  extra: dict                   # what else config.json records (data folders)


def house_setting(cfg, data_dir, cache_dir=None) -> Setting:
  """The house-price setting: Table 1's task and schedule."""
  from immujax.studies import house_price  # pylint: disable=g-import-not-at-top
  data, record = house_price.load(data_dir, cfg.n_train, cache_dir)
  task, tasks = house_price._tasks(data)  # pylint: disable=protected-access
  w = jnp.linalg.lstsq(task.x_p, task.y_p)[0]
  optimum = float(jnp.mean((task.x_p @ w - task.y_p) ** 2))
  s = data.n_train
  held = (np.asarray(data.x_p_all[s:s + cfg.n_test]), np.asarray(data.y_p_all[s:s + cfg.n_test]))
  return Setting("house", tasks, 1, None, "mse", cfg.steps, cfg.chunk_steps, cfg.step_scale,
                 cfg.seeds, dict(cfg.house_strengths), record, np.array([optimum]),
                 held if len(held[1]) else None,
                 {"data_dir": None if data_dir is None else str(data_dir)})


def mnist_config(cfg) -> ml_collections.ConfigDict:
  """The ``mnist_pairs`` fields of a tradeoff config (for its task builders)."""
  return ml_collections.ConfigDict(dict(
      source=cfg.mnist_source, pool=cfg.pool, n_per_digit=cfg.n_per_digit, pairs=cfg.pairs,
      task="one_vs_rest", roots=True))


def mnist_setting(cfg, mnist_dir=None) -> Setting:
  """The MNIST setting: Table 2's main job (or the paper-scale variant)."""
  from immujax.studies import mnist_pairs  # pylint: disable=g-import-not-at-top
  mcfg = mnist_config(cfg)
  images, labels = mnist_pairs.load_images(mcfg, mnist_dir)
  fewest = int(np.bincount(labels, minlength=10).min())
  if cfg.n_per_digit > fewest:
    raise ValueError(f"--config.n_per_digit={cfg.n_per_digit} but the data hold only {fewest} "
                     f"images of their rarest digit; pass --config.n_per_digit<={fewest}.")
  record = mnist_pairs.data_record(mcfg, images, labels, mnist_dir)
  tasks, pairs = mnist_pairs.build_tasks(mcfg, images, labels)
  return Setting("mnist", tasks, len(pairs), np.asarray(pairs), "bce", cfg.mnist_steps,
                 cfg.mnist_chunk_steps, cfg.mnist_step_scale, cfg.mnist_seeds,
                 dict(cfg.mnist_strengths), record, None, None,
                 {"mnist_dir": None if mnist_dir is None else str(mnist_dir)})


def blocks_of(cfg, s: Setting) -> list[tuple[str, tuple]]:
  """``[(method, strengths)]`` in batch order; the unimmunized reference block last."""
  return [(m, tuple(s.strengths[m])) for m in cfg.methods] + [(REFERENCE, (0.0,))]


def run_index(cfg, s: Setting) -> list[tuple[str, float, int]]:
  """``(method, strength, seed)`` of each run of a task, in batch order (reference last)."""
  return [(m, st, seed) for m, grid in blocks_of(cfg, s) for st in grid
          for seed in range(s.seeds)]


# ------------------------------------------------------------------------- initial runs


def init_blocks(cfg, s: Setting) -> tuple[list, list]:
  """Initial states and weights, one ``(T, len(strengths)·seeds)`` block per method.

  Seed ``k`` has the same θ0 for every method and strength (common random numbers); its
  weights are balanced once at θ0 and rescaled per strength (:func:`scale_balanced`).
  """
  tasks = s.tasks
  methods = tuple(cfg.methods)
  d_in = tasks.k_p.shape[-1]
  keys = jax.random.split(jax.random.key(0), s.seeds)
  imma_steps = cfg.imma_steps if "imma_unrolled" in methods else 0
  imma_inner = immunize.IMMA_INNER_STEPS if "imma" in methods else 0
  warm = tasks.root_p is not None
  blocks = blocks_of(cfg, s)

  def one_task(task):
    def one_seed(k):
      params0 = immunize.init_params(k, d_in, init=cfg.init)
      basis = immunize.initial_basis(params0.theta, task) if warm else None
      base = immunize.balanced_weights(params0, task, learning_rate=cfg.learning_rate,
                                       step_scale=s.step_scale, imma_steps=imma_steps,
                                       imma_inner_steps=imma_inner, harmful_scale=1.0,
                                       basis=basis)
      head1 = (immunize.adapt_harmful_head(params0.theta, jnp.zeros_like(params0.omega), task,
                                           immunize.method_weights("imma", imma=1.0),
                                           steps=imma_inner) if imma_inner else None)
      out = []
      for m, grid in blocks:
        if m == REFERENCE:
          ws = [immunize.method_weights("ours", r_well=0.0, r_ill=0.0)]
        else:
          ws = [immunize.balanced_method_weights(
              m, scale_balanced(base, *knob_scales(cfg.knobs[m], st)),
              precondition_baselines=cfg.precondition_baselines) for st in grid]
        ws = jax.tree.map(lambda *a: jnp.stack(a), *ws)
        norms = jax.vmap(lambda w: immunize.direction_norm(
            params0, task, w, imma_steps=imma_steps, basis=basis, harmful_head=head1))(ws)
        states = jax.vmap(lambda n: immunize.init_state(
            params0, cfg.learning_rate, cfg.clip_factor * n, basis=basis))(norms)
        out.append((states, ws))
      return out
    per_seed = jax.vmap(one_seed)(keys)   # [(S, G, ...)] per block
    flat = lambda a: jnp.swapaxes(a, 0, 1).reshape((-1,) + a.shape[2:])   # (G·S, ...)
    return [jax.tree.map(flat, b) for b in per_seed]

  axes = sweep.task_axes(tasks)
  pool = tasks.x_p if axes.x_p is None else None
  batched = tasks._replace(x_p=None) if pool is not None else tasks
  batch = (cfg.get("task_batch") or None) if s.data == "mnist" else None
  # One compiled set-up per distinct configuration in a process (tests, notebooks rerun it).
  key = json.dumps([outputs.to_jsonable(cfg.to_dict()), s.data, s.step_scale, s.seeds,
                    {m: list(g) for m, g in blocks}, warm], sort_keys=True)
  if key not in _BUILDS:
    def build(batched, pool):
      with_pool = lambda t: t if pool is None else t._replace(x_p=pool)
      if batch is None:
        t = with_pool(batched)
        return jax.vmap(one_task, in_axes=(sweep.task_axes(t),))(t)
      return jax.lax.map(lambda t: one_task(with_pool(t)), batched, batch_size=batch)
    _BUILDS[key] = jax.jit(build)
  built = _BUILDS[key](batched, pool)
  return [b[0] for b in built], [b[1] for b in built]


_BUILDS: dict = {}   # the compiled set-ups of init_blocks, by configuration


# ------------------------------------------------------------------------------- the run


def run(cfg, workdir, setting: Setting, *, max_chunks: Optional[int] = None,
        move_aside: bool = False, echo: Echo = None, clock: Optional[loop.WallClock] = None,
        defaults: Optional[dict] = None) -> Optional[dict]:
  """Trains every (method, strength, seed[, pair]) of a validated ``cfg``; writes the workdir.

  Returns:
    ``front.json``'s content, or None when ``max_chunks`` stopped the run early.
  """
  clock = clock or loop.WallClock()
  say = echo or (lambda _: None)
  if jax.process_count() > 1:
    raise ValueError("experiments.tradeoff runs as one process (its devices split the "
                     "tasks); drop --coordinator_address/--num_processes.")
  s = setting
  prov = provenance.record(s.record)
  workdir_lib.claim_and_tell(workdir, {**cfg.to_dict(), "data": s.data}, provenance=prov,
                             label=f"tradeoff {s.data}", say=say, move_aside=move_aside,
                             defaults={**(defaults or {}), "data": s.data},
                             extra=s.extra)
  workdir = pathlib.Path(workdir)
  methods = tuple(cfg.methods)
  devices = jax.devices()
  tasks = sweep.pad_tasks(s.tasks, len(devices))
  mesh = sweep.device_mesh(devices)
  tasks = sweep.shard_tasks(tasks, mesh) if len(devices) > 1 else tasks
  states, weights = init_blocks(cfg, dataclasses.replace(s, tasks=tasks))
  if len(devices) > 1:
    states, weights = sweep.shard_tasks((states, weights), mesh)
  index = run_index(cfg, s)
  n_runs = len(index) * s.n_tasks
  say(f"[tradeoff {s.data}] {s.n_tasks} task(s) × {len(index)} runs "
      f"({len(methods)} methods × strengths × {s.seeds} seed(s), + unimmunized) = "
      f"{n_runs} runs, D_in = {tasks.k_p.shape[-1]}, {s.steps} steps")
  statics = [sweep.method_statics("ours" if m == REFERENCE else m, imma_steps=cfg.imma_steps,
                                  precondition_baselines=cfg.precondition_baselines)
             for m, _ in blocks_of(cfg, s)]
  task_batch = (cfg.get("task_batch") or None) if s.data == "mnist" else None

  def chunk(state, start):
    del start
    kw = dict(steps=s.chunk_steps, loss=s.loss, task_batch=task_batch,
              mesh=mesh if (task_batch and len(devices) > 1) else None)
    # Every block's chunk is dispatched before any is checked (sweep.check_chunk): the
    # host traces and compiles the next block while the devices step the one before.
    out = [sweep.run_chunk(st, tasks, w, **kw, **static)
           for st, w, static in zip(state["state"], weights, statics)]
    new, last = [], []
    for st, w, static, (st_new, terms) in zip(state["state"], weights, statics, out):
      st, terms, _ = sweep.check_chunk(st, tasks, w, st_new, terms, **kw, **static)
      new.append(st)
      last.append(np.asarray(terms.supervised))
    return {"state": tuple(new)}, np.concatenate(last, axis=1)

  def summarize(sup):
    sup = np.asarray(sup)[:s.n_tasks]
    return "D_P loss " + " ".join(
        f"{m}={np.nanmean(sup[:, [i for i, r in enumerate(index) if r[0] == m]]):.4g}"
        for m in (*methods, REFERENCE))

  state = loop.run_in_workdir(
      chunk, {"state": tuple(states)}, workdir, total_steps=s.steps,
      chunk_steps=s.chunk_steps, max_chunks=max_chunks, clock=clock, say=say,
      on_progress=progress.printer(echo, f"tradeoff {s.data}", summarize))
  if state is None:
    return None
  state = sweep.join_methods(state["state"])
  ev = jax.tree.map(lambda a: np.asarray(a)[:s.n_tasks],
                    sweep.evaluate(state, tasks, loss=s.loss, kappa=cfg.kappa))
  params = jax.tree.map(lambda a: np.asarray(a)[:s.n_tasks], state.params)
  result = results_of(cfg, s, ev, params, index)
  result.update(provenance=prov, wall_time_s=clock.total(), devices=len(devices),
                config=cfg.to_dict(), data=s.data, **s.extra)
  write_outputs(workdir, cfg, s, result, params.theta, index)
  say((workdir / "table.md").read_text())
  say(f"wrote {workdir}/front.json, fronts.npz, fronts.png, table.md "
      f"({result['wall_time_s']:.1f} s)")
  return result


# ----------------------------------------------------------------------------- the points


def results_of(cfg, s: Setting, ev, params, index) -> dict:
  """``front.json``: every point, the unimmunized reference runs, each method's front."""
  ref_cols = [i for i, r in enumerate(index) if r[0] == REFERENCE]
  ref_dp = ev.dp_loss[:, ref_cols]   # (T, seeds)
  held = None
  if s.held_out is not None:
    x, y = (jnp.asarray(a) for a in s.held_out)
    held = np.asarray(jnp.mean((jnp.einsum("nd,trde,tre->trn", x, params.theta,
                                           params.omega) - y) ** 2, axis=-1))
  points, reference = [], []
  for t in range(s.n_tasks):
    for i, (m, st, seed) in enumerate(index):
      p = {"method": m, "strength": st, "seed": seed}
      if s.pairs is not None:
        p["pair"] = [int(v) for v in s.pairs[t]]
      dp = float(ev.dp_loss[t, i])
      opt = float(s.optimum[t]) if s.optimum is not None else float(ref_dp[t, seed])
      p.update(rir=float(ev.rir[t, i]), ratio_h=float(ev.ratio_h[t, i]),
               ratio_p=float(ev.ratio_p[t, i]), dp_loss=dp, dp_loss_optimum=opt,
               dp_loss_rel=dp / opt - 1.0,
               dp_loss_rel_unimmunized=dp / float(ref_dp[t, seed]) - 1.0,
               finite=bool(ev.finite[t, i]))
      if held is not None:
        p["heldout_dp_loss"] = float(held[t, i])
      # Definition 3.1: (a) harder harmful fine-tuning, (b) no easier D_P, (c) utility kept
      # (here: within +1 % of the optimum; the budget columns of table.md refine it).
      p["success"] = bool(p["finite"] and p["ratio_h"] > 1 and p["ratio_p"] <= 1
                          and p["dp_loss_rel"] <= 0.01)
      (reference if m == REFERENCE else points).append(p)
  out = {"points": points, "unimmunized": reference,
         "optimum": "least-squares D_P loss with the identity (train)" if s.optimum is not None
         else "D_P loss of the unimmunized run (all regularizer weights 0, same schedule, "
              "same pair and seed)",
         "budgets": list(BUDGETS), "knobs": {m: cfg.knobs[m] for m in cfg.methods},
         "strengths": {m: list(s.strengths[m]) for m in cfg.methods},
         "rir_limit": rir_limit(s)}
  out["fronts"] = front_sets(points, cfg.methods)
  out["summary"] = summary(points, cfg.methods, s.pairs is not None)
  return out


def rir_limit(s: Setting) -> list:
  """The closed-form RIR limit per task (extractors in range(K_P); ``metrics.rir_upper_bound``)."""
  k_p, k_h = np.asarray(s.tasks.k_p)[:s.n_tasks], np.asarray(s.tasks.k_h)[:s.n_tasks]
  return [float(metrics.rir_upper_bound(k_p=jnp.asarray(a), k_h=jnp.asarray(b)).rir_on_range)
          for a, b in zip(k_p, k_h)]


def front_sets(points, methods) -> dict:
  """Each method's non-dominated points (indices into ``points``), over all seeds/pairs."""
  out = {}
  for m in methods:
    idx = [i for i, p in enumerate(points) if p["method"] == m]
    cost = np.array([points[i]["dp_loss_rel"] for i in idx])
    gain = np.array([points[i]["rir"] for i in idx])
    keep = fronts.non_dominated(cost, gain)
    out[m] = [idx[j] for j in np.flatnonzero(keep)]
  return out


def summary(points, methods, by_pair: bool) -> dict:
  """Per method and budget: the best RIR within it, per seed (or pair), mean ± spread."""
  out = {}
  for m in methods:
    ps = [p for p in points if p["method"] == m]
    cost = np.array([p["dp_loss_rel"] for p in ps])
    gain = np.array([p["rir"] for p in ps])
    groups = np.array([(tuple(p["pair"]), p["seed"]) if by_pair else p["seed"]
                       for p in ps], dtype=object)
    groups = np.array([str(g) for g in groups])
    out[m] = {str(b): fronts.best_within_by_group(cost, gain, groups, b)._asdict()
              for b in BUDGETS}
    out[m]["default"] = _default_point(ps)
  return out


def _default_point(ps) -> Optional[dict]:
  """Mean (RIR, D_P loss rel.) of the strength-1 runs (today's default), if swept."""
  d = [p for p in ps if p["strength"] == 1.0 and p["finite"]]
  if not d:
    return None
  return {"rir": float(np.mean([p["rir"] for p in d])),
          "dp_loss_rel": float(np.mean([p["dp_loss_rel"] for p in d]))}


# ----------------------------------------------------------------------------- the outputs


def write_outputs(workdir, cfg, s: Setting, result: dict, thetas, index) -> None:
  """``front.json``, ``fronts.npz``, ``table.md`` and ``fronts.png``."""
  workdir = pathlib.Path(workdir)
  keep = [i for i, r in enumerate(index) if r[0] != REFERENCE]
  theta = np.asarray(thetas)[:, keep].reshape((-1,) + np.asarray(thetas).shape[2:])
  task_of = np.repeat(np.arange(s.n_tasks), len(keep))
  k_p, k_h = np.asarray(s.tasks.k_p)[:s.n_tasks], np.asarray(s.tasks.k_h)[:s.n_tasks]
  outputs.atomic_write(workdir / "fronts.npz", lambda f: np.savez(
      f, theta=theta, task=task_of, k_p=k_p, k_h=k_h, kappa=np.array(cfg.kappa),
      rir=np.array([p["rir"] for p in result["points"]])))
  outputs.write_json(workdir / "front.json", result)
  outputs.write_text(workdir / "table.md", table(result, cfg.methods, s))
  plot(result, cfg.methods, s, workdir / "fronts.png")


def _fmt(d: dict) -> str:
  if not d["n"]:
    return "— (none)"
  txt = (f"{d['median']:.4g} (mean {d['mean']:.3g} ± {d['std']:.2g}; "
         f"{d['lo']:.3g} … {d['hi']:.3g})")
  return txt if d["n"] == d["groups"] else f"{txt} ({d['n']}/{d['groups']})"


def verdict(result: dict, methods) -> list[str]:
  """The answer first: who dominates at which budget, Ours' best at +0.1 %."""
  sm = result["summary"]
  lines = []
  def share(m, b):
    d = sm[m][str(b)]
    return "" if d["n"] == d["groups"] else f" ({d['n']}/{d['groups']})"

  for b in BUDGETS:
    best = {m: sm[m][str(b)]["median"] for m in methods if sm[m][str(b)]["n"]}
    if not best:
      lines.append(f"- at +{b:.1%} D_P loss: no method has a point within the budget.")
      continue
    top = max(best, key=best.get)
    lines.append(f"- at +{b:.1%} D_P loss: **{tables.name(top)}** reaches the highest RIR "
                 f"({best[top]:.4g}{share(top, b)}, median of the per-group bests)"
                 + (", then " + ", ".join(f"{tables.name(m)} {v:.3g}{share(m, b)}" for m, v in
                                          sorted(best.items(), key=lambda kv: -kv[1])
                                          if m != top) if len(best) > 1 else "")
                 + "." + ("" if len(best) == len(methods) else " No point of "
                          + ", ".join(tables.name(m) for m in methods if m not in best)
                          + " is within it."))
  return lines


def table(result: dict, methods, s: Setting) -> str:
  """``table.md``: verdict first, then the best RIR within each budget per method."""
  group = "pair and seed" if s.pairs is not None else "seed"
  lines = [f"# Trade-off fronts — {s.data} ({s.n_tasks} task(s), {s.seeds} seed(s))", "",
           "**Verdict.**"] + verdict(result, methods) + [
      "",
      f"Best RIR among a {group}'s points whose D_P loss is within the budget above the "
      f"optimum ({result['optimum']}): median over {group}s (mean ± std; worst … best; "
      "k/n: only k had a point within it). Default: the strength-1 runs (today's operating "
      "point), mean.", "",
      "| Method | knob | +0.1 % | +1 % | +10 % | default RIR | default D_P loss |",
      "|---|---|---|---|---|---|---|"]
  for m in methods:
    sm = result["summary"][m]
    d = sm.get("default")
    lines.append(f"| {tables.name(m)} | {result['knobs'][m]} | "
                 + " | ".join(_fmt(sm[str(b)]) for b in BUDGETS)
                 + (f" | {d['rir']:.4g} | {d['dp_loss_rel']:+.2%} |" if d else " | — | — |"))
  ref = [p["dp_loss_rel"] for p in result["unimmunized"]]
  lim = result["rir_limit"]
  lines += ["",
            f"- The unimmunized runs (every regularizer weight 0, same schedule) end at "
            f"D_P loss {np.mean(ref):+.3%} relative to the optimum (mean over {group}s).",
            "- Closed-form RIR limit (extractors in range(K_P)): "
            + (f"{lim[0]:.4g}" if len(lim) == 1 else
               f"median {np.median(lim):.4g} over {len(lim)} pairs") + "."]
  lines += [f"- warning: {n}" for n in provenance.notes(result.get("provenance", {}))]
  return "\n".join(lines) + "\n"


def plot(result: dict, methods, s: Setting, path) -> None:
  """``fronts.png``: RIR against D_P loss above the optimum (both log), one curve per method."""
  plt = outputs.pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 5))
  floor = 1e-6
  colors = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
  for m in methods:
    ps = [p for p in result["points"] if p["method"] == m and p["finite"]]
    cost = np.array([p["dp_loss_rel"] for p in ps])
    gain = np.array([p["rir"] for p in ps])
    if s.pairs is None:
      cost = np.maximum(cost, floor)
      ax.scatter(cost, gain, s=6, alpha=0.25, color=colors[m])   # the seed spread
      c, g = fronts.front_curve(cost, gain)
      ax.plot(c, g, "-o", ms=3, color=colors[m], label=f"{tables.name(m)} front")
    else:
      # Many pairs: the pooled front would mix pairs; draw each strength's median over the
      # pairs with its interquartile range in both directions (the pair spread).
      ax.scatter(cost, gain, s=4, alpha=0.12, color=colors[m])
      strengths = np.array([p["strength"] for p in ps])
      med = []
      for st in sorted(set(strengths.tolist())):
        sel = strengths == st
        q = [np.percentile(v[sel], (25, 50, 75)) for v in (cost, gain)]
        med.append((q[0][1], q[1][1]))
        ax.errorbar(q[0][1], q[1][1], xerr=[[q[0][1] - q[0][0]], [q[0][2] - q[0][1]]],
                    yerr=[[q[1][1] - q[1][0]], [q[1][2] - q[1][1]]], color=colors[m],
                    lw=0.8, alpha=0.7)
      ax.plot(*zip(*med), "-o", ms=3, color=colors[m],
              label=f"{tables.name(m)}: median over pairs per strength (IQR)")
    d = result["summary"][m].get("default")
    if d:
      x = d["dp_loss_rel"] if s.pairs is not None else max(d["dp_loss_rel"], floor)
      ax.scatter([x], [d["rir"]], marker="*", s=160,
                 color=colors[m], edgecolor="k", zorder=5)
    paper = PAPER_RIR.get(s.data, {}).get(m)
    if paper:
      ax.axhline(paper, color=colors[m], ls=":", lw=0.8)
  lim = result["rir_limit"]
  ax.axhline(np.median(lim), color="k", ls="--", lw=1, label="closed-form RIR limit")
  for b in BUDGETS:
    ax.axvline(b, color="0.7", lw=0.6)
  if s.pairs is not None:   # the reference is the unimmunized run: losses below it exist
    ax.axvline(0.0, color="0.4", lw=0.6)
    ax.set_xscale("symlog", linthresh=1e-3)
  else:
    ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("D_P loss relative to the optimum (train), L/L* − 1"
                + (" (L* = the unimmunized run)" if s.pairs is not None else ""))
  ax.set_ylabel("RIR (Eq. 15)")
  ax.set_title(f"Trade-off fronts, {s.data}: ★ today's default (strength 1)"
               + (", dotted: the paper's Table 1 RIR" if s.data in PAPER_RIR else ""),
               fontsize=9)
  ax.legend(fontsize=8)
  outputs.save_figure(path, fig)


def rewrite(workdir) -> str:
  """Recomputes ``summary``, ``table.md`` and ``fronts.png`` of a finished workdir from its
  ``front.json`` (no training); returns the table."""
  workdir = pathlib.Path(workdir)
  result = json.loads((workdir / "front.json").read_text())
  cfg = ml_collections.ConfigDict(result["config"])
  pairs = sorted({tuple(p["pair"]) for p in result["points"]}) if "pair" in (
      result["points"] or [{}])[0] else None
  seeds = len({p["seed"] for p in result["points"]})
  s = Setting(result["data"], None, len(result["rir_limit"]), pairs, "", 0, 0, 0.0, seeds,
              result["strengths"], {}, None, None, {})
  result["fronts"] = front_sets(result["points"], cfg.methods)
  result["summary"] = summary(result["points"], cfg.methods, pairs is not None)
  outputs.write_json(workdir / "front.json", result)
  outputs.write_text(workdir / "table.md", table(result, cfg.methods, s))
  plot(result, cfg.methods, s, workdir / "fronts.png")
  return (workdir / "table.md").read_text()


# --------------------------------------------------------------------- a finished workdir


@dataclasses.dataclass
class Points:
  """Points of a finished tradeoff workdir: θ and what each was evaluated with."""
  data: str
  points: list            # front.json's points, in fronts.npz order
  theta: np.ndarray       # (P, D_in, D_hid)
  task: np.ndarray        # (P,) index into k_p / k_h
  k_p: np.ndarray
  k_h: np.ndarray
  result: dict


def load_points(workdir, *, flag: str = "--extractor") -> Points:
  """Reads ``front.json`` and ``fronts.npz`` of a finished ``experiments.tradeoff`` run."""
  workdir = pathlib.Path(workdir)
  if not (workdir / "front.json").exists() or not (workdir / "fronts.npz").exists():
    raise ValueError(f"{flag}={workdir} has no front.json/fronts.npz, so it is not a finished "
                     "experiments.tradeoff run; run it to the end first.")
  result = json.loads((workdir / "front.json").read_text())
  z = np.load(workdir / "fronts.npz")
  return Points(result["data"], result["points"], z["theta"], z["task"], z["k_p"], z["k_h"],
                result)


def select(points: Points, spec: str, *, flag: str = "--point") -> list[int]:
  """Indices of the points ``spec`` names: ``"3"``, ``"0,5,9"``, ``"front"`` (every
  method's front) or ``"front:ours"``."""
  n = len(points.points)
  spec = (spec or "").strip()
  if spec.startswith("front"):
    _, _, m = spec.partition(":")
    sets = points.result["fronts"]
    if m and m not in sets:
      raise ValueError(f"{flag}={spec}: no method {m!r} in this front; it has {sorted(sets)}.")
    return sorted(i for k, idx in sets.items() if not m or k == m for i in idx)
  try:
    idx = [int(v) for v in spec.split(",") if v.strip()]
  except ValueError:
    idx = []
  if not idx or any(not 0 <= i < n for i in idx):
    raise ValueError(f"{flag}={spec!r}: give point indices 0…{n - 1} (comma-separated), "
                     "'front' or 'front:<method>'.")
  return idx

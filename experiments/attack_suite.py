r"""Attack suite (issue 6): does immunization survive attackers other than gradient descent?

Attacks the extractors of a finished house-price and/or MNIST run (or recomputes house-price
extractors in-process) with every linear-probing attacker of ``immujax.attacks.ATTACKERS``::

  python -m experiments.attack_suite --house_workdir=/tmp/house --workdir=/tmp/attacks \
      [--data_dir=../shared/data/house_price]
  python -m experiments.attack_suite --mnist_workdir=/tmp/mnist --max_pairs=10 \
      --workdir=/tmp/attacks_mnist
  python -m experiments.attack_suite --recompute --data_dir=../shared/data/house_price \
      --workdir=/tmp/attacks_quick --config=experiments/configs/attack_suite.py:quick

For each dataset, each extractor θ (every method × seed; MNIST: every pair up to
``--max_pairs``) and the reference θ = I, every attacker fits the ℓ2 probe on the harmful
features ``X_H θ`` (targets ``y_H``) and on the pre-training features ``X_P θ`` (``y_P``) from
``w_0 = 0``. The steps to reach ε of the norm ratio (Eq. 16) and of the relative excess loss
give the **slow-down factor** ``steps(θ) / steps(I)`` (``attacks.slowdown_factor``).

Writes ``results.json``, ``table.md`` and ``attack_curves.png`` into ``--workdir``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Callable, Optional, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from experiments import common
from immujax import attacks
from immujax import checkpoint
from immujax import immunize
from immujax import sweep
from immujax import training
from immujax.data import house_prices


def _define_flags():
  # Flags are defined only when this module runs as a program, so several binaries can
  # be imported side by side (tests, the attack suite) without duplicate-flag errors.
  global _CONFIG, _WORKDIR, _HOUSE_WORKDIR, _MNIST_WORKDIR, _RECOMPUTE, _DATA_DIR, _MAX_PAIRS
  _CONFIG = config_flags.DEFINE_config_file(
      "config", str(pathlib.Path(__file__).parent / "configs" / "attack_suite.py"),
      "Experiment configuration.")
  _WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
  _HOUSE_WORKDIR = flags.DEFINE_string(
      "house_workdir", None, "A finished experiments.house_price workdir (results.json + "
      "checkpoints/) whose extractors are attacked.")
  _MNIST_WORKDIR = flags.DEFINE_string(
      "mnist_workdir", None, "A finished experiments.mnist_pairs workdir whose extractors are "
      "attacked.")
  _RECOMPUTE = flags.DEFINE_bool(
      "recompute", False, "Train house-price extractors in-process (config.recompute_variant "
      "of experiments/configs/house_price.py) instead of loading --house_workdir.")
  _DATA_DIR = flags.DEFINE_string(
      "data_dir", None, "House-price data: directory with D1.csv/D2.csv or Kaggle's train.csv "
      "(default: $IMMUJAX_HOUSE_DIR, $IMMUJAX_DATA_DIR/house_price, or the data_dir recorded in "
      "--house_workdir's results.json).")
  _MAX_PAIRS = flags.DEFINE_integer(
      "max_pairs", None, "MNIST: attack only the first N digit pairs (default: "
      "config.max_pairs).")


SIDES = ("D_H", "D_P")
PAPER_RIR_OURS = {"house": 356.2, "mnist": 70.04}   # Table 1 and Table 2 of the paper
NAMES = {"ours": "Ours", "r_ill_only": "R_ill Only", "imma": "IMMA", "opt_kappa": "Opt κ",
         "identity": "Identity"}
# How the steps to a fixed ε grow with κ (module docstring of immujax/attacks.py).
EXPECTED = {"gd_line_search": "κ", "gd_constant": "κ", "heavy_ball": "√κ", "nesterov": "√κ",
            "adam": "none (heuristic)", "lbfgs": "≤ √κ", "cg": "√κ", "closed_form": "1"}
# closed_form runs two SVDs (pinv and the metrics' probe_problem) that XLA:CPU could run
# concurrently inside one jitted program; concurrent LAPACK calls deadlocked jaxlib 0.10.2's
# thread pool on this machine (BUILD_NOTES.md), so it runs op by op. It has no loop.
_EAGER = frozenset({"closed_form"})


@dataclasses.dataclass
class Dataset:
  """The extractors of one dataset and the two probes they are attacked on.

  Attributes:
    name: ``"house"`` or ``"mnist"`` (or any label; keys ``PAPER_RIR_OURS``).
    source: where the extractors came from (a workdir or "recomputed ...").
    tasks: ``T`` task labels (house: one; MNIST: ``"p→h"`` per digit pair).
    thetas: ``(T, R, D_in, D_in)`` extractors, ``R`` runs per task.
    index: ``R`` pairs ``(method, seed)``, the order of the ``R`` axis.
    rir: ``(T, R)`` RIR of each extractor (Eq. 15, against θ = I).
    probes: ``{"D_H": (x (T, N_H, D_in), y (T, N_H)), "D_P": (x (T, N_P, D_in), y (T, N_P))}``.
    steps: the attackers' step budget.
  """
  name: str
  source: str
  tasks: list[str]
  thetas: np.ndarray
  index: list[tuple[str, int]]
  rir: np.ndarray
  probes: dict[str, tuple[np.ndarray, np.ndarray]]
  steps: int


# ------------------------------------------------------------------------- running attacks


@functools.lru_cache(maxsize=None)
def _batched(name: str, steps: int, kwargs: tuple[tuple[str, object], ...]) -> Callable:
  fn = functools.partial(attacks.ATTACKERS[name], steps=steps, **dict(kwargs))
  batched = jax.vmap(lambda phi, y: fn(phi, y, None), in_axes=(0, None))
  return batched if name in _EAGER else jax.jit(batched)


@jax.jit
def _kappas(features):
  prob = jax.vmap(attacks.probe_problem, in_axes=(0, None))(
      features, jnp.zeros(features.shape[1], features.dtype))
  return prob.hess_max / prob.hess_min


def attack_batch(name: str, features, targets, *, steps: int,
                 kwargs: Optional[dict] = None) -> dict[str, np.ndarray]:
  """Runs one attacker on a batch of ℓ2 probes sharing their targets, from ``w_0 = 0``.

  Args:
    name: a key of ``attacks.ATTACKERS``.
    features: ``(E, N, D)`` probe features, one problem per extractor.
    targets: ``(N,)`` targets.
    steps: the step budget (static; one compile per (name, steps, shape)).
    kwargs: the attacker's extra hyperparameters.

  Returns:
    ``{"norm_ratio": (E, steps+1), "excess_loss": (E, steps+1)}`` numpy arrays.
  """
  fn = _batched(name, int(steps), tuple(sorted((kwargs or {}).items())))
  traj = fn(jnp.asarray(features), jnp.asarray(targets))
  return {"norm_ratio": np.asarray(traj.norm_ratio),
          "excess_loss": np.asarray(traj.excess_loss)}


def eps_key(eps: float) -> str:
  """The JSON key of a tolerance, e.g. ``1e-04``."""
  return f"{eps:.0e}"


def _bound(imm_censored: np.ndarray, ref_censored: np.ndarray) -> str:
  if imm_censored.any() and ref_censored.any():
    return "unknown"
  if imm_censored.any():
    return "lower"
  if ref_censored.any():
    return "upper"
  return "exact"


def run_suite(datasets: Sequence[Dataset], cfg: ml_collections.ConfigDict, *,
              on_progress: Optional[Callable[[training.Progress], None]] = None
              ) -> tuple[dict, dict]:
  """Attacks every extractor of every dataset with every configured attacker.

  Args:
    datasets: the :class:`Dataset` s.
    cfg: the attack-suite config (``attackers``, ``eps``, ``metrics``, ``attacker_kwargs``,
      ``curve_seed``).
    on_progress: called after each (dataset, task, probe, attacker) unit.

  Returns:
    ``(results, curves)``: the JSON-able results (see README "Attack suite" for the layout)
    and, per dataset, the D_H norm-ratio curves of the first task for ``attack_curves.png``:
    ``{dataset: {attacker: {"identity" | method: (steps+1,)}}}``.
  """
  names = attacker_names(cfg)
  eps = [float(e) for e in cfg.eps]
  metrics = tuple(cfg.metrics)
  kwargs_all = cfg.attacker_kwargs.to_dict() if cfg.attacker_kwargs else {}
  total = sum(len(ds.tasks) * len(SIDES) * len(names) for ds in datasets)
  done, t0 = 0, time.perf_counter()
  results = {"attackers": list(names), "eps": eps, "metrics": list(metrics),
             "sides": list(SIDES), "expected_scaling": {n: EXPECTED.get(n, "?") for n in names},
             "datasets": {}}
  curves = {}
  for ds in datasets:
    n_tasks, n_runs = ds.thetas.shape[:2]
    if ds.thetas.shape[2] != ds.thetas.shape[3]:
      raise ValueError(f"{ds.name}: extractors must be square (D_in, D_in) to be compared "
                       f"with θ = I; got {ds.thetas.shape[2:]}.")
    # steps[side][attacker][metric][eps] -> (T, 1 + R): column 0 is the identity.
    steps = {s: {n: {m: {eps_key(e): np.zeros((n_tasks, 1 + n_runs), np.int64) for e in eps}
                     for m in metrics} for n in names} for s in SIDES}
    kappa = {s: np.zeros((n_tasks, 1 + n_runs)) for s in SIDES}
    curve_cols = [0] + [1 + i for i, (_, seed) in enumerate(ds.index) if seed == cfg.curve_seed]
    curves[ds.name] = {}
    for t in range(n_tasks):
      for side in SIDES:
        x, y = ds.probes[side]
        x_t = np.asarray(x[t])
        feats = np.concatenate([x_t[None], np.einsum("nd,rdk->rnk", x_t, ds.thetas[t])])
        kappa[side][t] = np.asarray(_kappas(jnp.asarray(feats)))
        for name in names:
          traj = attack_batch(name, feats, y[t], steps=ds.steps, kwargs=kwargs_all.get(name))
          for m in metrics:
            for e in eps:
              steps[side][name][m][eps_key(e)][t] = np.asarray(
                  attacks.steps_to_tolerance(traj[m], e))
          if t == 0 and side == "D_H":
            curves[ds.name][name] = {
                ("identity" if c == 0 else ds.index[c - 1][0]): traj["norm_ratio"][c]
                for c in curve_cols}
          done += 1
          if on_progress is not None:
            elapsed = time.perf_counter() - t0
            on_progress(training.Progress(done, total, elapsed,
                                          elapsed / done * (total - done),
                                          f"{ds.name} {ds.tasks[t]} {side} {name}"))
    results["datasets"][ds.name] = _summarize(ds, steps, kappa, names, metrics, eps)
  return results, curves


def _summarize(ds: Dataset, steps, kappa, names, metrics, eps) -> dict:
  """Slow-down factors per method and seed (means over tasks) from the raw step counts."""
  sentinel = ds.steps + 1
  out = {"source": ds.source, "tasks": ds.tasks, "budget": ds.steps, "sentinel": sentinel,
         "paper_rir_ours": PAPER_RIR_OURS.get(ds.name),
         "identity": {"kappa": {s: kappa[s][:, 0] for s in SIDES},
                      "steps": {s: {n: {m: {k: v[:, 0] for k, v in steps[s][n][m].items()}
                                        for m in metrics} for n in names} for s in SIDES}},
         "methods": {}}
  methods = list(dict.fromkeys(m for m, _ in ds.index))
  for meth in methods:
    rows = [i for i, (m, _) in enumerate(ds.index) if m == meth]
    cols = [1 + i for i in rows]
    r = {"seeds": [ds.index[i][1] for i in rows], "rir": ds.rir[:, rows],
         "mean_rir_per_seed": np.mean(ds.rir[:, rows], axis=0),
         "kappa": {s: kappa[s][:, cols] for s in SIDES},
         "kappa_ratio": {s: np.mean(kappa[s][:, cols] / kappa[s][:, :1], axis=0)
                         for s in SIDES},
         "steps": {}, "slowdown": {}, "bound": {}}
    for s in SIDES:
      for key in ("steps", "slowdown", "bound"):
        r[key][s] = {n: {m: {} for m in metrics} for n in names}
      for n in names:
        for m in metrics:
          for k, v in steps[s][n][m].items():
            imm, ref = v[:, cols], v[:, :1]
            slow = np.asarray(attacks.slowdown_factor(imm, ref))      # (T, S)
            r["steps"][s][n][m][k] = imm
            r["slowdown"][s][n][m][k] = np.mean(slow, axis=0)          # mean over tasks
            r["bound"][s][n][m][k] = [_bound(imm[:, j] >= sentinel, ref[:, 0] >= sentinel)
                                      for j in range(len(cols))]
    out["methods"][meth] = r
  return out


def attacker_names(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The configured attackers, validated against ``attacks.ATTACKERS``."""
  if cfg.attackers == "all":
    return tuple(attacks.ATTACKERS)
  names = tuple(n.strip() for n in str(cfg.attackers).split(",") if n.strip())
  bad = [n for n in names if n not in attacks.ATTACKERS]
  if bad or not names:
    raise ValueError(f"--config.attackers={cfg.attackers!r}: unknown attacker(s) {bad}; use "
                     f"'all' or a comma-separated subset of {list(attacks.ATTACKERS)}.")
  return names


# ------------------------------------------------------------------------- loading extractors


def _house_dataset(hcfg, data, tasks, state, source: str, steps: int) -> Dataset:
  index = sweep.run_index(tuple(hcfg.methods), hcfg.seeds)
  ev = sweep.evaluate(state, tasks, kappa=hcfg.get("kappa", "pinv"))
  return Dataset(
      name="house", source=source, tasks=["house"],
      thetas=np.asarray(state.params.theta), index=index, rir=np.asarray(ev.rir),
      probes={"D_H": (np.asarray(data.x_h)[None], np.asarray(data.y_h)[None]),
              "D_P": (np.asarray(data.x_p)[None], np.asarray(data.y_p)[None])},
      steps=steps)


def _house_runs_like(hcfg, tasks):
  # The structure of house_price's batched State, without computing it.
  return jax.eval_shape(lambda t: sweep.init_runs(
      jax.random.key(0), t, tuple(hcfg.methods), hcfg.seeds,
      learning_rate=hcfg.learning_rate, step_scale=hcfg.step_scale,
      clip_factor=hcfg.clip_factor, imma_steps=hcfg.imma_steps, init=hcfg.init,
      precondition_baselines=hcfg.precondition_baselines), tasks)


def _house_data(hcfg, data_dir):
  data = house_prices.load_house_prices(str(data_dir), n_train=hcfg.n_train)
  task = immunize.make_task(data.x_p, data.y_p, data.x_h, data.y_h)
  return data, jax.tree.map(lambda a: a[None], task)


def load_house_workdir(house_workdir, data_dir=None, *, steps: int) -> Dataset:
  """Extractors of a finished ``experiments.house_price`` run.

  Rebuilds the run's tasks from its ``results.json`` config and the data, and restores the
  latest orbax checkpoint of the batched state.

  Args:
    house_workdir: the house_price ``--workdir``.
    data_dir: the house-price data (``--data_dir``); None → ``$IMMUJAX_HOUSE_DIR``,
      ``$IMMUJAX_DATA_DIR/house_price``, or the ``data_dir`` recorded in results.json.
    steps: the attackers' step budget.

  Returns:
    A :class:`Dataset`.
  """
  house_workdir = pathlib.Path(house_workdir)
  res_path = house_workdir / "results.json"
  if not res_path.exists():
    raise ValueError(
        f"--house_workdir={house_workdir} has no results.json, so it is not a finished "
        "house_price run. Run `python -m experiments.house_price --workdir=...` to the end "
        "first, or pass --recompute.")
  res = json.loads(res_path.read_text())
  hcfg = ml_collections.ConfigDict(res["config"])
  data_dir = common.data_dir_from(data_dir, "IMMUJAX_HOUSE_DIR", "house_price")
  if data_dir is None and res.get("data_dir"):
    data_dir = pathlib.Path(res["data_dir"])
  if data_dir is None or not data_dir.is_dir():
    raise ValueError(
        f"house-price data not found (got {data_dir}); pass --data_dir=<directory with "
        "D1.csv/D2.csv or train.csv> — the one the house_price run used.")
  data, tasks = _house_data(hcfg, data_dir)
  ckpt = checkpoint.Checkpointer(house_workdir / "checkpoints")
  latest = ckpt.latest_step()
  if latest is None or latest != hcfg.steps:
    raise ValueError(
        f"--house_workdir={house_workdir}: latest checkpoint is step {latest}, but its config "
        f"trains {hcfg.steps} steps. Rerun experiments.house_price on that workdir to finish.")
  state = ckpt.restore(latest, like=_house_runs_like(hcfg, tasks).state)
  ckpt.close()
  return _house_dataset(hcfg, data, tasks, state, f"{house_workdir} (step {latest})", steps)


def recompute_house(data_dir, *, variant: str, steps: int, overrides: Optional[dict] = None,
                    on_progress: Optional[Callable] = None) -> Dataset:
  """Trains house-price extractors in-process (``experiments/configs/house_price.py``).

  Args:
    data_dir: the house-price data directory (``--data_dir``).
    variant: the house_price config variant (``"quick"`` or ``""``).
    steps: the attackers' step budget.
    overrides: values replacing fields of that config (``config.recompute_overrides``).
    on_progress: progress callback of the training chunks.

  Returns:
    A :class:`Dataset`.
  """
  from experiments.configs import house_price as house_config  # pylint: disable=g-import-not-at-top
  data_dir = common.data_dir_from(data_dir, "IMMUJAX_HOUSE_DIR", "house_price")
  if data_dir is None or not data_dir.is_dir():
    raise ValueError(
        f"--recompute needs the house-price data (got {data_dir}); pass "
        "--data_dir=<directory with D1.csv/D2.csv or train.csv>, e.g. "
        "--data_dir=../shared/data/house_price.")
  hcfg = house_config.get_config(variant)
  for k, v in (overrides or {}).items():
    if k not in hcfg:
      raise ValueError(f"--config.recompute_overrides: {k!r} is not a field of "
                       f"experiments/configs/house_price.py; choose from {sorted(hcfg)}.")
    setattr(hcfg, k, v)
  data, tasks = _house_data(hcfg, data_dir)
  runs = sweep.init_runs(jax.random.key(0), tasks, tuple(hcfg.methods), hcfg.seeds,
                         learning_rate=hcfg.learning_rate, step_scale=hcfg.step_scale,
                         clip_factor=hcfg.clip_factor, imma_steps=hcfg.imma_steps,
                         init=hcfg.init, precondition_baselines=hcfg.precondition_baselines)

  def chunk(state, start):
    del start
    return sweep.run_chunk(state, tasks, runs.weights, steps=hcfg.chunk_steps, loss="mse",
                           imma_steps=hcfg.imma_steps)

  state, _ = training.run_chunked(chunk, runs.state, total_steps=hcfg.steps,
                                  chunk_steps=hcfg.chunk_steps, on_progress=on_progress)
  return _house_dataset(hcfg, data, tasks, state,
                        f"recomputed (house_price config {variant or 'default'!r})", steps)


def load_mnist_workdir(mnist_workdir, *, max_pairs: int, steps: int,
                       harmful_fn: Optional[Callable] = None) -> Dataset:
  """Extractors of an ``experiments.mnist_pairs`` run, first ``max_pairs`` pairs.

  ``restore_runs`` gives tasks with the harmful task's sufficient statistics only, so the
  harmful inputs are rebuilt: by ``harmful_fn(cfg, pairs) -> (x_h (T, N, D), y_h (T, N))``
  when given, else from the run's own data recipe (``mnist_pairs.load_images`` and
  ``immujax.data.mnist.harmful_task``). Either way they are checked against the restored
  ``q_h = X_HᵀX_H`` and ``b_h = X_Hᵀy_H``.

  Args:
    mnist_workdir: the mnist_pairs ``--workdir``.
    max_pairs: attack the first ``max_pairs`` pairs.
    steps: the attackers' step budget.
    harmful_fn: optional rebuild of the harmful inputs and targets.

  Returns:
    A :class:`Dataset`.
  """
  from experiments import mnist_pairs  # pylint: disable=g-import-not-at-top
  mnist_workdir = pathlib.Path(mnist_workdir)
  if not (mnist_workdir / "checkpoints").is_dir():
    raise ValueError(f"--mnist_workdir={mnist_workdir} has no checkpoints/; run "
                     "`python -m experiments.mnist_pairs --workdir=...` first.")
  tasks, state, index, pairs, mcfg = mnist_pairs.restore_runs(mnist_workdir)
  n = min(int(max_pairs), len(pairs))
  pairs = np.asarray(pairs)[:n]
  tasks = sweep.slice_tasks(tasks, 0, n)
  state = sweep.slice_tasks(state, 0, n)
  if harmful_fn is None:
    harmful_fn = functools.partial(_mnist_harmful, mnist_workdir)
  x_h, y_h = (np.asarray(a) for a in harmful_fn(mcfg, pairs))
  q_h, b_h = np.einsum("tnd,tne->tde", x_h, x_h), np.einsum("tnd,tn->td", x_h, y_h)
  if not (np.allclose(q_h, tasks.q_h, rtol=1e-8, atol=1e-8 * np.abs(q_h).max())
          and np.allclose(b_h, tasks.b_h, rtol=1e-8, atol=1e-8 * np.abs(b_h).max())):
    raise ValueError(
        f"the rebuilt MNIST harmful inputs do not match the statistics of {mnist_workdir}'s "
        "tasks (X_HᵀX_H, X_Hᵀy_H): the run's data recipe changed. Pass a harmful_fn that "
        "rebuilds the run's harmful task.")
  ev = sweep.evaluate(state, tasks, loss="bce", kappa=mcfg.get("kappa", "pinv"))
  return Dataset(
      name="mnist", source=f"{mnist_workdir} ({n} of the run's pairs)",
      tasks=[f"{p}→{h}" for p, h in pairs], thetas=np.asarray(state.params.theta),
      index=list(index), rir=np.asarray(ev.rir),
      probes={"D_H": (x_h, y_h), "D_P": (np.asarray(jax.vmap(immunize.supervised_inputs,
                                                   in_axes=(sweep.task_axes(tasks),))(tasks)),
                            np.asarray(tasks.y_p))},
      steps=steps)


def _mnist_harmful(mnist_workdir, mcfg, pairs):
  """The harmful (x_h, y_h) of each pair, rebuilt like ``mnist_pairs.build_tasks``."""
  from experiments import mnist_pairs  # pylint: disable=g-import-not-at-top
  from immujax.data import mnist  # pylint: disable=g-import-not-at-top
  meta = json.loads((pathlib.Path(mnist_workdir) / "config.json").read_text())
  images, labels = mnist_pairs.load_images(mcfg, meta.get("mnist_dir"),
                                           meta.get("tfds_data_dir"))
  subsets = mnist.digit_subsets(images, labels, n_per_digit=mcfg.n_per_digit, seed=0)
  xs, ys = zip(*(mnist.harmful_task(subsets, int(p), int(h), kind=mcfg.task)
                 for p, h in pairs))
  return np.stack(xs).astype(np.float64), np.stack(ys).astype(np.float64)


# ------------------------------------------------------------------------- outputs


def _fmt_slow(values, bounds) -> str:
  v = np.asarray(values, float)
  if not np.all(np.isfinite(v)):
    return "∞"
  bounds = set(bounds)
  if "unknown" in bounds or {"lower", "upper"} <= bounds:
    return "n/a (budget)"
  prefix = "≥ " if "lower" in bounds else "≤ " if "upper" in bounds else ""
  m, s = common.mean_std(v)
  return f"{prefix}{m:.3g}" + (f" ± {s:.2g}" if len(v) > 1 else "")


def table(results: dict) -> str:
  """``table.md``: Ours' slow-down under every attacker beside the paper's RIR, then all
  methods on D_H."""
  names = results["attackers"]
  eps = [eps_key(e) for e in results["eps"]]
  dsets = results["datasets"]
  metric = "norm_ratio"
  lines = ["# Attack suite — does immunization survive an attacker that is not plain GD?", "",
           "Slow-down = steps for the attacker's probe to reach ε on the immunized features / "
           "steps on the identity features (θ = I). On D_H (harmful) immunization wants it "
           "≫ 1; on D_P (pre-training) ≈ 1 or below. Steps are read off the norm ratio "
           "‖w_t − w*‖²/‖w_0 − w*‖² (Eq. 16), w_0 = 0; mean ± std over seeds (MNIST: the mean "
           "over pairs, per seed). \"≥\": the immunized run did not reach ε within the budget "
           "(a lower bound); \"≤\": the identity run did not. Expected: GD ∝ κ ratio, "
           "momentum/CG ∝ √κ ratio, closed form 1.", ""]
  ours = {k: v["methods"]["ours"] for k, v in dsets.items() if "ours" in v["methods"]}
  if ours:
    lines += ["## Ours", ""]
    head = "| Attacker | expected |"
    sep = "|---|---|"
    for ds in ours:
      for e in eps:
        head += f" {ds} D_H ε={e} |"
        sep += "---|"
      head += f" {ds} D_P ε={eps[-1]} |"
      sep += "---|"
    lines += [head, sep]
    for n in names:
      row = f"| {n} | {results['expected_scaling'][n]} |"
      for ds, r in ours.items():
        for e in eps + [None]:
          side, e = ("D_P", eps[-1]) if e is None else ("D_H", e)
          row += f" {_fmt_slow(r['slowdown'][side][n][metric][e], r['bound'][side][n][metric][e])} |"
      lines.append(row)
    for label, f in (("κ ratio (theory for GD)", lambda x: x),
                     ("√κ ratio (theory for momentum, CG)", np.sqrt)):
      row = f"| {label} | |"
      for ds, r in ours.items():
        kh = f(np.asarray(r["kappa_ratio"]["D_H"], float))
        kp = f(np.asarray(r["kappa_ratio"]["D_P"], float))
        row += f" {common.mean_std(kh)[0]:.3g} |" * len(eps) + f" {common.mean_std(kp)[0]:.3g} |"
      lines.append(row)
    lines += [""]
    for ds, r in ours.items():
      paper = dsets[ds]["paper_rir_ours"]
      lines.append(f"- {ds}: RIR of Ours measured **{common.fmt_pm(r['mean_rir_per_seed'], 4)}**"
                   f" (paper: {paper if paper is not None else 'n/a'}); "
                   f"{len(dsets[ds]['tasks'])} task(s), budget {dsets[ds]['budget']} steps; "
                   f"source {dsets[ds]['source']}.")
    lines.append("")
  for ds, d in dsets.items():
    e = eps[-1]
    lines += [f"## {ds}: every method, D_H, ε = {e}", "",
              "| Method | RIR | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]
    ident = [np.asarray(d["identity"]["steps"]["D_H"][n][metric][e]) for n in names]
    lines.append("| Identity (steps) | 1 | " + " | ".join(
        f"> {d['budget']}" if np.any(v >= d["sentinel"]) else f"{np.mean(v):.4g}"
        for v in ident) + " |")
    for m, r in d["methods"].items():
      lines.append(f"| {NAMES.get(m, m)} | {common.fmt_pm(r['mean_rir_per_seed'], 3)} | "
                   + " | ".join(_fmt_slow(r["slowdown"]["D_H"][n][metric][e],
                                          r["bound"]["D_H"][n][metric][e]) for n in names)
                   + " |")
    lines.append("")
  return "\n".join(lines)


def plot_curves(curves: dict, path: pathlib.Path, seed: int) -> None:
  """``attack_curves.png``: one panel per attacker (rows: datasets), norm ratio on D_H."""
  plt = common.matplotlib_agg()
  dsets = [d for d in curves if curves[d]]
  names = list(next(iter(curves.values()))) if dsets else []
  ncols = min(4, max(len(names), 1))
  rows_per = -(-len(names) // ncols)
  fig, axes = plt.subplots(rows_per * len(dsets), ncols, squeeze=False,
                           figsize=(4 * ncols, 3.2 * rows_per * len(dsets)))
  for a in axes.flat:
    a.set_visible(False)
  for di, ds in enumerate(dsets):
    for k, name in enumerate(names):
      ax = axes[di * rows_per + k // ncols, k % ncols]
      ax.set_visible(True)
      for label, c in curves[ds][name].items():
        ax.semilogy(np.maximum(np.asarray(c, float), 1e-300), label=NAMES.get(label, label),
                    lw=1.2 if label == "identity" else 1.0,
                    color="black" if label == "identity" else None)
      ax.set_title(f"{ds}: {name} (D_H, seed {seed})", fontsize=9)
      ax.set_xlabel("attacker steps")
      ax.set_ylabel("‖w_t − w*‖² / ‖w_0 − w*‖²")
      ax.set_ylim(1e-12, 10)
      ax.legend(fontsize=7)
  fig.tight_layout()
  common.save_figure(path, fig)


def run(cfg: ml_collections.ConfigDict, workdir, *, house_workdir=None, mnist_workdir=None,
        recompute: bool = False, data_dir=None, max_pairs: Optional[int] = None) -> dict:
  """Loads (or recomputes) the extractors, attacks them, writes the three outputs.

  Args:
    cfg: the attack-suite config.
    workdir: output directory (``--workdir``).
    house_workdir: a finished house_price workdir (``--house_workdir``).
    mnist_workdir: a finished mnist_pairs workdir (``--mnist_workdir``).
    recompute: train house-price extractors in-process (``--recompute``).
    data_dir: house-price data (``--data_dir``).
    max_pairs: MNIST pairs to attack (``--max_pairs``; default ``cfg.max_pairs``).

  Returns:
    The results dict written to ``results.json``.
  """
  if not jax.config.jax_enable_x64:
    raise ValueError("enable float64 first: jax.config.update('jax_enable_x64', True).")
  if recompute and house_workdir:
    raise ValueError("--recompute and --house_workdir both provide house-price extractors; "
                     "pass only one.")
  if not (recompute or house_workdir or mnist_workdir):
    raise ValueError("nothing to attack: pass --house_workdir=<finished house_price workdir>,"
                     " --mnist_workdir=<finished mnist_pairs workdir>, or --recompute "
                     "(with --data_dir).")
  max_pairs = cfg.max_pairs if max_pairs is None else max_pairs
  if max_pairs < 1:
    raise ValueError(f"--max_pairs must be >= 1; got {max_pairs}.")
  attacker_names(cfg)  # validate before any expensive work
  workdir = pathlib.Path(workdir)
  t_start = time.perf_counter()
  datasets = []
  if recompute:
    datasets.append(recompute_house(data_dir, variant=cfg.recompute_variant,
                                    steps=cfg.house_steps,
                                    overrides=cfg.recompute_overrides.to_dict(),
                                    on_progress=common.ProgressPrinter("train house")))
  elif house_workdir:
    datasets.append(load_house_workdir(house_workdir, data_dir, steps=cfg.house_steps))
  if mnist_workdir:
    datasets.append(load_mnist_workdir(mnist_workdir, max_pairs=max_pairs,
                                       steps=cfg.mnist_steps))
  for ds in datasets:
    print(f"[attacks] {ds.name}: {len(ds.tasks)} task(s) × {len(ds.index)} extractors + "
          f"identity, D = {ds.thetas.shape[-1]}, budget {ds.steps} steps ({ds.source})",
          flush=True)
  results, curves = run_suite(datasets, cfg, on_progress=common.ProgressPrinter(
      "attacks", summarize=lambda label: label))
  results["config"] = cfg.to_dict()
  results["wall_time_s"] = time.perf_counter() - t_start
  workdir.mkdir(parents=True, exist_ok=True)
  common.write_json(workdir / "results.json", results)
  common.write_text(workdir / "table.md", table(results))
  plot_curves(curves, workdir / "attack_curves.png", cfg.curve_seed)
  print((workdir / "table.md").read_text())
  print(f"wrote {workdir}/results.json, table.md, attack_curves.png "
        f"({results['wall_time_s']:.1f} s)")
  return results


def main(argv):
  del argv
  common.enable_float64()
  run(_CONFIG.value, _WORKDIR.value, house_workdir=_HOUSE_WORKDIR.value,
      mnist_workdir=_MNIST_WORKDIR.value, recompute=_RECOMPUTE.value,
      data_dir=_DATA_DIR.value, max_pairs=_MAX_PAIRS.value)


if __name__ == "__main__":
  _define_flags()
  app.run(main)

"""Attack suite (issues 6, 11): every linear-probing attacker against the immunized extractors.

For each dataset, every extractor θ of a run (method × seed; MNIST: every pair up to
``max_pairs``) and the reference θ = I are attacked on the harmful (D_H) and the pre-training
(D_P) probe by every attacker, with adaptive budgets (``immujax.evaluation``): each run stops
when it reaches every ε or at its cap, and a run at the cap makes its slow-down a bound. The
attackers of ``config.test_attackers`` also have their probes scored on held-out data: house
prices' rows 200–299 (the authors' validation rows), MNIST's test split or, for the embedded
sample, the sample images the run did not draw. :func:`run` writes ``results.json``,
``table.md`` (a verdict first, then the detail) and ``attack_curves.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np

from immujax import evaluation
from immujax import immunize
from immujax import metrics
from immujax import sweep
from immujax.data import fingerprint
from immujax.data import house_prices
from immujax.data import mnist
from immujax.runner import outputs
from immujax.runner import provenance
from immujax.runner import workdir as workdir_lib
from immujax.studies import house_price
from immujax.studies import mnist_pairs
from immujax.studies import tables

__all__ = [
    "Dataset",
    "load_mnist_workdir",
    "rebuild",
    "rebuild_workdir",
    "run",
    "run_suite",
    "table",
    "verdict_summary",
]

PAPER_RIR_OURS = {"house": 356.2, "mnist": 70.04}   # Table 1 and Table 2 of the paper
Echo = Optional[Callable[[str], None]]


@dataclasses.dataclass
class Dataset:
  """The extractors of one dataset and their probe data.

  Attributes:
    name: ``"house"`` or ``"mnist"``.
    source: where the extractors came from.
    task_names: ``T`` labels (house: one; MNIST: ``"p→h"`` per digit pair).
    tasks: ``T`` :class:`evaluation.ProbeData` (with held-out splits when available).
    thetas: ``(T, R, D_in, D_in)`` extractors, ``R`` runs per task.
    index: ``R`` pairs ``(method, seed)``.
    rir, ratio_h, ratio_p, dp_loss: ``(T, R)`` from the run (``sweep.evaluate``): RIR
      (Eq. 15), its factors, and the trained model's D_P loss.
    test_note: how the held-out split was made (or why there is none).
    data: the data part of the provenance (``fingerprint.data_record``).
  """
  name: str
  source: str
  task_names: list
  tasks: list
  thetas: np.ndarray
  index: list
  rir: np.ndarray
  ratio_h: np.ndarray
  ratio_p: np.ndarray
  dp_loss: np.ndarray
  test_note: str = ""
  data: Optional[dict] = None

  @property
  def labels(self) -> list:
    return [f"{m}/{s}" for m, s in self.index]


# ------------------------------------------------------------------------- loading extractors


def _house_probe_data(data: house_prices.HousePrices, n_test: int = 100
                      ) -> evaluation.ProbeData:
  s = data.n_train
  return evaluation.validate_data(
      {"x_p": data.x_p, "y_p": data.y_p, "x_h": data.x_h, "y_h": data.y_h,
       "x_p_test": data.x_p_all[s:s + n_test], "y_p_test": data.y_p_all[s:s + n_test],
       "x_h_test": data.x_h_all[s:s + n_test], "y_h_test": data.y_h_all[s:s + n_test]},
      kind="regression", name="house prices")


def house_dataset(ex: house_price.Extractors) -> Dataset:
  """A :class:`Dataset` of house-price extractors (``house_price.load_workdir`` or
  ``house_price.train_in_process``)."""
  index = sweep.run_index(tuple(ex.cfg.methods), ex.cfg.seeds)
  ev = jax.tree.map(np.asarray, sweep.evaluate(ex.state, ex.tasks,
                                               kappa=ex.cfg.get("kappa", "pinv")))
  n = ex.data.n_train
  return Dataset(
      name="house", source=ex.source, task_names=["house"],
      tasks=[_house_probe_data(ex.data)], thetas=np.asarray(ex.state.params.theta),
      index=index, rir=ev.rir, ratio_h=ev.ratio_h, ratio_p=ev.ratio_p, dp_loss=ev.dp_loss,
      test_note=f"held out: rows {n}–{n + 99} of D1/D2 (the authors' validation rows)",
      data=ex.record)


def recompute_house(data_dir, hcfg: ml_collections.ConfigDict, *, echo: Echo = None
                    ) -> Dataset:
  """Trains house-price extractors of ``hcfg`` in-process (``--recompute``)."""
  if data_dir is None or not pathlib.Path(data_dir).is_dir():
    raise ValueError(
        f"--recompute needs the house-price data (got {data_dir}); pass "
        "--data_dir=<directory with D1.csv/D2.csv or train.csv>, e.g. "
        "--data_dir=../shared/data/house_price.")
  ex = house_price.train_in_process(data_dir, hcfg, echo=echo)
  ex.source = "recomputed (experiments/configs/house_price.py:quick)"
  return house_dataset(ex)


def load_mnist_workdir(mnist_workdir, *, max_pairs: int, mnist_dir=None,
                       harmful_fn: Optional[Callable] = None,
                       test_fn: Optional[Callable] = None) -> Dataset:
  """Extractors of an ``experiments.mnist_pairs`` run, first ``max_pairs`` pairs.

  ``restore_runs`` gives tasks with the harmful task's sufficient statistics only, so the
  harmful inputs are rebuilt: by ``harmful_fn(cfg, pairs) -> (x_h (T, N, D), y_h (T, N))``
  when given, else from the run's own data recipe. Either way they are checked against the
  restored ``q_h = X_HᵀX_H`` and ``b_h = X_Hᵀy_H``. Held-out splits come from
  ``test_fn(cfg, pairs) -> [dict of *_test arrays]`` when given, else from ``--mnist_dir``'s
  test split, else from the sample images the run did not draw (none if it drew them all).

  Returns:
    A :class:`Dataset`.
  """
  mnist_workdir = pathlib.Path(mnist_workdir)
  if not (mnist_workdir / "checkpoints").is_dir():
    raise ValueError(f"--mnist_workdir={mnist_workdir} has no checkpoints/; run "
                     "`python -m experiments.mnist_pairs --workdir=...` first.")
  tasks, state, index, pairs, mcfg = mnist_pairs.restore_runs(mnist_workdir)
  n = min(int(max_pairs), len(pairs))
  pairs = np.asarray(pairs)[:n]
  tasks = sweep.slice_tasks(tasks, 0, n)
  state = sweep.slice_tasks(state, 0, n)
  images, labels = mnist_pairs.workdir_images(mnist_workdir, mcfg)
  if harmful_fn is None:
    harmful_fn = functools.partial(_mnist_harmful, images, labels)
  x_h, y_h = (np.asarray(a) for a in harmful_fn(mcfg, pairs))
  q_h, b_h = np.einsum("tnd,tne->tde", x_h, x_h), np.einsum("tnd,tn->td", x_h, y_h)
  if not (np.allclose(q_h, tasks.q_h, rtol=1e-8, atol=1e-8 * np.abs(q_h).max())
          and np.allclose(b_h, tasks.b_h, rtol=1e-8, atol=1e-8 * np.abs(b_h).max())):
    raise ValueError(
        f"the rebuilt MNIST harmful inputs do not match the statistics of {mnist_workdir}'s "
        "tasks (X_HᵀX_H, X_Hᵀy_H): the run's data recipe changed. Pass a harmful_fn that "
        "rebuilds the run's harmful task.")
  ev = jax.tree.map(np.asarray, sweep.evaluate(state, tasks, loss="bce",
                                               kappa=mcfg.get("kappa", "pinv")))
  x_p = np.asarray(jax.vmap(immunize.supervised_inputs, in_axes=(sweep.task_axes(tasks),))(
      tasks))
  y_p = np.asarray(tasks.y_p)
  note = ""
  if test_fn is not None:
    tests = test_fn(mcfg, pairs)
    note = "held out: given by test_fn"
  else:
    tests, note = _mnist_tests(images, labels, mcfg, pairs, mnist_dir)
  k_p, k_h = np.asarray(tasks.k_p), np.asarray(tasks.k_h)   # K of digit p / h (paper §5.2)
  probe = [evaluation.validate_data({"x_p": x_p[t], "y_p": y_p[t], "x_h": x_h[t],
                                     "y_h": y_h[t], **(tests[t] if tests else {})},
                                    kind="classification", name=f"MNIST pair {p}→{h}",
                                    k_p=k_p[t], k_h=k_h[t])
           for t, (p, h) in enumerate(pairs)]
  _, meta = mnist_pairs.workdir_config(mnist_workdir)
  files = mnist.data_files(mcfg.source, mnist_dir=meta.get("mnist_dir"))
  if mnist_dir is not None and pathlib.Path(mnist_dir).is_dir():
    files += mnist.data_files("idx", mnist_dir=mnist_dir, split="test")
  record = fingerprint.data_record(
      f"MNIST ({mcfg.source}, pool {mcfg.pool}) of {mnist_workdir}, {n} pair(s)", files,
      [images, labels, pairs] + [a for t in (tests or []) for a in t.values()])
  return Dataset(
      name="mnist", source=f"{mnist_workdir} ({n} of the run's pairs)",
      task_names=[f"{p}→{h}" for p, h in pairs], tasks=probe,
      thetas=np.asarray(state.params.theta), index=list(index), rir=ev.rir,
      ratio_h=ev.ratio_h, ratio_p=ev.ratio_p, dp_loss=ev.dp_loss, test_note=note, data=record)


def _mnist_harmful(images, labels, mcfg, pairs):
  """The harmful (x_h, y_h) of each pair, rebuilt like ``mnist_pairs.build_tasks``."""
  subsets = mnist.digit_subsets(images, labels, n_per_digit=mcfg.n_per_digit, seed=0)
  xs, ys = zip(*(mnist.harmful_task(subsets, int(p), int(h), kind=mcfg.task)
                 for p, h in pairs))
  return np.stack(xs).astype(np.float64), np.stack(ys).astype(np.float64)


def _mnist_tests(all_images, all_labels, mcfg, pairs, mnist_dir):
  """Per pair, the held-out one-vs-rest splits of D_P (p) and D_H (h); see the module doc."""
  if mnist_dir is not None and pathlib.Path(mnist_dir).is_dir():
    images, labels = mnist.load_mnist("idx", mnist_dir=str(mnist_dir), split="test")
    images = mnist_pairs.pool_images(images, mcfg.pool)
    note = f"held out: the MNIST test split (t10k) from {mnist_dir}, one-vs-rest, balanced"
  else:
    drawn = mnist.digit_subset_indices(all_labels, n_per_digit=mcfg.n_per_digit, seed=0)
    rest = np.setdiff1d(np.arange(len(all_labels)), drawn.ravel())
    if rest.size == 0 or len(np.unique(all_labels[rest])) < 10:
      return None, ("no held-out split: the run drew every sample image; pass --mnist_dir "
                    "(the MNIST test split)")
    images, labels = all_images[rest], all_labels[rest]
    note = f"held out: the {rest.size} {mcfg.source} images the run did not draw"
  tests = []
  for p, h in pairs:
    x_pt, y_pt = evaluation.one_vs_rest(images, labels, int(p), int(h))
    x_ht, y_ht = evaluation.one_vs_rest(images, labels, int(h), int(p))
    tests.append({"x_p_test": x_pt, "y_p_test": y_pt, "x_h_test": x_ht, "y_h_test": y_ht})
  return tests, note


# ------------------------------------------------------------------------- running


def with_rotation_control(ds: Dataset, seed: int = 0) -> Dataset:
  """Adds a Haar-random orthogonal θ (``("rotation", 0)``) to every task: RIR = 1 exactly and
  every rotation-invariant attacker is unaffected, so whatever slow-down it shows (Adam) comes
  from rotating the features, not from the condition number."""
  d = ds.thetas.shape[2]
  q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
  q = q * np.sign(np.diag(r))
  t = ds.thetas.shape[0]
  thetas = np.concatenate([ds.thetas, np.broadcast_to(q, (t, 1, d, d))], axis=1)
  ones = np.ones((t, 1))
  return dataclasses.replace(
      ds, thetas=thetas, index=list(ds.index) + [("rotation", 0)],
      rir=np.concatenate([ds.rir, ones], 1), ratio_h=np.concatenate([ds.ratio_h, ones], 1),
      ratio_p=np.concatenate([ds.ratio_p, ones], 1),
      dp_loss=np.concatenate([ds.dp_loss, ones * np.nan], 1))



def run_suite(datasets: Sequence[Dataset], cfg: ml_collections.ConfigDict, *,
              settings: Callable[[int], dict],
              on_progress: Optional[Callable[[str], None]] = None) -> dict:
  """Attacks every extractor of every dataset (``evaluation.evaluate_many``).

  Args:
    datasets: the extractors and their probe data.
    cfg: the attack settings (``experiments/configs/attack_suite.py``).
    settings: ``d_in -> evaluation.evaluate_many`` keyword arguments from ``cfg``.
    on_progress: called with a short label after each dataset's (side, attacker).

  Returns:
    ``{"datasets": {name: {"source", "tasks", "test_note", "index", "rir", "dp_loss",
    "reports": [one evaluation report per task]}}}``.
  """
  out = {"datasets": {}}
  for ds in datasets:
    if ds.thetas.shape[2] != ds.thetas.shape[3]:
      raise ValueError(f"{ds.name}: extractors must be square (D_in, D_in) to be compared "
                       f"with θ = I; got {ds.thetas.shape[2:]}.")
    if cfg.get("rotation_control", False):
      ds = with_rotation_control(ds)
    kwargs = settings(ds.thetas.shape[2])
    rir = []
    for t, task in enumerate(ds.tasks):
      k_p, k_h = task.covariances()
      bound = metrics.rir_upper_bound(k_p=k_p, k_h=k_h)
      rir.append({"rir": ds.rir[t], "ratio_h": ds.ratio_h[t], "ratio_p": ds.ratio_p[t],
                  "rir_limit": float(bound.rir_on_range), "rir_bounded": bool(bound.bounded),
                  "null_space_leak": float(bound.leak)})
    thetas = [evaluation.validate_extractors(ds.thetas[t], task.d_in,
                                             name=f"{ds.name} extractors")
              for t, task in enumerate(ds.tasks)]
    reports = evaluation.evaluate_many(
        ds.tasks, thetas, ds.labels, rir=rir,
        on_progress=None if on_progress is None else (lambda s, n=ds.name: on_progress(
            f"{n}: {s}")), **kwargs)
    out["datasets"][ds.name] = {
        "source": ds.source, "tasks": ds.task_names, "test_note": ds.test_note,
        "index": ds.index, "rir": ds.rir, "ratio_h": ds.ratio_h, "ratio_p": ds.ratio_p,
        "dp_loss": ds.dp_loss, "paper_rir_ours": PAPER_RIR_OURS.get(ds.name),
        "caps": kwargs["caps"], "reports": reports}
  return out


# ------------------------------------------------------------------------- outputs


def _cells(d: dict, method: str, getter) -> tuple[np.ndarray, list]:
  """Values and bounds over (task, seed) of one method: ``getter(report, label)``."""
  labels = [f"{m}/{s}" for m, s in d["index"] if m == method]
  vals, bounds = [], []
  for rep in d["reports"]:
    for l in labels:
      v, b = getter(rep, l)
      vals.append(v)
      bounds.append(b)
  return np.asarray(vals, float), bounds


def _fmt_cells(vals, bounds, cap, many_tasks: bool) -> str:
  if not many_tasks:
    return evaluation.fmt_slowdown(vals, bounds, cap)
  bset = set(bounds)
  if bset == {"both"}:
    return f"both > {cap:.0e} steps"
  if bset <= {"no_gain", "never"}:
    return evaluation.fmt_slowdown(vals, bounds, cap)
  if "never" in bset or "no_gain" in bset:
    keep = [i for i, b in enumerate(bounds) if b not in ("never", "no_gain")]
    n_never = sum(b == "never" for b in bounds)
    rest = _fmt_cells(np.asarray(vals)[keep], [bounds[i] for i in keep], cap, True)
    return f"{rest}; never for {n_never}/{len(bounds)}" if n_never else rest
  prefix = ("≥ " if "lower" in bset and "upper" not in bset else
            "≤ " if "upper" in bset and "lower" not in bset else "~ " if bset - {"exact"} else "")
  censored = sum(b != "exact" for b in bounds)
  v = vals[np.isfinite(vals)]
  q = np.percentile(v, [50, 10, 90]) if v.size else [np.nan] * 3
  note = f"; {censored}/{len(bounds)} at cap {cap:.0e}" if censored else ""
  return f"{prefix}{q[0]:.3g} [{q[1]:.3g}–{q[2]:.3g}{note}]"


def verdict_summary(results: dict) -> list[str]:
  """The summary that opens ``table.md`` (≤ 15 lines for two datasets of 4 methods and the
  rotation control): per dataset and method, RIR (median [range] over pairs and seeds),
  Definition 3.1 and the verdict per attacker (``evaluation.method_summary``)."""
  dsets = list(results["datasets"].values())
  if not dsets:
    return []
  first = dsets[0]["reports"][0]
  lines = evaluation.verdict_header(first["attackers"], min(first["eps"]))
  many = len(dsets) > 1
  for name, d in results["datasets"].items():
    lines += evaluation.verdict_rows(evaluation.method_summary(d["reports"]),
                                     first["attackers"], prefix=f"{name} · " if many else "",
                                     names=tables.NAMES)
  return lines


def table(results: dict) -> str:
  """``table.md``: per dataset, every method × attacker on D_H and D_P, then held-out scores."""
  lines = ["# Attack suite — does immunization slow a real attacker down?"]
  lines += verdict_summary(results)
  lines += ["", "## Detail", "",
           "Slow-down = steps for the attacker's probe to reach ε (norm ratio, Eq. 16, w_0 = 0) "
           "on the immunized features / on θ = I. Budgets adapt: every run stops when it "
           "reaches ε or at its cap; ≥ (≤) marks a bound when the extractor's (the identity's) "
           "run hit the cap. House: mean ± std over seeds. MNIST: median [10th–90th "
           "percentile] over pairs. D_H wants ≫ 1, D_P ≤ 1.", ""]
  for name, d in results["datasets"].items():
    reps = d["reports"]
    many = len(reps) > 1
    methods = list(dict.fromkeys(m for m, _ in d["index"]))
    eps = [f"{e:.0e}" for e in reps[0]["eps"]]
    attackers = reps[0]["attackers"]
    caps = reps[0]["caps"]
    lines += [f"## {name} ({len(reps)} task(s); {d['source']})", ""]
    rir_s = {m: _cells(d, m, lambda r, l: (r["rir"][l], "exact"))[0] for m in methods}
    dp_s = {m: np.asarray(d["dp_loss"], float)[:, [i for i, (mm, _) in enumerate(d["index"])
                                             if mm == m]].ravel() for m in methods}
    lines += ["| method | RIR | D_P loss (trained) | RIR share of limit |", "|---|---|---|---|"]
    for m in methods:
      share = _cells(d, m, lambda r, l: (r["rir_share_of_limit"][l], "exact"))[0]
      lines.append(f"| {tables.name(m)} | {tables.fmt_pm(rir_s[m], 3)} | "
                   f"{tables.fmt_pm(dp_s[m], 3) if np.any(np.isfinite(dp_s[m])) else '— (not trained)'}"
                   f" | {tables.fmt_pm(share, 2)} |")
    lines += ["", f"- RIR limit on range(K_P): {tables.fmt_pm([r['rir_limit'] for r in reps], 3)};"
              f" null-space leak {tables.fmt_pm([r['null_space_leak'] for r in reps], 3)} "
              "(> 0: RIR is unbounded over all θ on these data).", ""]
    blocks = [("slowdown", "identity", "norm ratio (Eq. 16)")]
    if all("slowdown_excess" in r for r in reps):
      blocks.append(("slowdown_excess", "identity_excess",
                     "excess loss (L(w_t) − L*)/(L(w_0) − L*)"))
    cells = [(b, side, e) for b in blocks for side in evaluation.SIDES for e in eps]
    for (skey, ikey, mname), side, e in cells:
      lines += [f"### {name}: slow-down on {side}, ε = {e}, {mname}", "",
                "| method | " + " | ".join(attackers) + " |",
                "|---|" + "---|" * len(attackers)]
      ident = [np.asarray([r["steps"][a][side][ikey][e] for r in reps]) for a in attackers]
      lines.append("| θ = I (steps) | " + " | ".join(
          (f"> {caps[a]:.0e} (cap)" if np.all(v > caps[a])
           else f"{np.median(v):.4g}" + (" (median)" if many else ""))
          for a, v in zip(attackers, ident)) + " |")
      for m in methods:
        row = f"| {tables.name(m)} |"
        for a in attackers:
          vals, bounds = _cells(d, m, lambda r, l: (r[skey][a][side][e][l]["value"],
                                                    r[skey][a][side][e][l]["bound"]))
          row += f" {_fmt_cells(vals, bounds, caps[a], many)} |"
        lines.append(row)
      lines.append("")
    ft_reps = [r for r in reps if r["fine_tuning"]]
    if ft_reps:
      metric = next(iter(ft_reps[0]["test_accuracy"]["D_H"].values()))["metric"]
      fr = list(next(iter(ft_reps[0]["fine_tuning"]["D_H"].values())))
      lines += [f"### {name}: held-out {metric} under fine-tuning ({d['test_note']})", "",
                f"Final and best (over the trajectory) held-out {metric} on D_H, θ vs θ = I, "
                f"and the slow-down to reach {' / '.join(fr)} of θ = I's best {metric} (steps "
                "read on a log grid; ≥: θ never got there within the cap).", "",
                "| attacker | method | D_H final (θ = I) | D_H final (θ) | D_H best (θ = I) | "
                "D_H best (θ) | " + " | ".join(f"slow-down to {f}" for f in fr) + " |",
                "|---|---|---|---|---|---|" + "---|" * len(fr)]
      for a in reps[0]["test_attackers"]:
        for m in methods:
          fin, fin_id, best, best_id = [], [], [], []
          for r in ft_reps:
            c = r["test_accuracy"]["D_H"][a]
            fin_id.append(c["identity"][-1])
            best_id.append(np.max(c["identity"]))
            fin += [c["extractor"][l][-1] for l in c["extractor"] if l.split("/")[0] == m]
            best += [np.max(c["extractor"][l]) for l in c["extractor"] if l.split("/")[0] == m]
          row = (f"| {a} | {tables.name(m)} | {tables.fmt_pm(fin_id, 3)} | "
                 f"{tables.fmt_pm(fin, 3)} | {tables.fmt_pm(best_id, 3)} | "
                 f"{tables.fmt_pm(best, 3)} |")
          for f in fr:
            vals, bounds = _cells({**d, "reports": ft_reps}, m, lambda r, l: (
                r["fine_tuning"]["D_H"][a][f]["extractor"][l]["value"],
                r["fine_tuning"]["D_H"][a][f]["extractor"][l]["bound"]))
            row += f" {_fmt_cells(vals, bounds, caps[a], many)} |"
          lines.append(row)
      gd = next((a for a in reps[0]["test_attackers"]
                 if a in ft_reps[0]["test_accuracy"].get("D_P", {})), None)
      lines += ["", f"Definition 3.1(c) on held-out D_P: the closed-form probe's {metric} on θ "
                "vs θ = I" + (f", and the best {metric} along the {gd} trajectory (an "
                              "early-stopped probe)" if gd else "") + ".", "",
                "| method | D_P held-out, closed form (θ = I) | (θ) | difference |"
                + (f" D_P best, {gd} (θ = I) | (θ) | difference |" if gd else ""),
                "|---|---|---|---|" + ("---|---|---|" if gd else "")]
      for m in methods:
        sub = {**d, "reports": ft_reps}
        ident = [r["dp_probe"]["identity"]["test_score"] for r in ft_reps]
        vals, _ = _cells(sub, m, lambda r, l: (r["dp_probe"]["extractor"][l]["test_score"],
                                               "exact"))
        diff, _ = _cells(sub, m, lambda r, l: (
            r["dp_probe"]["extractor"][l]["test_score"] - r["dp_probe"]["identity"]["test_score"],
            "exact"))
        row = (f"| {tables.name(m)} | {tables.fmt_pm(ident, 4)} | "
               f"{tables.fmt_pm(vals, 4)} | {tables.fmt_pm(diff, 3)} |")
        if gd:
          best = lambda c: float(np.nanmax(np.asarray(c, float)))
          b_id = [best(r["test_accuracy"]["D_P"][gd]["identity"]) for r in ft_reps]
          b, _ = _cells(sub, m, lambda r, l: (
              best(r["test_accuracy"]["D_P"][gd]["extractor"][l]), "exact"))
          bd, _ = _cells(sub, m, lambda r, l: (
              best(r["test_accuracy"]["D_P"][gd]["extractor"][l])
              - best(r["test_accuracy"]["D_P"][gd]["identity"]), "exact"))
          row += (f" {tables.fmt_pm(b_id, 4)} | {tables.fmt_pm(b, 4)} | "
                  f"{tables.fmt_pm(bd, 3)} |")
        lines.append(row)
      lines.append("")
    else:
      lines += [f"- {d['test_note'] or 'no held-out split'}.", ""]
  return "\n".join(lines)


def plot_curves(results: dict, path: pathlib.Path, seed: int) -> None:
  """``attack_curves.png``: per dataset, norm ratio and held-out score on D_H (first task)."""
  plt = outputs.pyplot()
  dsets = list(results["datasets"])
  reps = {n: results["datasets"][n]["reports"][0] for n in dsets}
  names = reps[dsets[0]]["test_attackers"] if dsets else []
  rows = 2 * len(dsets)
  fig, axes = plt.subplots(max(rows, 1), max(len(names), 1), squeeze=False,
                           figsize=(3.8 * max(len(names), 1), 3.0 * max(rows, 1)))
  for a in axes.flat:
    a.set_visible(False)
  for di, ds in enumerate(dsets):
    rep = reps[ds]
    for j, name in enumerate(names):
      for k, key in enumerate(("norm_ratio", "test_accuracy")):
        c = rep[key].get("D_H", {}).get(name)
        if c is None:
          continue
        ax = axes[2 * di + k, j]
        ax.set_visible(True)
        x = np.maximum(np.asarray(c["steps"], float), 0.5)
        plot = ax.loglog if key == "norm_ratio" else ax.semilogx
        ys = (lambda v: np.maximum(np.asarray(v, float), 1e-300)) if key == "norm_ratio" else (
            lambda v: v)
        plot(x, ys(c["identity"]), color="black", lw=1.5, label="θ = I")
        for label, v in c["extractor"].items():
          if label.endswith(f"/{seed}"):
            plot(x, ys(v), lw=1.0, label=tables.name(label.split("/")[0]))
        ax.set_title(f"{ds} {results['datasets'][ds]['tasks'][0]}: {name}", fontsize=9)
        ax.set_xlabel("attacker steps")
        ax.set_ylabel("norm ratio (D_H)" if key == "norm_ratio" else
                      f"held-out {c['metric']} (D_H)", fontsize=8)
        ax.legend(fontsize=6)
  fig.tight_layout()
  outputs.save_figure(path, fig)


def rebuild(results: dict) -> dict:
  """Recomputes the fine-tuning blocks of a saved ``results.json`` from its stored curves
  (``evaluation.fine_tuning``), e.g. after a change of the target rule; no attack is rerun."""
  for d in results["datasets"].values():
    for rep in d["reports"]:
      eps_min = min(rep["eps"])
      fr = [float(f) for f in next(iter(next(iter(rep["fine_tuning"].values())).values()))] \
          if rep.get("fine_tuning") else []
      for side, per in rep.get("test_accuracy", {}).items():
        for name, c in per.items():
          nr = rep["norm_ratio"][side][name]
          done = lambda curve: curve[-1] is not None and float(curve[-1]) <= eps_min
          labels = list(c["extractor"])
          rep["fine_tuning"][side][name] = evaluation.fine_tuning(
              c["identity"], [c["extractor"][l] for l in labels], labels, c["steps"], fr,
              converged_id=done(nr["identity"]),
              converged=[done(nr["extractor"][l]) for l in labels])
  return results




def run(cfg: ml_collections.ConfigDict, workdir, *, settings: Callable[[int], dict],
        check: Optional[Callable[[list], None]] = None, house_workdir=None, mnist_workdir=None, recompute_config=None, data_dir=None,
        mnist_dir=None, max_pairs: Optional[int] = None, move_aside: bool = False,
        echo: Echo = None) -> dict:
  """Validates, loads (or recomputes) the extractors, attacks them, writes the outputs.

  Every input is validated and loaded before anything is written into ``workdir``.

  Args:
    cfg: the attack settings (``experiments/configs/attack_suite.py``).
    workdir: the output directory.
    settings: ``d_in -> evaluation.evaluate_many`` keyword arguments from ``cfg``.
    check: called with the datasets' ``D_in`` once they are loaded (e.g. to refuse settings
      that no dataset uses), before anything is written.
    house_workdir, mnist_workdir: finished runs whose extractors are attacked.
    recompute_config: a house-price config to train extractors in-process instead.
    data_dir, mnist_dir: the house-price data; the MNIST IDX folder (held-out split).
    max_pairs: MNIST: attack the first N pairs (default ``cfg.max_pairs``).
    move_aside: rename a finished suite already in ``workdir`` and start afresh.
    echo: prints the progress lines (None: silent).

  Returns:
    The results dict written to ``results.json``.
  """
  say = echo or (lambda _: None)
  workdir = workdir_lib.validate(workdir)
  if recompute_config is not None and house_workdir:
    raise ValueError("--recompute and --house_workdir both provide house-price extractors; "
                     "pass only one.")
  if recompute_config is None and not (house_workdir or mnist_workdir):
    raise ValueError("nothing to attack: pass --house_workdir=<finished house_price workdir>,"
                     " --mnist_workdir=<finished mnist_pairs workdir>, or --recompute "
                     "(with --data_dir).")
  max_pairs = cfg.max_pairs if max_pairs is None else max_pairs
  if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
    raise ValueError(f"--max_pairs={max_pairs!r} must be a positive integer.")
  t_start = time.perf_counter()
  datasets, records = [], {}
  if recompute_config is not None:   # trained after the claim: only the data are loaded here
    if data_dir is None or not pathlib.Path(data_dir).is_dir():
      raise ValueError(
          f"--recompute needs the house-price data (got {data_dir}); pass "
          "--data_dir=<directory with D1.csv/D2.csv or train.csv>, e.g. "
          "--data_dir=../shared/data/house_price.")
    house, records["house"] = house_price.load(data_dir, recompute_config.n_train)
    d_ins = [house.x_p.shape[1]]
  elif house_workdir:
    datasets.append(house_dataset(house_price.load_workdir(house_workdir, data_dir)))
  if mnist_workdir:
    datasets.append(load_mnist_workdir(mnist_workdir, max_pairs=max_pairs,
                                       mnist_dir=mnist_dir))
  if recompute_config is None:
    d_ins = []
  d_ins += [ds.thetas.shape[2] for ds in datasets]
  if check is not None:
    check(sorted(set(d_ins)))
  records.update({ds.name: ds.data for ds in datasets})
  prov = provenance.record({
      "source": "; ".join(f"{n}: {d['source']}" for n, d in records.items()),
      "files": [f for d in records.values() for f in d["files"]],
      "arrays_sha256": fingerprint.arrays_sha256(np.frombuffer(
          "".join(d["arrays_sha256"] for d in records.values()).encode(), np.uint8)),
      "notes": [n for d in records.values() for n in d["notes"]]})
  workdir_lib.claim_and_tell(workdir, cfg.to_dict(), provenance=prov, label="attacks", say=say,
                             resumable=False, move_aside=move_aside)
  if recompute_config is not None:
    datasets.insert(0, recompute_house(data_dir, recompute_config, echo=echo))
  for ds in datasets:
    kw = settings(ds.thetas.shape[2])
    say(f"[attacks] {ds.name}: {len(ds.tasks)} task(s) × {len(ds.index)} extractors + "
        f"identity, D = {ds.thetas.shape[-1]}, caps {kw['caps']} ({ds.source}; "
        f"{ds.test_note})")
  results = run_suite(datasets, cfg, settings=settings, on_progress=lambda s: say(
      f"[attacks] done {s} ({time.perf_counter() - t_start:.0f} s)"))
  results["config"] = cfg.to_dict()
  results["provenance"] = prov
  results["wall_time_s"] = time.perf_counter() - t_start
  write_outputs(workdir, results, cfg.curve_seed)
  say((workdir / "table.md").read_text())
  say(f"wrote {workdir}/results.json, table.md, attack_curves.png "
      f"({results['wall_time_s']:.1f} s)")
  return results


def write_outputs(workdir, results: dict, curve_seed: int) -> None:
  """``table.md``, ``attack_curves.png`` and ``results.json`` (last: it marks the run done)."""
  workdir = pathlib.Path(workdir)
  text = table(results)
  text += "".join(f"\n- warning: {n}" for n in provenance.notes(results.get("provenance", {})))
  outputs.write_text(workdir / "table.md", text)
  plot_curves(results, workdir / "attack_curves.png", curve_seed)
  outputs.write_json(workdir / "results.json", results)


def rebuild_workdir(workdir, curve_seed: int) -> str:
  """``--rebuild``: the fine-tuning blocks, ``table.md`` and the plot from ``results.json``."""
  path = pathlib.Path(workdir) / "results.json"
  if not path.is_file():
    raise FileNotFoundError(f"--rebuild needs {path}; run the suite into --workdir first.")
  results = rebuild(json.loads(path.read_text()))
  write_outputs(workdir, results, curve_seed)
  return table(results)

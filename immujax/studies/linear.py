"""Immunize your own linear features: Algorithm 1 and every baseline on an ``.npz``.

The features (``x_p, y_p`` to keep, ``x_h, y_h`` to make hard to probe; e.g. embeddings of any
model) are immunized by every method × seed in one ``jit(vmap(...))`` program
(``immujax.sweep``), like the house-price study. The loss is MSE, or BCE when every target is
0 or 1 (``config.loss``). :func:`run` checkpoints after every chunk and resumes when rerun,
then writes ``extractors.npz`` (``thetas (E, D_in, D_in)``, ``labels``), ``results.json`` and
``table.md``; ``experiments.evaluate`` reads that workdir.
"""

from __future__ import annotations

import io
import pathlib
from typing import Callable, Optional

import jax
import numpy as np

from immujax import evaluation
from immujax import immunize
from immujax import metrics
from immujax import sweep
from immujax.data import fingerprint
from immujax.runner import loop
from immujax.runner import outputs
from immujax.runner import progress
from immujax.runner import provenance
from immujax.runner import workdir as workdir_lib
from immujax.studies import tables

__all__ = [
    "run",
]

Echo = Optional[Callable[[str], None]]


def data_record(data: evaluation.ProbeData, path) -> dict:
  """The data part of the run's provenance: the ``.npz`` and its arrays."""
  arrays = [getattr(data, k) for k in evaluation.DATA_KEYS + evaluation.TEST_KEYS]
  return fingerprint.data_record(f"features {path}", [path], arrays)


def immunize_features(data: evaluation.ProbeData, cfg, *, workdir=None, echo: Echo = None,
                      clock: Optional[loop.WallClock] = None,
                      max_chunks: Optional[int] = None) -> Optional[dict]:
  """Runs every method × seed of ``cfg`` on ``data``; returns extractors and metrics.

  Args:
    data: validated features (``evaluation.validate_data``).
    cfg: a validated config (``experiments/configs/linear.py``).
    workdir: checkpoint under ``workdir/checkpoints`` after every chunk and resume from
      there (None: no checkpoints).
    echo: prints the progress lines (None: silent).
    clock: the run's wall clock.
    max_chunks: stop after this many chunks, as if killed (returns None).

  Returns:
    ``{"thetas" (E, D_in, D_in), "labels", "rir", "ratio_h", "ratio_p", "dp_loss",
    "diverged", "rir_limit", "null_space_leak", "rir_bounded", "dp_loss_optimum_identity",
    "dp_loss_probe_optimum", "loss"}``.
  """
  loss = cfg.loss if cfg.loss != "auto" else (
      "bce" if data.kind == "classification" else "mse")
  task = immunize.make_task(data.x_p, data.y_p, data.x_h, data.y_h)
  tasks = jax.tree.map(lambda a: a[None], task)
  methods = tuple(cfg.methods)
  runs = sweep.init_runs(jax.random.key(0), tasks, methods, cfg.seeds,
                         learning_rate=cfg.learning_rate, step_scale=cfg.step_scale,
                         clip_factor=cfg.clip_factor, imma_steps=cfg.imma_steps,
                         init=cfg.init, precondition_baselines=cfg.precondition_baselines)

  def chunk(state, start):
    del start
    return sweep.run_chunk(state, tasks, runs.weights, steps=cfg.chunk_steps, loss=loss,
                           imma_steps=cfg.imma_steps)

  printer = progress.printer(echo, "linear")
  if workdir is None:
    state, _ = loop.run_chunked(chunk, runs.state, total_steps=cfg.steps,
                                chunk_steps=cfg.chunk_steps, on_progress=printer, clock=clock)
  else:
    state = loop.run_in_workdir(chunk, runs.state, workdir, total_steps=cfg.steps,
                                chunk_steps=cfg.chunk_steps, max_chunks=max_chunks,
                                on_progress=printer, clock=clock, say=echo)
    if state is None:
      return None
  ev = jax.tree.map(lambda a: np.asarray(a)[0],
                    sweep.evaluate(state, tasks, loss=loss, kappa=cfg.kappa))
  thetas = np.asarray(state.params.theta)[0]
  bound = metrics.rir_upper_bound(k_p=task.k_p, k_h=task.k_h)

  def probe_optimum(theta):
    phi = data.x_p @ theta
    w = np.linalg.lstsq(phi, data.y_p, rcond=None)[0]
    return float(np.mean((phi @ w - data.y_p) ** 2))

  finite = np.all(np.isfinite(thetas.reshape(len(thetas), -1)), axis=1)
  return {
      "thetas": thetas, "labels": [f"{m}/{s}" for m, s in sweep.run_index(methods, cfg.seeds)],
      "rir": ev.rir, "ratio_h": ev.ratio_h, "ratio_p": ev.ratio_p, "dp_loss": ev.dp_loss,
      "diverged": ~finite, "rir_limit": float(bound.rir_on_range),
      "null_space_leak": float(bound.leak), "rir_bounded": bool(bound.bounded),
      "dp_loss_optimum_identity": probe_optimum(np.eye(data.d_in)),
      "dp_loss_probe_optimum": np.array([probe_optimum(t) if ok else np.nan
                                         for t, ok in zip(thetas, finite)]),
      "loss": loss}


def table(res: dict, methods, seeds: int) -> str:
  """``table.md``: RIR and its factors per method, the limit, Definition 3.1(c)."""
  lines = [f"# Immunized linear features (mean ± std over {seeds} seed(s))", "",
           "| Method | (i) κ ratio D_H ↑ | (ii) κ ratio D_P ↓ | RIR ↑ | D_P loss (trained) | "
           "D_P probe MSE on θ (Def. 3.1(c)) |", "|---|---|---|---|---|---|"]
  for m in methods:
    rows = [i for i, l in enumerate(res["labels"]) if l.split("/")[0] == m]
    f = lambda k, d=4: tables.fmt_pm(np.asarray(res[k])[rows], d)
    lines.append(f"| {tables.name(m)} | {f('ratio_h')} | {f('ratio_p')} | {f('rir')} | "
                 f"{f('dp_loss')} | {f('dp_loss_probe_optimum', 6)} |")
  lines += ["", f"- D_P probe MSE on θ = I: {res['dp_loss_optimum_identity']:.6g}.",
            f"- RIR limit on range(K_P): {res['rir_limit']:.4g}; null-space leak "
            f"{res['null_space_leak']:.3g}"
            + (" (> 0: RIR is unbounded over all θ on these data)." if not res["rir_bounded"]
               else "."),
            f"- Diverged runs: {int(np.sum(res['diverged']))}. Next: `python -m "
            "experiments.evaluate --extractor=<this workdir> --data=<the .npz> "
            "--workdir=<out>` for the attack slow-downs and held-out accuracy."]
  return "\n".join(lines) + "\n"


def run(cfg, data: evaluation.ProbeData, workdir, *, data_path, move_aside: bool = False,
        max_chunks: Optional[int] = None, echo: Echo = None,
        clock: Optional[loop.WallClock] = None, defaults: Optional[dict] = None
        ) -> Optional[dict]:
  """Immunizes ``data`` with a validated ``cfg``; checkpoints into and writes ``workdir``."""
  clock = clock or loop.WallClock()
  say = echo or (lambda _: None)
  prov = provenance.record(data_record(data, data_path))
  workdir_lib.claim_and_tell(workdir, cfg.to_dict(), provenance=prov, label="linear", say=say,
                             move_aside=move_aside, defaults=defaults)
  workdir = pathlib.Path(workdir)
  res = immunize_features(data, cfg, workdir=workdir, echo=echo, clock=clock,
                          max_chunks=max_chunks)
  if res is None:
    return None
  res.update(wall_time_s=clock.total(), data=str(pathlib.Path(data_path).resolve()),
             config=cfg.to_dict(), provenance=prov)
  text = table(res, tuple(cfg.methods), cfg.seeds)
  buf = io.BytesIO()
  np.savez(buf, thetas=res["thetas"], labels=np.asarray(res["labels"]))
  outputs.write_json(workdir / "results.json", {k: v for k, v in res.items() if k != "thetas"})
  outputs.write_text(workdir / "table.md", text)
  outputs.write_bytes(workdir / "extractors.npz", buf.getvalue())
  say(text)
  say(f"wrote {workdir}/extractors.npz, results.json, table.md ({res['wall_time_s']:.1f} s)")
  return res

r"""Immunize your own linear features: Algorithm 1 and every baseline on an ``.npz``.

  python -m experiments.linear --data=features.npz --workdir=/tmp/linear \
      [--config=experiments/configs/linear.py:quick]
  python -m experiments.evaluate --extractor=/tmp/linear --data=features.npz \
      --workdir=/tmp/linear_report

``features.npz`` holds ``x_p (N_P, D_in), y_p (N_P,)`` (the task to keep) and
``x_h (N_H, D_in), y_h (N_H,)`` (the task to make hard to probe), e.g. embeddings of any
model, and optionally held-out ``*_test`` arrays (used by ``experiments.evaluate``). Every
method × seed runs in one ``jit(vmap(...))`` program (``immujax.sweep``), exactly like the
house-price experiment. The loss is MSE, or BCE when every target is 0 or 1
(``--config.loss``).

Writes ``extractors.npz`` (``thetas (E, D_in, D_in)``, ``labels``), ``results.json`` and
``table.md`` into ``--workdir`` once the run has finished, and nothing if an input is invalid
or the run fails.
"""

from __future__ import annotations

import io
import pathlib
import time

from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from experiments import common
from experiments import evaluate as evaluate_bin
from immujax import evaluation
from immujax import immunize
from immujax import metrics
from immujax import sweep
from immujax import training

_FLAGS = {}
NAMES = {"ours": "Ours", "r_ill_only": "R_ill Only", "imma": "IMMA", "opt_kappa": "Opt κ"}


def _define_flags():
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", str(pathlib.Path(__file__).parent / "configs" / "linear.py"),
      "Experiment configuration.")
  _FLAGS["data"] = flags.DEFINE_string(
      "data", None, "FILE.npz with x_p, y_p, x_h, y_h (optional *_test).", required=True)
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def validate_config(cfg) -> None:
  """Every field, before any work (one-line errors naming the field)."""
  common.validate_subset(tuple(cfg.methods), "--config.methods", immunize.METHODS)
  common.validate_positive_int(cfg.seeds, "--config.seeds")
  common.validate_steps(cfg.steps, cfg.chunk_steps)
  common.validate_positive_float(cfg.learning_rate, "--config.learning_rate")
  common.validate_positive_float(cfg.step_scale, "--config.step_scale")
  common.validate_positive_int(cfg.imma_steps, "--config.imma_steps")
  common.validate_choice(cfg.loss, "--config.loss", ("auto", "mse", "bce"))


def immunize_features(data: evaluation.ProbeData, cfg, *, on_progress=None) -> dict:
  """Runs every method × seed of ``cfg`` on ``data``; returns extractors and metrics.

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

  state, _ = training.run_chunked(chunk, runs.state, total_steps=cfg.steps,
                                  chunk_steps=cfg.chunk_steps, on_progress=on_progress)
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
  lines = [f"# Immunized linear features (mean ± std over {seeds} seed(s))", "",
           "| Method | (i) κ ratio D_H ↑ | (ii) κ ratio D_P ↓ | RIR ↑ | D_P loss (trained) | "
           "D_P probe MSE on θ (Def. 3.1(c)) |", "|---|---|---|---|---|---|"]
  for m in methods:
    rows = [i for i, l in enumerate(res["labels"]) if l.split("/")[0] == m]
    f = lambda k, d=4: common.fmt_pm(np.asarray(res[k])[rows], d)
    lines.append(f"| {NAMES.get(m, m)} | {f('ratio_h')} | {f('ratio_p')} | {f('rir')} | "
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


def main(argv):
  del argv
  common.enable_float64()
  cfg = _FLAGS["config"].value
  validate_config(cfg)
  workdir = common.validate_workdir(_FLAGS["workdir"].value)
  data = evaluation.validate_data(evaluate_bin.load_npz(_FLAGS["data"].value),
                                  name=f"--data={_FLAGS['data'].value}")
  t0 = time.perf_counter()
  res = immunize_features(data, cfg, on_progress=common.ProgressPrinter("linear"))
  res["wall_time_s"] = time.perf_counter() - t0
  res["data"] = str(pathlib.Path(_FLAGS["data"].value).resolve())
  res["config"] = cfg.to_dict()
  text = table(res, tuple(cfg.methods), cfg.seeds)
  buf = io.BytesIO()
  np.savez(buf, thetas=res["thetas"], labels=np.asarray(res["labels"]))
  common._atomic_write(workdir / "extractors.npz",  # pylint: disable=protected-access
                       lambda f: f.write(buf.getvalue()))
  common.write_json(workdir / "results.json", {k: v for k, v in res.items() if k != "thetas"})
  common.write_text(workdir / "table.md", text)
  print(text)
  print(f"wrote {workdir}/extractors.npz, results.json, table.md ({res['wall_time_s']:.1f} s)")


if __name__ == "__main__":
  common.run(main, define_flags=_define_flags)

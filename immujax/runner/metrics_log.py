"""Per-step training terms a researcher can watch: TensorBoard events, metrics.jsonl, arrays.

A linear study (``mnist_pairs``, ``house_price``) runs its steps in compiled chunks
(``sweep.run_chunk_checked(..., all_steps=True)`` returns every step's terms, shape
``(T, R, steps)``). After each chunk :class:`MetricsLog` writes, for step ``k`` (the state
after ``k`` updates) and every method, the mean, min and max over that method's runs
(tasks × seeds) of

=================  ====================================================
``dp_loss``        the supervised D_P loss L(D_P, ω, θ)
``r_well``         R_well(H_P) (Eq. 3)
``r_ill``          R_ill(H_H) (Eq. 12)
``log_kappa_hp``   log κ(θᵀK_Pθ)
``log_kappa_hh``   log κ(θᵀK_Hθ)
``eig_residual``   largest residual ‖Sv − λv‖/‖S‖ of the extreme eigenpairs used
=================  ====================================================

into

* ``<workdir>/tensorboard/``: TensorBoard event files (tensorboardX), tags
  ``<method>/<term>/<mean|min|max>``; ``tensorboard --logdir <workdir>``;
* ``<workdir>/metrics.jsonl``: one JSON record per step, ``{"step": k, "<tag>": value}``
  (non-finite values are ``null``);
* ``<workdir>/metrics_runs/steps_<first>-<last>.npz``: the per-run arrays of the chunk, each
  term ``(T, R, steps)`` float32, plus ``step`` and ``methods`` (the method of each run).

Only process 0 writes. A resumed run (from step ``S``) first drops what a killed process
wrote after its last checkpoint: records with ``step > S`` in ``metrics.jsonl``, the chunk
files starting after ``S``, and (``purge_step``) TensorBoard's events from step ``S + 1``.
So every step appears once.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Sequence

import numpy as np

from immujax.runner import outputs

__all__ = [
    "load_runs",
    "MetricsLog",
    "read_jsonl",
]

# Term name in the logs -> field of immunize.Terms.
TERMS = {"dp_loss": "supervised", "r_well": "r_well", "r_ill": "r_ill",
         "log_kappa_hp": "log_kappa_p", "log_kappa_hh": "log_kappa_h",
         "eig_residual": "eig_residual"}
STATS = ("mean", "min", "max")


def _finite_or_none(v: float):
  return float(v) if math.isfinite(v) else None


class MetricsLog:
  """Writes a run's per-step terms (see the module docstring); no-op when not ``enabled``.

  Args:
    workdir: the run's output directory.
    methods: the method of each of the ``R`` runs of a task, in batch order.
    n_tasks: the real tasks (rows beyond it are padding and are dropped).
    enabled: False on every process but process 0.
  """

  def __init__(self, workdir, methods: Sequence[str], *, n_tasks: int, enabled: bool = True):
    self.workdir = pathlib.Path(workdir)
    self.methods = list(methods)
    self.n_tasks = n_tasks
    self.enabled = enabled
    self._writer = None

  @property
  def jsonl_path(self) -> pathlib.Path:
    return self.workdir / "metrics.jsonl"

  def _open(self, start: int) -> None:
    """Opens the writers at the first chunk of this process; truncates beyond ``start``."""
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self.workdir.mkdir(parents=True, exist_ok=True)
    if self.jsonl_path.exists():
      keep = [ln for ln in self.jsonl_path.read_text().splitlines()
              if ln.strip() and json.loads(ln)["step"] <= start]
      outputs.write_text(self.jsonl_path, "".join(ln + "\n" for ln in keep))
    runs_dir = self.workdir / "metrics_runs"
    if runs_dir.is_dir():
      for f in runs_dir.glob("steps_*.npz"):
        if int(f.stem.split("_")[1].split("-")[0]) > start:
          f.unlink()
    # One event file per process of the run, named after its first step, so that a resume
    # within the same second does not reuse (and overwrite) the earlier file's name.
    self._writer = tensorboardX.SummaryWriter(
        str(self.workdir / "tensorboard"), purge_step=start + 1 if start > 0 else None,
        flush_secs=30, filename_suffix=f".from_step_{start:07d}")

  def write(self, start: int, terms) -> None:
    """Writes steps ``start + 1 … start + n`` from ``terms`` (host arrays ``(T, R, n)``)."""
    if not self.enabled:
      return
    if self._writer is None:
      self._open(start)
    arrays = {name: np.asarray(getattr(terms, field), np.float64)[: self.n_tasks]
              for name, field in TERMS.items()}
    n = next(iter(arrays.values())).shape[-1]
    steps = np.arange(start + 1, start + n + 1)
    cols = {m: [i for i, mm in enumerate(self.methods) if mm == m]
            for m in dict.fromkeys(self.methods)}
    records = []
    for j, step in enumerate(steps):
      rec = {"step": int(step)}
      for m, idx in cols.items():
        for name, a in arrays.items():
          v = a[:, idx, j]
          finite = v[np.isfinite(v)]
          vals = ((finite.mean(), finite.min(), finite.max()) if finite.size
                  else (math.nan,) * 3)
          for stat, x in zip(STATS, vals):
            tag = f"{m}/{name}/{stat}"
            rec[tag] = _finite_or_none(x)
            self._writer.add_scalar(tag, float(x), int(step))
        rec[f"{m}/nonfinite_runs"] = int((~np.isfinite(arrays["dp_loss"][:, idx, j])).sum())
      records.append(rec)
    runs_dir = self.workdir / "metrics_runs"
    runs_dir.mkdir(exist_ok=True)
    np.savez_compressed(runs_dir / f"steps_{start + 1:07d}-{start + n:07d}.npz",
                        step=steps, methods=np.array(self.methods),
                        **{k: v.astype(np.float32) for k, v in arrays.items()})
    with open(self.jsonl_path, "a", encoding="utf-8") as f:
      for rec in records:
        f.write(json.dumps(rec, allow_nan=False) + "\n")
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def read_jsonl(path) -> list[dict]:
  """The records of a ``metrics.jsonl``."""
  return [json.loads(ln) for ln in pathlib.Path(path).read_text().splitlines() if ln.strip()]


def load_runs(workdir) -> dict:
  """The per-run arrays of every chunk, concatenated along the step axis (sorted by step)."""
  files = sorted((pathlib.Path(workdir) / "metrics_runs").glob("steps_*.npz"))
  if not files:
    raise FileNotFoundError(f"no metrics_runs/steps_*.npz under {workdir}")
  parts = [dict(np.load(f)) for f in files]
  out = {k: np.concatenate([p[k] for p in parts], axis=-1) for k in TERMS}
  out["step"] = np.concatenate([p["step"] for p in parts])
  out["methods"] = parts[0]["methods"]
  return out

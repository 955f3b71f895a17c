"""Table 2 and the Fig. 2 heat maps from a finished MNIST-pairs sweep (no I/O here).

Orientation follows the paper's Fig. 2: **rows are the pre-training digit P, columns the
harmful digit H** (measured: the per-pair ln RIR of Ours at paper scale has Spearman
ρ = 0.84 against Fig. 2d in this orientation, 0.19 transposed).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from experiments import common

# Table 2 of the paper: mean RIR over the 90 pairs (digest §5.2), and Fig. 2's success counts.
PAPER_TABLE2 = {"r_ill_only": 1.93, "imma": 1.77, "opt_kappa": 69.73, "ours": 70.04}
PAPER_SUCCESS = {"r_ill_only": 0, "imma": 1, "opt_kappa": 58, "ours": 90}
NAMES = {"ours": "Ours", "r_ill_only": "R_ill Only", "imma": "IMMA", "opt_kappa": "Opt κ"}
LAYOUT = ("10x10 lists: row = pre-training digit (D_P), column = harmful digit (D_H), as the "
          "paper's Fig. 2; diagonal null; values are means over seeds")


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
  for name in ("rir", "ratio_h", "ratio_p"):
    out[name] = grid(pairs, getattr(ev, name)[:, cols].mean(axis=1))
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
    lines.append(f"| {NAMES[m]} | {common.fmt_pm(r['mean_rir_per_seed'])} | "
                 f"{common.fmt_pm(r['mean_ln_rir_per_seed'])} | {r['n_success']}/{n} | "
                 f"{PAPER_TABLE2[m]} | {PAPER_SUCCESS[m]}/90 |")
  lines += ["", "Success = ratio (i) > 1 and ratio (ii) ≤ 1 for every seed (Definition 3.1). "
            "± is the standard deviation over seeds. Paper numbers: 28×28 full MNIST; compare "
            "settings before comparing values."]
  return "\n".join(lines) + "\n"


def heatmap_figure(r: dict, title: str):
  """Fig. 2-style heat map: rows P, columns H, each cell shaded by its ln RIR.

  Blue = success, red = failure (Definition 3.1), the intensity the magnitude of ln RIR,
  with a colour bar; the value is printed in each cell.

  Returns:
    A matplotlib figure (the caller saves it).
  """
  plt = common.matplotlib_agg()
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
  cmap = plt.get_cmap("RdBu").copy()
  cmap.set_bad("white")
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

"""One report for any linear extractor: RIR, its limit, attacker slow-downs, held-out accuracy.

The extractor is an ``.npy`` θ of shape ``(D_in, D_hid)`` (or a stack ``(E, D_in, D_hid)``),
or the workdir of ``experiments.linear`` (its ``extractors.npz``), ``house_price`` or
``mnist_pairs``. The data are an ``.npz`` with ``x_p, y_p, x_h, y_h`` and optional
``x_p_test, y_p_test, x_h_test, y_h_test``, or ``"house"`` (the authors' first 200 rows to
train, rows 200–299 held out) or ``"mnist"`` (one digit pair; held out: the MNIST test
split, or the sample images the run did not draw). :func:`run` writes ``report.json``,
``report.md`` (a verdict first, ``evaluation.report_markdown``) and ``report.png``, and
nothing at all if an input is invalid.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Callable, Optional

import ml_collections
import numpy as np

from immujax import evaluation
from immujax import sweep
from immujax.data import fingerprint
from immujax.data import mnist
from immujax.runner import outputs
from immujax.runner import provenance
from immujax.runner import workdir as workdir_lib
from immujax.studies import house_price
from immujax.studies import mnist_pairs
from immujax.studies import tables

__all__ = [
    "check_flags",
    "load_inputs",
    "load_npz",
    "plot_report",
    "run",
]

Echo = Optional[Callable[[str], None]]


# ----------------------------------------------------------------------------- loading


def load_npz(path) -> dict:
  """The arrays of an ``.npz`` as a dict (errors name ``--data``)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"--data={str(path)!r} does not exist; pass an .npz file with "
                            "x_p, y_p, x_h, y_h, or 'house' or 'mnist'.")
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"--data={str(path)!r} is not a readable .npz ({e}); save it with "
                     "np.savez(path, x_p=..., y_p=..., x_h=..., y_h=...).") from e


def house_arrays(data_dir, n_train: int = 200, n_test: int = 100) -> tuple[dict, dict]:
  """The house-price probe data (first ``n_train`` rows of D1/D2 to train, the next
  ``n_test`` held out: the authors' validation rows 200–299) and its data record."""
  if data_dir is None or not pathlib.Path(data_dir).is_dir():
    raise FileNotFoundError(
        f"--data=house needs the house-price data (got {data_dir}); pass "
        "--data_dir=<directory with D1.csv/D2.csv or train.csv>.")
  hp, record = house_price.load(data_dir, n_train)
  s, e = n_train, n_train + n_test
  return {"x_p": hp.x_p, "y_p": hp.y_p, "x_h": hp.x_h, "y_h": hp.y_h,
          "x_p_test": hp.x_p_all[s:e], "y_p_test": hp.y_p_all[s:e],
          "x_h_test": hp.x_h_all[s:e], "y_h_test": hp.y_h_all[s:e]}, record


def mnist_arrays(pair, *, source: str, mnist_dir, pool: int, n_per_digit: int,
                 kind: str = "one_vs_rest", test_dir=None) -> tuple[dict, dict]:
  """One digit pair's probe data, built like ``mnist_pairs`` (seed 0 subsets), and its record.

  The training images come from ``source`` (``"sample"`` or ``"idx"`` in ``mnist_dir``).
  Held-out split: with ``test_dir`` (IDX files), the MNIST test split (t10k), one-vs-rest and
  balanced (``evaluation.one_vs_rest``). Without it, the training images that
  ``digit_subsets`` did not draw — so a sample run with ``n_per_digit = 500`` has no held-out
  part there, and this raises.
  """
  p, h = (int(v) for v in pair)
  images, labels = mnist.load_mnist(source, mnist_dir=mnist_dir)
  images = mnist_pairs.pool_images(images, pool)
  idx = mnist.digit_subset_indices(labels, n_per_digit=n_per_digit, seed=0)
  subsets = images[idx]
  x_p, y_p = mnist.pretraining_task(subsets, p, h, kind=kind)
  x_h, y_h = mnist.harmful_task(subsets, p, h, kind=kind)
  files = mnist.data_files(source, mnist_dir=mnist_dir)
  if test_dir is not None:
    t_images, t_labels = mnist.load_mnist("idx", mnist_dir=test_dir, split="test")
    t_images = mnist_pairs.pool_images(t_images, pool)
    files += mnist.data_files("idx", mnist_dir=test_dir, split="test")
  else:
    rest = np.setdiff1d(np.arange(len(labels)), idx.ravel())
    if rest.size == 0:
      raise ValueError(
          f"the embedded MNIST sample has no held-out images left: the run drew all of them "
          f"(n_per_digit={n_per_digit}); pass --mnist_dir=<MNIST IDX folder> (test split "
          "t10k) or use a run with a smaller n_per_digit.")
    t_images, t_labels = images[rest], labels[rest]
  x_pt, y_pt = evaluation.one_vs_rest(t_images, t_labels, p, h)
  x_ht, y_ht = evaluation.one_vs_rest(t_images, t_labels, h, p)
  arrays = {"x_p": x_p, "y_p": y_p, "x_h": x_h, "y_h": y_h, "x_p_test": x_pt, "y_p_test": y_pt,
            "x_h_test": x_ht, "y_h_test": y_ht,
            # RIR's K_P, K_H: the Grams of digit p's and digit h's images (paper §5.2).
            "k_p": subsets[p].T @ subsets[p], "k_h": subsets[h].T @ subsets[h]}
  record = fingerprint.data_record(f"MNIST pair {p}→{h} ({source}, pool {pool})", files,
                                   list(arrays.values()))
  return arrays, record


def _mnist_workdir_extractors(workdir, pair):
  _, state, index, pairs, mcfg = mnist_pairs.restore_runs(workdir)
  pairs = np.asarray(pairs)
  if pair is None:
    t = 0
  else:
    hits = np.flatnonzero((pairs[:, 0] == pair[0]) & (pairs[:, 1] == pair[1]))
    if hits.size == 0:
      raise ValueError(f"--pair={pair[0]},{pair[1]} is not a pair of {workdir}; choose one of "
                       f"{[tuple(map(int, q)) for q in pairs[:10]]}...")
    t = int(hits[0])
  thetas = np.asarray(state.params.theta)[t]
  return thetas, [f"{m}/{s}" for m, s in index], tuple(int(v) for v in pairs[t]), mcfg


def _front_extractors(path, pair, point):
  """The points ``point`` selects (default: every method's front) of a tradeoff workdir."""
  from immujax.studies import tradeoff  # pylint: disable=g-import-not-at-top
  pts = tradeoff.load_points(path, flag="--extractor")
  idx = tradeoff.select(pts, point or "front", flag="--point")
  info = {"data": pts.data, "points": idx}
  if pts.data == "mnist":
    pairs = sorted({tuple(pts.points[i]["pair"]) for i in range(len(pts.points))})
    want = tuple(pair) if pair is not None else tuple(pts.points[idx[0]]["pair"])
    if want not in pairs:
      raise ValueError(f"--pair={want[0]},{want[1]} is not a pair of {path}; choose one of "
                       f"{pairs[:10]}...")
    idx = [i for i in idx if tuple(pts.points[i]["pair"]) == want]
    if not idx:
      raise ValueError(f"--point={point or 'front'} selects no point of pair {want} in {path}; "
                       "pass --pair of a selected point, or other indices.")
    info.update(pair=want, points=idx,
                mcfg=tradeoff.mnist_config(ml_collections.ConfigDict(pts.result["config"])))
  labels = [f"{pts.points[i]['method']}/s={pts.points[i]['strength']:g}/"
            f"seed={pts.points[i]['seed']}#{i}" for i in idx]
  return pts.theta[idx], labels, info


def load_extractor(path, *, pair=None, point=None):
  """``(thetas (E, D_in, D_hid), labels, info)`` from an .npy or a workdir.

  ``info`` carries what a workdir says about its data: ``{"data": "house" | "mnist" |
  path, ...}``. ``point`` selects points of an ``experiments.tradeoff`` workdir (indices
  into its ``front.json``, ``"front"`` or ``"front:<method>"``; default ``"front"``).
  """
  path = pathlib.Path(path)
  if point is not None and not (path / "front.json").is_file():
    raise ValueError(f"--point={point} selects points of an experiments.tradeoff workdir; "
                     f"--extractor={str(path)!r} is not one (no front.json). Drop --point.")
  if path.is_file():
    if path.suffix != ".npy":
      raise ValueError(f"--extractor={str(path)!r} is a file but not an .npy; save θ with "
                       "np.save('theta.npy', theta) (shape (D_in, D_hid)), or pass a workdir.")
    try:
      theta = np.load(path, allow_pickle=False)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"--extractor={str(path)!r} is not a readable .npy ({e}).") from e
    labels = ["theta"] if theta.ndim == 2 else [f"theta/{i}" for i in range(len(theta))]
    return theta, labels, {}
  if not path.is_dir():
    raise FileNotFoundError(f"--extractor={str(path)!r} does not exist; pass θ.npy or a "
                            "workdir of experiments.linear / house_price / mnist_pairs.")
  if (path / "front.json").is_file():   # an experiments.tradeoff workdir
    return _front_extractors(path, pair, point)
  if (path / "extractors.npz").is_file():
    with np.load(path / "extractors.npz", allow_pickle=False) as z:
      thetas, labels = z["thetas"], [str(l) for l in z["labels"]]
    meta = json.loads((path / "results.json").read_text()) if (
        path / "results.json").is_file() else {}
    return thetas, labels, {"data": meta.get("data")}
  cfg_path = path / "config.json"
  if not cfg_path.is_file() or not (path / "checkpoints").is_dir():
    raise ValueError(f"--extractor={str(path)!r} is neither θ.npy nor a finished workdir (no "
                     "extractors.npz, config.json or checkpoints/); run the binary to the end "
                     "first.")
  cfg = json.loads(cfg_path.read_text()).get("config", {})
  if "loss" in cfg:             # an unfinished experiments.linear workdir
    raise ValueError(f"--extractor={str(path)!r} is an experiments.linear workdir without "
                     "extractors.npz: rerun experiments.linear on it to finish (it resumes).")
  if "n_per_digit" in cfg:      # an experiments.mnist_pairs workdir
    thetas, labels, pair, mcfg = _mnist_workdir_extractors(path, pair)
    return thetas, labels, {"data": "mnist", "pair": pair, "mcfg": mcfg}
  if "n_train" in cfg:          # an experiments.house_price workdir
    ex = house_price.load_workdir(path, flag="--extractor")
    index = [f"{m}/{s}" for m, s in sweep.run_index(tuple(ex.cfg.methods), ex.cfg.seeds)]
    return np.asarray(ex.state.params.theta)[0], index, {"data": "house"}
  raise ValueError(f"--extractor={str(path)!r}: its config.json is not from "
                   "experiments.linear, house_price or mnist_pairs.")


def parse_pair(text):
  """``"p,h"`` as two different digits (None passes through)."""
  if text is None:
    return None
  try:
    p, h = (int(v) for v in str(text).split(","))
  except ValueError:
    raise ValueError(f"--pair={text!r} must be two digits 'p,h', e.g. --pair=3,8.") from None
  if not (0 <= p <= 9 and 0 <= h <= 9 and p != h):
    raise ValueError(f"--pair={text!r} must be two different digits 0..9, e.g. --pair=3,8.")
  return p, h


def check_flags(data: str, *, data_dir=None, mnist_dir=None, pair=None) -> None:
  """Refuses a flag that ``--data`` ignores (no flag is silently ignored)."""
  unused = {"house": [("--mnist_dir", mnist_dir), ("--pair", pair)],
            "mnist": [("--data_dir", data_dir)]}.get(
                data, [("--data_dir", data_dir), ("--mnist_dir", mnist_dir), ("--pair", pair)])
  for name, value in unused:
    if value is not None:
      raise ValueError(f"{name}={value} has no effect with --data={data}; drop it.")


def load_inputs(extractor, data, *, kind=None, data_dir=None, mnist_dir=None, pair=None,
                point=None):
  """Validated ``(ProbeData, thetas, labels, info, data_record)``; raises before any write.

  ``data_dir`` / ``mnist_dir`` are the folders of ``--data=house`` / ``--data=mnist`` (the
  binary resolves their environment defaults).
  """
  pair = parse_pair(pair)
  thetas, labels, info = load_extractor(extractor, pair=pair, point=point)
  if data == "house":
    arrays, record = house_arrays(data_dir)
  elif data == "mnist":
    mcfg = info.get("mcfg")
    if mnist_dir is not None and not pathlib.Path(mnist_dir).is_dir():
      raise FileNotFoundError(f"--mnist_dir={str(mnist_dir)!r} is not a directory; pass the "
                              "MNIST IDX folder.")
    d_in = np.shape(thetas)[-2]
    pool = mcfg.pool if mcfg is not None else {784: 1, 196: 2, 49: 4}.get(d_in)
    if pool is None:
      raise ValueError(f"--extractor has D_in = {d_in}, which is not MNIST at 28×28 (784), "
                       "14×14 (196) or 7×7 (49); pass --data=FILE.npz instead.")
    if mcfg is not None:          # the run's own training data
      source, n_per_digit = mcfg.source, mcfg.n_per_digit
      if source == "idx" and mnist_dir is None:
        raise FileNotFoundError("--extractor was trained on MNIST IDX files; pass "
                                "--mnist_dir=<the MNIST IDX folder>.")
    else:
      source = "idx" if mnist_dir is not None else "sample"
      n_per_digit = 5421 if source == "idx" else 400
    arrays, record = mnist_arrays(
        info.get("pair") or pair or (0, 1), source=source,
        mnist_dir=None if mnist_dir is None else str(mnist_dir), pool=pool,
        n_per_digit=n_per_digit, kind=mcfg.task if mcfg is not None else "one_vs_rest",
        test_dir=None if mnist_dir is None else str(mnist_dir))
  else:
    arrays = load_npz(data)
    record = fingerprint.data_record(f"features {data}", [data], list(arrays.values()))
  k_p, k_h = arrays.pop("k_p", None), arrays.pop("k_h", None)
  probe_data = evaluation.validate_data(arrays, kind=kind, name=f"--data={data}", k_p=k_p,
                                        k_h=k_h)
  thetas = evaluation.validate_extractors(thetas, probe_data.d_in, name="--extractor")
  return probe_data, thetas, labels, info, record


# ----------------------------------------------------------------------------- outputs


def plot_report(report: dict, path) -> None:
  """``report.png``: per attacker, norm ratio (top) and held-out score (bottom) on D_H.

  Every extractor appears, grouped by method (the label before ``/``): the median over the
  method's extractors (seeds) as a line, their range as a band; θ = I in black. The norm
  ratio's axis stops at 1e-3 × the smallest ε (below it every curve has converged).
  """
  plt = outputs.pyplot()
  side = "D_H"
  names = [n for n in report["test_attackers"] if n in report["norm_ratio"].get(side, {})]
  rows = 2 if report["test_accuracy"].get(side) else 1
  floor = 1e-3 * min(report["eps"])
  fig, axes = plt.subplots(rows, max(len(names), 1), squeeze=False,
                           figsize=(3.8 * max(len(names), 1), 3.2 * rows))
  for a in axes.flat:
    a.set_visible(False)
  for j, name in enumerate(names):
    blocks = [("norm_ratio", "‖w_t − w*‖² / ‖w_0 − w*‖²")]
    if rows == 2 and name in report["test_accuracy"][side]:
      blocks.append(("test_accuracy", report["test_accuracy"][side][name]["metric"]
                     + " (held out)"))
    for i, (key, ylabel) in enumerate(blocks):
      c = report[key][side][name]
      ax = axes[i, j]
      ax.set_visible(True)
      x = np.maximum(np.asarray(c["steps"], float), 0.5)
      fix = (lambda v: np.maximum(np.asarray(v, float), floor)) if key == "norm_ratio" else (
          lambda v: np.asarray(v, float))
      ax.plot(x, fix(c["identity"]), color="black", lw=1.5, label="θ = I")
      groups: dict[str, list] = {}
      for label, v in c["extractor"].items():
        groups.setdefault(label.split("/")[0], []).append(fix(v))
      for method, curves in groups.items():
        curves = np.asarray(curves, float)
        line, = ax.plot(x, np.nanmedian(curves, 0), lw=1.2,
                        label=f"{tables.name(method)} ({len(curves)})")
        if len(curves) > 1:
          ax.fill_between(x, np.nanmin(curves, 0), np.nanmax(curves, 0), alpha=0.2,
                          color=line.get_color(), lw=0)
      ax.set_xscale("log")
      if key == "norm_ratio":
        ax.set_yscale("log")
        ax.set_ylim(floor / 2, 2.0)
      ax.set_title(f"{name} ({side})", fontsize=9)
      ax.set_xlabel("attacker steps")
      ax.set_ylabel(ylabel, fontsize=8)
      ax.legend(fontsize=6)
  fig.tight_layout()
  outputs.save_figure(path, fig)


def run(cfg, workdir, *, extractor: str, data: str, kind=None, data_dir=None, mnist_dir=None,
        pair=None, settings: Callable[[int], dict], move_aside: bool = False,
        echo: Echo = None, point=None) -> dict:
  """Loads and validates the inputs, evaluates, writes ``report.{json,md,png}``.

  Args:
    cfg: the attack settings (``experiments/configs/attack_suite.py``).
    settings: ``d_in -> evaluation.evaluate`` keyword arguments from ``cfg``.
  """
  say = echo or (lambda _: None)
  t0 = time.perf_counter()
  probe, thetas, labels, info, record = load_inputs(
      extractor, data, kind=kind, data_dir=data_dir, mnist_dir=mnist_dir, pair=pair,
      point=point)
  kwargs = settings(probe.d_in)
  prov = provenance.record(record)
  workdir_lib.claim_and_tell(workdir, cfg.to_dict(), provenance=prov, label="evaluate",
                             say=say, resumable=False, move_aside=move_aside)
  workdir = pathlib.Path(workdir)
  say(f"[evaluate] {len(labels)} extractor(s) {thetas.shape[1:]} on {data} ({probe.kind}); "
      f"caps {kwargs['caps']}")
  report = evaluation.evaluate(probe, thetas, labels, on_progress=lambda s: say(
      f"[evaluate] done {s} ({time.perf_counter() - t0:.0f} s)"), **kwargs)
  report["source"] = {"extractor": extractor, "data": data,
                      **({"pair": info["pair"]} if "pair" in info else {}),
                      **({"points": info["points"]} if "points" in info else {})}
  report["config"] = cfg.to_dict()
  report["provenance"] = prov
  report["wall_time_s"] = time.perf_counter() - t0
  text = evaluation.report_markdown(report, title=f"Evaluation of {extractor} on {data}")
  text += "".join(f"\n- warning: {n}" for n in provenance.notes(prov))
  outputs.write_text(workdir / "report.md", text)
  plot_report(report, workdir / "report.png")
  outputs.write_json(workdir / "report.json", report)
  say(text)
  say(f"wrote {workdir}/report.json, report.md, report.png ({report['wall_time_s']:.1f} s)")
  return report

r"""One report for any linear extractor: RIR, its limit, attacker slow-downs, held-out accuracy.

  python -m experiments.evaluate --extractor=theta.npy --data=data.npz --workdir=/tmp/report
  python -m experiments.evaluate --extractor=/tmp/linear --data=data.npz --workdir=/tmp/r2
  python -m experiments.evaluate --extractor=/tmp/house --data=house \
      --data_dir=../shared/data/house_price --workdir=/tmp/r3
  python -m experiments.evaluate --extractor=/tmp/mnist --data=mnist --pair=3,8 \
      --mnist_dir=../shared/data/mnist --workdir=/tmp/r4

``--extractor`` is an ``.npy`` θ of shape ``(D_in, D_hid)`` (or a stack ``(E, D_in, D_hid)``),
or the workdir of ``experiments.linear`` (its ``extractors.npz``), ``experiments.house_price``
or ``experiments.mnist_pairs``. ``--data`` is an ``.npz`` with ``x_p, y_p, x_h, y_h`` and
optional ``x_p_test, y_p_test, x_h_test, y_h_test``, or ``house`` (the authors' first 200 rows
to train, rows 200–299 held out) or ``mnist`` (one digit pair; held out: the MNIST test
split, or the sample images the run did not draw). The attack settings come from
``--config`` (``experiments/configs/attack_suite.py``).

Writes ``report.json``, ``report.md`` and ``report.png`` into ``--workdir``, and nothing at
all if any input is invalid.
"""

from __future__ import annotations

import json
import pathlib
import time

from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from experiments import common
from immujax import evaluation

_FLAGS = {}


def _define_flags():
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", str(pathlib.Path(__file__).parent / "configs" / "attack_suite.py"),
      "Attack settings (attackers, ε, caps, recording grid).")
  _FLAGS["extractor"] = flags.DEFINE_string(
      "extractor", None, "θ.npy (D_in, D_hid) or (E, D_in, D_hid), or a workdir of "
      "experiments.linear / house_price / mnist_pairs.", required=True)
  _FLAGS["data"] = flags.DEFINE_string(
      "data", None, "FILE.npz (x_p, y_p, x_h, y_h[, *_test]), 'house' or 'mnist'.",
      required=True)
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
  _FLAGS["kind"] = flags.DEFINE_enum(
      "kind", "auto", ["auto", "classification", "regression"],
      "Probe task: classification ({0,1} targets, accuracy) or regression (R²); auto infers.")
  _FLAGS["data_dir"] = flags.DEFINE_string(
      "data_dir", None, "--data=house: directory with D1.csv/D2.csv or train.csv (default "
      "$IMMUJAX_HOUSE_DIR, $IMMUJAX_DATA_DIR/house_price).")
  _FLAGS["mnist_dir"] = flags.DEFINE_string(
      "mnist_dir", None, "--data=mnist: the MNIST IDX folder (default $IMMUJAX_MNIST_DIR, "
      "$IMMUJAX_DATA_DIR/mnist, else the embedded sample).")
  _FLAGS["pair"] = flags.DEFINE_string(
      "pair", None, "--data=mnist: the digit pair 'p,h' (default: the workdir's first pair, "
      "or 0,1).")


# ----------------------------------------------------------------------------- loading


def load_npz(path) -> dict:
  """The arrays of an ``.npz`` as a dict (ValueError naming ``--data`` if unreadable)."""
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


def house_arrays(data_dir, n_train: int = 200, n_test: int = 100) -> dict:
  """The house-price probe data: the first ``n_train`` rows of D1/D2 to train, the next
  ``n_test`` (the authors' validation rows 200–299) held out."""
  from immujax.data import house_prices  # pylint: disable=g-import-not-at-top
  data_dir = common.data_dir_from(data_dir, "IMMUJAX_HOUSE_DIR", "house_price")
  if data_dir is None or not pathlib.Path(data_dir).is_dir():
    raise FileNotFoundError(
        f"--data=house needs the house-price data (got {data_dir}); pass "
        "--data_dir=<directory with D1.csv/D2.csv or train.csv>.")
  hp = house_prices.load_house_prices(str(data_dir), n_train=n_train)
  s, e = n_train, n_train + n_test
  return {"x_p": hp.x_p, "y_p": hp.y_p, "x_h": hp.x_h, "y_h": hp.y_h,
          "x_p_test": hp.x_p_all[s:e], "y_p_test": hp.y_p_all[s:e],
          "x_h_test": hp.x_h_all[s:e], "y_h_test": hp.y_h_all[s:e]}


def _pool(images, pool: int):
  if pool <= 1:
    return images
  side = 28 // pool
  return images.reshape(-1, side, pool, side, pool).mean((2, 4)).reshape(len(images), -1)


def mnist_arrays(pair, *, source: str, mnist_dir, pool: int, n_per_digit: int,
                 kind: str = "one_vs_rest", test_dir=None) -> dict:
  """One digit pair's probe data, built like ``experiments.mnist_pairs`` (seed 0 subsets).

  The training images come from ``source`` (``"sample"`` or ``"idx"`` in ``mnist_dir``).
  Held-out split: with ``test_dir`` (IDX files), the MNIST test split (t10k), one-vs-rest and
  balanced (``evaluation.one_vs_rest``). Without it, the training images that
  ``digit_subsets`` did not draw — so a sample run with ``n_per_digit = 500`` has no held-out
  part there, and this raises.
  """
  from immujax import immunize  # pylint: disable=g-import-not-at-top
  from immujax.data import mnist  # pylint: disable=g-import-not-at-top
  p, h = (int(v) for v in pair)
  images, labels = mnist.load_mnist(source, mnist_dir=mnist_dir)
  images = _pool(images, pool)
  idx = mnist.digit_subset_indices(labels, n_per_digit=n_per_digit, seed=0)
  subsets = images[idx]
  x_p, y_p = mnist.pretraining_task(subsets, p, h, kind=kind)
  x_h, y_h = mnist.harmful_task(subsets, p, h, kind=kind)
  del immunize
  if test_dir is not None:
    t_images, t_labels = mnist.load_mnist("idx", mnist_dir=test_dir, split="test")
    t_images = _pool(t_images, pool)
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
  return {"x_p": x_p, "y_p": y_p, "x_h": x_h, "y_h": y_h, "x_p_test": x_pt, "y_p_test": y_pt,
          "x_h_test": x_ht, "y_h_test": y_ht,
          # RIR's K_P, K_H: the Grams of digit p's and digit h's images (paper §5.2).
          "k_p": subsets[p].T @ subsets[p], "k_h": subsets[h].T @ subsets[h]}


def _mnist_workdir_extractors(workdir, pair):
  from experiments import mnist_pairs  # pylint: disable=g-import-not-at-top
  tasks, state, index, pairs, mcfg = mnist_pairs.restore_runs(workdir)
  del tasks
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
  labels = [f"{m}/{s}" for m, s in index]
  return thetas, labels, tuple(int(v) for v in pairs[t]), mcfg


def load_extractor(path, *, data: str, pair=None, mnist_dir=None):
  """``(thetas (E, D_in, D_hid), labels, info)`` from an .npy or a workdir.

  ``info`` carries what a workdir says about its data: ``{"data": "house" | "mnist" |
  path, ...}``.
  """
  path = pathlib.Path(path)
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
  if "n_per_digit" in cfg:      # an experiments.mnist_pairs workdir
    thetas, labels, pair, mcfg = _mnist_workdir_extractors(path, pair)
    return thetas, labels, {"data": "mnist", "pair": pair, "mcfg": mcfg}
  if "n_train" in cfg:          # an experiments.house_price workdir
    from experiments import attack_suite  # pylint: disable=g-import-not-at-top
    ds = attack_suite.load_house_workdir(path, data_dir=None, steps=1)
    labels = [f"{m}/{s}" for m, s in ds.index]
    return ds.thetas[0], labels, {"data": "house", "rir": ds.rir[0]}
  raise ValueError(f"--extractor={str(path)!r}: its config.json is not from "
                   "experiments.linear, house_price or mnist_pairs.")


def _parse_pair(text):
  if text is None:
    return None
  try:
    p, h = (int(v) for v in str(text).split(","))
  except ValueError:
    raise ValueError(f"--pair={text!r} must be two digits 'p,h', e.g. --pair=3,8.") from None
  if not (0 <= p <= 9 and 0 <= h <= 9 and p != h):
    raise ValueError(f"--pair={text!r} must be two different digits 0..9, e.g. --pair=3,8.")
  return p, h


def load_inputs(extractor, data, *, kind=None, data_dir=None, mnist_dir=None, pair=None):
  """Validated ``(ProbeData, thetas, labels, info)``; raises before anything is written."""
  pair = _parse_pair(pair)
  thetas, labels, info = load_extractor(extractor, data=data, pair=pair, mnist_dir=mnist_dir)
  if data == "house":
    arrays = house_arrays(data_dir)
  elif data == "mnist":
    mcfg = info.get("mcfg")
    mnist_dir = common.data_dir_from(mnist_dir, "IMMUJAX_MNIST_DIR", "mnist")
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
    arrays = mnist_arrays(info.get("pair") or pair or (0, 1), source=source,
                          mnist_dir=None if mnist_dir is None else str(mnist_dir), pool=pool,
                          n_per_digit=n_per_digit,
                          kind=mcfg.task if mcfg is not None else "one_vs_rest",
                          test_dir=None if mnist_dir is None else str(mnist_dir))
  else:
    arrays = load_npz(data)
  k_p, k_h = arrays.pop("k_p", None), arrays.pop("k_h", None)
  probe_data = evaluation.validate_data(arrays, kind=kind, name=f"--data={data}", k_p=k_p,
                                        k_h=k_h)
  thetas = evaluation.validate_extractors(thetas, probe_data.d_in, name="--extractor")
  return probe_data, thetas, labels, info


# ----------------------------------------------------------------------------- outputs


def settings(cfg: ml_collections.ConfigDict, d_in: int) -> dict:
  """``evaluation.evaluate`` keyword arguments from the attack-suite config."""
  from experiments.configs import attack_suite as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.evaluation_kwargs(cfg, d_in)


def plot_report(report: dict, path) -> None:
  """``report.png``: norm ratio (top) and held-out score (bottom) per attacker, D_H."""
  plt = common.matplotlib_agg()
  side = "D_H"
  names = [n for n in report["test_attackers"] if n in report["norm_ratio"].get(side, {})]
  rows = 2 if report["test_accuracy"].get(side) else 1
  fig, axes = plt.subplots(rows, max(len(names), 1), squeeze=False,
                           figsize=(3.8 * max(len(names), 1), 3.2 * rows))
  for j, name in enumerate(names):
    blocks = [("norm_ratio", "‖w_t − w*‖² / ‖w_0 − w*‖²")]
    if rows == 2:
      blocks.append(("test_accuracy", report["test_accuracy"][side][name]["metric"]
                     + " (held out)"))
    for i, (key, ylabel) in enumerate(blocks):
      c = report[key][side][name]
      ax = axes[i, j]
      x = np.maximum(np.asarray(c["steps"], float), 0.5)
      plot = ax.loglog if key == "norm_ratio" else ax.semilogx
      ys = lambda v: np.maximum(np.asarray(v, float), 1e-300) if key == "norm_ratio" else v
      plot(x, ys(c["identity"]), color="black", lw=1.5, label="θ = I")
      for label, v in list(c["extractor"].items())[:8]:
        plot(x, ys(v), lw=1.0, label=label)
      ax.set_title(f"{name} ({side})", fontsize=9)
      ax.set_xlabel("attacker steps")
      ax.set_ylabel(ylabel, fontsize=8)
      ax.legend(fontsize=6)
  fig.tight_layout()
  common.save_figure(path, fig)


def main(argv):
  del argv
  common.enable_float64()
  cfg = _FLAGS["config"].value
  workdir = common.validate_workdir(_FLAGS["workdir"].value)
  kind = None if _FLAGS["kind"].value == "auto" else _FLAGS["kind"].value
  t0 = time.perf_counter()
  data, thetas, labels, info = load_inputs(
      _FLAGS["extractor"].value, _FLAGS["data"].value, kind=kind,
      data_dir=_FLAGS["data_dir"].value, mnist_dir=_FLAGS["mnist_dir"].value,
      pair=_FLAGS["pair"].value)
  kwargs = settings(cfg, data.d_in)
  print(f"[evaluate] {len(labels)} extractor(s) {thetas.shape[1:]} on {_FLAGS['data'].value}"
        f" ({data.kind}); caps {kwargs['caps']}", flush=True)
  report = evaluation.evaluate(data, thetas, labels, on_progress=lambda s: print(
      f"[evaluate] done {s} ({time.perf_counter() - t0:.0f} s)", flush=True), **kwargs)
  report["source"] = {"extractor": _FLAGS["extractor"].value, "data": _FLAGS["data"].value,
                      **({"pair": info["pair"]} if "pair" in info else {})}
  report["config"] = cfg.to_dict()
  report["wall_time_s"] = time.perf_counter() - t0
  text = evaluation.report_markdown(report, title=f"Evaluation of {_FLAGS['extractor'].value} "
                                    f"on {_FLAGS['data'].value}")
  common.write_json(workdir / "report.json", report)
  common.write_text(workdir / "report.md", text)
  plot_report(report, workdir / "report.png")
  print(text)
  print(f"wrote {workdir}/report.json, report.md, report.png ({report['wall_time_s']:.1f} s)")


if __name__ == "__main__":
  common.run(main, define_flags=_define_flags)

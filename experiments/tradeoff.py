r"""Trade-off fronts (issue 19): RIR against D_P utility loss, every method's strength swept.

  python -m experiments.tradeoff --data=house --workdir=runs/fronts_house \
      [--data_dir=../shared/data/house_price] [--config=experiments/configs/tradeoff.py:quick]
  python -m experiments.tradeoff --data=mnist --workdir=runs/fronts_mnist
  python -m experiments.tradeoff --data=mnist --workdir=runs/fronts_paper_ours \
      --config=experiments/configs/tradeoff.py:paper_ours --mnist_dir=../shared/data/mnist

Each method's strength (a multiple of its balanced regularizer weights, 1 = the default
operating point) is an array hyperparameter of ONE vmapped job: every (method, strength,
seed[, pair]) is a run, plus one unimmunized run per seed[, pair]. Writes ``front.json``,
``fronts.npz`` (θ of every point and the K_P, K_H it was evaluated with), ``fronts.png`` and
``table.md`` into ``--workdir``; checkpoints after every chunk and resumes when rerun (on the
same data: a changed data file is refused, see ``--move_aside``). Take any point to every
attacker with ``experiments.evaluate --extractor=DIR --point=front --data=house``. The logic
lives in :mod:`immujax.studies.tradeoff`.
"""

import pathlib

from experiments.configs import tradeoff as config_lib
from immujax.runner import cli
from immujax.runner import devices
from immujax.runner import loop
from immujax.runner import validate
from immujax.runner import workdir


def define(d: cli.Definer) -> None:
  d.config(str(pathlib.Path(__file__).parent / "configs" / "tradeoff.py"))
  d.workdir()
  d.enum("data", None, ["house", "mnist"], "Which study's fronts: house prices (Table 1's "
         "task) or MNIST digit pairs (Table 2's main job).")
  d.house_dir(also="; --data=house")
  d.string("cache_dir", None, "--data=house without a data directory: download OpenML "
           "house_prices (id 42165) into this folder and read it from there.")
  d.mnist_dir("--data=mnist with --config.mnist_source=idx: folder of the four MNIST IDX "
              "files")
  d.max_chunks()
  d.integer("devices", None, "Use only the first N devices (on a CPU: create N devices).")


def main(f) -> None:
  from immujax.studies import tradeoff  # pylint: disable=g-import-not-at-top
  clock = loop.WallClock()   # the whole run's wall time, across resumes
  layout = devices.configure(f.devices)   # CPU devices: before JAX starts its backend
  del layout
  # Validate every flag and config field, and load the data, BEFORE touching the workdir.
  cfg = f.config
  config_lib.validate(cfg, cli.overrides(f))
  workdir.validate(f.workdir)
  validate.positive_int(f.max_chunks, "--max_chunks", allow_none=True)
  validate.positive_int(f.devices, "--devices", allow_none=True)
  if f.data is None:
    raise ValueError("pass --data=house or --data=mnist (which study's fronts to compute).")
  if f.data == "house":
    if f.mnist_dir:
      raise ValueError("--mnist_dir has no effect with --data=house; drop it.")
    if f.data_dir and f.cache_dir:
      raise ValueError("--cache_dir has no effect with --data_dir (the data are read from "
                       "--data_dir); pass only one of them.")
    data_dir = None if f.cache_dir else cli.data_dir(f.data_dir, "IMMUJAX_HOUSE_DIR",
                                                     "house_price")
    if data_dir is None and f.cache_dir is None:
      raise ValueError("no house-price data: pass --data_dir (the folder with D1.csv and "
                       "D2.csv or Kaggle's train.csv), set $IMMUJAX_HOUSE_DIR or "
                       "$IMMUJAX_DATA_DIR, or pass --cache_dir to download OpenML 42165.")
    workdir.validate_data_dir(data_dir, "--data_dir")
    setting = tradeoff.house_setting(cfg, data_dir, f.cache_dir)
  else:
    if f.data_dir or f.cache_dir:
      raise ValueError("--data_dir/--cache_dir are house-price folders; with --data=mnist "
                       "pass --mnist_dir (or nothing, for the embedded sample).")
    mnist_dir = None
    if cfg.mnist_source == "idx":
      mnist_dir = cli.data_dir(f.mnist_dir, "IMMUJAX_MNIST_DIR", "mnist")
      if mnist_dir is None:
        raise ValueError("--config.mnist_source=idx needs --mnist_dir (or $IMMUJAX_MNIST_DIR "
                         "or $IMMUJAX_DATA_DIR) with the four MNIST IDX files.")
      workdir.validate_data_dir(mnist_dir, "--mnist_dir")
    elif f.mnist_dir:
      raise ValueError("--mnist_dir has no effect with --config.mnist_source=sample (the "
                       "embedded sample); pass --config.mnist_source=idx to read it.")
    setting = tradeoff.mnist_setting(cfg, mnist_dir)
  tradeoff.run(cfg, f.workdir, setting, max_chunks=f.max_chunks, move_aside=f.move_aside,
               echo=cli.echo, clock=clock, defaults=cli.defaults(f))


if __name__ == "__main__":
  cli.run(define, main, doc=__doc__)

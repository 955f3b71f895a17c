r"""House prices (Table 1, Fig. 1): Algorithm 1 and the baselines over N seeds in one job.

  python -m experiments.house_price --workdir=runs/house \
      --data_dir=../shared/data/house_price [--config=experiments/configs/house_price.py:quick]

Writes ``results.json``, ``table.md`` and ``norm_ratio.png`` into ``--workdir``; checkpoints
after every chunk and resumes when rerun (on the same data: a changed data file is refused,
see ``--move_aside``). Per-step terms go to ``metrics.jsonl``, ``tensorboard/`` and
``metrics_runs/``. Runs as several processes with ``--coordinator_address``,
``--num_processes`` and ``--process_id``. The logic lives in :mod:`immujax.studies.house_price`.
"""

import pathlib

from experiments.configs import house_price as config_lib
from immujax.runner import cli
from immujax.runner import distributed
from immujax.runner import loop
from immujax.runner import validate
from immujax.runner import workdir


def define(d: cli.Definer) -> None:
  d.config(str(pathlib.Path(__file__).parent / "configs" / "house_price.py"))
  d.workdir()
  d.house_dir()
  d.string("cache_dir", None, "Without a data directory: download OpenML house_prices (id "
           "42165) into this folder and read it from there.")
  d.max_chunks()
  d.distributed()


def main(f) -> None:
  from immujax.studies import house_price  # pylint: disable=g-import-not-at-top
  clock = loop.WallClock()   # the whole run's wall time, across resumes
  distributed.initialize(cli.launch(f))   # several processes: before any JAX computation
  # Validate every flag and config field, and load the data, BEFORE touching the workdir.
  cfg = f.config
  config_lib.validate(cfg, cli.overrides(f))
  workdir.validate(f.workdir)
  validate.positive_int(f.max_chunks, "--max_chunks", allow_none=True)
  if f.data_dir and f.cache_dir:
    raise ValueError("--cache_dir has no effect with --data_dir (the data are read from "
                     "--data_dir); pass only one of them.")
  data_dir = None if f.cache_dir else cli.data_dir(f.data_dir, "IMMUJAX_HOUSE_DIR",
                                                   "house_price")
  if data_dir is None and f.cache_dir is None:
    raise ValueError("no house-price data: pass --data_dir (the folder with D1.csv and D2.csv "
                     "or Kaggle's train.csv), set $IMMUJAX_HOUSE_DIR or $IMMUJAX_DATA_DIR, or "
                     "pass --cache_dir to download OpenML dataset 42165.")
  workdir.validate_data_dir(data_dir, "--data_dir")
  house_price.run(cfg, f.workdir, data_dir=data_dir, cache_dir=f.cache_dir,
                  max_chunks=f.max_chunks, move_aside=f.move_aside, echo=cli.echo, clock=clock,
                  defaults=cli.defaults(f))


if __name__ == "__main__":
  cli.run(define, main, doc=__doc__)

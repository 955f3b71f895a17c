r"""All ordered MNIST digit pairs × methods × seeds as one sharded, vmapped job (Table 2, Fig. 2).

  python -m experiments.mnist_pairs --workdir=runs/mnist            # embedded sample, offline
  python -m experiments.mnist_pairs --workdir=runs/mnist_paper \
      --config=experiments/configs/mnist_pairs.py:paper --mnist_dir=../shared/data/mnist

Writes ``results.json``, ``table.md`` and ``heatmap_<method>.png`` into ``--workdir``;
checkpoints after every chunk and resumes when rerun. ``--mnist_dir`` reads the MNIST IDX
files (it switches the default config from the embedded sample to them, and says so). The
pairs are sharded over every device, and over several processes with
``--coordinator_address``, ``--num_processes`` and ``--process_id``. The logic lives in
:mod:`immujax.studies.mnist_pairs`.
"""

import os
import pathlib

from experiments.configs import mnist_pairs as config_lib
from immujax.runner import cli
from immujax.runner import devices
from immujax.runner import distributed
from immujax.runner import loop
from immujax.runner import validate
from immujax.runner import workdir


def define(d: cli.Definer) -> None:
  d.config(str(pathlib.Path(__file__).parent / "configs" / "mnist_pairs.py"))
  d.workdir()
  d.string("mnist_dir", None, "Folder of the four MNIST IDX files: reads them (source idx) "
           "instead of the embedded sample. Default for --config.source=idx: "
           "$IMMUJAX_MNIST_DIR or $IMMUJAX_DATA_DIR/mnist.")
  d.string("tfds_data_dir", None, "tfds data dir (--config.source=tfds only).")
  d.max_chunks()
  d.integer("devices", None, "Use only the first N devices (on a CPU: create N devices, at "
            "most one per core). Default on a CPU, one process: one device per core for "
            "images of at most 196 pixels (the main job), else one device.")
  d.distributed()


def main(f) -> None:
  from immujax.studies import mnist_pairs  # pylint: disable=g-import-not-at-top
  clock = loop.WallClock()   # the whole run's wall time, across resumes
  cfg = f.config
  launch = cli.launch(f)
  # CPU devices before JAX starts its backend: one per core for small images, one process.
  default, why = (None, "") if distributed.is_multi_process(launch) else (
      mnist_pairs.default_cpu_devices(cfg, os.cpu_count() or 1))
  layout = devices.configure(f.devices, default=default, why=why)
  distributed.initialize(launch)   # several processes: before any JAX computation
  if distributed.is_main_process():
    cli.echo(f"[mnist] {devices.describe(layout, f.devices)}")
  # Validate every flag and config field, and load the data, BEFORE touching the workdir.
  config_lib.validate(cfg, cli.overrides(f))
  workdir.validate(f.workdir)
  validate.positive_int(f.max_chunks, "--max_chunks", allow_none=True)
  validate.positive_int(f.devices, "--devices", allow_none=True)
  env = cli.data_dir(None, "IMMUJAX_MNIST_DIR", "mnist")
  cfg.source, mnist_dir, note = mnist_pairs.resolve_source(
      cfg.source, mnist_dir_flag=f.mnist_dir, env_mnist_dir=env and str(env),
      tfds_data_dir=f.tfds_data_dir)
  if note and distributed.is_main_process():
    cli.echo(f"[mnist] {note}")
  workdir.validate_data_dir(mnist_dir, "--mnist_dir")
  if cfg.source == "tfds":
    workdir.validate_data_dir(f.tfds_data_dir, "--tfds_data_dir")
  mnist_pairs.run(cfg, f.workdir, mnist_dir=mnist_dir, tfds_data_dir=f.tfds_data_dir,
                  devices=f.devices, max_chunks=f.max_chunks, move_aside=f.move_aside,
                  layout=layout, echo=cli.echo, clock=clock, defaults=cli.defaults(f))


if __name__ == "__main__":
  cli.run(define, main, doc=__doc__)

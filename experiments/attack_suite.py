r"""Attack suite (issues 6, 11): every linear-probing attacker against the immunized extractors.

  python -m experiments.attack_suite --house_workdir=runs/house \
      --data_dir=../shared/data/house_price --workdir=runs/attacks
  python -m experiments.attack_suite --mnist_workdir=runs/mnist --mnist_dir=../shared/data/mnist \
      --workdir=runs/attacks_mnist [--max_pairs=10]
  python -m experiments.attack_suite --recompute --data_dir=../shared/data/house_price \
      --workdir=runs/attacks_quick --config=experiments/configs/attack_suite.py:quick

Every extractor of the run(s) and θ = I are attacked on D_H and D_P by every attacker with
adaptive budgets; the held-out splits score the probes under fine-tuning. Writes
``results.json``, ``table.md`` (the verdict first) and ``attack_curves.png`` into
``--workdir`` (nothing if an input is invalid). The logic lives in
:mod:`immujax.studies.attack_suite`.
"""

import pathlib

from experiments.configs import attack_suite as config_lib
from experiments.configs import house_price as house_config
from immujax.runner import cli
from immujax.runner import validate
from immujax.runner import workdir


def define(d: cli.Definer) -> None:
  d.config(str(pathlib.Path(__file__).parent / "configs" / "attack_suite.py"))
  d.workdir()
  d.string("house_workdir", None, "A finished experiments.house_price workdir whose "
           "extractors are attacked.")
  d.string("mnist_workdir", None, "A finished experiments.mnist_pairs workdir whose "
           "extractors are attacked.")
  d.boolean("recompute", False, "Train house-price extractors in-process (the 'quick' "
            "variant of experiments/configs/house_price.py) instead of --house_workdir.")
  d.house_dir("House-price data. ", ", else the one recorded in --house_workdir")
  d.mnist_dir("MNIST IDX folder whose test split (t10k) is the held-out data",
              "; without it, the sample images the run did not draw, if any")
  d.boolean("rebuild", False, "Only recompute the fine-tuning blocks, table.md and the plot "
            "from --workdir/results.json (no attack is rerun).")
  d.integer("max_pairs", None, "MNIST: attack only the first N digit pairs (default: "
            "config.max_pairs).")


def _check_flags(f) -> None:
  """No flag is silently ignored: each must matter for the extractors asked for."""
  house = f.recompute or f.house_workdir
  unused = [("--data_dir", f.data_dir, not house), ("--mnist_dir", f.mnist_dir,
            not f.mnist_workdir), ("--max_pairs", f.max_pairs, not f.mnist_workdir)]
  if f.rebuild:
    unused += [(n, f[n[2:]].value, True) for n in ("--house_workdir", "--mnist_workdir")]
    unused += [("--recompute", f.recompute or None, True)]
  for name, value, idle in unused:
    if value is not None and idle:
      raise ValueError(f"{name}={value} has no effect here ("
                       + ("--rebuild reruns no attack" if f.rebuild else
                          "no extractors of that dataset are attacked") + "); drop it.")


def main(f) -> None:
  from immujax.studies import attack_suite  # pylint: disable=g-import-not-at-top
  cfg = f.config
  workdir.validate(f.workdir)
  _check_flags(f)
  if f.rebuild:
    cli.echo(attack_suite.rebuild_workdir(f.workdir, cfg.curve_seed))
    return
  recompute = None
  if f.recompute:
    recompute = house_config.get_config("quick")
    house_config.validate(recompute)
  validate.positive_int(f.max_pairs, "--max_pairs", allow_none=True)
  config_lib.evaluation_kwargs(cfg, 1)      # validate the settings before any work

  def check(d_ins) -> None:   # after loading: which caps the data use
    validate.no_ignored_overrides(cli.overrides(f), config_lib.ignored(cfg, d_ins, suite=True))

  attack_suite.run(
      cfg, f.workdir, settings=lambda d: config_lib.evaluation_kwargs(cfg, d), check=check,
      house_workdir=f.house_workdir,
      mnist_workdir=f.mnist_workdir, recompute_config=recompute,
      data_dir=cli.data_dir(f.data_dir, "IMMUJAX_HOUSE_DIR", "house_price"),
      mnist_dir=cli.data_dir(f.mnist_dir, "IMMUJAX_MNIST_DIR", "mnist"),
      max_pairs=f.max_pairs, move_aside=f.move_aside, echo=cli.echo)


if __name__ == "__main__":
  cli.run(define, main, doc=__doc__)

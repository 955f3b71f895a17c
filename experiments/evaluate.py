r"""One report for any linear extractor: RIR, its limit, attacker slow-downs, held-out accuracy.

  python -m experiments.evaluate --extractor=theta.npy --data=data.npz --workdir=runs/report
  python -m experiments.evaluate --extractor=runs/linear --data=data.npz --workdir=runs/r2
  python -m experiments.evaluate --extractor=runs/house --data=house \
      --data_dir=../shared/data/house_price --workdir=runs/r3
  python -m experiments.evaluate --extractor=runs/mnist --data=mnist --pair=3,8 \
      --mnist_dir=../shared/data/mnist --workdir=runs/r4
  python -m experiments.evaluate --extractor=runs/fronts_house --point=front:ours --data=house \
      --workdir=runs/r5

``--extractor`` is an ``.npy`` θ of shape ``(D_in, D_hid)`` (or a stack ``(E, D_in, D_hid)``),
or the workdir of ``experiments.linear``, ``house_price``, ``mnist_pairs`` or ``tradeoff``
(``--point`` picks its points). ``--data`` is an
``.npz`` with ``x_p, y_p, x_h, y_h`` and optional ``*_test`` arrays, or ``house`` or
``mnist``. The attack settings come from ``--config`` (``experiments/configs/attack_suite.py``).
Writes ``report.json``, ``report.md`` (the verdict first) and ``report.png`` into
``--workdir``, and nothing at all if any input is invalid. The logic lives in
:mod:`immujax.studies.evaluate`.
"""

import pathlib

from experiments.configs import attack_suite as config_lib
from immujax.runner import cli
from immujax.runner import validate
from immujax.runner import workdir


def define(d: cli.Definer) -> None:
  d.config(str(pathlib.Path(__file__).parent / "configs" / "attack_suite.py"),
           "Attack settings (attackers, ε, caps, recording grid).")
  d.string("extractor", None, "θ.npy (D_in, D_hid) or (E, D_in, D_hid), or a workdir of "
           "experiments.linear / house_price / mnist_pairs.")
  d.string("data", None, "FILE.npz (x_p, y_p, x_h, y_h[, *_test]), 'house' or 'mnist'.")
  d.workdir()
  d.enum("kind", "auto", ["auto", "classification", "regression"],
         "Probe task: classification ({0,1} targets, accuracy) or regression (R²); auto infers.")
  d.house_dir("--data=house: ")
  d.mnist_dir("--data=mnist: the MNIST IDX folder", ", else the embedded sample")
  d.string("point", None, "An experiments.tradeoff --extractor: the points to evaluate, "
           "indices into its front.json (e.g. 0,17), 'front' (default: every method's "
           "non-dominated points) or 'front:<method>'.")
  d.string("pair", None, "--data=mnist: the digit pair 'p,h' (default: the workdir's first "
           "pair, or 0,1).")


def main(f) -> None:
  from immujax.studies import evaluate  # pylint: disable=g-import-not-at-top
  cfg = f.config
  workdir.validate(f.workdir)
  for name in ("extractor", "data"):
    if not f[name].value:
      raise ValueError(f"--{name} is required; see --help.")
  evaluate.check_flags(f.data, data_dir=f.data_dir, mnist_dir=f.mnist_dir, pair=f.pair)
  data_dir = cli.data_dir(f.data_dir, "IMMUJAX_HOUSE_DIR", "house_price")
  mnist_dir = cli.data_dir(f.mnist_dir, "IMMUJAX_MNIST_DIR", "mnist")

  def settings(d_in: int) -> dict:
    validate.no_ignored_overrides(cli.overrides(f), config_lib.ignored(cfg, [d_in],
                                                                       suite=False))
    return config_lib.evaluation_kwargs(cfg, d_in)

  evaluate.run(cfg, f.workdir, extractor=f.extractor, data=f.data,
               kind=None if f.kind == "auto" else f.kind, data_dir=data_dir,
               mnist_dir=mnist_dir, pair=f.pair, settings=settings, point=f.point,
               move_aside=f.move_aside, echo=cli.echo)


if __name__ == "__main__":
  cli.run(define, main, doc=__doc__)

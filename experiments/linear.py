r"""Immunize your own linear features: Algorithm 1 and every baseline on an ``.npz``.

  python -m experiments.linear --data=features.npz --workdir=runs/linear \
      [--config=experiments/configs/linear.py:quick]
  python -m experiments.evaluate --extractor=runs/linear --data=features.npz \
      --workdir=runs/linear_report

``features.npz`` holds ``x_p (N_P, D_in), y_p (N_P,)`` (the task to keep) and
``x_h (N_H, D_in), y_h (N_H,)`` (the task to make hard to probe), e.g. embeddings of any
model, and optionally held-out ``*_test`` arrays (used by ``experiments.evaluate``).
Checkpoints after every chunk and resumes when rerun; writes ``extractors.npz``,
``results.json`` and ``table.md``, and nothing if an input is invalid. The logic lives in
:mod:`immujax.studies.linear`.
"""

import pathlib

from experiments.configs import linear as config_lib
from immujax.runner import cli
from immujax.runner import loop
from immujax.runner import validate
from immujax.runner import workdir


def define(d: cli.Definer) -> None:
  d.config(str(pathlib.Path(__file__).parent / "configs" / "linear.py"))
  d.string("data", None, "FILE.npz with x_p, y_p, x_h, y_h (optional *_test).")
  d.workdir()
  d.max_chunks()


def main(f) -> None:
  from immujax import evaluation  # pylint: disable=g-import-not-at-top
  from immujax.studies import evaluate  # pylint: disable=g-import-not-at-top
  from immujax.studies import linear  # pylint: disable=g-import-not-at-top
  clock = loop.WallClock()
  cfg = f.config
  config_lib.validate(cfg, cli.overrides(f))
  workdir.validate(f.workdir)
  validate.positive_int(f.max_chunks, "--max_chunks", allow_none=True)
  if not f.data:
    raise ValueError("--data is empty; pass FILE.npz with x_p, y_p, x_h, y_h.")
  data = evaluation.validate_data(evaluate.load_npz(f.data), name=f"--data={f.data}")
  linear.run(cfg, data, f.workdir, data_path=f.data, move_aside=f.move_aside,
             max_chunks=f.max_chunks, echo=cli.echo, clock=clock, defaults=cli.defaults(f))


if __name__ == "__main__":
  cli.run(define, main, doc=__doc__)

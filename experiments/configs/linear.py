"""Immunize your own linear features (``experiments.linear``): Algorithm 1 and the baselines.

The house-price recipe (experiments/configs/house_price.py, paper Sec. 6.1) applied to any
``.npz`` with ``x_p, y_p, x_h, y_h`` — e.g. embeddings of any model: full-batch gradient
descent, η = 0.005, λ's balanced at θ0 (BUILD_NOTES, "Algorithm 1 as implemented").

Usage: ``--config=experiments/configs/linear.py`` (or ``:quick``); override e.g.
``--config.steps=3000 --config.methods=ours,opt_kappa``.
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.methods = ("ours", "r_ill_only", "opt_kappa", "imma")  # methods to run (comma-separated)
  c.seeds = 3                # seeds per method
  c.learning_rate = 0.005    # η of gradient descent (paper, Sec. 6.1)
  c.steps = 1000             # full-batch steps
  c.chunk_steps = 100        # steps per compiled chunk (checkpoint + progress between)
  c.step_scale = 0.2         # R_well step as a fraction of its stability limit (balancing)
  c.clip_factor = 1.0        # cap each run's update norm at this × its first step's norm
  c.imma_steps = 5           # imma_unrolled's line-search attacker steps (imma takes 1)
  c.init = "orthogonal"      # Haar θ0: RIR(θ0) = 1 exactly
  c.precondition_baselines = False  # K⁻¹-precondition the baselines' steps too
  c.loss = "auto"            # "mse" | "bce" | "auto" (bce when every target is 0 or 1)
  c.kappa = "pinv"           # κ of the evaluation: "pinv" (Eq. 1) or "authors"
  if variant == "quick":
    c.methods = ("ours", "opt_kappa")
    c.seeds = 2
    c.steps = 20
    c.chunk_steps = 10
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '' or 'quick'")
  return c


def ignored(c: ml_collections.ConfigDict) -> dict:
  """Fields this configuration does not use (setting them on the command line is an error)."""
  from immujax.runner import validate as v  # pylint: disable=g-import-not-at-top
  return v.run_fields_ignored(c)


def validate(c: ml_collections.ConfigDict, overrides: dict | None = None) -> None:
  """Every field, before any work (one-line errors naming the field)."""
  from immujax import immunize  # pylint: disable=g-import-not-at-top
  from immujax.runner import validate as v  # pylint: disable=g-import-not-at-top
  f = "--config."
  v.unknown_fields(c, get_config())
  c.methods = v.subset(c.methods, f + "methods", immunize.METHODS)
  v.positive_int(c.seeds, f + "seeds")
  v.steps(c.steps, c.chunk_steps, f)
  v.positive_float(c.learning_rate, f + "learning_rate")
  v.positive_float(c.step_scale, f + "step_scale")
  v.run_fields(c, f)
  v.boolean(c.precondition_baselines, f + "precondition_baselines")
  v.choice(c.loss, f + "loss", ("auto", "mse", "bce"))
  v.choice(c.kappa, f + "kappa", ("pinv", "authors"))
  v.no_ignored_overrides(overrides or {}, ignored(c))

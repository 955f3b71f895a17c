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
  c.methods = ("ours", "r_ill_only", "opt_kappa", "imma")
  c.seeds = 3
  c.learning_rate = 0.005    # paper, Sec. 6.1
  c.steps = 1000             # full-batch steps
  c.chunk_steps = 100        # compiled steps between progress lines
  c.step_scale = 0.2         # as house prices (balancing, immunize.balanced_weights)
  c.clip_factor = 1.0
  c.imma_steps = 5
  c.init = "orthogonal"      # Haar θ0: RIR(θ0) = 1 exactly
  c.precondition_baselines = False
  c.loss = "auto"            # "mse" | "bce" | "auto" (bce when every target is 0 or 1)
  c.kappa = "pinv"
  if variant == "quick":
    c.methods = ("ours", "opt_kappa")
    c.seeds = 2
    c.steps = 20
    c.chunk_steps = 10
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '' or 'quick'")
  return c

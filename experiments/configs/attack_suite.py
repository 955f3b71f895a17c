"""Attack suite (issue 6): every linear-probing attacker against the immunized extractors.

The paper's guarantee is about gradient descent (Sec. 4, Fig. 1: GD with exact line search),
whose steps to a tolerance grow like κ. This config sets the attackers' step budgets and the
tolerances at which "steps to ε" is read off (ε = 1e-2 and 1e-4, issue 6).

Usage: ``--config=experiments/configs/attack_suite.py`` or ``...attack_suite.py:quick``;
override e.g. ``--config.house_steps=20000 --config.attackers=gd_constant,cg``.
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # "all" = every attacker in immujax.attacks.ATTACKERS; else a comma-separated subset.
  c.attackers = "all"
  c.eps = (1e-2, 1e-4)                       # issue 6
  c.metrics = ("norm_ratio", "excess_loss")  # Eq. 16, and (L(w_t) − L*)/(L(w_0) − L*)
  # Step budgets. A run that has not reached ε after the budget gets the sentinel budget+1,
  # so its slow-down is a lower bound (shown as "≥" in table.md).
  c.house_steps = 5000
  c.mnist_steps = 2000
  c.max_pairs = 10           # MNIST: attack the first pairs only (--max_pairs overrides)
  # --recompute trains house-price extractors in-process with this variant of
  # experiments/configs/house_price.py ("quick": 2 seeds × 40 steps; "" : 5 seeds × 1000).
  c.recompute_variant = "quick"
  # Overrides of that house_price config (e.g. {"seeds": 1, "methods": ("ours",)}).
  c.recompute_overrides = ml_collections.ConfigDict()
  # Attacker hyperparameters other than their tuned defaults (immujax.attacks), by name.
  c.attacker_kwargs = ml_collections.ConfigDict({"adam": {"learning_rate": 1e-2}})
  c.curve_seed = 0           # attack_curves.png shows this seed of every method
  if variant == "quick":
    c.house_steps = 30
    c.mnist_steps = 30
    c.max_pairs = 2
    c.recompute_overrides = ml_collections.ConfigDict(
        {"methods": ("ours",), "seeds": 2, "steps": 20, "chunk_steps": 20})
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '' or 'quick'")
  return c

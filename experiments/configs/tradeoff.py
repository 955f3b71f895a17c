"""Trade-off fronts (issue 19): each method's strength swept as array hyperparameters.

A method's *strength* multiplies its regularizer weights relative to the balanced weights
of the Table 1 / Table 2 jobs (strength 1 = today's default operating point). Which weights
it multiplies is the method's *knob*:

  all      every regularizer weight (λ_P and λ_H together, i.e. the step scale ×
           strength): the whole immunization term against the D_P loss.
  harmful  the harmful-side weights only (λ_H; ``harmful_scale`` = strength).

Every (method, strength, seed[, pair]) is one run of ONE vmapped job; the final θ of each
is a point (D_P loss above the unimmunized optimum, RIR) of the method's cloud, and the
non-dominated points are its front. Both knobs are exact rescalings of
``immunize.balanced_weights`` (its weights are linear in ``step_scale`` and
``harmful_scale``), so the balancing runs once per seed.

Variants (``--config=experiments/configs/tradeoff.py:<variant>``):
  (default)   house: Table 1's schedule, 4 methods × 13 strengths × 5 seeds;
              mnist: Table 2's main job (embedded sample, 14×14, 90 pairs), 4 methods ×
              8 strengths.
  quick       tiny schedule for tests and CI (house: 2 seeds × 2–3 strengths × 10 steps;
              mnist: 3 pairs at 7×7).
  paper_ours  MNIST at paper scale (full MNIST IDX files, 28×28, 5,421 images per digit,
              90 pairs), Ours only, 8 strengths.
"""

import ml_collections

# Strength grids (multipliers of the default balanced weights; 1 = the default point).
_HOUSE = dict(
    ours=(0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.5),
    r_ill_only=(1e-3, 3e-3, 0.01, 0.03, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
    opt_kappa=(1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 4.0),
    imma=(1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 4.0),
)
_MNIST = dict(
    ours=(0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.5, 1.8),
    r_ill_only=(0.01, 0.03, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0),
    opt_kappa=(1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 2.0),
    imma=(1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 2.0),
)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The house-price and MNIST settings in one config; ``--data`` picks the one used."""
  c = ml_collections.ConfigDict()
  c.methods = ("ours", "r_ill_only", "opt_kappa", "imma")  # methods to run (comma-separated)
  c.seeds = 5                # seeds per (method, strength) — house; MNIST uses mnist_seeds
  c.mnist_seeds = 1          # seeds per (pair, method, strength) on MNIST
  # Which weights a method's strength multiplies: "all" (every regularizer weight, i.e. the
  # step scale) or "harmful" (the harmful-side weights, i.e. harmful_scale).
  c.knobs = ml_collections.ConfigDict(dict(
      ours="all",           # Ours: λ_P and λ_H together (step scale × strength, < 1/η σ_1)
      r_ill_only="all",     # R_ill Only: its one weight
      opt_kappa="all",      # Opt κ: both κ terms together (their balance kept)
      imma="all",           # IMMA: its one weight (−L_H at the warm-started head)
      opt_kappa_log="all",  # Opt κ (log form): both κ terms together
      opt_kappa_loglog="all",  # Opt κ (double-log form): both κ terms together
      imma_unrolled="all"))  # IMMA (unrolled): its one weight
  c.house_strengths = ml_collections.ConfigDict(dict(
      ours=_HOUSE["ours"],              # Ours' strengths on house prices
      r_ill_only=_HOUSE["r_ill_only"],  # R_ill Only's strengths on house prices
      opt_kappa=_HOUSE["opt_kappa"],    # Opt κ's strengths on house prices
      imma=_HOUSE["imma"]))             # IMMA's strengths on house prices
  c.mnist_strengths = ml_collections.ConfigDict(dict(
      ours=_MNIST["ours"],              # Ours' strengths on MNIST
      r_ill_only=_MNIST["r_ill_only"],  # R_ill Only's strengths on MNIST
      opt_kappa=_MNIST["opt_kappa"],    # Opt κ's strengths on MNIST
      imma=_MNIST["imma"]))             # IMMA's strengths on MNIST
  # Shared schedule fields (house values; MNIST ones below override on --data=mnist).
  c.n_train = 200            # house: training rows of D1 and D2
  c.n_test = 100             # house: held-out rows after them (the held-out D_P score)
  c.learning_rate = 0.005    # η of gradient descent (paper, Sec. 6.1 and 6.2)
  c.steps = 1000             # house: full-batch GD steps (as Table 1's job)
  c.chunk_steps = 100        # house: steps between checkpoints / progress lines
  c.step_scale = 0.2         # house: default R_well step as a fraction of its limit
  c.clip_factor = 1.0        # cap each run's update norm at this × its first step's norm
  c.imma_steps = 5           # imma_unrolled's line-search attacker steps (imma takes 1)
  c.init = "orthogonal"      # θ0: Haar orthogonal (RIR(θ0) = 1 exactly)
  c.precondition_baselines = False  # K⁻¹-precondition the baselines' steps too
  c.kappa = "pinv"           # κ of the evaluation: "pinv" (Eq. 1) or "authors"
  # MNIST (Table 2's main job unless set otherwise).
  c.mnist_source = "sample"  # "sample" (embedded, offline) | "idx" (--mnist_dir)
  c.n_per_digit = 500        # MNIST images per digit
  c.pool = 2                 # MNIST average-pool factor (2 → 14×14, D_in = 196)
  c.pairs = ()               # MNIST (p, h) pairs; () = all 90 ordered pairs
  c.mnist_steps = 30         # MNIST full-batch steps (paper: 30 epochs)
  c.mnist_chunk_steps = 10   # MNIST steps between checkpoints / progress lines
  c.mnist_step_scale = 0.5   # MNIST default R_well step fraction (Table 2's main job)
  c.task_batch = 10          # MNIST: pairs held at once (0 = all: 8× the main job's memory)
  if variant == "quick":
    c.seeds = 2
    c.steps = 10
    c.chunk_steps = 5
    c.house_strengths = ml_collections.ConfigDict(dict(
        ours=(0.1, 1.0, 2.0), r_ill_only=(0.1, 1.0), opt_kappa=(0.01, 1.0), imma=(0.01, 1.0)))
    c.mnist_strengths = ml_collections.ConfigDict(dict(
        ours=(0.1, 1.0), r_ill_only=(0.1, 1.0), opt_kappa=(0.01, 1.0), imma=(0.01, 1.0)))
    c.pairs = ((0, 1), (3, 8), (7, 2))
    c.pool = 4
    c.n_per_digit = 60
    c.mnist_steps = 4
    c.mnist_chunk_steps = 2
  elif variant == "paper_ours":
    c.methods = ("ours",)
    c.mnist_source = "idx"
    c.pool = 1
    c.n_per_digit = 5421
    c.mnist_step_scale = 0.9   # the paper-scale MNIST default (mnist_pairs.py:paper)
    c.task_batch = 10
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '', 'quick' or 'paper_ours'")
  return c


def ignored(c: ml_collections.ConfigDict) -> dict:
  """Fields this configuration does not use (setting them on the command line is an error)."""
  from immujax.runner import validate as v  # pylint: disable=g-import-not-at-top
  return v.run_fields_ignored(c)


def validate(c: ml_collections.ConfigDict, overrides: dict | None = None) -> None:
  """Checks every field (flag names in the messages); raises ValueError before any work.

  Normalizes ``methods`` (``--config.methods=ours,imma`` → ``("ours", "imma")``) and every
  strength grid (a comma-separated string → a tuple of floats).
  """
  from immujax import immunize  # pylint: disable=g-import-not-at-top
  from immujax.runner import validate as v  # pylint: disable=g-import-not-at-top
  f = "--config."
  v.unknown_fields(c, get_config())
  c.methods = v.subset(c.methods, f + "methods", immunize.METHODS)
  v.positive_int(c.seeds, f + "seeds")
  v.positive_int(c.mnist_seeds, f + "mnist_seeds")
  for m in c.methods:
    v.choice(c.knobs.get(m), f"{f}knobs.{m}", ("all", "harmful"))
    for grid in ("house_strengths", "mnist_strengths"):
      values = c[grid].get(m)
      if values is None:
        raise ValueError(f"{f}{grid}.{m} is not set: give the strengths of method {m!r} "
                         f"(e.g. {f}{grid}.{m}=0.1,1,2).")
      if isinstance(values, str):
        values = tuple(float(s) for s in values.split(",") if s.strip())
      values = tuple(float(s) for s in values)
      if not values or not all(s > 0 and s == s and s != float("inf") for s in values):
        raise ValueError(f"{f}{grid}.{m}={values}: strengths must be positive finite "
                         "multipliers of the default weights, at least one.")
      c[grid][m] = values
  v.positive_int(c.n_train, f + "n_train")
  v.positive_int(c.n_test, f + "n_test")
  v.positive_float(c.learning_rate, f + "learning_rate")
  v.steps(c.steps, c.chunk_steps, f)
  v.steps(c.mnist_steps, c.mnist_chunk_steps, f + "mnist_")
  v.positive_float(c.step_scale, f + "step_scale")
  v.positive_float(c.mnist_step_scale, f + "mnist_step_scale")
  v.run_fields(c, f)
  v.boolean(c.precondition_baselines, f + "precondition_baselines")
  v.choice(c.kappa, f + "kappa", ("pinv", "authors"))
  v.choice(c.mnist_source, f + "mnist_source", ("sample", "idx"))
  v.positive_int(c.n_per_digit, f + "n_per_digit")
  v.choice(c.pool, f + "pool", (1, 2, 4))
  v.no_ignored_overrides(overrides or {}, ignored(c))

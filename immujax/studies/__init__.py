"""The experiments' logic, importable and tested: one module per study.

============================  ================================================================
:mod:`.mnist_pairs`           MNIST digit pairs (Table 2, Fig. 2): tasks, the run, its workdir
:mod:`.house_price`           house prices (Table 1, Fig. 1): the run, its workdir
:mod:`.linear`                Algorithm 1 and the baselines on your own features (``.npz``)
:mod:`.evaluate`              one report for any extractor: inputs, report, plots
:mod:`.attack_suite`          every attacker against the extractors of a workdir
:mod:`.deep_nets`             deep nets (Table 3): the CPU stand-in and the paper-scale run
:mod:`.tables`                shared formatting: method names, mean ± std
============================  ================================================================

Each study's ``run(...)`` is handed the config, the paths and an ``echo`` function for its
progress lines (None: silent); it never reads flags or environment variables. The binaries
in ``experiments/`` are the thin command-line edge (``immujax.runner.cli``).
"""

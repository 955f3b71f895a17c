"""Old import path (README "Watching a run"): see :mod:`immujax.runner.metrics_log`."""

from immujax.runner.metrics_log import STATS, TERMS, MetricsLog, load_runs, read_jsonl  # noqa: F401

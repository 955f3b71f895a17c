"""Old import path of the chunked driver: see :mod:`immujax.runner.loop`."""

from immujax.runner.loop import Progress  # noqa: F401
from immujax.runner.loop import WallClock  # noqa: F401
from immujax.runner.loop import run_chunked  # noqa: F401

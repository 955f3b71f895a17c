"""Old import path of the versioned checkpoints: see :mod:`immujax.runner.checkpoints`."""

from immujax.runner.checkpoints import Checkpointer  # noqa: F401
from immujax.runner.checkpoints import LayoutError  # noqa: F401
from immujax.runner.checkpoints import STATE_VERSION  # noqa: F401

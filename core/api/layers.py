"""Meta-learning layers: batch norm with per-step statistics and a Sequential that folds conv-BN-pool blocks."""

from metalab.core.engine.layers import *  # noqa: F401,F403
from metalab.core.engine.layers import __all__  # noqa: F401

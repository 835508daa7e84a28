"""The base class of algorithm implementations (imports Keras: import it from ``algorithm.py``, never at registration)."""

from metalab.core.engine.algorithm_base import *  # noqa: F401,F403
from metalab.core.engine.algorithm_base import __all__  # noqa: F401

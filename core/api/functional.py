"""The functional seam: call a Keras model with explicit weights, take gradients, map over tasks.

Works on the TensorFlow and JAX backends alike; see :mod:`metalab.core.engine.functional` for the details.
"""

from metalab.core.engine.functional import *  # noqa: F401,F403
from metalab.core.engine.functional import __all__  # noqa: F401

"""Episodic helpers: build a model for a task, losses and metrics over task batches, prototypes, adaptation."""

from metalab.core.engine.episodic import *  # noqa: F401,F403
from metalab.core.engine.episodic import __all__  # noqa: F401

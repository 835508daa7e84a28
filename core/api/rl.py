"""Reinforcement-learning helpers for environment plugins and algorithms (since API 1.8).

:class:`Rollouts` runs episodes of an :class:`~metalab.api.EnvironmentTaskFamily`'s tasks with a batched policy and
returns :class:`Trajectories`; :func:`linear_baseline_advantages` and :func:`discounted_returns` turn their rewards
into what a policy-gradient step needs. Numpy only.
"""

from __future__ import annotations

from metalab.core.engine.rollouts import Rollouts, Trajectories, discounted_returns, linear_baseline_advantages

__all__ = ["Rollouts", "Trajectories", "discounted_returns", "linear_baseline_advantages"]

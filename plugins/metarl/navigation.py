"""The MAML paper's 2D navigation task family (Finn, Abbeel and Levine 2017, section 5.3), with no extra dependency.

A point agent starts at the origin and must move to a goal drawn uniformly from the unit square
``[-0.5, 0.5]^2``. It observes its position; an action is a velocity command, clipped to ``[-0.1, 0.1]`` per
coordinate. The reward is minus the distance to the goal (the paper's released code, ``point_env_randgoal``; the
text says "negative squared distance", which ``reward="squared_distance"`` gives). An episode ends within 0.01 of
the goal or after 100 steps.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np


class Navigation2DEnv(gymnasium.Env):
    """One 2D-navigation task: reach ``goal`` from the origin."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, goal: Any, *, max_step: float = 0.1, reward: str = "distance", horizon: int = 100):
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = gymnasium.spaces.Box(-max_step, max_step, shape=(2,), dtype=np.float32)
        self.max_step, self.reward_kind, self.horizon = float(max_step), reward, int(horizon)
        self.set_goal(goal)
        self._position = np.zeros(2)
        self._steps = 0

    def set_goal(self, goal: Any) -> None:
        self.goal = np.asarray(goal, dtype=np.float64).reshape(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._position = np.zeros(2)
        self._steps = 0
        return self._position.astype(np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        move = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -self.max_step, self.max_step)
        self._position = self._position + move
        self._steps += 1
        distance = float(np.linalg.norm(self._position - self.goal))
        reward = -distance if self.reward_kind == "distance" else -distance**2
        terminated = distance < 0.01
        truncated = self._steps >= self.horizon
        return self._position.astype(np.float32), reward, terminated, truncated, {"distance": distance}


class Navigation2DFamily:
    """The family of 2D-navigation tasks; a task is its goal ``(x, y)``.

    Goals of every split are drawn from the same square (the tasks are a continuum; the splits are separate
    draws from the run's seed, so the test goals are not the training goals).
    """

    kind = "environment"
    input_shape = (2,)
    action_kind = "continuous"
    action_dim = 2

    def __init__(self, *, goal_range: float = 0.5, horizon: int = 100, max_step: float = 0.1,
                 reward: str = "distance"):
        self.goal_range, self.horizon, self.max_step, self.reward = float(goal_range), int(horizon), \
            float(max_step), reward
        self.info = {"source": "Finn, Abbeel and Levine 2017, section 5.3 (2D navigation)",
                     "goals": f"uniform in [-{goal_range}, {goal_range}]^2", "horizon": self.horizon,
                     "reward": "minus the distance to the goal" if reward == "distance"
                     else "minus the squared distance to the goal"}

    def sample_tasks(self, split: str, n: int, rng: np.random.Generator) -> list[tuple[float, float]]:
        goals = rng.uniform(-self.goal_range, self.goal_range, size=(int(n), 2))
        return [(float(x), float(y)) for x, y in goals]

    def make_env(self, task: Any) -> Navigation2DEnv:
        return Navigation2DEnv(task, max_step=self.max_step, reward=self.reward, horizon=self.horizon)

    def set_task(self, env: Navigation2DEnv, task: Any) -> None:
        env.set_goal(task)

    def describe_task(self, task: Any) -> str:
        x, y = task
        return f"goal ({x:+.2f}, {y:+.2f})"

    def plot_xy(self, task: Any, observations: np.ndarray) -> tuple[tuple[float, float], np.ndarray]:
        """The goal and the path: the observations are the positions."""
        return (float(task[0]), float(task[1])), np.asarray(observations, dtype=np.float64).reshape(-1, 2)

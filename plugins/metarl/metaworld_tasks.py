"""Meta-World's ML1 benchmark as an environment task family (Yu et al. 2019): one robot-arm environment, many goals.

ML1 draws 50 training goals and 50 held-out goals of one environment (e.g. ``reach-v3``) from a seed; the goal is
hidden from the observation, so a policy finds it from the rewards. The training split is ML1's training tasks; the
held-out tasks are split in half, the first half validation and the second test. The ``metaworld`` package is
optional: only the factory imports it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .optional_specs import MetaWorldML1Params, import_optional

__all__ = ["MetaWorldML1Family", "make_metaworld_ml1"]


class MetaWorldML1Family:
    """The tasks of one ML1 benchmark; a task is ``(split, index)``, the index into that split's goals.

    Args:
        benchmark: A ``metaworld.ML1``.
        env_name: Its environment's name.
        horizon: The most steps of one episode, at most the environment's ``max_path_length``.
    """

    kind = "environment"
    action_kind = "continuous"

    def __init__(self, benchmark: Any, env_name: str, *, horizon: int = 500, seed: int = 0):
        self.env_name, self.benchmark = env_name, benchmark
        self._env_class = benchmark.train_classes[env_name]
        held_out = list(benchmark.test_tasks)
        half = len(held_out) // 2
        self._tasks = {"train": list(benchmark.train_tasks), "val": held_out[:half], "test": held_out[half:]}
        probe = self._env_class()
        self.input_shape = tuple(int(d) for d in probe.observation_space.shape)
        self.action_dim = int(probe.action_space.shape[0])
        self.max_path_length = int(probe.max_path_length)
        probe.close()
        self.horizon = min(int(horizon), self.max_path_length)
        self.info = {"source": "Yu et al. 2019, Meta-World (ML1)", "environment": env_name,
                     "tasks": f"ML1 goals of seed {seed}: {len(self._tasks['train'])} train, "
                              f"{len(self._tasks['val'])} val, {len(self._tasks['test'])} test (hidden goals)",
                     "horizon": self.horizon, "reward": "Meta-World's dense reward of the environment"}

    def sample_tasks(self, split: str, n: int, rng: np.random.Generator) -> list[tuple[str, int]]:
        """``n`` goals of ``split``, all different while ``n`` is at most the split's goals (then each repeats)."""
        pool = len(self._tasks[split])
        order: list[int] = []
        while len(order) < int(n):
            order.extend(int(i) for i in rng.permutation(pool))
        return [(split, i) for i in order[:int(n)]]

    def ml1_task(self, task: Any) -> Any:
        """The ``metaworld.Task`` of ``task``."""
        split, index = task
        return self._tasks[split][int(index)]

    def make_env(self, task: Any) -> Any:
        env = self._env_class()
        env.max_path_length = self.horizon  # Meta-World truncates its episodes at max_path_length
        env.set_task(self.ml1_task(task))
        return env

    def set_task(self, env: Any, task: Any) -> None:
        env.set_task(self.ml1_task(task))  # takes effect at the next reset, which core always makes

    def describe_task(self, task: Any) -> str:
        split, index = task
        return f"{self.env_name} {split} goal {int(index)}"


def make_metaworld_ml1(params: MetaWorldML1Params | dict | None = None, context: Any = None) -> MetaWorldML1Family:
    """Builds the ML1 family of ``params.env_name`` (nothing is read: ``context`` is unused).

    Raises:
        ImportError: The optional package ``metaworld`` (or its ``mujoco``) is not installed.
        ValueError: The installed Meta-World has no such ML1 environment.
    """
    _, metaworld = import_optional(("mujoco", "metaworld"), "metalab.metaworld_ml1", "metaworld")
    if not isinstance(params, MetaWorldML1Params):
        params = MetaWorldML1Params.model_validate(params or {})
    names = list(metaworld.ML1.ENV_NAMES)
    if params.env_name not in names:
        raise ValueError(f"The installed Meta-World {getattr(metaworld, '__version__', '')} has no ML1 environment "
                         f"{params.env_name!r}; expected one of {names}. Received: env_name={params.env_name!r}")
    benchmark = metaworld.ML1(params.env_name, seed=params.task_seed)
    return MetaWorldML1Family(benchmark, params.env_name, horizon=params.horizon, seed=params.task_seed)

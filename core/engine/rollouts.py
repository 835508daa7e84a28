"""Environment tasks (meta-reinforcement learning): running episodes, the training stream and the fixed test tasks.

An environment task's data depends on the policy acting in it, so there are no stored episodes: the sampler draws
tasks and asks the algorithm to :meth:`gather` its step's data through :class:`Rollouts`, which steps the family's
Gymnasium environments in lock-step with one batched policy call per time step. Evaluation adapts to fixed test
tasks (seed :data:`~metalab.core.engine.fixed_tasks.EVAL_SEED`) and scores the average return after each
adaptation step. Numpy only: no Keras here, the algorithm's policy does its own maths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from metalab.core.contract.specs import SPLITS, TaskBatch
from metalab.core.engine.sampling import _StatefulSampler

__all__ = ["Trajectories", "Rollouts", "EnvironmentSampler", "fixed_environment_tasks", "FixedTasks",
           "adaptation_curves", "trajectory_paths", "linear_baseline_advantages", "discounted_returns"]

_SALT = {"train": 11, "val": 12, "test": 13}


@dataclass
class Trajectories:
    """The episodes of a batch of tasks, padded to the horizon.

    Attributes:
        observations: ``float32 [T, E, H, *obs]``: what the policy saw at each step.
        actions: ``float32 [T, E, H, A]`` (continuous) or ``int32 [T, E, H]`` (discrete).
        rewards: ``float32 [T, E, H]``.
        mask: ``float32 [T, E, H]``: 1 for the steps the episode took, 0 after it ended.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    mask: np.ndarray

    def returns(self) -> np.ndarray:
        """The mean undiscounted episode return of each task, ``float64 [T]``."""
        return (self.rewards * self.mask).sum(axis=-1).mean(axis=-1).astype(np.float64)


class Rollouts:
    """Runs episodes of an :class:`~metalab.api.EnvironmentTaskFamily`'s tasks with a batched policy.

    Environments are kept between calls and pointed at new tasks with the family's optional ``set_task`` (MuJoCo
    environments take milliseconds to build); without it each episode gets a new environment. Every reset takes a
    seed drawn from ``rng``, so a run's episodes follow its seed.

    Args:
        family: The environment task family.
        rng: The stream of the resets' seeds and of the policy's sampling noise (:attr:`rng`).
    """

    def __init__(self, family: Any, rng: np.random.Generator):
        self.family = family
        self.rng = rng
        self._pool: list[Any] = []
        self.episodes_run = 0

    def _envs(self, tasks: list[Any], episodes: int) -> list[Any]:
        set_task = getattr(self.family, "set_task", None)
        wanted = [task for task in tasks for _ in range(episodes)]
        if not callable(set_task):
            return [self.family.make_env(task) for task in wanted]
        while len(self._pool) < len(wanted):
            self._pool.append(self.family.make_env(wanted[len(self._pool)]))
        envs = self._pool[:len(wanted)]
        for env, task in zip(envs, wanted):
            set_task(env, task)
        return envs

    def run(self, tasks: list[Any], policy: Callable[[np.ndarray], np.ndarray], episodes: int) -> Trajectories:
        """Runs ``episodes`` episodes of each task, all in lock-step.

        Args:
            tasks: ``T`` tasks from the family's ``sample_tasks``.
            policy: ``policy(observations float32 [T, E, *obs]) -> actions [T, E, A]`` (or ``[T, E]`` discrete
                action indices); it samples its own noise, from :attr:`rng` to follow the run's seed.
            episodes: ``E``, episodes per task.

        Returns:
            The :class:`Trajectories`, padded to the family's horizon.

        Raises:
            ValueError: ``episodes`` is not a positive integer, or the policy's actions have the wrong shape.
        """
        if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
            raise ValueError(f"Rollouts.run: episodes must be a positive integer. Received: episodes={episodes!r}")
        family = self.family
        num_tasks, horizon = len(tasks), int(family.horizon)
        envs = self._envs(list(tasks), episodes)
        obs_shape = tuple(family.input_shape)
        discrete = family.action_kind == "discrete"
        act_shape = () if discrete else (int(family.action_dim),)
        observations = np.zeros((num_tasks, episodes, horizon, *obs_shape), np.float32)
        actions = np.zeros((num_tasks, episodes, horizon, *act_shape), np.int32 if discrete else np.float32)
        rewards = np.zeros((num_tasks, episodes, horizon), np.float32)
        mask = np.zeros((num_tasks, episodes, horizon), np.float32)
        seeds = self.rng.integers(0, 2**31 - 1, size=len(envs))
        current = np.stack([np.asarray(env.reset(seed=int(s))[0], np.float32).reshape(obs_shape)
                            for env, s in zip(envs, seeds)]).reshape(num_tasks, episodes, *obs_shape)
        alive = np.ones((num_tasks, episodes), bool)
        for t in range(horizon):
            chosen = np.asarray(policy(current))
            if chosen.shape != (num_tasks, episodes, *act_shape):
                raise ValueError(
                    f"Rollouts.run: the policy must return actions of shape {(num_tasks, episodes, *act_shape)} for "
                    f"observations of shape {current.shape}. Received: shape {chosen.shape}")
            observations[:, :, t] = current
            actions[:, :, t] = chosen
            mask[:, :, t] = alive
            for i, env in enumerate(envs):
                task, ep = divmod(i, episodes)
                if not alive[task, ep]:
                    continue
                action = int(chosen[task, ep]) if discrete else chosen[task, ep]
                nxt, reward, terminated, truncated, _ = env.step(action)
                rewards[task, ep, t] = reward
                current[task, ep] = np.asarray(nxt, np.float32).reshape(obs_shape)
                if terminated or truncated:
                    alive[task, ep] = False
            if not alive.any():
                break
        self.episodes_run += len(envs)
        return Trajectories(observations, actions, rewards, mask)


def discounted_returns(rewards: np.ndarray, mask: np.ndarray, gamma: float) -> np.ndarray:
    """The discounted return from each step to the episode's end, ``[..., H]`` (0 after it ended)."""
    out = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[:-1])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] * mask[..., t] + gamma * running * mask[..., t]
        out[..., t] = running
    return out


def linear_baseline_advantages(traj: Trajectories, gamma: float, *, gae_lambda: float = 1.0,
                               ridge: float = 1e-5, normalize: bool = True) -> np.ndarray:
    """Advantages of every step against a linear value baseline fitted per task (Duan et al. 2016).

    The baseline, as in the MAML paper's policy-gradient inner loop, is a least-squares fit of the returns on the
    features ``[obs, obs**2, t, t**2, t**3, 1]`` (``t`` the step over 100) of the task's own episodes; the
    advantages are generalised advantage estimates over it (``gae_lambda=1``: returns minus the baseline) and,
    with ``normalize``, scaled per task to zero mean and unit variance over the steps taken.

    Returns:
        ``float32 [T, E, H]`` (0 after each episode ended).
    """
    rewards, mask = traj.rewards.astype(np.float64), traj.mask.astype(np.float64)
    returns = discounted_returns(rewards, mask, gamma)
    num_tasks, episodes, horizon = rewards.shape
    obs = traj.observations.reshape(num_tasks, episodes, horizon, -1).astype(np.float64)
    steps = np.broadcast_to(np.arange(horizon, dtype=np.float64)[None, None, :, None] / 100.0,
                            (num_tasks, episodes, horizon, 1))
    features = np.concatenate([obs, obs**2, steps, steps**2, steps**3, np.ones_like(steps)], axis=-1)
    value = np.zeros_like(rewards)
    for i in range(num_tasks):  # the baseline is fitted to each task's own episodes
        taken = mask[i].reshape(-1) > 0
        f, r = features[i].reshape(-1, features.shape[-1]), returns[i].reshape(-1)
        a = f[taken].T @ f[taken] + ridge * np.eye(f.shape[1])
        coef = np.linalg.lstsq(a, f[taken].T @ r[taken], rcond=None)[0]
        value[i] = (f @ coef).reshape(episodes, horizon) * mask[i]
    nxt = np.concatenate([value[..., 1:], np.zeros((num_tasks, episodes, 1))], axis=-1)
    delta = (rewards + gamma * nxt - value) * mask
    # delta's discounted sum at gamma * lambda: the same recursion as the returns, every task at once.
    advantages = discounted_returns(delta, mask, gamma * gae_lambda)
    if normalize:
        for i in range(num_tasks):
            taken = advantages[i][mask[i] > 0]
            advantages[i] = (advantages[i] - taken.mean()) / (taken.std() + 1e-8) * mask[i]
    return advantages.astype(np.float32)


def _stream(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SALT[split]])


def _check_tasks(family: Any, split: str, n: int, tasks: Any) -> list[Any]:
    if not isinstance(tasks, (list, tuple)) or len(tasks) != n:
        raise ValueError(f"The environment family's sample_tasks({split!r}, {n}) must return a list of {n} tasks. "
                         f"Received: {type(tasks).__name__} of length {len(tasks) if hasattr(tasks, '__len__') else '?'}")
    return list(tasks)


class EnvironmentSampler(_StatefulSampler):
    """The training stream of an environment run: ``sample_batch`` draws tasks and the algorithm gathers its data.

    Its position (the task and episode RNG, which the rollouts share) is checkpointed by the episode samplers'
    ``get_state``/``set_state``, so a resumed run meets the tasks and episodes it would have met.
    """

    kind = "environment"

    def __init__(self, family: Any, algorithm: Any, split: str, seed: int):
        if split not in SPLITS:
            raise ValueError(f"EnvironmentSampler: split must be one of {list(SPLITS)}. Received: split={split!r}")
        self.family, self.algorithm, self.split, self.seed = family, algorithm, split, int(seed)
        self._rng = _stream(self.seed, split)
        self.rollouts = Rollouts(family, self._rng)
        self.tasks_sampled = 0
        self.last_tasks: list[Any] = []

    def sample_batch(self, num_tasks: int) -> TaskBatch:
        tasks = _check_tasks(self.family, self.split, num_tasks,
                             self.family.sample_tasks(self.split, int(num_tasks), self._rng))
        self.last_tasks = tasks
        self.tasks_sampled += len(tasks)
        batch = self.algorithm.gather(tasks, self.rollouts)
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"The algorithm's gather must return a TaskBatch. Received: {type(batch).__name__}")
        return batch


@dataclass
class FixedTasks:
    """A fixed set of environment tasks of one split (the evaluation's), and the seed of its episodes."""

    tasks: list[Any]
    split: str
    seed: int

    @property
    def n(self) -> int:
        return len(self.tasks)


def fixed_environment_tasks(family: Any, split: str, count: int, seed: int) -> FixedTasks:
    """The ``count`` tasks of ``split`` every run on this family is scored on (drawn from ``seed`` alone)."""
    tasks = _check_tasks(family, split, count, family.sample_tasks(split, int(count), _stream(seed, split)))
    return FixedTasks(tasks, split, int(seed))


#: Tasks adapted to per evaluation call (each adapts on its own episodes; memory grows with it).
ENV_EVAL_CHUNK = 20


def adaptation_curves(family: Any, algorithm: Any, fixed: FixedTasks, steps: int,
                      progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Adapts ``algorithm`` to each fixed task for ``steps`` steps: each task's average return after each step.

    The episodes follow ``fixed.seed``: two runs scored on the same family meet the same tasks and the same resets.
    :func:`metalab.core.engine.evaluation.evaluate_environment` turns the curves into scores.

    Returns:
        ``float64 [tasks, steps + 1]``.

    Raises:
        ValueError: The algorithm's ``adaptation_returns`` gave another shape.
    """
    rollouts = Rollouts(family, np.random.default_rng([fixed.seed, 99]))
    parts = []
    for start in range(0, fixed.n, ENV_EVAL_CHUNK):
        chunk = fixed.tasks[start:start + ENV_EVAL_CHUNK]
        curve = np.asarray(algorithm.adaptation_returns(chunk, rollouts, int(steps)), dtype=np.float64)
        if curve.shape != (len(chunk), int(steps) + 1):
            raise ValueError(f"adaptation_returns must return [tasks, steps + 1] = {(len(chunk), int(steps) + 1)}. "
                             f"Received: shape {curve.shape}")
        parts.append(curve)
        if progress is not None:
            progress(start + len(chunk), fixed.n)
    return np.concatenate(parts, axis=0)


def trajectory_paths(family: Any, task: Any, runs: list[Trajectories],
                     episodes: int = 3) -> tuple[list[float] | None, list[list[list[list[float]]]]]:
    """Where the agent went in one task: the goal and, per trajectory set of ``runs``, its first ``episodes`` paths.

    For a family with ``plot_xy`` (2D navigation); the report and RL Predict draw them.

    Returns:
        ``(goal_xy or None, [[path [H_e, 2] per episode] per trajectory set])``, rounded to 4 decimals.
    """
    goal, paths = None, []
    for traj in runs:
        shown = []
        for e in range(min(episodes, traj.mask.shape[1])):
            goal, path = family.plot_xy(task, traj.observations[0, e, :int(traj.mask[0, e].sum())])
            shown.append(np.asarray(path, dtype=float).round(4).tolist())
        paths.append(shown)
    return (None if goal is None else [float(v) for v in goal]), paths

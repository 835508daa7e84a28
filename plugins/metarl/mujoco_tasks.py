"""The MAML paper's HalfCheetah task families (Finn, Abbeel and Levine 2017, section 5.3) over Gymnasium's MuJoCo.

Both reuse Gymnasium's ``HalfCheetah-v5`` (its 17-number observation, its 6 torques in ``[-1, 1]``) and replace
the reward with the task's, as the paper's rllab code did (``half_cheetah_env_rand``, ``..._rand_direc``), with
the action clipped to its bounds in the control cost:

* HalfCheetah-Vel: ``r = -|v - v_goal| - 0.05 ||a||^2``, the target velocity ``v_goal`` uniform in ``[0, 2]``;
* HalfCheetah-Dir: ``r = d * v - 0.05 ||a||^2``, the direction ``d`` forward (+1) or backward (-1) with
  probability 1/2 (the code drew a velocity in ``[0, 2]`` and ran backward below 1).

``v`` is Gymnasium's forward velocity, the root's x displacement over the step divided by its duration (0.05 s);
the rllab code read the torso's centre-of-mass velocity at the end of the step, which is the same on average.
Episodes end after 200 steps. The ``mujoco`` package is optional: only the factories import it.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

from .optional_specs import HalfCheetahDirParams, HalfCheetahVelParams, import_optional

__all__ = ["HalfCheetahTaskEnv", "HalfCheetahFamily", "make_halfcheetah_vel", "make_halfcheetah_dir"]

ENV_ID = "HalfCheetah-v5"


class HalfCheetahTaskEnv(gymnasium.Wrapper):
    """``HalfCheetah-v5`` rewarded for one task: a target velocity or a direction (``goal``).

    Args:
        env: The Gymnasium HalfCheetah environment (its own reward is replaced).
        objective: ``"velocity"`` (reach the target velocity ``goal``) or ``"direction"`` (run in direction
            ``goal``, +1 or -1).
        goal: The task.
        ctrl_cost: Weight of the squared norm of the clipped action.
    """

    def __init__(self, env: gymnasium.Env, objective: str, goal: float, *, ctrl_cost: float = 0.05):
        super().__init__(env)
        self.objective, self.ctrl_cost = objective, float(ctrl_cost)
        self.set_goal(goal)

    def set_goal(self, goal: float) -> None:
        self.goal = float(goal)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, _, terminated, truncated, info = self.env.step(action)
        velocity = float(info["x_velocity"])
        space = self.action_space
        clipped = np.clip(np.asarray(action, dtype=np.float64), space.low, space.high)
        ctrl = self.ctrl_cost * float(np.sum(np.square(clipped)))
        run = -abs(velocity - self.goal) if self.objective == "velocity" else self.goal * velocity
        info = {**info, "reward_run": run, "reward_ctrl": -ctrl, "goal": self.goal}
        info.pop("reward_forward", None)  # Gymnasium's own term, not part of this reward
        return obs, run - ctrl, terminated, truncated, info


class HalfCheetahFamily:
    """The HalfCheetah-Vel or -Dir family; a task is its target velocity or its direction (a float).

    Every split draws from the same distribution (the tasks are a continuum, or two directions); the splits are
    separate draws from the run's seed.
    """

    kind = "environment"
    action_kind = "continuous"

    def __init__(self, objective: str, *, velocity_min: float = 0.0, velocity_max: float = 2.0, horizon: int = 200,
                 ctrl_cost: float = 0.05):
        if objective not in ("velocity", "direction"):
            raise ValueError(f"HalfCheetahFamily: objective must be 'velocity' or 'direction'. "
                             f"Received: objective={objective!r}")
        self.objective, self.horizon, self.ctrl_cost = objective, int(horizon), float(ctrl_cost)
        self.velocity_min, self.velocity_max = float(velocity_min), float(velocity_max)
        probe = gymnasium.make(ENV_ID)
        self.input_shape = tuple(int(d) for d in probe.observation_space.shape)
        self.action_dim = int(probe.action_space.shape[0])
        probe.close()
        tasks = (f"target velocity uniform in [{self.velocity_min:g}, {self.velocity_max:g}]"
                 if objective == "velocity" else "forward (+1) or backward (-1), each with probability 1/2")
        run = "-|v - v_goal|" if objective == "velocity" else "direction * v"
        self.info = {"source": f"Finn, Abbeel and Levine 2017, section 5.3 (HalfCheetah, goal {objective})",
                     "environment": f"Gymnasium {ENV_ID} (MuJoCo)", "tasks": tasks, "horizon": self.horizon,
                     "reward": f"{run} - {self.ctrl_cost:g} ||a||^2, v the forward velocity"}

    def sample_tasks(self, split: str, n: int, rng: np.random.Generator) -> list[float]:
        if self.objective == "velocity":
            return [float(v) for v in rng.uniform(self.velocity_min, self.velocity_max, size=int(n))]
        return [float(d) for d in rng.choice((-1.0, 1.0), size=int(n))]

    def make_env(self, task: Any) -> HalfCheetahTaskEnv:
        env = gymnasium.make(ENV_ID, max_episode_steps=self.horizon)
        return HalfCheetahTaskEnv(env, self.objective, task, ctrl_cost=self.ctrl_cost)

    def set_task(self, env: HalfCheetahTaskEnv, task: Any) -> None:
        env.set_goal(task)

    def describe_task(self, task: Any) -> str:
        if self.objective == "velocity":
            return f"target velocity {float(task):.2f}"
        return "run forward" if float(task) > 0 else "run backward"


def make_halfcheetah_vel(params: HalfCheetahVelParams | dict | None = None, context: Any = None) -> HalfCheetahFamily:
    """Builds the HalfCheetah-Vel family (nothing is read: ``context`` is unused).

    Raises:
        ImportError: The optional package ``mujoco`` is not installed.
    """
    import_optional(("mujoco",), "metalab.halfcheetah_vel", "mujoco")
    if not isinstance(params, HalfCheetahVelParams):
        params = HalfCheetahVelParams.model_validate(params or {})
    return HalfCheetahFamily("velocity", velocity_min=params.velocity_min, velocity_max=params.velocity_max,
                             horizon=params.horizon, ctrl_cost=params.ctrl_cost)


def make_halfcheetah_dir(params: HalfCheetahDirParams | dict | None = None, context: Any = None) -> HalfCheetahFamily:
    """Builds the HalfCheetah-Dir family (nothing is read: ``context`` is unused).

    Raises:
        ImportError: The optional package ``mujoco`` is not installed.
    """
    import_optional(("mujoco",), "metalab.halfcheetah_dir", "mujoco")
    if not isinstance(params, HalfCheetahDirParams):
        params = HalfCheetahDirParams.model_validate(params or {})
    return HalfCheetahFamily("direction", horizon=params.horizon, ctrl_cost=params.ctrl_cost)

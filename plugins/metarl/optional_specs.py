"""The meta-RL datasets that need an optional package: HalfCheetah-Vel and -Dir (``mujoco``), Meta-World ML1.

Cheap to import (the plugin API, pydantic and the standard library only): the factories are ``"module:Attribute"``
strings, so listing these specs imports neither Gymnasium's MuJoCo environments nor Meta-World; a factory whose
package is missing raises ``ImportError`` naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Literal

import pydantic
from pydantic import Field

from metalab.api import DatasetSpec, Params

__all__ = ["import_optional", "HalfCheetahVelParams", "HalfCheetahDirParams", "MetaWorldML1Params",
           "METAWORLD_ML1_ENV_NAMES", "HALFCHEETAH_VEL", "HALFCHEETAH_DIR", "METAWORLD_ML1", "SPECS"]

MAML_PAPER = ("Finn, Abbeel and Levine 2017, Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks "
              "(ICML), section 5.3")
METAWORLD_PAPER = ("Yu, Quillen, He, Julian, Hausman, Finn and Levine 2019, Meta-World: A Benchmark and Evaluation "
                   "for Multi-Task and Meta Reinforcement Learning (CoRL), ML1")

# Meta-World 3.x's ML1.ENV_NAMES, spelled out so that the dashboard offers a choice without importing Meta-World;
# a test compares it with the installed package's list.
METAWORLD_ML1_ENV_NAMES = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3", "coffee-pull-v3",
    "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-lock-v3", "door-open-v3",
    "door-unlock-v3", "hand-insert-v3", "drawer-close-v3", "drawer-open-v3", "faucet-open-v3", "faucet-close-v3",
    "hammer-v3", "handle-press-side-v3", "handle-press-v3", "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3",
    "pick-place-wall-v3", "pick-out-of-hole-v3", "pick-place-v3", "plate-slide-v3", "plate-slide-side-v3",
    "plate-slide-back-v3", "plate-slide-back-side-v3", "peg-insert-side-v3", "peg-unplug-side-v3", "soccer-v3",
    "stick-push-v3", "stick-pull-v3", "push-v3", "push-wall-v3", "push-back-v3", "reach-v3", "reach-wall-v3",
    "shelf-place-v3", "sweep-into-v3", "sweep-v3", "window-open-v3", "window-close-v3",
)
MetaWorldEnvName = Literal[METAWORLD_ML1_ENV_NAMES]  # type: ignore[valid-type]


class HalfCheetahVelParams(Params):
    """HalfCheetah-Vel; defaults are the MAML paper's (target velocities uniform in [0, 2], 200 steps)."""

    velocity_min: float = Field(0.0, ge=-10, le=10, title="Lowest target velocity",
                                description="Target forward velocities are uniform in [velocity_min, velocity_max].")
    velocity_max: float = Field(2.0, ge=-10, le=10, title="Highest target velocity",
                                description="Upper end of the target velocities (2.0 in the paper).")
    horizon: int = Field(200, ge=1, le=1000, description="The most steps of one episode (200 in the paper).")
    ctrl_cost: float = Field(0.05, ge=0, le=10, title="Control cost weight",
                             description="The reward subtracts ctrl_cost * ||action||^2 (0.05 in the paper's code).")

    @pydantic.model_validator(mode="after")
    def _range_ordered(self) -> "HalfCheetahVelParams":
        if self.velocity_min > self.velocity_max:
            raise ValueError("velocity_min must not exceed velocity_max. Received: "
                             f"velocity_min={self.velocity_min}, velocity_max={self.velocity_max}")
        return self


class HalfCheetahDirParams(Params):
    """HalfCheetah-Dir; defaults are the MAML paper's (forward or backward with probability 1/2, 200 steps)."""

    horizon: int = Field(200, ge=1, le=1000, description="The most steps of one episode (200 in the paper).")
    ctrl_cost: float = Field(0.05, ge=0, le=10, title="Control cost weight",
                             description="The reward subtracts ctrl_cost * ||action||^2 (0.05 in the paper's code).")


class MetaWorldML1Params(Params):
    """Meta-World ML1: one manipulation environment, its goals split into train and held-out tasks."""

    env_name: MetaWorldEnvName = Field("reach-v3", title="Environment",
                                       description="The Meta-World environment whose goal positions are the tasks.")
    task_seed: int = Field(0, ge=0, le=2**31 - 1,
                           description="Seed of ML1's draw of the 50 training and 50 held-out goals (the held-out "
                           "ones are split in half: validation, test).")
    horizon: int = Field(500, ge=1, le=500,
                         description="The most steps of one episode (500: Meta-World's max_path_length).")


def import_optional(modules: tuple[str, ...], dataset: str, extra: str) -> list[ModuleType]:
    """Imports a dataset's optional ``modules`` in order, or says which extra installs them.

    Raises:
        ImportError: A module is missing (or does not import); the message names the dataset and
            ``pip install 'metalab[<extra>]'``.
    """
    imported = []
    for name in modules:
        try:
            imported.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            missing = exc.name or name
            raise ImportError(
                f"The dataset {dataset!r} needs the optional package {modules[-1]!r}, which is not installed. "
                f"Install it with: pip install 'metalab[{extra}]'. Received: missing module {missing!r}") from None
        except ImportError as exc:
            raise ImportError(
                f"The dataset {dataset!r} needs the optional package {modules[-1]!r}, which is installed but does "
                f"not import here ({type(exc).__name__} in {name!r}). Reinstall it with: "
                f"pip install --force-reinstall 'metalab[{extra}]'. Received: module={name!r}") from exc
    return imported


_QUICK_RUN = {"steps": 100, "backbone.hidden": [100, 100], "val_every": 25, "log_every": 5, "checkpoint_every": 25}
# The paper's HalfCheetah runs: 40 tasks per meta-batch (fast batch 20 episodes, alpha 0.1, a (100, 100) policy).
_CHEETAH_ALGORITHMS = {"metalab.maml_rl": {"meta_batch_size": 40}, "metalab.pretrained_policy": {"meta_batch_size": 40}}

def _cheetah(name: str, title: str, task: str, reward: str, params: type[Params]) -> DatasetSpec:
    """A HalfCheetah family's spec: the paper's settings for both, with what differs (its task and reward)."""
    return DatasetSpec(
        id=f"metalab.halfcheetah_{name}",
        title=f"HalfCheetah-{title} (meta-RL, MuJoCo)",
        description=(
            f"Gymnasium's HalfCheetah-v5 made to {task}: the reward is {reward} minus 0.05 ||action||^2, for 200 "
            f"steps (the MAML paper's goal {'velocity' if name == 'vel' else 'direction'} task). Needs the optional "
            f"package mujoco: pip install 'metalab[mujoco]'."
        ),
        params=params,
        factory=f"metalab.plugins.metarl.mujoco_tasks:make_halfcheetah_{name}",
        kind="environment",
        paper=MAML_PAPER,
        default_backbone="metalab.mlp",
        episode_defaults={"shots": 20, "queries": 20},
        algorithm_defaults=_CHEETAH_ALGORITHMS,
        presets={"*": {**_QUICK_RUN, "val_episodes": 10, "test_episodes": 40}},
    )


HALFCHEETAH_VEL = _cheetah("vel", "Vel", "run at a target forward velocity drawn uniformly from [0, 2]",
                           "minus the distance to the target velocity", HalfCheetahVelParams)
HALFCHEETAH_DIR = _cheetah("dir", "Dir", "run forward or backward, each with probability 1/2",
                           "the velocity in the task's direction", HalfCheetahDirParams)

METAWORLD_ML1 = DatasetSpec(
    id="metalab.metaworld_ml1",
    title="Meta-World ML1 (meta-RL)",
    description=(
        "One Meta-World manipulation environment (reach-v3 by default) with hidden goals: ML1's 50 training goals "
        "train, its 50 held-out goals are split between validation and test; episodes of up to 500 steps with "
        "Meta-World's dense reward. Needs the optional package metaworld: pip install 'metalab[metaworld]'."
    ),
    params=MetaWorldML1Params,
    factory="metalab.plugins.metarl.metaworld_tasks:make_metaworld_ml1",
    kind="environment",
    paper=METAWORLD_PAPER,
    default_backbone="metalab.mlp",
    episode_defaults={"shots": 20, "queries": 20},
    # 25 held-out goals per split: a larger count repeats goals.
    presets={"*": {**_QUICK_RUN, "val_episodes": 10, "test_episodes": 25}},
)

SPECS = (HALFCHEETAH_VEL, HALFCHEETAH_DIR, METAWORLD_ML1)

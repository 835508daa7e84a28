"""Meta-reinforcement learning: environment task families and the algorithms that adapt a policy to them.

Registers the ``"environment"`` task kind's built-ins through the same hooks a third-party package uses:

* the dataset ``metalab.nav2d``: the MAML paper's 2D navigation, embedded (no extra dependency);
* the optional families ``metalab.halfcheetah_vel``, ``metalab.halfcheetah_dir`` (``pip install 'metalab[mujoco]'``)
  and ``metalab.metaworld_ml1`` (``pip install 'metalab[metaworld]'``), from :mod:`.optional_specs`;
* the algorithms ``metalab.maml_rl`` (MAML with a policy-gradient inner loop) and ``metalab.pretrained_policy``
  (one policy trained on all tasks, adapted the same way at meta-test time: the paper's baseline).

Registration imports no Gymnasium and no Keras: the factories are named as ``"module:Attribute"`` strings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from metalab.api import AlgorithmSpec, DatasetSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.8"

MAML_PAPER = ("Finn, Abbeel and Levine 2017, Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks "
              "(ICML), section 5.3")


class MAMLRLParams(Params):
    """MAML for RL; defaults are the paper's 2D-navigation settings where it gives them (alpha 0.1, 20 tasks)."""

    inner_lr: float = Field(0.1, gt=0, le=10, description="Inner policy-gradient step size alpha (0.1 in the paper).")
    inner_steps: int = Field(1, ge=1, le=10, description="Inner policy-gradient steps during meta-training (each "
                             "after the first reuses the task's support episodes).")
    eval_steps: int = Field(3, ge=0, le=20, title="Adaptation steps at meta-test",
                            description="Policy-gradient steps at meta-test time, each on fresh episodes; the "
                            "report shows the return after every one.")
    meta_batch_size: int = Field(20, ge=1, le=1024, description="Tasks per meta-update (20 in the paper).")
    outer_lr: float = Field(0.01, gt=0, le=1, description="Meta step size (Adam).")
    first_order: bool = Field(False, description="Treat the inner gradients as constants (no second derivatives).")
    ppo_epochs: int = Field(1, ge=1, le=50, title="Outer updates per batch",
                            description="Clipped-surrogate (PPO) updates on each gathered batch; 1 is the plain "
                            "policy gradient through the adaptation (the clip is then inactive).")
    clip: float = Field(0.2, gt=0, le=1, description="PPO's clip range epsilon of the outer surrogate.")
    gamma: float = Field(0.99, gt=0, le=1, description="Discount of the returns the advantages are built on.")
    gae_lambda: float = Field(1.0, ge=0, le=1, title="GAE lambda",
                              description="Generalised advantage estimation's lambda (1: returns minus the "
                              "linear baseline, as the paper).")
    init_std: float = Field(1.0, gt=0, le=10, title="Initial action std",
                            description="Initial standard deviation of the Gaussian policy (continuous actions).")


class PretrainedPolicyParams(MAMLRLParams):
    """The pretrained-policy baseline: MAML-RL's settings, trained without the inner loop."""


class Nav2DParams(Params):
    """The 2D-navigation family; defaults are the paper's."""

    goal_range: float = Field(0.5, gt=0, le=10, description="Goals are uniform in [-goal_range, goal_range]^2.")
    horizon: int = Field(100, ge=1, le=10_000, description="The most steps of one episode (100 in the paper).")
    max_step: float = Field(0.1, gt=0, le=10, description="Velocity commands are clipped to [-max_step, max_step].")
    reward: Literal["distance", "squared_distance"] = Field(
        "distance", description="Minus the distance to the goal (the paper's code) or its square (the paper's text).")


def make_nav2d(params: Nav2DParams | dict | None = None, context=None):
    """Builds the 2D-navigation family (nothing is read: ``context`` is unused)."""
    from .navigation import Navigation2DFamily

    if not isinstance(params, Nav2DParams):
        params = Nav2DParams.model_validate(params or {})
    return Navigation2DFamily(goal_range=params.goal_range, horizon=params.horizon, max_step=params.max_step,
                              reward=params.reward)


NAV2D = DatasetSpec(
    id="metalab.nav2d",
    title="2D navigation (meta-RL)",
    description=(
        "A point agent moves from the origin to a goal drawn from the unit square; it sees its position, acts with "
        "a velocity clipped to 0.1 and is rewarded minus its distance to the goal, for up to 100 steps (the MAML "
        "paper's 2D navigation). Embedded: no download, no extra package."
    ),
    params=Nav2DParams,
    factory=make_nav2d,
    kind="environment",
    paper=MAML_PAPER,
    default_backbone="metalab.mlp",
    episode_defaults={"shots": 20, "queries": 20},
    presets={"*": {"steps": 100, "backbone.hidden": [100, 100], "val_every": 25, "log_every": 5,
                   "checkpoint_every": 25, "val_episodes": 10, "test_episodes": 40}},
    tiny_task={"backbone": "metalab.mlp", "backbone_params": {"hidden": [16]}, "shots": 4, "queries": 4,
               "dataset_params": {"horizon": 10}},
)


MAML_RL = AlgorithmSpec(
    id="metalab.maml_rl",
    title="MAML (RL)",
    description=(
        "Meta-learns a policy from which one policy-gradient step on a few episodes of a new task improves its "
        "return. The outer step differentiates through the inner step (second order unless first_order) and "
        "takes PPO's clipped surrogate with Adam (the paper used TRPO)."
    ),
    params=MAMLRLParams,
    factory="metalab.plugins.metarl.algorithm:MAMLRL",
    paper=MAML_PAPER,
    task_kinds=("environment",),
)

PRETRAINED = AlgorithmSpec(
    id="metalab.pretrained_policy",
    title="Pretrained policy (RL baseline)",
    description=(
        "One policy trained on the episodes of every training task with the same surrogate and no inner loop, "
        "adapted at meta-test time with MAML's policy-gradient steps: the MAML paper's 'pretrained' comparison."
    ),
    params=PretrainedPolicyParams,
    factory="metalab.plugins.metarl.algorithm:PretrainedPolicy",
    paper=MAML_PAPER,
    task_kinds=("environment",),
)


@hookimpl
def metalab_register_datasets() -> list[DatasetSpec]:
    from .optional_specs import SPECS as OPTIONAL_SPECS  # cheap: no Gymnasium, MuJoCo or Meta-World import

    return [NAV2D, *OPTIONAL_SPECS]


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [MAML_RL, PRETRAINED]

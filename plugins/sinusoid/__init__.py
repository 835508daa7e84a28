"""The sinusoid regression benchmark of the MAML paper, registered as the dataset ``metalab.sinusoid``.

Registration is cheap: the task family lives in :mod:`metalab.plugins.sinusoid.family` and is imported by the
factory only.
"""

from __future__ import annotations

import math

import pydantic
from pydantic import Field

from metalab.api import DatasetSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.4"

PAPER = (
    "Finn, Abbeel & Levine (2017). Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks. "
    "ICML 2017, section 5.1."
)


class SinusoidParams(Params):
    """Ranges of the sinusoid family; the defaults are the MAML paper's."""

    amplitude_min: float = Field(0.1, gt=0, le=100, description="Smallest amplitude A.")
    amplitude_max: float = Field(5.0, gt=0, le=100, description="Largest amplitude A.")
    phase_min: float = Field(0.0, ge=-2 * math.pi, le=2 * math.pi, description="Smallest phase (radians).")
    phase_max: float = Field(math.pi, ge=-2 * math.pi, le=2 * math.pi, description="Largest phase (radians).")
    x_min: float = Field(-5.0, ge=-100, le=100, description="Inputs are drawn uniformly from [x_min, x_max].")
    x_max: float = Field(5.0, ge=-100, le=100, description="Upper end of the input range.")

    @pydantic.model_validator(mode="after")
    def _ranges_ordered(self) -> "SinusoidParams":
        for low, high in (("amplitude_min", "amplitude_max"), ("phase_min", "phase_max"), ("x_min", "x_max")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(
                    f"{low} must not exceed {high}. Received: {low}={getattr(self, low)}, {high}={getattr(self, high)}"
                )
        return self


def make_sinusoid(params: SinusoidParams | dict | None = None, context=None):
    """Builds the sinusoid task family (the dataset factory; ``context`` is unused: nothing is read).

    Args:
        params: A :class:`SinusoidParams` (or a dict of its fields).
        context: The data context (ignored).

    Returns:
        A :class:`metalab.plugins.sinusoid.family.SinusoidFamily`.
    """
    from .family import SinusoidFamily

    if not isinstance(params, SinusoidParams):
        params = SinusoidParams.model_validate(params or {})
    return SinusoidFamily(
        amplitude_range=(params.amplitude_min, params.amplitude_max),
        phase_range=(params.phase_min, params.phase_max),
        x_range=(params.x_min, params.x_max),
    )


@hookimpl
def metalab_register_datasets() -> list:
    return [
        DatasetSpec(
            id="metalab.sinusoid",
            title="Sinusoid regression",
            description=(
                "Each task is y = A sin(x - phase) with A ~ U[0.1, 5], phase ~ U[0, pi] and x ~ U[-5, 5]; "
                "K support points per task (the MAML paper's toy regression benchmark)."
            ),
            params=SinusoidParams,
            factory=make_sinusoid,
            kind="regression",
            paper=PAPER,
            default_backbone="metalab.mlp",
            episode_defaults={"shots": 10, "queries": 10},
            # Finn et al. 2017, section 5.1: alpha = 0.01, meta-batch 25, up to 10 test-time steps. Reptile's
            # sine example adapts with a larger step than its Omniglot setting.
            algorithm_defaults={
                "metalab.maml": {"inner_lr": 0.01, "meta_batch_size": 25, "eval_inner_steps": 10},
                "metalab.reptile": {"inner_optimizer": "sgd", "inner_lr": 0.02, "inner_steps": 5, "eval_inner_steps": 10},
                "metalab.metasgd": {"inner_lr_init": 0.01, "meta_batch_size": 25},
            },
            # The recommended first run (the Train form and metalab train start from it) finishes in about a minute
            # on two CPU cores: fewer steps, and MAML with the paper's sinusoid settings (alpha 0.01, 10 steps at
            # test time) on 10 tasks per batch.
            presets={
                "*": {"steps": 2000, "val_every": 250, "log_every": 50, "checkpoint_every": 500},
                "metalab.maml": {"steps": 4000, "val_every": 500, "checkpoint_every": 1000,
                                 "algorithm.inner_lr": 0.01, "algorithm.meta_batch_size": 10,
                                 "algorithm.eval_inner_steps": 10},
                "metalab.reptile": {"algorithm.eval_inner_steps": 10},
            },
            # The conformance kit's regression task: the MAML paper's 40-40 MLP, 10 points per set.
            tiny_task={"backbone": "metalab.mlp", "backbone_params": {"hidden": [40, 40]}, "shots": 10,
                       "queries": 10},
        )
    ]

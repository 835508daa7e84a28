"""Multi-task learning: a shared trunk with one head per task, trained jointly (registration only, no TF)."""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic
from pydantic import Field

from metalab.api import AlgorithmSpec, Params, ReportPanel, hookimpl

METALAB_PLUGIN_API = "1.4"


class MultiTaskParams(Params):
    """Multi-task parameters: the task split, the loss weights and the consistency objective."""

    num_tasks: int = Field(
        2, ge=1, le=256,
        description=(
            "Tasks K: the training classes are dealt into K groups (class c to task c mod K), each a classification "
            "task with its own head. Every task needs at least 2 classes."
        ),
    )
    task_weights: Literal["uniform"] | list[Annotated[float, Field(ge=0, le=1e6)]] = Field(
        "uniform",
        description=(
            "Loss weight of each task: 'uniform' (the plain average of the task losses) or K non-negative numbers, "
            "normalised to sum to 1."
        ),
    )
    consistency_weight: float = Field(
        1.0, ge=0, le=1000,
        description=(
            "Weight of the consistency (difference) objective: the mean squared distance between the trunk's "
            "features of an image and of the same image under a small random perturbation. 0 turns it off."
        ),
    )
    noise_std: float = Field(
        0.1, gt=0, le=10,
        description="Standard deviation of the Gaussian perturbation making the related input (pixels in 0..1).",
    )
    batch_size: int = Field(64, ge=2, le=4096, description="Training mini-batch size (shared by all tasks).")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate.")

    @pydantic.model_validator(mode="after")
    def _weights_match_tasks(self) -> "MultiTaskParams":
        if self.task_weights != "uniform":
            if len(self.task_weights) != self.num_tasks:
                raise ValueError(
                    f"task_weights needs one weight per task ({self.num_tasks}) or 'uniform'. "
                    f"Received: task_weights={self.task_weights!r}"
                )
            if sum(self.task_weights) <= 0:
                raise ValueError(f"task_weights must not all be zero. Received: task_weights={self.task_weights!r}")
        return self

    def weights(self) -> list[float]:
        """The task weights, normalised to sum to 1."""
        raw = [1.0] * self.num_tasks if self.task_weights == "uniform" else [float(w) for w in self.task_weights]
        total = sum(raw)
        return [w / total for w in raw]


SPEC = AlgorithmSpec(
    id="metalab.multitask",
    title="Multi-task learning (shared trunk)",
    description=(
        "Splits the training classes into K classification tasks and trains one shared trunk (the run's backbone) "
        "with a head per task, jointly: the weighted average of the task losses plus a consistency objective that "
        "keeps the trunk's features of an image and of a perturbed copy close. Evaluated few-shot by nearest class "
        "centroid on the trunk's features. The report draws each task's training curve."
    ),
    params=MultiTaskParams,
    factory="metalab.plugins.multitask.algorithm:MultiTask",
    paper=(
        "Caruana 1997, Multitask Learning (Machine Learning 28); consistency objective as in Laine and Aila 2017, "
        "Temporal Ensembling for Semi-Supervised Learning (ICLR), Pi-model"
    ),
    task_kinds=("classification",),
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]


@hookimpl
def metalab_report_panels(report_data: dict, metrics: dict) -> list[ReportPanel]:
    """Per-task training curves (from the run's logged ``train/task<k>_*`` metrics) and the task split."""
    from .panels import task_curves_panel

    return [task_curves_panel(report_data.get(SPEC.id) or {}, metrics)]

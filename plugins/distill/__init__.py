"""Knowledge distillation (Hinton, Vinyals and Dean 2015) from a finished teacher run (registration only, no TF)."""

from __future__ import annotations

from pydantic import Field

from metalab.api import AlgorithmSpec, Params, ReportPanel, RunRef, hookimpl

METALAB_PLUGIN_API = "1.5"


class DistillParams(Params):
    """Distillation parameters; ``temperature`` and ``alpha`` follow the ranges of Hinton et al. 2015."""

    teacher_run: RunRef = Field(
        None,
        description=(
            "Id (or unique id prefix) of a completed run in the run store (METALAB_HOME) trained on the same "
            "dataset; its model gives the soft targets. Empty: no teacher, the student trains as a plain "
            "supervised classifier (alpha is ignored)."
        ),
    )
    temperature: float = Field(
        4.0, gt=0, le=100, description="Softmax temperature T of the soft targets (the paper tries 1 to 20)."
    )
    alpha: float = Field(
        0.9, ge=0, le=1,
        description="Weight of the soft (teacher) loss; the hard-label cross-entropy gets 1 - alpha.",
    )
    batch_size: int = Field(64, ge=2, le=4096, description="Training mini-batch size.")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate of the student.")
    prototype_shots: int = Field(
        20, ge=1, le=10_000,
        description=(
            "Teachers without a classifier over the training classes (ProtoNet, MAML, ...): training images per "
            "class averaged into the class prototypes whose distance logits are distilled."
        ),
    )


SPEC = AlgorithmSpec(
    id="metalab.distill",
    title="Knowledge distillation",
    description=(
        "A student (the run's backbone and a classifier over the training classes) learns from a finished teacher "
        "run on ordinary mini-batches: cross-entropy to the teacher's temperature-softened class probabilities "
        "plus the usual hard-label loss. Evaluated few-shot by nearest class centroid on the student's features. "
        "The report compares teacher and student: accuracy, parameters and images per second."
    ),
    params=DistillParams,
    factory="metalab.plugins.distill.algorithm:Distill",
    paper="Hinton, Vinyals and Dean 2015, Distilling the Knowledge in a Neural Network (arXiv:1503.02531)",
    task_kinds=("classification",),
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]


@hookimpl
def metalab_report_panels(report_data: dict) -> list[ReportPanel]:
    """Teacher against student: few-shot accuracy, parameter counts and speed (distillation runs only)."""
    if not report_data.get(SPEC.id):  # stored at the end of training: none when the run stopped early
        return []
    from .panels import comparison_panel

    return [comparison_panel(report_data[SPEC.id])]

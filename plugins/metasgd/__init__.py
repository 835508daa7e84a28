"""Meta-SGD: MAML with a learned inner learning rate per parameter (registration only, no TensorFlow import)."""

from __future__ import annotations

from pydantic import Field

from metalab.api import AlgorithmSpec, Params, ReportPanel, hookimpl

METALAB_PLUGIN_API = "1.4"


class MetaSGDParams(Params):
    """Meta-SGD's parameters; defaults follow Li et al. 2017 (one inner step, Adam outer loop)."""

    inner_lr_init: float = Field(
        0.1, gt=0, le=100, title="Initial inner learning rate",
        description=(
            "Initial value of every learned inner learning rate alpha (the paper draws them from [0.005, 0.1]; "
            "a constant start at the top of that range works for classification and sinusoids alike)."
        ),
    )
    inner_steps: int = Field(1, ge=1, le=100, description="Inner gradient steps during meta-training (1 in the paper).")
    eval_inner_steps: int = Field(
        1, ge=0, le=1000, title="Inner steps at meta-test", description="Inner gradient steps when adapting at test time (the rates are learned for 1)."
    )
    meta_batch_size: int = Field(32, ge=1, le=1024, description="Tasks per meta-update.")
    outer_lr: float = Field(1e-3, gt=0, le=1, description="Meta step size beta (Adam), for the weights and the rates.")
    first_order: bool = Field(
        False,
        description="Treat the inner gradients as constants (no second derivatives); the rates still learn.",
    )


def _batch_norm_mode(params: MetaSGDParams) -> str:
    """How Meta-SGD normalises at meta-test time (the same for every ``params``; the report prints it)."""
    return "transductive (query batch statistics; Meta-SGD has no inductive mode)"


SPEC = AlgorithmSpec(
    id="metalab.metasgd",
    title="Meta-SGD",
    description=(
        "Learns an initialisation and, jointly, a learning rate for every parameter (direction and size of the "
        "inner update): one inner step of theta - alpha * grad adapts to a task. The report shows the learned "
        "rates' distribution per layer."
    ),
    params=MetaSGDParams,
    factory="metalab.plugins.metasgd.algorithm:MetaSGD",
    paper="Li, Zhou, Chen and Li 2017, Meta-SGD: Learning to Learn Quickly for Few-Shot Learning (arXiv:1707.09835)",
    task_kinds=("classification", "regression"),
    batch_norm_mode=_batch_norm_mode,
    memory_model="maml",
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]


@hookimpl
def metalab_report_panels(report_data: dict) -> list[ReportPanel]:
    """The learned inner learning rates' distribution per layer (Meta-SGD runs only)."""
    if not report_data.get(SPEC.id):  # stored at the end of training: none when the run stopped early
        return []
    from .panels import learned_rates_panel

    return [learned_rates_panel(report_data[SPEC.id])]

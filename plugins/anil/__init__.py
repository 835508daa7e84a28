"""ANIL, Almost No Inner Loop: MAML with only the head adapting (registration only, no TensorFlow import)."""

from __future__ import annotations

from pydantic import Field

from metalab.api import AlgorithmSpec, Params, ReportPanel, hookimpl

METALAB_PLUGIN_API = "1.5"  # functional.mean (1.5): float64 losses stay float64 on JAX


class ANILParams(Params):
    """ANIL's parameters; Raghu et al. 2019 reuse MAML's settings (here those for 5-way Omniglot)."""

    inner_lr: float = Field(
        0.4, gt=0, le=100,
        description="Inner-loop step size alpha of the head (0.4 on Omniglot; 0.01 on sinusoid and MiniImagenet).",
    )
    inner_steps: int = Field(1, ge=1, le=100, description="Inner gradient steps of the head during meta-training.")
    eval_inner_steps: int = Field(3, ge=0, le=1000, title="Inner steps at meta-test",
                                  description="Inner gradient steps of the head at test time.")
    meta_batch_size: int = Field(32, ge=1, le=1024, description="Tasks per meta-update.")
    outer_lr: float = Field(1e-3, gt=0, le=1, description="Meta step size beta (Adam).")
    first_order: bool = Field(
        False, description="First-order ANIL: treat the head's inner gradients as constants (no second derivatives)."
    )
    zero_head: bool = Field(
        True,
        description=(
            "Start the meta-learned head at zero (the 'zeroing trick' of Kao et al. 2022) instead of Keras's random "
            "initialisation: the first inner step is then a centroid classifier of the support features, and "
            "meta-training starts from the class-symmetric head it tends to anyway."
        ),
    )


def _batch_norm_mode(params: ANILParams) -> str:
    """How ANIL normalises at meta-test time (the same for every ``params``; the report prints it)."""
    return ("transductive (the backbone normalises the support set and the query set each with its own batch "
            "statistics)")


SPEC = AlgorithmSpec(
    id="metalab.anil",
    title="ANIL",
    description=(
        "MAML with almost no inner loop: the backbone's features are computed once per task and only the linear "
        "head adapts to the support set; the backbone is meta-learned through the outer loop alone. Much cheaper "
        "than MAML, and about as accurate (feature reuse)."
    ),
    params=ANILParams,
    factory="metalab.plugins.anil.algorithm:ANIL",
    paper=(
        "Raghu, Raghu, Bengio and Vinyals 2019, Rapid Learning or Feature Reuse? Towards Understanding the "
        "Effectiveness of MAML (ICLR 2020, arXiv:1909.09157)"
    ),
    task_kinds=("classification", "regression"),
    batch_norm_mode=_batch_norm_mode,
    memory_model="anil",
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]


@hookimpl
def metalab_report_panels(report_data: dict) -> list[ReportPanel]:
    """Shows which layers adapt in the inner loop and which only in the outer loop (ANIL runs only)."""
    if not report_data.get(SPEC.id):  # stored at the end of training: none when the run stopped early
        return []
    from .panels import adaptation_panel

    return [adaptation_panel(report_data[SPEC.id])]

"""Self-supervised rotation pre-training (RotNet) evaluated few-shot (registration only, no TensorFlow import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from metalab.api import AlgorithmSpec, Params, ReportPanel, hookimpl

METALAB_PLUGIN_API = "1.4"


class RotationParams(Params):
    """RotNet's parameters; the pre-training defaults follow Gidaris, Singh and Komodakis 2018 (Section 4)."""

    batch_size: int = Field(
        128, ge=2, le=4096, description="Unlabelled images per step; each is seen at all 4 rotations (128 in the paper)."
    )
    optimizer: Literal["sgd", "adam"] = Field(
        "sgd", description="Pre-training optimizer: SGD with Nesterov momentum 0.9 (the paper's) or Adam."
    )
    lr: float = Field(0.1, gt=0, le=10, description="Initial learning rate (0.1 with SGD in the paper; try 1e-3 with Adam).")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="Weight decay (5e-4 in the paper).")
    lr_drops: bool = Field(
        True,
        description=(
            "Divide the learning rate by 5 at 30%, 60% and 80% of the steps (the paper's drops at epochs 30, 60 and "
            "80 of 100)."
        ),
    )
    probe: Literal["prototype", "linear"] = Field(
        "prototype",
        description=(
            "Few-shot evaluation on the frozen features: nearest class centroid (ProtoNet-style) or a linear head "
            "fitted on each episode's support set."
        ),
    )
    probe_steps: int = Field(100, ge=1, le=10_000, description="Linear probe only: full-batch steps on the support set.")
    probe_lr: float = Field(0.01, gt=0, le=10, description="Linear probe only: SGD (momentum 0.9) learning rate.")
    probe_weight_decay: float = Field(1e-3, ge=0, le=1, description="Linear probe only: L2 weight decay on the head.")


SPEC = AlgorithmSpec(
    id="metalab.rotation",
    title="Rotation pre-training (RotNet)",
    description=(
        "Self-supervised: ignores the class labels and trains the backbone to tell which of 0, 90, 180 or 270 "
        "degrees each training image was rotated by; then scores few-shot episodes on the frozen features by "
        "nearest class centroid or a linear probe. The report shows the rotation-prediction accuracy per angle."
    ),
    params=RotationParams,
    factory="metalab.plugins.rotation.algorithm:RotationPretraining",
    paper=(
        "Gidaris, Singh and Komodakis 2018, Unsupervised Representation Learning by Predicting Image Rotations "
        "(ICLR, arXiv:1803.07728)"
    ),
    task_kinds=("classification",),
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]


@hookimpl
def metalab_report_panels(report_data: dict) -> list[ReportPanel]:
    """Rotation-prediction accuracy per angle, on training batches and on held-out images (rotation runs only)."""
    if not report_data.get(SPEC.id):  # stored at the end of training: none when the run stopped early
        return []
    from .panels import rotation_panel

    return [rotation_panel(report_data[SPEC.id])]

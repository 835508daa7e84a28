"""The fine-tuning Baseline and Baseline++ of Chen et al. 2019 (registration only, no TensorFlow import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from metalab.api import AlgorithmSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.4"


class BaselineParams(Params):
    """Baseline / Baseline++ parameters; defaults follow Chen et al. 2019 where the paper gives them."""

    head: Literal["linear", "cosine"] = Field(
        "linear",
        description="Classifier: 'linear' (Baseline) or 'cosine' (Baseline++: scaled cosine similarity to class weights).",
    )
    cosine_scale: float = Field(
        10.0, gt=0, le=100, description="Baseline++ only: the scale (inverse temperature) of the cosine logits."
    )
    batch_size: int = Field(16, ge=2, le=4096, description="Pre-training mini-batch size (16 in the paper).")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate of the pre-training (1e-3 in the paper).")
    finetune_steps: int = Field(
        100, ge=0, le=10_000, description="Steps training the new head on each test episode's support set."
    )
    finetune_optimizer: Literal["sgd", "adam"] = Field(
        "sgd", description="Optimizer of the new head: SGD with momentum 0.9 (the paper's) or Adam."
    )
    finetune_lr: float = Field(0.01, gt=0, le=10, description="Learning rate of the new head (0.01 in the paper).")
    finetune_weight_decay: float = Field(
        1e-3, ge=0, le=1, description="L2 weight decay on the new head's weights (0.001 in the paper)."
    )


SPEC = AlgorithmSpec(
    id="metalab.baseline",
    title="Baseline / Baseline++ (fine-tuning)",
    description=(
        "No meta-learning: pre-trains the backbone with a classifier over all training classes on ordinary "
        "mini-batches, then, on each test episode, freezes the backbone and trains a new linear (Baseline) or "
        "cosine-similarity (Baseline++) head on the support set."
    ),
    params=BaselineParams,
    factory="metalab.plugins.baseline.algorithm:Baseline",
    paper="Chen, Liu, Kira, Wang and Huang 2019, A Closer Look at Few-shot Classification (ICLR)",
    task_kinds=("classification",),
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]

"""Reptile, a first-order meta-learning algorithm (registration only, no TensorFlow import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from metalab.api import AlgorithmSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.5"  # functional.mean (1.5): float64 losses stay float64 on JAX


class ReptileParams(Params):
    """Reptile's parameters; defaults are those of Nichol, Achiam and Schulman 2018 for Omniglot."""

    inner_optimizer: Literal["adam", "sgd"] = Field(
        "adam", description="Inner-loop optimizer: Adam with beta1=0 (the paper's choice) or plain SGD."
    )
    inner_lr: float = Field(
        1e-3, gt=0, le=100, description="Inner-loop step size (Adam 1e-3 in the paper; SGD needs a larger one)."
    )
    inner_steps: int = Field(
        5, ge=1, le=1000, description="Inner steps on each task's support set during meta-training."
    )
    eval_inner_steps: int = Field(50, ge=0, le=1000, title="Inner steps at meta-test",
                                  description="Inner steps when adapting at test time.")
    meta_batch_size: int = Field(5, ge=1, le=1024, description="Tasks per meta-update.")
    outer_stepsize: float = Field(
        1.0, gt=0, le=10, description="Meta step size epsilon; annealed linearly to 0 over the run."
    )
    transductive: bool = Field(
        True,
        description="Meta-test batch norm: true uses the whole query batch (the paper's 'transduction' rows; fast); "
        "false scores each query with the support set only (its main rows; one forward pass per query).",
    )


def _batch_norm_mode(params: ReptileParams) -> str:
    """How Reptile normalises at meta-test time under ``params`` (the report prints it)."""
    if params.transductive:
        return "transductive (query batch statistics, the paper's 'transduction' rows)"
    return "inductive (each query scored in a batch with the support set only)"


SPEC = AlgorithmSpec(
    id="metalab.reptile",
    title="Reptile",
    description=(
        "Trains on each task for a few steps, then moves the initialisation towards the adapted weights. "
        "First-order: no gradient flows through the inner loop."
    ),
    params=ReptileParams,
    factory="metalab.plugins.reptile.algorithm:Reptile",
    paper="Nichol, Achiam and Schulman 2018, On First-Order Meta-Learning Algorithms (arXiv:1803.02999)",
    task_kinds=("classification", "regression"),
    batch_norm_mode=_batch_norm_mode,
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]

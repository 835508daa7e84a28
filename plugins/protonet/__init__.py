"""Prototypical Networks (registration only, no TensorFlow import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from metalab.api import AlgorithmSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.5"  # functional.mean (1.5): float64 losses stay float64 on JAX


class ProtoNetParams(Params):
    """Prototypical Networks' parameters; defaults are those of Snell, Swersky and Zemel 2017."""

    distance: Literal["euclidean", "cosine"] = Field(
        "euclidean", description="Squared Euclidean distance (the paper's) or cosine distance to the prototypes."
    )
    outer_lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate.")
    meta_batch_size: int = Field(1, ge=1, le=1024, description="Episodes per update (one in the paper).")
    lr_decay_every: int = Field(
        2000, ge=0, le=10_000_000, description="Halve the learning rate every this many updates (0: never)."
    )
    transductive: bool = Field(
        False,
        description="Meta-test batch norm: false (the paper's code) normalises with the running statistics learned "
        "in training, so no query's prediction depends on the others (inductive); true normalises each episode "
        "with the statistics of its own support and query images (transductive).",
    )


def _batch_norm_mode(params: ProtoNetParams) -> str:
    """How Prototypical Networks normalise at meta-test time under ``params`` (the report prints it)."""
    if params.transductive:
        return "transductive (each episode's support and query statistics)"
    return "inductive (running statistics learned in training)"


SPEC = AlgorithmSpec(
    id="metalab.protonet",
    title="Prototypical Networks",
    description=(
        "Embeds images, takes each class's mean support embedding as its prototype and classifies queries by "
        "a softmax over negative distances to the prototypes. No inner loop."
    ),
    params=ProtoNetParams,
    factory="metalab.plugins.protonet.algorithm:ProtoNet",
    paper="Snell, Swersky and Zemel 2017, Prototypical Networks for Few-shot Learning (NeurIPS)",
    task_kinds=("classification",),
    batch_norm_mode=_batch_norm_mode,
    memory_model="protonet",
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]

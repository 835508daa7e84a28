"""Matching Networks for metalab (registration only: importing this module loads no deep-learning framework).

metalab imports this module through the ``metalab`` entry point declared in ``pyproject.toml`` and calls the
hook below; the implementation in :mod:`metalab_matchingnet.algorithm` (which imports Keras) is imported only
when a run builds the algorithm.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from metalab.api import AlgorithmSpec, Params, TaskSpec, hookimpl

__all__ = ["METALAB_PLUGIN_API", "MatchingNetParams", "SPEC", "metalab_register_algorithms"]

#: The plugin API this plugin is written for; metalab loads it under any 1.x.
METALAB_PLUGIN_API = "1.0"


class MatchingNetParams(Params):
    """Matching Networks' parameters (Vinyals et al. 2016)."""

    fce: bool = Field(
        False,
        description=(
            "Full context embeddings: embed the support set with a bidirectional LSTM and each query with an "
            "attention LSTM over the support set (section 2.1.2 and appendix of the paper)."
        ),
    )
    processing_steps: int = Field(
        5, ge=1, le=100, description="Read steps K of the query's attention LSTM (used only with fce)."
    )
    outer_lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate.")
    meta_batch_size: int = Field(1, ge=1, le=1024, description="Episodes per update.")


def _make(params: MatchingNetParams, task: TaskSpec) -> Any:
    from .algorithm import MatchingNet

    return MatchingNet(params, task)


SPEC = AlgorithmSpec(
    id="metalab_matchingnet.matchingnet",
    title="Matching Networks",
    description=(
        "Classifies a query by attention over the support set: a softmax over the cosine similarities between "
        "the query's embedding and each support embedding weighs the support labels. Optional full context "
        "embeddings condition both embeddings on the whole support set with LSTMs. No inner loop."
    ),
    params=MatchingNetParams,
    factory=_make,
    paper="Vinyals, Blundell, Lillicrap, Kavukcuoglu and Wierstra 2016, Matching Networks for One Shot Learning (NeurIPS)",
    task_kinds=("classification",),
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]

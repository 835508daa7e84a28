"""A plain supervised MLP classifier: the "no meta-learning" reference (registration only, no TensorFlow import)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from metalab.api import AlgorithmSpec, Params, ReportPanel, hookimpl

METALAB_PLUGIN_API = "1.4"


class MLPClassifierParams(Params):
    """Parameters of the supervised MLP reference."""

    hidden: list[Annotated[int, Field(ge=1, le=8192)]] = Field(
        [256, 128], title="Hidden layer sizes", min_length=1, max_length=8,
        description="Sizes of the ReLU hidden layers; the last one gives the features used at meta-test time.",
    )
    batch_size: int = Field(64, ge=2, le=8192, description="Mini-batch size.")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate.")
    holdout_fraction: float = Field(
        0.1, ge=0, lt=1,
        description=(
            "Share of each training class's images held out of training (chosen by the run's seed) to measure "
            "plain supervised accuracy at the end; 0 trains on every image and reports no such accuracy. Unused "
            "on a supervised-mode dataset, whose own test split is scored instead."
        ),
    )


SPEC = AlgorithmSpec(
    id="metalab.mlp_classifier",
    title="MLP classifier (no meta-learning)",
    description=(
        "The supervised reference: a plain Keras MLP (flatten, ReLU hidden layers, softmax over the training "
        "classes) trained on ordinary mini-batches of the training split, its inputs scaled once by the dataset. "
        "At meta-test time each episode is classified by the nearest class centroid of the support set in the "
        "last hidden layer's features. The report also gives its plain supervised accuracy: on a dataset in "
        "supervised mode (e.g. MNIST with mode=supervised: all classes, official train and test images) the "
        "standard test accuracy on the test split, otherwise on a seeded share of the training images held out "
        "of training. It ignores the run's backbone."
    ),
    params=MLPClassifierParams,
    factory="metalab.plugins.mlp_classifier.algorithm:MLPClassifier",
    paper="Rumelhart, Hinton and Williams 1986, Learning representations by back-propagating errors (Nature)",
    task_kinds=("classification",),
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]


@hookimpl
def metalab_report_panels(report_data: dict) -> list[ReportPanel]:
    """Plain supervised accuracy on the test split or held-out training images (MLP classifier runs only)."""
    data = report_data.get(SPEC.id)
    if not isinstance(data, dict) or not (data.get("test") or data.get("holdout")):
        return []
    from .panels import supervised_accuracy_panel

    return [supervised_accuracy_panel(data)]

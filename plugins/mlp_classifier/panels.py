"""The MLP classifier's report panel, built from the data the training worker stored (no TensorFlow)."""

from __future__ import annotations

from typing import Any

from metalab.core.plugin_api import ReportPanel


def supervised_accuracy_panel(data: dict[str, Any]) -> ReportPanel:
    """The plain supervised accuracy on training images held out of training: the "no meta-learning" reference.

    Args:
        data: What ``MLPClassifier.report_data()`` returned: ``holdout`` with ``accuracy``, ``correct``,
            ``images``, ``classes``, ``held_out_classes``, ``chance`` and ``fraction``.

    Returns:
        The :class:`ReportPanel` (Markdown only).
    """
    holdout = data["holdout"]
    lines = [
        "| held-out accuracy | classes | images | chance |",
        "| ---: | ---: | ---: | ---: |",
        f"| {100 * holdout['accuracy']:.1f}% ({holdout['correct']:,} of {holdout['images']:,}) "
        f"| {holdout['classes']:,} | {holdout['images']:,} | {100 * holdout['chance']:.1f}% |",
        "",
        f"The classifier's softmax over the {holdout['classes']:,} training classes, scored on "
        f"{100 * holdout['fraction']:.0f}% of each training class's images, chosen by the run's seed and never "
        "in a training batch. The run's test accuracy is few-shot instead: new classes, classified by the "
        "nearest support centroid in the last hidden layer's features.",
    ]
    return ReportPanel(title="Supervised accuracy (no meta-learning)", markdown="\n".join(lines))

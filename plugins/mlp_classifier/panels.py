"""The MLP classifier's report panel, built from the data the training worker stored (no TensorFlow)."""

from __future__ import annotations

from typing import Any

from metalab.api import ReportPanel

TITLE = "Supervised accuracy (no meta-learning)"


def _row(name: str, result: dict[str, Any]) -> str:
    return (f"| {name} | {100 * result['accuracy']:.1f}% ({result['correct']:,} of {result['images']:,}) "
            f"| {result['classes']:,} | {result['images']:,} | {100 * result['chance']:.1f}% |")


def supervised_accuracy_panel(data: dict[str, Any]) -> ReportPanel:
    """The plain supervised accuracy of the classifier: the "no meta-learning" reference.

    Args:
        data: What ``MLPClassifier.report_data()`` returned: ``test`` (on a supervised-mode dataset's test
            split) and/or ``holdout`` (on training images held out of training), each with ``accuracy``,
            ``correct``, ``images``, ``classes`` and ``chance``; ``holdout`` also has ``fraction``.

    Returns:
        The :class:`ReportPanel` (Markdown only).

    Raises:
        ValueError: If ``data`` holds neither ``test`` nor ``holdout``.
    """
    test, holdout = data.get("test"), data.get("holdout")
    if not test and not holdout:
        raise ValueError(f"The supervised accuracy panel needs 'test' or 'holdout' data. Received: keys={sorted(data)}")
    lines = ["| scored on | accuracy | classes | images | chance |", "| --- | ---: | ---: | ---: | ---: |"]
    if test:
        lines.append(_row("test set", test))
    if holdout:
        lines.append(_row("held-out training images", holdout))
    lines.append("")
    if test:
        lines.append(
            f"**Test accuracy {100 * test['accuracy']:.2f}%**: the classifier's softmax over all "
            f"{test['classes']:,} classes, scored on the dataset's test split (for MNIST, Fashion-MNIST and EMNIST "
            "letters in supervised mode, the official test images), never seen in training: the standard supervised "
            "figure."
        )
    if holdout:
        lines.append(
            f"Held-out accuracy: the softmax over the {holdout['classes']:,} training classes, scored on "
            f"{100 * holdout['fraction']:.0f}% of each training class's images, chosen by the run's seed and never "
            "in a training batch."
        )
    lines.append(
        "The run's few-shot test accuracy is another measure: each episode classified by the nearest support "
        "centroid in the last hidden layer's features" + (" (on classes seen in training here)." if test else
                                                          ", on classes never seen in training.")
    )
    return ReportPanel(title=TITLE, markdown="\n".join(lines))

"""The zero-shot report panel, built from the data the training worker stored (Plotly only, no TensorFlow)."""

from __future__ import annotations

import json
from typing import Any

from metalab.api import ReportPanel

_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf"]


def projection_panel(data: dict[str, Any]) -> ReportPanel:
    """Query image embeddings (dots; hollow when misclassified) and class prototypes (stars) in one 2-D projection.

    Args:
        data: What ``ZeroShotProtoNet.report_data()`` returned (``mode``, ``ways``, ``query_points``,
            ``query_labels``, ``query_predicted``, ``prototype_points``, ``per_class_accuracy``, ``accuracy`` and,
            zero-shot, ``class_attributes``).

    Returns:
        The :class:`ReportPanel`: the figure and a table of each class's accuracy.
    """
    import plotly.graph_objects as go

    zero_shot = data["mode"] == "zero-shot"
    source = "attribute embedding" if zero_shot else "mean support embedding"
    fig = go.Figure()
    points, labels, predicted = data["query_points"], data["query_labels"], data["query_predicted"]
    for k in range(int(data["ways"])):
        colour = _COLOURS[k % len(_COLOURS)]
        mine = [i for i, label in enumerate(labels) if label == k]
        fig.add_trace(go.Scatter(
            x=[points[i][0] for i in mine], y=[points[i][1] for i in mine], mode="markers",
            name=f"class {k} images",
            marker={"color": colour, "size": 7,
                    "symbol": ["circle" if predicted[i] == k else "circle-open" for i in mine]},
            hovertemplate=f"class {k}: predicted %{{text}}<extra></extra>", text=[str(predicted[i]) for i in mine],
        ))
        proto = data["prototype_points"][k]
        fig.add_trace(go.Scatter(
            x=[proto[0]], y=[proto[1]], mode="markers", name=f"class {k} prototype",
            marker={"color": colour, "size": 16, "symbol": "star", "line": {"color": "black", "width": 1}},
        ))
    fig.update_layout(
        title=f"{data['mode'].capitalize()} episode: query image embeddings and prototypes ({source}), PCA",
        xaxis_title="principal axis 1", yaxis_title="principal axis 2", height=480,
    )
    lines = ["| class | accuracy |" + (" attributes set |" if zero_shot else ""),
             "| ---: | ---: |" + (" --- |" if zero_shot else "")]
    for k, accuracy in enumerate(data["per_class_accuracy"]):
        shown = "n/a" if accuracy is None else f"{100 * accuracy:.0f}%"
        row = f"| {k} | {shown} |"
        if zero_shot:
            on = [str(i) for i, v in enumerate(data["class_attributes"][k]) if v > 0.5]
            row += f" {', '.join(on) or '(none above 0.5)'} |"
        lines.append(row)
    lines.append("")
    lines.append(
        f"One episode of the last evaluation (meta-test classes at the end of training): accuracy "
        f"{100 * data['accuracy']:.1f}%. "
        + ("The stars are embeddings of the classes' attribute vectors: no image of these classes was seen."
           if zero_shot else "The dataset has no class attributes, so the prototypes are mean support embeddings.")
    )
    return ReportPanel(title="Zero-shot prototypes", figure=json.loads(fig.to_json()), markdown="\n".join(lines))

"""The rotation plugin's report panel, drawn from the data the training worker stored (Plotly only, no TensorFlow)."""

from __future__ import annotations

import json
from typing import Any

from metalab.api import ReportPanel


def rotation_panel(data: dict[str, Any]) -> ReportPanel:
    """Bars of the rotation-prediction accuracy per angle, on training batches and on held-out images.

    Args:
        data: What ``RotationPretraining.report_data()`` returned (``angles``, ``steps``, ``train_per_angle``,
            ``heldout_per_angle``, ``heldout_images``, ``probe``).

    Returns:
        The :class:`ReportPanel`: the figure and a short table with the chance level.
    """
    import plotly.graph_objects as go

    angles = [f"{a}°" for a in data["angles"]]
    fig = go.Figure()
    series = [("training batches (moving average)", data.get("train_per_angle"), "#1f77b4"),
              (f"held-out images ({data.get('heldout_images', 0)}, latest evaluated episode)",
               data.get("heldout_per_angle"), "#ff7f0e")]
    for name, values, color in series:
        if values:
            fig.add_trace(go.Bar(x=angles, y=[100 * v for v in values], name=name, marker={"color": color},
                                 hovertemplate="%{x}: %{y:.1f}%<extra></extra>"))
    chance = 100.0 / len(angles)
    fig.add_hline(y=chance, line={"color": "#888", "dash": "dot"}, annotation_text="chance")
    fig.update_layout(title="Rotation prediction: accuracy per angle", barmode="group",
                      yaxis={"title": "accuracy (%)", "range": [0, 100]}, height=380, margin={"t": 60, "b": 40})

    def mean(values: list[float] | None) -> str:
        return "n/a" if not values else f"{100 * sum(values) / len(values):.1f}%"

    probe = "nearest class centroid" if data.get("probe") == "prototype" else "a linear probe"
    markdown = "\n".join([
        "| images | rotation accuracy (chance 25%) |",
        "| --- | ---: |",
        f"| training batches | {mean(data.get('train_per_angle'))} |",
        f"| held-out images | {mean(data.get('heldout_per_angle'))} |",
        "",
        f"Pre-trained for {data.get('steps', 0)} steps without class labels. The few-shot score above is "
        f"measured on the frozen features by {probe}.",
    ])
    return ReportPanel(title="Rotation prediction (self-supervised pretext task)", figure=json.loads(fig.to_json()),
                       markdown=markdown)

"""Meta-SGD's report panel, built from the data the training worker stored (Plotly only, no TensorFlow)."""

from __future__ import annotations

import json
import math
from typing import Any

from metalab.api import ReportPanel

_COLS = 3


def learned_rates_panel(data: dict[str, Any]) -> ReportPanel:
    """One histogram of the learned inner learning rates per weight, with the initial value marked.

    Args:
        data: What ``MetaSGD.report_data()`` returned: ``init`` and ``layers`` (``name``, ``shape``, ``count``,
            ``mean``, ``std``, ``min``, ``median``, ``max``, ``negative``, ``edges``, ``counts``).

    Returns:
        The :class:`ReportPanel`: the figure and a table of each weight's statistics.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    layers = data["layers"]
    init = data.get("init")
    rows = max(1, math.ceil(len(layers) / _COLS))
    fig = make_subplots(rows=rows, cols=_COLS, subplot_titles=[layer["name"] for layer in layers],
                        horizontal_spacing=0.06, vertical_spacing=min(0.12, 0.6 / rows))
    for i, layer in enumerate(layers):
        edges, counts = layer["edges"], layer["counts"]
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
        row, col = i // _COLS + 1, i % _COLS + 1
        fig.add_trace(go.Bar(x=centers, y=counts, width=widths, marker={"color": "#1f77b4"}, showlegend=False,
                             name=layer["name"], hovertemplate="alpha %{x:.4g}: %{y} rates<extra></extra>"),
                      row=row, col=col)
        if init is not None:
            fig.add_vline(x=init, line={"color": "#d62728", "dash": "dot"}, row=row, col=col)
    fig.update_annotations(font_size=10)
    fig.update_layout(
        title=f"Meta-SGD: learned inner learning rates per weight (red: initial value {init:g})"
        if init is not None else "Meta-SGD: learned inner learning rates per weight",
        height=220 * rows + 100, bargap=0, margin={"t": 80, "b": 40},
    )
    lines = ["| weight | rates | mean | std | min | median | max | negative |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for layer in layers:
        lines.append(
            f"| `{layer['name']}` | {layer['count']:,} | {layer['mean']:.4g} | {layer['std']:.3g} | {layer['min']:.4g} "
            f"| {layer['median']:.4g} | {layer['max']:.4g} | {100 * layer['negative']:.1f}% |"
        )
    lines.append("")
    lines.append("A negative rate steps against its gradient: Meta-SGD learns the direction of the update as well "
                 "as its size.")
    return ReportPanel(title="Learned inner learning rates", figure=json.loads(fig.to_json()),
                       markdown="\n".join(lines))

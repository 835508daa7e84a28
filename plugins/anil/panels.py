"""ANIL's report panel, built from the data the training worker stored (Plotly only, no TensorFlow)."""

from __future__ import annotations

import json
from typing import Any

from metalab.api import ReportPanel


def adaptation_panel(data: dict[str, Any]) -> ReportPanel:
    """A bar chart of parameters per weight, coloured by where they learn, with a table of the same.

    Args:
        data: What ``ANIL.report_data()`` returned: ``layers`` (``name``, ``shape``, ``params``, ``adapts``),
            ``inner_lr``, ``inner_steps``, ``eval_inner_steps``, ``first_order``.

    Returns:
        The :class:`ReportPanel`.
    """
    import plotly.graph_objects as go

    layers = data["layers"]
    fig = go.Figure()
    for adapts, name, color in ((False, "outer loop only (backbone)", "#7f7f7f"),
                                (True, "inner and outer loop (head)", "#ff7f0e")):
        rows = [layer for layer in layers if bool(layer["adapts"]) == adapts]
        fig.add_trace(go.Bar(x=[layer["name"] for layer in rows], y=[layer["params"] for layer in rows], name=name,
                             marker={"color": color}))
    adapted = sum(layer["params"] for layer in layers if layer["adapts"])
    total = sum(layer["params"] for layer in layers) or 1
    fig.update_layout(
        title=f"ANIL: weights adapted per task ({adapted:,} of {total:,} parameters, {100 * adapted / total:.2g}%)",
        yaxis={"title": "parameters", "type": "log"}, barmode="group", height=380, margin={"t": 60, "b": 40},
        legend={"orientation": "h", "y": -0.3},
    )
    lines = ["| weight | shape | parameters | adapts in the inner loop |", "| --- | --- | ---: | --- |"]
    for layer in layers:
        shape = "×".join(str(s) for s in layer["shape"]) or "scalar"
        lines.append(f"| `{layer['name']}` | {shape} | {layer['params']:,} | {'yes' if layer['adapts'] else 'no'} |")
    order = "first-order" if data.get("first_order") else "second-order"
    lines.append("")
    lines.append(
        f"The head adapts with step size {data.get('inner_lr')} for {data.get('inner_steps')} step(s) in "
        f"meta-training ({order}) and {data.get('eval_inner_steps')} step(s) at meta-test; the backbone's features "
        "are computed once per task and it learns in the outer loop only."
    )
    return ReportPanel(title="Where ANIL adapts", figure=json.loads(fig.to_json()), markdown="\n".join(lines))

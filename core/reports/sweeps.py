"""A sweep's figures as pure functions of its trial rows (``Services.sweep_trials``): no store, no Streamlit."""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go


def _axis(label: str, values: list[Any]) -> dict[str, Any]:
    """One Parcoords axis: numbers on a continuous axis, anything else one tick per value."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return {"label": label, "values": [float(v) if v is not None else math.nan for v in values]}
    levels = sorted({str(v) for v in present})
    index = {v: i for i, v in enumerate(levels)}
    return {"label": label, "values": [index[str(v)] if v is not None else math.nan for v in values],
            "tickvals": list(range(len(levels))), "ticktext": levels,
            "range": [-0.5, max(len(levels) - 0.5, 0.5)]}


def sweep_parcoords_figure(trials: list[dict[str, Any]], swept: list[str], metric: str, mode: str = "max",
                           title: str = "Trials: swept values and objective") -> go.Figure:
    """One line per trial with an objective, across the swept values and the objective (the last axis), coloured
    by the objective (the best end of the scale is the bright one, whether the sweep maximises or minimises).

    Args:
        trials: Rows with ``trial``, ``params`` and ``objective``.
        swept: The swept names, one axis each, in this order.
        metric: The objective's name (the last axis's title).
        mode: ``max`` or ``min``.
    """
    scored = [t for t in trials if isinstance(t.get("objective"), (int, float)) and math.isfinite(t["objective"])]
    axes = [_axis(name, [(t.get("params") or {}).get(name) for t in scored]) for name in swept]
    objective = [float(t["objective"]) for t in scored]
    axes.append({"label": metric, "values": objective})
    line = {"color": objective, "colorscale": "Viridis", "reversescale": mode == "min", "showscale": True,
            "colorbar": {"title": {"text": metric}}}
    fig = go.Figure(go.Parcoords(line=line, dimensions=axes, meta=[t["trial"] for t in scored]))
    fig.update_layout(title=title, height=420, margin={"t": 90, "b": 40, "l": 60, "r": 60})
    return fig

"""Figures that compare runs, each run drawn in one colour in every figure (curves, scores, parallel coordinates).

Pure functions of plain data (rows of :mod:`metalab.core.reports.runs_table`, metric series): the Compare page
renders them; no Streamlit, no TensorFlow.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import plotly.graph_objects as go

from metalab.core.reports.figures import score_axis_range

__all__ = ["MAX_COMPARED", "PALETTE", "curves_figure", "parallel_coordinates_figure", "run_colors", "scores_figure"]

#: At most this many runs are overlaid: each keeps a colour of its own.
MAX_COMPARED = 20
#: Twenty distinct colours: the ten of the report figures, then ten darker ones.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd", "#e6550d", "#31a354",
           "#756bb1", "#636363")


def run_colors(run_ids: Iterable[str]) -> dict[str, str]:
    """``{run id: colour}``: the n-th run compared gets the n-th colour, in every figure of the comparison."""
    return {run_id: PALETTE[i % len(PALETTE)] for i, run_id in enumerate(run_ids)}


def curves_figure(curves: Mapping[str, list[tuple[int, float]]], labels: Mapping[str, str],
                  colors: Mapping[str, str], metric: str) -> go.Figure:
    """Overlays one metric of several runs, each in its colour.

    Args:
        curves: ``{run id: [(step, value), ...]}``.
        labels: ``{run id: legend label}``.
        colors: ``{run id: colour}`` (:func:`run_colors`).
        metric: The metric's name, the title and y-axis.
    """
    fig = go.Figure()
    for run_id, points in curves.items():
        x = [int(p[0]) for p in points]
        y = [float(p[1]) for p in points]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers" if len(x) < 30 else "lines",
                                 name=labels.get(run_id, run_id), legendgroup=run_id, meta=run_id,
                                 line={"color": colors.get(run_id)}))
    fig.update_layout(title=metric, xaxis_title="meta-training step", yaxis_title=metric, hovermode="x unified",
                      height=380, margin={"t": 60, "b": 40})
    return fig


def scores_figure(rows: list[dict[str, Any]], colors: Mapping[str, str], group_by: str | None = None,
                  title: str = "Headline meta-test score (95% CI)", group_label: str | None = None) -> go.Figure:
    """One point per run (its headline score with its 95% CI bar), in the run's colour, on an axis fitted to the
    intervals: bars drawn from 0 made 94% and 99% look alike.

    Args:
        rows: ``{"id", "label", "score", "ci95", "metric"}`` dicts (rows without a score are skipped), and the
            ``group_by`` field when given.
        colors: ``{run id: colour}``.
        group_by: A field: points stand over its values (``inner_lr=0.01``), side by side within a value.
        group_label: How the field reads on the axis (default: its name).
    """
    fig = go.Figure()
    scored = [r for r in rows if r.get("score") is not None and math.isfinite(float(r["score"]))]
    for row in scored:
        value = row.get(group_by) if group_by else None
        x = f"{group_label or group_by}={'—' if value is None else value}" if group_by else row["label"]
        ci = row.get("ci95")
        fig.add_trace(go.Scatter(x=[x], y=[row["score"]], name=row["label"], meta=row["id"], legendgroup=row["id"],
                                 mode="markers", marker={"color": colors.get(row["id"]), "size": 12},
                                 showlegend=bool(group_by),
                                 error_y={"type": "data", "thickness": 2, "width": 8,
                                          "array": [ci if ci is not None and math.isfinite(ci) else 0]}))
    metric = next((r.get("metric") for r in scored if r.get("metric")), "score")
    axis_range = score_axis_range([{"value": r["score"], "ci95": r.get("ci95")} for r in scored])
    fig.update_layout(title=title, yaxis_title=metric, height=360, margin={"t": 60, "b": 40},
                      yaxis={"range": axis_range, "zeroline": False},
                      scattermode="group" if group_by else None)
    return fig


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _axis(values: list[Any]) -> tuple[list[float | None], list[float], list[str]]:
    """One axis of the parallel coordinates: the values placed on ``0 .. 1``, with tick positions and texts.

    Numbers get a continuous axis from their least to their greatest value (ticks at both ends and the middle);
    anything else gets one evenly spaced tick per distinct value, sorted. A missing value is ``None`` (a gap).
    """
    present = [v for v in values if not _missing(v)]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        low, high = float(min(present)), float(max(present))
        span = high - low
        ticks = [low, (low + high) / 2, high] if span else [low]

        def place(v: float) -> float:
            return (float(v) - low) / span if span else 0.5
    else:
        levels = sorted({str(v) for v in present})
        spots = {level: i / (len(levels) - 1) if len(levels) > 1 else 0.5 for i, level in enumerate(levels)}
        ticks = list(levels)

        def place(v: Any) -> float:
            return spots[str(v)]
    texts = [f"{t:.4g}" if isinstance(t, float) else t for t in ticks]
    return [None if _missing(v) else place(v) for v in values], [place(t) for t in ticks], texts


def parallel_coordinates_figure(rows: list[dict[str, Any]], dimensions: list[str], colors: Mapping[str, str],
                                title: str = "Parameters and scores",
                                labels: Mapping[str, str] | None = None,
                                run_labels: Mapping[str, str] | None = None) -> go.Figure:
    """One line per run across its parameters and metrics, each line in the run's colour.

    Drawn as plain (SVG) lines over one vertical axis per field, not Plotly's WebGL ``Parcoords``: with at most
    :data:`MAX_COMPARED` runs nothing needs WebGL, and setting up its canvases held up every other chart of the
    Compare page by about a second (issue 21, point 5). Each run is a legend entry (click to hide it) and hovering
    a point shows the field and the run's value.

    Args:
        rows: Table rows with an ``id`` and the ``dimensions`` fields.
        dimensions: Fields, one axis each; text fields get one tick per value, numbers a continuous axis.
        colors: ``{run id: colour}``.
        labels: ``{field: axis title}`` (default: the field's name).
        run_labels: ``{run id: legend name}`` (default: the run's id).
    """
    names = [(labels or {}).get(d, d) for d in dimensions]
    axes = [_axis([r.get(d) for r in rows]) for d in dimensions]
    fig = go.Figure()
    for i, row in enumerate(rows):
        raw = [row.get(d) for d in dimensions]
        fig.add_trace(go.Scatter(
            x=list(range(len(dimensions))), y=[placed[i] for placed, _, _ in axes], mode="lines+markers",
            name=(run_labels or {}).get(row["id"], row["id"]), meta=row["id"],
            line={"color": colors.get(row["id"], PALETTE[0]), "width": 2}, marker={"size": 7},
            customdata=[[name, "–" if _missing(v) else (f"{v:.4g}" if isinstance(v, float) else str(v))]
                        for name, v in zip(names, raw)],
            hovertemplate="%{customdata[0]}: %{customdata[1]}<extra>%{fullData.name}</extra>"))
    for x, (_, ticks, texts) in enumerate(axes):
        fig.add_shape(type="line", x0=x, x1=x, y0=0, y1=1, line={"color": "#888", "width": 1}, layer="below")
        for y, text in zip(ticks, texts):
            fig.add_annotation(x=x, y=y, text=text, showarrow=False, xanchor="right", xshift=-4,
                               font={"size": 10, "color": "#444"}, bgcolor="rgba(255,255,255,0.75)")
    fig.update_layout(title=title, height=420, margin={"t": 90, "b": 40, "l": 60, "r": 60},
                      xaxis={"tickvals": list(range(len(dimensions))), "ticktext": names, "side": "top",
                             "range": [-0.5, len(dimensions) - 0.5], "showgrid": False, "zeroline": False},
                      yaxis={"visible": False, "range": [-0.08, 1.08]}, hovermode="closest")
    return fig

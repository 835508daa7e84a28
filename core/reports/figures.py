"""Report figures, tables and the shareable HTML report, built as pure functions of what the run store holds.

No Streamlit and no TensorFlow here: the dashboard renders these figures, the CLI writes the HTML report, and
both pass in plain data (a run's record as a dict, its metrics, evaluations and the worker's ``report_data``).
"""

from __future__ import annotations

import html
import json
import math
import re
from datetime import datetime, timezone
from typing import Any, Iterable

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from metalab.core.reports.scores import headline, score_of, score_rows

__all__ = [
    "GALLERY_TITLE",
    "Series",
    "adaptation_curve_figure",
    "batch_norm_summary",
    "class_colors",
    "compare_curves_figure",
    "embedding_figure",
    "episode_gallery_figure",
    "episode_gallery_pages",
    "final_metrics",
    "learning_curves_figure",
    "markdown_html",
    "panel_figure",
    "published_results",
    "report_figures",
    "report_html",
    "run_progress",
    "score_of",  # from metalab.core.reports.scores, re-exported
    "scores_figure",
    "sinusoid_figure",
]

#: ``{metric name: [(step, value), ...]}`` as returned by ``RunStore.metrics``.
Series = dict[str, list[tuple[int, float]]]

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf")


#: Title of the episode gallery's section (one figure per page: :func:`episode_gallery_pages`).
GALLERY_TITLE = "Episode gallery"
#: Tiles per gallery row, and rows per gallery page (a class's support and query images share its rows).
GALLERY_COLUMNS = 16
GALLERY_ROWS_PER_PAGE = 10


def _xy(points: Iterable[tuple[int, float]] | None, scale: float = 1.0) -> tuple[list[int], list[float]]:
    points = list(points or [])
    return [int(p[0]) for p in points], [scale * float(p[1]) for p in points]


def _known(ci: list) -> bool:
    return bool(ci) and all(c is not None and math.isfinite(c) for c in ci)


def _band(fig: go.Figure, x: list, y: list, ci: list, color: str, name: str, row: int | None = None,
          col: int | None = None) -> None:
    """Adds a shaded 95% confidence band around ``y`` (skipped where the half-widths are unknown).

    The band is a filled outline drawn as lines only: Plotly gives a scatter of fewer than 20 points markers
    by default, which drew a band's edges as dots. A single point has no band to draw; :func:`_error_bars`
    gives it an error bar instead.
    """
    if len(x) < 2 or len(ci) != len(y) or not _known(ci):
        return
    upper = [v + c for v, c in zip(y, ci)]
    lower = [v - c for v, c in zip(y, ci)]
    kwargs = {"row": row, "col": col} if row else {}
    fig.add_trace(
        go.Scatter(x=list(x) + list(x)[::-1], y=upper + lower[::-1], mode="lines", fill="toself",
                   fillcolor=_rgba(color, 0.18), line={"width": 0}, hoverinfo="skip", showlegend=False,
                   name=f"{name} 95% CI"),
        **kwargs,
    )


def _error_bars(y: list, ci: list) -> dict[str, Any] | None:
    """The 95% CI of a curve of one point as an error bar (a band needs two points); ``None`` otherwise."""
    if len(y) == 1 and len(ci) == 1 and _known(ci):
        return {"type": "data", "array": list(ci), "visible": True}
    return None


def _is_percent(metric: str) -> bool:
    """Accuracies are stored as fractions and shown in percent, like the headline score."""
    return metric.rsplit("/", 1)[-1] == "accuracy"


def class_colors(n: int) -> list[str]:
    """``n`` colours that stay apart: D3's ten up to ten classes, Plotly's Dark24 up to 24, then evenly spaced
    hues at alternating lightness (a 20-way episode reused colours with ten)."""
    if n <= len(_PALETTE):
        return list(_PALETTE[:n])
    from plotly.colors import qualitative

    if n <= len(qualitative.Dark24):
        return list(qualitative.Dark24[:n])
    import colorsys

    colors = []
    for i in range(n):
        r, g, b = colorsys.hls_to_rgb(i / n, (0.35, 0.55, 0.45)[i % 3], 0.85 if i % 2 else 0.65)
        colors.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return colors


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _is_environment(metrics: Series | None = None, evaluation: dict[str, Any] | None = None) -> bool:
    """Whether the scores are average returns (an environment run)."""
    if evaluation is not None:
        return "return" in evaluation
    return bool(metrics) and any(name.endswith(("/return", "/return_after")) for name in metrics)


def _is_regression(metrics: Series | None = None, evaluation: dict[str, Any] | None = None) -> bool:
    if _is_environment(metrics, evaluation):  # their scores are returns, unscaled like an MSE
        return True
    if evaluation and "mse" in evaluation:
        return True
    return bool(metrics) and any(name.endswith("/mse") for name in metrics)


def learning_curves_figure(metrics: Series, title: str = "Learning curves", regression: bool | None = None) -> go.Figure:
    """Training and validation curves of one run: loss on the left, accuracy (or MSE) on the right.

    Args:
        metrics: The run's metrics (``train/loss``, ``train/accuracy``, ``val/accuracy`` or ``val/mse``,
            ``val/ci95``, ...).
        title: The figure title (empty: none, where the page prints its own heading).
        regression: Whether the run is a regression run; guessed from the metric names when ``None`` (a run
            that has not validated yet has no ``val/mse`` to tell).

    Returns:
        A two-panel Plotly figure, accuracies in percent; validation scores carry their 95% CI band (an error bar
        while there is a single validation point).
    """
    environment = _is_environment(metrics)
    if regression is None or environment:
        regression = _is_regression(metrics)
    score = "return" if environment else "mse" if regression else "accuracy"
    scale = 1.0 if regression else 100.0  # accuracies in percent, as the headline score
    unit = "average return" if environment else "MSE" if regression else "accuracy (%)"
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "Loss", "Average return (after adaptation)" if environment else "MSE (query, after adaptation)" if regression
        else "Accuracy (query, %)"))
    x, y = _xy(metrics.get("train/loss"))
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="train loss", line={"color": _PALETTE[0]}), row=1, col=1)
    x, y = _xy(metrics.get("val/loss"))
    if x:
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name="val loss", line={"color": _PALETTE[1]}),
                      row=1, col=1)
    for k, name in enumerate(("return_before", "return_after") if environment else ()):
        x, y = _xy(metrics.get(f"train/{name}"))
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"train {name.replace('_', ' ')}",
                                 line={"color": _PALETTE[2 + 2 * k]}), row=1, col=2)
    if not regression:
        x, y = _xy(metrics.get("train/accuracy"), scale)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="train accuracy", line={"color": _PALETTE[2]}),
                      row=1, col=2)
    x, y = _xy(metrics.get(f"val/{score}"), scale)
    if x:
        _, ci = _xy(metrics.get("val/ci95"), scale)
        ci = ci if len(ci) == len(y) else []
        _band(fig, x, y, ci, _PALETTE[3], f"val {score}", row=1, col=2)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"val {score}", line={"color": _PALETTE[3]},
                                 error_y=_error_bars(y, ci)), row=1, col=2)
    fig.update_xaxes(title_text="meta-training step")
    fig.update_yaxes(title_text=unit, row=1, col=2)
    fig.update_layout(title=title or None, hovermode="x unified", legend={"orientation": "h", "y": -0.2}, height=380,
                      margin={"t": 60, "b": 40})
    return fig


def adaptation_curve_figure(evaluation: dict[str, Any], title: str = "Adaptation curve") -> go.Figure | None:
    """The query score after 0, 1, ..., n inner steps at meta-test time, with its 95% CI band.

    Args:
        evaluation: An evaluation as the store returns it (``curve``, ``curve_ci95``, ``accuracy`` or ``mse``).
        title: The figure title, followed by the episode count (empty: the episode count alone, where the page
            prints its own heading).

    Returns:
        A Plotly figure, or ``None`` when the evaluation holds no curve (algorithms without an inner loop).
    """
    curve = evaluation.get("curve")
    if not curve:
        return None
    regression = _is_regression(evaluation=evaluation)
    environment = _is_environment(evaluation=evaluation)
    scale = 1.0 if regression else 100.0
    y = [scale * float(v) for v in curve]
    ci = [scale * float(v) for v in evaluation.get("curve_ci95") or []]
    x = list(range(len(y)))
    fig = go.Figure()
    _band(fig, x, y, ci, _PALETTE[0], "curve")
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name="query score", line={"color": _PALETTE[0]},
                             error_y=_error_bars(y, ci)))
    episodes = f"{evaluation.get('episodes', '?')} {evaluation.get('split', 'test')} " \
               f"{'tasks' if environment else 'episodes'}"
    fig.update_layout(
        title=f"{title} ({episodes})" if title else f"Mean over {episodes}, with its 95% CI",
        xaxis_title="policy-gradient adaptation steps" if environment else "inner gradient steps",
        yaxis_title="average return" if environment else "MSE" if regression else "accuracy (%)", height=360,
        margin={"t": 60, "b": 40},
    )
    return fig


def returns_comparison_figure(evaluation: dict[str, Any], adaptation: dict[str, Any] | None,
                              comparisons: list[dict[str, Any]]) -> go.Figure:
    """An environment run's average return after 0..n adaptation steps with 95% CI bands (the MAML paper's figure
    for 2D navigation), beside a random initialisation adapted the same way and other runs scored on the same tasks.

    Args:
        evaluation: The run's headline evaluation (``curve``, ``curve_ci95``, ``episodes`` test tasks).
        adaptation: The report data's ``adaptation`` (``{"tasks", "curves": {name: {"curve", "curve_ci95"}}}``)
            or ``None``; its random-initialisation curve is drawn, on its own (fewer) tasks.
        comparisons: Other runs' headline curves (``Services.adaptation_comparisons``).
    """
    fig = go.Figure()
    lines = [(f"this run ({evaluation.get('episodes', '?')} test tasks)", evaluation.get("curve") or [],
              evaluation.get("curve_ci95") or [])]
    lines += [(row["label"], row["curve"], row.get("curve_ci95") or []) for row in comparisons]
    random = ((adaptation or {}).get("curves") or {}).get("random initialisation")
    if random:
        lines.append((f"random initialisation ({adaptation.get('tasks', '?')} test tasks)", random["curve"],
                      random.get("curve_ci95") or []))
    for i, (label, curve, ci) in enumerate(lines):
        x, y = list(range(len(curve))), [float(v) for v in curve]
        ci = [float(v) for v in ci] if len(ci) == len(y) else []
        color = _PALETTE[i % len(_PALETTE)]
        _band(fig, x, y, ci, color, label)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=label, line={"color": color},
                                 error_y=_error_bars(y, ci)))
    fig.update_layout(xaxis_title="policy-gradient adaptation steps", yaxis_title="average return", height=380,
                      xaxis={"dtick": 1}, legend={"orientation": "h", "y": -0.25}, margin={"t": 30, "b": 40})
    return fig


def trajectories_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Paths of the agent in two test tasks after each adaptation step, with the goal (2D navigation)."""
    fig = make_subplots(rows=1, cols=max(1, len(rows)), subplot_titles=[row["task"] for row in rows])
    for col, row in enumerate(rows, start=1):
        for k, paths in enumerate(row["paths"]):
            color = _PALETTE[k % len(_PALETTE)]
            for j, path in enumerate(paths):
                xs = [0.0] + [p[0] for p in path]
                ys = [0.0] + [p[1] for p in path]
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": color, "width": 1.5},
                                         name=f"after {k} step{'s' if k != 1 else ''}", legendgroup=str(k),
                                         showlegend=col == 1 and j == 0), row=1, col=col)
        fig.add_trace(go.Scatter(x=[row["goal"][0]], y=[row["goal"][1]], mode="markers", name="goal",
                                 marker={"symbol": "star", "size": 14, "color": "black"}, legendgroup="goal",
                                 showlegend=col == 1), row=1, col=col)
    fig.update_layout(height=380, legend={"orientation": "h", "y": -0.2}, margin={"t": 40, "b": 40})
    return fig


def scores_figure(rows: list[dict[str, Any]], title: str = "Meta-test score") -> go.Figure:
    """Final scores as points with 95% CI bars (one per run or published result), on an axis fitted to them.

    Bars drawn from 0 made 94% and 99% look alike; points on an axis that spans the intervals (plus a margin,
    never below 0 for scores that cannot be negative) show the differences a reader compares.

    Args:
        rows: ``{"label", "value", "ci95"}`` dicts, optionally ``"group"`` (points of one group share a colour)
            and ``"metric"`` (the axis title; the first row's is used).
        title: The figure title (empty: none, where the page prints its own heading).

    Returns:
        A Plotly figure of one marker trace per group.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row.get("group", "")), []).append(row)
    fig = go.Figure()
    for i, (group, members) in enumerate(groups.items()):
        fig.add_trace(
            go.Scatter(
                x=[m["label"] for m in members], y=[m["value"] for m in members], name=group or "score",
                mode="markers", marker={"color": _PALETTE[i % len(_PALETTE)], "size": 12, "symbol": "diamond"},
                showlegend=bool(group),
                error_y={"type": "data", "thickness": 2, "width": 8,
                         "array": [m.get("ci95") if m.get("ci95") is not None and math.isfinite(m["ci95"]) else 0
                                   for m in members]},
            )
        )
    fig.update_layout(title=title or None, yaxis_title=rows[0].get("metric", "score") if rows else "score",
                      yaxis={"range": _score_range(rows), "zeroline": False}, height=360,
                      margin={"t": 60 if title else 30, "b": 40})
    return fig


def _score_range(rows: list[dict[str, Any]]) -> list[float] | None:
    """A y range that holds every point and its interval with a margin (``None`` when there is nothing)."""
    lows, highs = [], []
    for row in rows:
        value = row.get("value")
        if value is None or not math.isfinite(value):
            continue
        ci = row.get("ci95")
        ci = ci if ci is not None and math.isfinite(ci) else 0.0
        lows.append(value - ci)
        highs.append(value + ci)
    if not lows:
        return None
    low, high = min(lows), max(highs)
    pad = 0.15 * (high - low) if high > low else max(0.05 * abs(high), 1e-3)
    bottom = low - pad
    if low >= 0:  # accuracies and errors are never negative
        bottom = max(0.0, bottom)
    return [bottom, high + pad]


#: The y range of a score chart (points with intervals): public for the Compare figures.
score_axis_range = _score_range


def compare_curves_figure(curves: dict[str, list[tuple[int, float]]], metric: str) -> go.Figure:
    """Overlays one metric of several runs.

    Args:
        curves: ``{run label: [(step, value), ...]}``.
        metric: The metric's name (``val/accuracy``, ``train/loss``, ...), used for titles.

    Returns:
        A Plotly figure with one line per run (accuracies in percent).
    """
    fig = go.Figure()
    scale = 100.0 if _is_percent(metric) else 1.0
    colors = class_colors(len(curves))
    for i, (label, points) in enumerate(curves.items()):
        x, y = _xy(points, scale)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers" if len(x) < 30 else "lines", name=label,
                                 line={"color": colors[i]}))
    fig.update_layout(title=metric, xaxis_title="meta-training step",
                      yaxis_title=f"{metric} (%)" if scale != 1.0 else metric, hovermode="x unified",
                      height=380, margin={"t": 60, "b": 40})
    return fig


def sinusoid_figure(data: dict[str, Any]) -> go.Figure:
    """The MAML paper's sinusoid figure: true curve, support points and the model before and after adaptation.

    Args:
        data: The ``sinusoid`` part of a run's ``report_data.json``: ``x`` (the grid) and ``tasks``, each with
            ``amplitude``, ``phase``, ``true`` (on the grid), ``support_x``, ``support_y`` and ``predictions``
            (``{"0": [...], "1": [...], "10": [...]}``: model output on the grid after that many inner steps).

    Returns:
        A Plotly figure with one panel per task.
    """
    tasks = data.get("tasks", [])
    x = data.get("x", [])
    fig = make_subplots(rows=1, cols=max(1, len(tasks)), shared_yaxes=True, subplot_titles=[
        f"A={t['amplitude']:.2f}, phase={t['phase']:.2f}" for t in tasks] or None)
    styles = {"0": ("pre-update", "dot", _PALETTE[7]), "1": ("1 grad step", "dash", _PALETTE[1]),
              "10": ("10 grad steps", "solid", _PALETTE[2])}
    for col, task in enumerate(tasks, start=1):
        first = col == 1
        fig.add_trace(go.Scatter(x=x, y=task["true"], mode="lines", name="ground truth", showlegend=first,
                                 legendgroup="truth", line={"color": _PALETTE[3], "width": 3}), row=1, col=col)
        for steps, values in task.get("predictions", {}).items():
            label, dash, color = styles.get(str(steps), (f"{steps} grad steps", "solid", _PALETTE[4]))
            fig.add_trace(go.Scatter(x=x, y=values, mode="lines", name=label, showlegend=first, legendgroup=label,
                                     line={"color": color, "dash": dash}), row=1, col=col)
        fig.add_trace(go.Scatter(x=task["support_x"], y=task["support_y"], mode="markers", name="support points",
                                 showlegend=first, legendgroup="support",
                                 marker={"color": "black", "symbol": "triangle-up", "size": 9}), row=1, col=col)
    fig.update_layout(title="Sinusoid regression: adaptation from the meta-learned initialisation", height=380,
                      legend={"orientation": "h", "y": -0.2}, margin={"t": 70, "b": 40})
    return fig


def _gallery_rows(data: dict[str, Any], columns: int) -> list[tuple[int, list[tuple[Any, str]]]]:
    """``[(class, tiles), ...]``: each class's support images, then its queries, wrapped at ``columns`` tiles.

    A tile is ``(image, title)``; a class spans as many rows as its tiles need.
    """
    support = list(zip(data["support_images"], data["support_labels"]))
    queries = list(zip(data["query_images"], data["query_labels"], data["query_predictions"]))
    classes = sorted({int(label) for _, label in support} | {int(label) for _, label, _ in queries})
    rows = []
    for cls in classes:
        tiles = [(image, f"<b>class {cls}</b>" if i == 0 else "support")
                 for i, (image, _) in enumerate(img for img in support if int(img[1]) == cls)]
        for image, _, pred in (q for q in queries if int(q[1]) == cls):
            if int(pred) == cls:
                tiles.append((image, "<span style='color:green'>✓</span>"))
            else:
                tiles.append((image, f"<span style='color:red'>✗ pred {int(pred)}</span>"))
        for start in range(0, max(len(tiles), 1), columns):
            rows.append((cls, tiles[start:start + columns]))
    return rows


#: Lines per page of a text episode's gallery (a line per support sentence and per query).
TEXT_LINES_PER_PAGE = 60


def _text_lines(data: dict[str, Any]) -> list[tuple[int, str, str, str]]:
    """``[(class, role, text, mark), ...]`` of a text episode: each class's support sentences, then its queries."""
    support = list(zip(data["support_texts"], data["support_labels"]))
    queries = list(zip(data["query_texts"], data["query_labels"], data["query_predictions"]))
    classes = sorted({int(label) for _, label in support} | {int(label) for _, label, _ in queries})
    lines = []
    for cls in classes:
        lines += [(cls, "support", text, "") for text, label in support if int(label) == cls]
        lines += [(cls, "query", text, "✓" if int(pred) == cls else f"✗ pred {int(pred)}")
                  for text, label, pred in queries if int(label) == cls]
    return lines


def episode_gallery_pages(data: dict[str, Any], columns: int = GALLERY_COLUMNS,
                          rows_per_page: int = GALLERY_ROWS_PER_PAGE) -> list[list[int]]:
    """The classes on each page of an episode's gallery (whole classes per page, at most ``rows_per_page`` rows
    unless one class needs more; a text episode's pages hold :data:`TEXT_LINES_PER_PAGE` lines)."""
    pages: list[list[int]] = []
    counts: dict[int, int] = {}
    if "support_texts" in data:
        rows_per_page = TEXT_LINES_PER_PAGE
        for cls, *_ in _text_lines(data):
            counts[cls] = counts.get(cls, 0) + 1
    else:
        for cls, _ in _gallery_rows(data, columns):
            counts[cls] = counts.get(cls, 0) + 1
    used = rows_per_page
    for cls, rows in counts.items():
        if used + rows > rows_per_page:
            pages.append([])
            used = 0
        pages[-1].append(cls)
        used += rows
    return pages or [[]]


def _png(image: Any) -> str:
    """A grey (``[H, W]``) or colour (``[H, W, 3]``) uint8 image as a PNG data URI (a tenth of the JSON of its
    pixel values, which matters once a gallery shows every query)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    pixels = np.asarray(image, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB" if pixels.ndim == 3 else "L").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def episode_gallery_figure(data: dict[str, Any], page: int = 0, columns: int = GALLERY_COLUMNS,
                           rows_per_page: int = GALLERY_ROWS_PER_PAGE) -> go.Figure:
    """One page of a test episode's gallery: a row per class, its support images then every query of that class,
    each query marked right or wrong (with the predicted class).

    Every query the report data scores is on some page (:func:`episode_gallery_pages`), and the title's score
    counts exactly the queries on this page (and, on a paged gallery, those of all pages).

    Args:
        data: The ``episode`` part of ``report_data.json``: ``support_images`` and ``query_images`` (uint8
            ``[n, H, W]`` or ``[n, H, W, 3]`` nested lists), ``support_labels``, ``query_labels`` and
            ``query_predictions``; optionally ``ways``, ``shots`` and ``episode_queries`` (the episode's query
            count, when only some were stored).
        page: Which page (0-based; clipped to the last).
        columns: Tiles per row.
        rows_per_page: Rows per page.

    Returns:
        A Plotly figure of image tiles; ``layout.meta`` holds ``{"page", "pages", "queries", "correct",
        "all_queries", "all_correct"}``: what the title states, as numbers.
    """
    pages = episode_gallery_pages(data, columns, rows_per_page)
    page = max(0, min(int(page), len(pages) - 1))
    shown = set(pages[page])
    if "support_texts" in data:
        return _text_gallery_figure(data, page, pages)
    rows = [(cls, tiles) for cls, tiles in _gallery_rows(data, columns) if cls in shown]
    labels, predictions = list(data["query_labels"]), list(data["query_predictions"])
    on_page = [int(label) == int(pred) for label, pred in zip(labels, predictions) if int(label) in shown]
    everywhere = [int(label) == int(pred) for label, pred in zip(labels, predictions)]
    # One axis with every tile placed on it (a subplot grid of a few hundred cells took seconds to build).
    first = next((tiles[0][0] for _, tiles in rows if tiles), [[0]])
    height, width = len(first), len(first[0]) if len(first) else 1
    step_x, step_y = width * 1.08, height * 1.45  # room for each tile's title above it
    traces, notes = [], []
    for r, (_, tiles) in enumerate(rows):
        for c, (image, title) in enumerate(tiles):
            x0, y0 = c * step_x, r * step_y
            traces.append({"type": "image", "source": _png(image), "x0": x0, "y0": y0, "hoverinfo": "skip"})
            notes.append({"x": x0 + width / 2, "y": y0 - 0.5, "xref": "x", "yref": "y", "text": title,
                          "showarrow": False, "yanchor": "bottom", "font": {"size": 10}})
    fig = go.Figure({"data": traces, "layout": {"annotations": notes}})
    cols = max((len(tiles) for _, tiles in rows), default=1)
    fig.update_xaxes(visible=False, range=[-0.5, cols * step_x], constrain="domain")
    fig.update_yaxes(visible=False, range=[max(1, len(rows)) * step_y - 0.5, -0.45 * height],
                     scaleanchor="x", constrain="domain")

    fig.update_layout(title={"text": _gallery_heading(data, page, pages, on_page, everywhere), "font": {"size": 14}},
                      height=85 * max(1, len(rows)) + 90, margin={"t": 80, "b": 10, "l": 10, "r": 10},
                      meta={"page": page, "pages": len(pages), "queries": len(on_page), "correct": sum(on_page),
                            "all_queries": len(everywhere), "all_correct": sum(everywhere)})
    return fig


def _gallery_heading(data: dict[str, Any], page: int, pages: list[list[int]], on_page: list[bool],
                     everywhere: list[bool]) -> str:
    """The gallery title: the episode, the page and the score of exactly the queries shown (and of all pages)."""
    def score(marks: list[bool]) -> str:
        if not marks:
            return "no queries"
        return f"{sum(marks)}/{len(marks)} queries right ({100 * sum(marks) / len(marks):.1f}%)"

    heading = f"Test episode: {data.get('ways', '?')}-way {data.get('shots', '?')}-shot"
    classes = sorted(pages[page])
    if len(pages) > 1:
        heading += (f", page {page + 1} of {len(pages)} (classes {classes[0]}–{classes[-1]}): {score(on_page)}; "
                    f"all pages: {score(everywhere)}")
    else:
        heading += f": {score(on_page)}"
    stored, total = len(data["query_labels"]), int(data.get("episode_queries") or len(data["query_labels"]))
    if total > stored:
        heading += f" ({stored} of the episode's {total} queries kept)"
    return heading


def _text_gallery_figure(data: dict[str, Any], page: int, pages: list[list[int]]) -> go.Figure:
    """A text episode's gallery page: a table of each class's support sentences, then its queries marked right or
    wrong (with the predicted class); same title and ``layout.meta`` as the image gallery."""
    shown = set(pages[page])
    lines = [line for line in _text_lines(data) if line[0] in shown]
    labels, predictions = list(data["query_labels"]), list(data["query_predictions"])
    on_page = [int(label) == int(pred) for label, pred in zip(labels, predictions) if int(label) in shown]
    everywhere = [int(label) == int(pred) for label, pred in zip(labels, predictions)]
    fill = ["#eef3fb" if role == "support" else "#e6f4e6" if mark == "✓" else "#fbe6e6"
            for _, role, _, mark in lines]
    fig = go.Figure(go.Table(
        columnwidth=[1, 1.2, 8],
        header={"values": ["class", "role", "text"], "align": "left", "fill_color": "#dddddd"},
        cells={"values": [[f"class {cls}" for cls, *_ in lines],
                          [role if role == "support" else f"query {mark}" for _, role, _, mark in lines],
                          [text for _, _, text, _ in lines]],
               "align": "left", "fill_color": [fill, fill, fill], "height": 24},
    ))
    fig.update_layout(title={"text": _gallery_heading(data, page, pages, on_page, everywhere), "font": {"size": 14}},
                      height=24 * max(1, len(lines)) + 140, margin={"t": 80, "b": 10, "l": 10, "r": 10},
                      meta={"page": page, "pages": len(pages), "queries": len(on_page), "correct": sum(on_page),
                            "all_queries": len(everywhere), "all_correct": sum(everywhere)})
    return fig


def embedding_figure(data: dict[str, Any], title: str = "Query embeddings") -> go.Figure:
    """A 2-D projection of query embeddings coloured by class (``report_data.json``'s ``embedding`` part).

    Args:
        data: ``points`` (``[n, 2]``), ``labels`` (``[n]``), optionally ``correct`` (``[n]`` booleans) and
            ``method`` (e.g. ``"PCA of backbone features"``).
        title: Printed before the method (empty: the method alone, where the page prints its own heading).

    Returns:
        A Plotly scatter figure, one colour per class (:func:`class_colors`, distinct for 20 classes and more);
        wrongly classified queries are drawn as crosses.
    """
    fig = go.Figure()
    labels = data["labels"]
    correct = data.get("correct") or [True] * len(labels)
    classes = sorted(set(labels))
    colors = class_colors(len(classes))
    for i, cls in enumerate(classes):
        idx = [j for j, lab in enumerate(labels) if lab == cls]
        fig.add_trace(go.Scatter(
            x=[data["points"][j][0] for j in idx], y=[data["points"][j][1] for j in idx], mode="markers",
            name=f"class {cls}",
            marker={"color": colors[i], "size": 9, "symbol": ["circle" if correct[j] else "x" for j in idx]},
        ))
    method = data.get("method", "2-D projection")
    fig.update_layout(title=f"{title} ({method}; x = misclassified)" if title else f"{method}; x = misclassified",
                      height=420, margin={"t": 60, "b": 40})
    return fig


# -- published results and batch norm ------------------------------------------------------------------------


def published_results(config: dict[str, Any], records: Iterable[Any]) -> list[dict[str, Any]]:
    """The published results whose protocol matches a run's, with their citations.

    A record matches when it is on the run's dataset, every parameter of its ``dataset_params`` has that value in
    the run's, and its ``ways`` and ``shots`` (where not ``None``) are the run's. It is the run's own method when
    the run's algorithm is the record's with every parameter of its ``algorithm_params`` at that value.

    Args:
        config: The run's config, its ``dataset_params`` and ``algorithm_params`` with their defaults filled in
            (``Services.published_results`` fills them from the specs).
        records: ``PublishedResult`` records with their ``dataset`` set (the plugins' specs declare them).

    Returns:
        Rows ``{"method", "metric", "value", "ci95", "citation", "benchmark", "same_algorithm"}`` in the records'
        order; empty when nothing matches.
    """
    dataset_params = config.get("dataset_params") or {}
    algorithm_params = config.get("algorithm_params") or {}
    rows = []
    for record in records:
        if record.dataset != config.get("dataset"):
            continue
        if any(want is not None and want != config.get(name)
               for name, want in (("ways", record.ways), ("shots", record.shots))):
            continue
        if any(name not in dataset_params or dataset_params[name] != value
               for name, value in record.dataset_params.items()):
            continue
        same = bool(record.algorithm) and record.algorithm == config.get("algorithm") and all(
            name in algorithm_params and algorithm_params[name] == value
            for name, value in record.algorithm_params.items())
        rows.append({"method": record.method, "metric": record.metric, "value": record.value, "ci95": record.ci95,
                     "citation": record.citation, "benchmark": record.benchmark, "same_algorithm": same})
    return rows


def batch_norm_summary(config: dict[str, Any], algorithm: Any = None, backbone: Any = None) -> str | None:
    """Says how a run's batch norm was set up at meta-test time, from its algorithm's and backbone's specs.

    The choice moves published numbers by several points (Nichol et al. 2018, section 5; Antoniou et al. 2019),
    so every report prints it: "none" for a backbone that declares no batch norm (``has_batch_norm=False``), else
    what the algorithm's ``batch_norm_mode`` says for the run's parameters.

    Args:
        config: A run config (``algorithm_params`` is read).
        algorithm: The run's ``AlgorithmSpec``, or ``None`` when no loaded plugin provides it.
        backbone: The run's ``BackboneSpec``, or ``None``.

    Returns:
        One sentence, or ``None`` when nothing is known: the algorithm describes no mode (or its description
        failed, e.g. on parameters a newer version of the plugin no longer takes) and the backbone may have
        batch norm.
    """
    if backbone is not None and getattr(backbone, "has_batch_norm", None) is False:
        return f"Batch norm: none (the {backbone.title} backbone has no batch-norm layers)."
    mode = getattr(algorithm, "batch_norm_mode", None)
    if mode is None:
        return None
    try:
        text = mode(algorithm.params(**(config.get("algorithm_params") or {})))
    except Exception:  # noqa: BLE001 - a plugin's description must never break the report
        return None
    if not isinstance(text, str) or not text.strip():
        return None
    return f"Meta-test batch norm: {text.strip().rstrip('.')}."


# -- progress ----------------------------------------------------------------------------------------------


def run_progress(run: dict[str, Any], metrics: Series, now: float | None = None) -> dict[str, Any]:
    """Progress numbers of a run for the live view.

    Args:
        run: The run record as a dict (``step``, ``total_steps``, ``status``).
        metrics: The run's metrics (``train/steps_per_s`` is the worker's measured speed).
        now: Unused except for testing symmetry; the speed comes from the worker, not the wall clock here.

    Returns:
        ``fraction`` (0..1), ``steps_per_s`` (or ``None``), ``eta_s`` (seconds left, or ``None``) and the
        latest value of each metric under ``latest``.
    """
    total = max(int(run.get("total_steps") or 0), 1)
    step = int(run.get("step") or 0)
    speeds = [v for _, v in (metrics.get("train/steps_per_s") or [])[-3:]]
    speed = sum(speeds) / len(speeds) if speeds else None
    eta = (total - step) / speed if speed and run.get("status") in ("running", "queued") else None
    latest = {name: points[-1][1] for name, points in metrics.items() if points}
    return {"fraction": min(1.0, step / total), "steps_per_s": speed, "eta_s": eta, "latest": latest}


# -- the report ----------------------------------------------------------------------------------------


def _published(report: dict[str, Any], evaluation: dict[str, Any], benchmark: str | None) -> list[dict[str, Any]]:
    """The report's published rows (``report["published"]``) of one benchmark (``None``: the test split) whose
    metric is the evaluation's."""
    metric = "accuracy" if "accuracy" in evaluation else "mse"
    return [row for row in report.get("published") or []
            if row.get("benchmark") == benchmark and row.get("metric") == metric]


def benchmark_evaluations(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The newest evaluation per benchmark task set (splits named ``benchmark:<name>``)."""
    newest: dict[str, dict[str, Any]] = {}
    for evaluation in report.get("evaluations") or []:
        split = str(evaluation.get("split", ""))
        if split.startswith("benchmark:") and split not in newest:
            newest[split] = evaluation
    return list(newest.values())


def cross_domain_evaluations(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The newest evaluation per cross-domain test dataset (splits named ``cross:<dataset id>``)."""
    newest: dict[str, dict[str, Any]] = {}
    for evaluation in report.get("evaluations") or []:
        split = str(evaluation.get("split", ""))
        if split.startswith("cross:") and split not in newest:
            newest[split] = evaluation
    return list(newest.values())


def report_figures(report: dict[str, Any]) -> list[tuple[str, go.Figure]]:
    """Every figure of a run's report, in reading order.

    Args:
        report: ``{"run": run dict, "metrics": Series, "evaluations": [...], "report_data": dict | None,
            "published": rows of :func:`published_results`}`` (what ``Services.run_report`` returns).

    Returns:
        ``[(title, figure), ...]``: learning curves, adaptation curve, meta-test score beside published
        results, and the dataset-specific figures (sinusoid fits, episode gallery, embeddings) when present.
        The page prints each title as the figure's heading, so a figure does not repeat it. The episode gallery
        gives one entry per page, titled ``GALLERY_TITLE`` (and ``", page i of n"`` when there are several).
    """
    figures: list[tuple[str, go.Figure]] = []
    metrics = report.get("metrics") or {}
    if metrics:
        figures.append(("Learning curves", learning_curves_figure(metrics, title="")))
    evaluation = _test_evaluation(report)
    data = report.get("report_data") or {}
    if evaluation and "return" in evaluation:
        figures.append(("Average return before and after each adaptation step",
                        returns_comparison_figure(evaluation, data.get("adaptation"), report.get("comparisons") or [])))
    elif evaluation:
        curve = adaptation_curve_figure(evaluation, title="")
        if curve is not None:
            figures.append(("Adaptation curve", curve))
        name, value, ci = score_of(evaluation)
        rows = [{"label": "this run", "value": value, "ci95": ci, "metric": name, "group": "this run"}]
        for cross in cross_domain_evaluations(report):
            _, cross_value, cross_ci = score_of(cross)
            rows.append({"label": f"cross-domain: {cross['split'][len('cross:'):]}", "value": cross_value,
                         "ci95": cross_ci, "metric": name, "group": "cross-domain"})
        for pub in _published(report, evaluation, None):
            rows.append({"label": pub["method"], "value": pub["value"], "ci95": pub["ci95"], "metric": name,
                         "group": "published"})
        figures.append(("Meta-test score", scores_figure(rows, title="")))
    for bench in benchmark_evaluations(report):
        name = bench["split"].partition(":")[2]
        metric, value, ci = score_of(bench)
        rows = [{"label": "this run", "value": value, "ci95": ci, "metric": metric, "group": "this run"}]
        rows += [{"label": pub["method"], "value": pub["value"], "ci95": pub["ci95"], "metric": metric,
                  "group": "published"} for pub in _published(report, bench, name)]
        figures.append((f"Benchmark: {name}", scores_figure(rows, title="")))
    if data.get("trajectories"):
        figures.append(("Trajectories before and after adaptation", trajectories_figure(data["trajectories"])))
    if data.get("sinusoid"):
        figures.append(("Sinusoid fits", sinusoid_figure(data["sinusoid"])))
    if data.get("episode"):
        pages = len(episode_gallery_pages(data["episode"]))
        for page in range(pages):
            figures.append((GALLERY_TITLE + (f", page {page + 1} of {pages}" if pages > 1 else ""),
                            episode_gallery_figure(data["episode"], page)))
    if data.get("embedding"):
        figures.append(("Query embeddings", embedding_figure(data["embedding"], title="")))
    return figures


def panel_figure(panel: dict[str, Any]) -> go.Figure | None:
    """The Plotly figure of a plugin's report panel (``Services.report_panels``), or ``None`` when it has none."""
    spec = panel.get("figure")
    if not spec:
        return None
    # skip_invalid: a plugin built with another plotly version may use properties this one lacks.
    return go.Figure(spec, skip_invalid=True)


_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def _inline(text: str) -> str:
    return _BOLD.sub(r"<b>\1</b>", _CODE.sub(r"<code>\1</code>", html.escape(text)))


def markdown_html(text: str) -> str:
    """The little Markdown that report panels use (paragraphs, pipe tables, `code`, **bold**) as HTML.

    Args:
        text: Markdown text.

    Returns:
        HTML with every piece of text escaped.
    """
    parts: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(set(c) <= set("-: ") and c for c in cells):  # the header rule row
                    rows.append(cells)
                i += 1
            body = "".join(
                "<tr>" + "".join(f"<{'th' if r == 0 else 'td'}>{_inline(c)}</{'th' if r == 0 else 'td'}>" for c in row)
                + "</tr>" for r, row in enumerate(rows))
            parts.append(f"<table>{body}</table>")
            continue
        if line:
            paragraph = [line]
            i += 1
            while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith("|"):
                paragraph.append(lines[i].strip())
                i += 1
            parts.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            continue
        i += 1
    return "\n".join(parts)


def final_metrics(metrics: Series) -> dict[str, float]:
    """The latest value of each metric, sorted by name, accuracies (and a classification run's CI half-widths)
    in percent with ``" (%)"`` added to their names."""
    regression = _is_regression(metrics)
    latest = {}
    for name, points in sorted(metrics.items()):
        if not points:
            continue
        if _is_percent(name) or (name.endswith("/ci95") and not regression):
            latest[f"{name} (%)"] = 100.0 * float(points[-1][1])
        else:
            latest[name] = float(points[-1][1])
    return latest


def _test_evaluation(report: dict[str, Any]) -> dict[str, Any] | None:
    """The run's headline score: the newest evaluation under its canonical protocol (never merely the newest)."""
    return headline(report.get("evaluations") or [], (report.get("run") or {}).get("config"))


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def report_html(report: dict[str, Any], *, generated: float | None = None) -> str:
    """One self-contained HTML file: figures (interactive, plotly.js inlined once), config, metrics, versions.

    Args:
        report: As for :func:`report_figures`.
        generated: POSIX time stamped in the file (defaults to now).

    Returns:
        The HTML text; it opens offline in any browser.
    """
    import plotly.io as pio

    run = report["run"]
    config = run.get("config") or {}
    stamp = datetime.fromtimestamp(generated, tz=timezone.utc) if generated else datetime.now(timezone.utc)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>metalab report {html.escape(run['id'])}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "th{background:#f4f4f4}pre{background:#f7f7f7;padding:1em;overflow:auto}</style></head><body>",
        f"<h1>metalab run {html.escape(run['id'])} {html.escape(run.get('name') or '')}</h1>",
        f"<p>{html.escape(str(run.get('algorithm')))} on {html.escape(str(run.get('dataset')))} with "
        f"{html.escape(str(run.get('backbone')))}; status <b>{html.escape(str(run.get('status')))}</b>, step "
        f"{run.get('step')}/{run.get('total_steps')}; seed {config.get('seed')}. Generated "
        f"{stamp.isoformat(timespec='seconds')}.</p>",
    ]
    if run.get("tags"):
        parts.append(f"<p class='tags'>Tags: {html.escape(', '.join(map(str, run['tags'])))}</p>")
    if run.get("notes"):
        parts.append(f"<blockquote class='notes' style='white-space:pre-wrap'>{html.escape(str(run['notes']))}"
                     "</blockquote>")
    phases = report.get("phases") or {}
    if phases.get("times"):
        # Where the wall time went: training alone is not the run's time (loading, compiling, meta-testing).
        parts.append(f"<p class='phases'>Time: {html.escape(phases.get('line') or '')}</p>")
    bn = report.get("batch_norm")
    if bn:
        parts.append(f"<p class='batch-norm'>{html.escape(bn)}</p>")
    evaluation = _test_evaluation(report)
    if evaluation:
        name, value, ci = score_of(evaluation)
        parts.append(f"<h2>Meta-test score</h2><p class='score'>{name}: <b>{value:.4g}</b> ± {ci:.3g} (95% CI, "
                     f"{evaluation.get('episodes')} fixed episodes)</p>")
        for bench in benchmark_evaluations(report):
            name = bench["split"].partition(":")[2]
            bench_metric, bench_value, bench_ci = score_of(bench)
            published = "; ".join(f"{html.escape(p['method'])} {p['value']}{'%' if p['metric'] == 'accuracy' else ''} "
                                  f"({html.escape(p['citation'])})" for p in _published(report, bench, name))
            parts.append(f"<p class='score'>benchmark {html.escape(name)}, {html.escape(bench_metric)}: "
                         f"<b>{bench_value:.4g}</b> ± {bench_ci:.3g}"
                         f"{'; published: ' + published if published else ''}</p>")
        for cross in cross_domain_evaluations(report):
            cross_metric, cross_value, cross_ci = score_of(cross)
            parts.append(f"<p class='score'>cross-domain ({html.escape(cross['split'][len('cross:'):])}), "
                         f"{html.escape(cross_metric)}: <b>{cross_value:.4g}</b> ± {cross_ci:.3g}</p>")
    rows = score_rows(report.get("evaluations") or [], config)
    if rows:
        parts.append("<h3>Every evaluation (one per protocol and time; the headline is marked)</h3><table><tr>"
                     "<th>protocol</th><th>score</th><th>95% CI</th><th>when</th><th></th></tr>")
        for row in rows:
            mark = "headline" if row["headline"] else html.escape(row["note"])
            parts.append(f"<tr><td>{html.escape(row['protocol'])}</td><td>{row['value']:.4g} {html.escape(row['metric'])}"
                         f"</td><td>{row['ci95']:.3g}</td><td>{html.escape(str(row['created'] or ''))}</td>"
                         f"<td>{mark}</td></tr>")
        parts.append("</table>")
    published = [row for row in report.get("published") or [] if row.get("benchmark") is None]
    if published:
        parts.append("<h3>Published results (same protocol)</h3><table><tr><th>method</th><th>score</th>"
                     "<th>95% CI</th><th>citation</th></tr>")
        for row in published:
            unit = "accuracy (%)" if row["metric"] == "accuracy" else "MSE"
            parts.append(f"<tr><td>{html.escape(row['method'])}</td><td>{row['value']} {unit}</td>"
                         f"<td>{'' if row['ci95'] is None else row['ci95']}</td>"
                         f"<td>{html.escape(row['citation'])}</td></tr>")
        parts.append("</table>")
    first = True
    for title, fig in report_figures(report):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        # plotly.js is inlined once, with the first figure: the file stays self-contained and offline.
        parts.append(pio.to_html(fig, include_plotlyjs=True if first else False, full_html=False))
        first = False
    for panel in report.get("panels") or []:
        parts.append(f"<h2>{html.escape(panel['title'])}</h2>")
        if panel.get("error"):
            parts.append(f"<p class='panel-error'>Plugin {html.escape(str(panel.get('plugin')))} could not draw "
                         f"its panel: {html.escape(panel['error'])}</p>")
            continue
        fig = panel_figure(panel)
        if fig is not None:
            parts.append(pio.to_html(fig, include_plotlyjs=True if first else False, full_html=False))
            first = False
        if panel.get("markdown"):
            parts.append(markdown_html(panel["markdown"]))
    latest = final_metrics(report.get("metrics") or {})
    if latest:
        parts.append("<h2>Final metrics</h2>" + _table([(k, f"{v:.6g}") for k, v in latest.items()]))
    parts.append("<h2>Config</h2><pre>" + html.escape(json.dumps(config, indent=2, sort_keys=True)) + "</pre>")
    parts.append("<h2>Versions</h2>" + _table(sorted((run.get("versions") or {}).items())))
    parts.append("<h2>Run</h2>" + _table([(k, run.get(k)) for k in ("id", "name", "status", "created", "started",
                                                                     "finished", "device", "host")]))
    if run.get("error"):
        parts.append("<h2>Error</h2><pre>" + html.escape(str(run.get("traceback") or run["error"])) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)

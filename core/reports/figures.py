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
    "Series",
    "adaptation_curve_figure",
    "batch_norm_summary",
    "compare_curves_figure",
    "embedding_figure",
    "episode_gallery_figure",
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


def _xy(points: Iterable[tuple[int, float]] | None) -> tuple[list[int], list[float]]:
    points = list(points or [])
    return [int(p[0]) for p in points], [float(p[1]) for p in points]


def _band(fig: go.Figure, x: list, y: list, ci: list, color: str, name: str, row: int | None = None,
          col: int | None = None) -> None:
    """Adds a shaded 95% confidence band around ``y`` (skipped where the half-widths are unknown)."""
    if not x or len(ci) != len(y) or any(c is None or not math.isfinite(c) for c in ci):
        return
    upper = [v + c for v, c in zip(y, ci)]
    lower = [v - c for v, c in zip(y, ci)]
    kwargs = {"row": row, "col": col} if row else {}
    fig.add_trace(
        go.Scatter(x=list(x) + list(x)[::-1], y=upper + lower[::-1], fill="toself", fillcolor=_rgba(color, 0.18),
                   line={"width": 0}, hoverinfo="skip", showlegend=False, name=f"{name} 95% CI"),
        **kwargs,
    )


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _is_regression(metrics: Series | None = None, evaluation: dict[str, Any] | None = None) -> bool:
    if evaluation and "mse" in evaluation:
        return True
    return bool(metrics) and any(name.endswith("/mse") for name in metrics)


def learning_curves_figure(metrics: Series, title: str = "Learning curves", regression: bool | None = None) -> go.Figure:
    """Training and validation curves of one run: loss on the left, accuracy (or MSE) on the right.

    Args:
        metrics: The run's metrics (``train/loss``, ``train/accuracy``, ``val/accuracy`` or ``val/mse``,
            ``val/ci95``, ...).
        title: The figure title.
        regression: Whether the run is a regression run; guessed from the metric names when ``None`` (a run
            that has not validated yet has no ``val/mse`` to tell).

    Returns:
        A two-panel Plotly figure; validation scores carry their 95% CI band.
    """
    if regression is None:
        regression = _is_regression(metrics)
    score = "mse" if regression else "accuracy"
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "MSE (query, after adaptation)" if regression
                                                          else "Accuracy (query)"))
    x, y = _xy(metrics.get("train/loss"))
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="train loss", line={"color": _PALETTE[0]}), row=1, col=1)
    x, y = _xy(metrics.get("val/loss"))
    if x:
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name="val loss", line={"color": _PALETTE[1]}),
                      row=1, col=1)
    if not regression:
        x, y = _xy(metrics.get("train/accuracy"))
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="train accuracy", line={"color": _PALETTE[2]}),
                      row=1, col=2)
    x, y = _xy(metrics.get(f"val/{score}"))
    if x:
        _, ci = _xy(metrics.get("val/ci95"))
        _band(fig, x, y, ci if len(ci) == len(y) else [], _PALETTE[3], f"val {score}", row=1, col=2)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"val {score}", line={"color": _PALETTE[3]}),
                      row=1, col=2)
    fig.update_xaxes(title_text="meta-training step")
    fig.update_layout(title=title, hovermode="x unified", legend={"orientation": "h", "y": -0.2}, height=380,
                      margin={"t": 60, "b": 40})
    return fig


def adaptation_curve_figure(evaluation: dict[str, Any], title: str = "Adaptation curve") -> go.Figure | None:
    """The query score after 0, 1, ..., n inner steps at meta-test time, with its 95% CI band.

    Args:
        evaluation: An evaluation as the store returns it (``curve``, ``curve_ci95``, ``accuracy`` or ``mse``).
        title: The figure title.

    Returns:
        A Plotly figure, or ``None`` when the evaluation holds no curve (algorithms without an inner loop).
    """
    curve = evaluation.get("curve")
    if not curve:
        return None
    regression = _is_regression(evaluation=evaluation)
    scale = 1.0 if regression else 100.0
    y = [scale * float(v) for v in curve]
    ci = [scale * float(v) for v in evaluation.get("curve_ci95") or []]
    x = list(range(len(y)))
    fig = go.Figure()
    _band(fig, x, y, ci, _PALETTE[0], "curve")
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name="query score", line={"color": _PALETTE[0]}))
    fig.update_layout(
        title=f"{title} ({evaluation.get('episodes', '?')} {evaluation.get('split', 'test')} episodes)",
        xaxis_title="inner gradient steps", yaxis_title="MSE" if regression else "accuracy (%)", height=360,
        margin={"t": 60, "b": 40},
    )
    return fig


def scores_figure(rows: list[dict[str, Any]], title: str = "Meta-test score") -> go.Figure:
    """Bars of final scores with 95% CI error bars (one bar per run or published result).

    Args:
        rows: ``{"label", "value", "ci95"}`` dicts, optionally ``"group"`` (bars of one group share a colour)
            and ``"metric"`` (the axis title; the first row's is used).
        title: The figure title.

    Returns:
        A Plotly bar figure.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row.get("group", "")), []).append(row)
    fig = go.Figure()
    for i, (group, members) in enumerate(groups.items()):
        fig.add_trace(
            go.Bar(
                x=[m["label"] for m in members], y=[m["value"] for m in members], name=group or "score",
                marker_color=_PALETTE[i % len(_PALETTE)], showlegend=bool(group),
                error_y={"type": "data", "array": [m.get("ci95") if m.get("ci95") is not None and
                                                   math.isfinite(m["ci95"]) else 0 for m in members]},
            )
        )
    fig.update_layout(title=title, yaxis_title=rows[0].get("metric", "score") if rows else "score", height=360,
                      margin={"t": 60, "b": 40})
    return fig


def compare_curves_figure(curves: dict[str, list[tuple[int, float]]], metric: str) -> go.Figure:
    """Overlays one metric of several runs.

    Args:
        curves: ``{run label: [(step, value), ...]}``.
        metric: The metric's name (``val/accuracy``, ``train/loss``, ...), used for titles.

    Returns:
        A Plotly figure with one line per run.
    """
    fig = go.Figure()
    for i, (label, points) in enumerate(curves.items()):
        x, y = _xy(points)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers" if len(x) < 30 else "lines", name=label,
                                 line={"color": _PALETTE[i % len(_PALETTE)]}))
    fig.update_layout(title=metric, xaxis_title="meta-training step", yaxis_title=metric, hovermode="x unified",
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


def episode_gallery_figure(data: dict[str, Any], max_queries: int = 20) -> go.Figure:
    """One test episode: the support images, then query images titled with true and predicted labels.

    Args:
        data: The ``episode`` part of ``report_data.json``: ``support_images`` and ``query_images`` (uint8
            ``[n, H, W]`` nested lists), ``support_labels``, ``query_labels`` and ``query_predictions``.
        max_queries: Query images shown at most.

    Returns:
        A Plotly figure of image tiles; mistakes have red titles marked with a cross.
    """
    support = list(zip(data["support_images"], data["support_labels"]))
    queries = list(zip(data["query_images"], data["query_labels"], data["query_predictions"]))[:max_queries]
    cols = max(1, min(10, max(len(support), 1)))
    support_rows = math.ceil(len(support) / cols)
    query_rows = math.ceil(len(queries) / cols)
    titles = [f"support: {label}" for _, label in support] + [""] * (support_rows * cols - len(support))
    for _, label, pred in queries:
        mark = "✓" if label == pred else "✗"
        color = "green" if label == pred else "red"
        titles.append(f"<span style='color:{color}'>{mark} true {label} / pred {pred}</span>")
    rows = max(1, support_rows + query_rows)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.01, vertical_spacing=0.06)
    tiles = [img for img, _ in support] + [None] * (support_rows * cols - len(support)) + [q[0] for q in queries]
    for i, image in enumerate(tiles):
        if image is None:
            continue
        # Image traces want RGB; the datasets are grey scale.
        rgb = [[[v, v, v] for v in row] for row in image]
        fig.add_trace(go.Image(z=rgb, hoverinfo="skip"), row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=10)
    fig.update_layout(title=f"Test episode: {data.get('ways', '?')}-way {data.get('shots', '?')}-shot "
                            f"(query accuracy {100 * data.get('accuracy', float('nan')):.1f}%)",
                      height=110 * rows + 80, margin={"t": 80, "b": 10, "l": 10, "r": 10})
    return fig


def embedding_figure(data: dict[str, Any]) -> go.Figure:
    """A 2-D projection of query embeddings coloured by class (``report_data.json``'s ``embedding`` part).

    Args:
        data: ``points`` (``[n, 2]``), ``labels`` (``[n]``), optionally ``correct`` (``[n]`` booleans) and
            ``method`` (e.g. ``"PCA of backbone features"``).

    Returns:
        A Plotly scatter figure; wrongly classified queries are drawn as crosses.
    """
    fig = go.Figure()
    labels = data["labels"]
    correct = data.get("correct") or [True] * len(labels)
    for i, cls in enumerate(sorted(set(labels))):
        idx = [j for j, lab in enumerate(labels) if lab == cls]
        fig.add_trace(go.Scatter(
            x=[data["points"][j][0] for j in idx], y=[data["points"][j][1] for j in idx], mode="markers",
            name=f"class {cls}",
            marker={"color": _PALETTE[i % len(_PALETTE)], "size": 9,
                    "symbol": ["circle" if correct[j] else "x" for j in idx]},
        ))
    fig.update_layout(title=f"Query embeddings ({data.get('method', '2-D projection')}; x = misclassified)",
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
    """
    figures: list[tuple[str, go.Figure]] = []
    metrics = report.get("metrics") or {}
    if metrics:
        figures.append(("Learning curves", learning_curves_figure(metrics)))
    evaluation = _test_evaluation(report)
    if evaluation:
        curve = adaptation_curve_figure(evaluation)
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
        figures.append(("Meta-test score", scores_figure(rows)))
    for bench in benchmark_evaluations(report):
        name = bench["split"].partition(":")[2]
        metric, value, ci = score_of(bench)
        rows = [{"label": "this run", "value": value, "ci95": ci, "metric": metric, "group": "this run"}]
        rows += [{"label": pub["method"], "value": pub["value"], "ci95": pub["ci95"], "metric": metric,
                  "group": "published"} for pub in _published(report, bench, name)]
        figures.append((f"Benchmark: {name}", scores_figure(rows)))
    data = report.get("report_data") or {}
    if data.get("sinusoid"):
        figures.append(("Sinusoid fits", sinusoid_figure(data["sinusoid"])))
    if data.get("episode"):
        figures.append(("Episode gallery", episode_gallery_figure(data["episode"])))
    if data.get("embedding"):
        figures.append(("Query embeddings", embedding_figure(data["embedding"])))
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
            _, bench_value, bench_ci = score_of(bench)
            published = "; ".join(f"{html.escape(p['method'])} {p['value']}{'%' if p['metric'] == 'accuracy' else ''} "
                                  f"({html.escape(p['citation'])})" for p in _published(report, bench, name))
            parts.append(f"<p class='score'>benchmark {html.escape(name)}: <b>{bench_value:.4g}</b> ± "
                         f"{bench_ci:.3g}{'; published: ' + published if published else ''}</p>")
        for cross in cross_domain_evaluations(report):
            _, cross_value, cross_ci = score_of(cross)
            parts.append(f"<p class='score'>cross-domain ({html.escape(cross['split'][len('cross:'):])}): "
                         f"<b>{cross_value:.4g}</b> ± {cross_ci:.3g}</p>")
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
    latest = {name: points[-1][1] for name, points in (report.get("metrics") or {}).items() if points}
    if latest:
        parts.append("<h2>Final metrics</h2>" + _table([(k, f"{v:.6g}") for k, v in sorted(latest.items())]))
    parts.append("<h2>Config</h2><pre>" + html.escape(json.dumps(config, indent=2, sort_keys=True)) + "</pre>")
    parts.append("<h2>Versions</h2>" + _table(sorted((run.get("versions") or {}).items())))
    parts.append("<h2>Run</h2>" + _table([(k, run.get(k)) for k in ("id", "name", "status", "created", "started",
                                                                     "finished", "device", "host")]))
    if run.get("error"):
        parts.append("<h2>Error</h2><pre>" + html.escape(str(run.get("traceback") or run["error"])) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)

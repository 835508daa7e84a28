"""The multi-task report panel: per-task training curves from the run's logged metrics (Plotly only, no TensorFlow)."""

from __future__ import annotations

import json
import re
from typing import Any

from metalab.api import ReportPanel

_TASK_METRIC = re.compile(r"^train/task(\d+)_(loss|accuracy)$")


def task_metrics(metrics: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """The ``train/task<k>_*``, ``train/average_loss`` and ``train/consistency_loss`` series of a run's metrics.

    Args:
        metrics: Every series the run logged, ``{name: [(step, value), ...]}`` (the report hook's ``metrics``).

    Returns:
        The multi-task series only.
    """
    keep = {"train/average_loss", "train/consistency_loss"}
    return {name: points for name, points in metrics.items() if name in keep or _TASK_METRIC.match(name)}


def task_curves_panel(data: dict[str, Any], metrics: dict[str, list[tuple[int, float]]]) -> ReportPanel:
    """Each task's training loss and accuracy over the steps, with the consistency loss, and the task split.

    Args:
        data: What ``MultiTask.report_data()`` returned (may be empty).
        metrics: Every series the run logged (the report hook's ``metrics``).

    Returns:
        The :class:`ReportPanel` (markdown only when no per-task metric was logged).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    series = task_metrics(metrics)
    tasks = sorted({int(m.group(1)) for name in series if (m := _TASK_METRIC.match(name))})
    lines = []
    if data:
        weights = data.get("task_weights") or []
        classes = data.get("task_classes") or []
        lines += ["| task | training classes | loss weight | head parameters |", "| --- | --- | ---: | ---: |"]
        for k in range(int(data.get("num_tasks", len(classes)))):
            ids = classes[k] if k < len(classes) else []
            shown = ", ".join(str(c) for c in ids[:12]) + (f", … ({len(ids)} in all)" if len(ids) > 12 else "")
            weight = f"{weights[k]:.3g}" if k < len(weights) else "—"
            params = (data.get("head_params") or [])
            lines.append(f"| {k} | {shown} | {weight} | {params[k] if k < len(params) else '—'} |")
        if data.get("task_modalities"):  # images and texts: each perturbed in its own way
            related = (f"each image and a copy with Gaussian noise of std {data.get('noise_std', 0):g}, and between "
                       f"each text and a copy that lost each word with probability {data.get('token_dropout', 0):g}. "
                       f"Tasks by modality: " + ", ".join(f"{k} {m}" for k, m in enumerate(data["task_modalities"])))
        else:
            related = f"each image and a copy with Gaussian noise of std {data.get('noise_std', 0):g}"
        lines += ["", f"Shared trunk: {data.get('trunk_params', 0):,} parameters. Consistency weight "
                      f"{data.get('consistency_weight', 0):g} on the squared feature difference between {related}."]
    if not tasks:
        lines.append("No per-task metrics (`train/task<k>_loss`) were logged by this run.")
        return ReportPanel(title="Multi-task: per-task curves", markdown="\n".join(lines))

    fig = make_subplots(rows=1, cols=2, subplot_titles=["Training loss per task", "Training accuracy per task"],
                        horizontal_spacing=0.1)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    for k in tasks:
        color = palette[k % len(palette)]
        for col, what in ((1, "loss"), (2, "accuracy")):
            points = series.get(f"train/task{k}_{what}", [])
            fig.add_trace(go.Scatter(x=[s for s, _ in points], y=[v for _, v in points], mode="lines",
                                     name=f"task {k}", legendgroup=f"task{k}", showlegend=col == 1,
                                     line={"color": color}), row=1, col=col)
    for name, label, dash in (("train/average_loss", "weighted average", "dash"),
                              ("train/consistency_loss", "consistency", "dot")):
        points = series.get(name, [])
        if points:
            fig.add_trace(go.Scatter(x=[s for s, _ in points], y=[v for _, v in points], mode="lines", name=label,
                                     line={"color": "#444", "dash": dash}), row=1, col=1)
    fig.update_xaxes(title_text="step")
    fig.update_layout(title=f"Multi-task learning: {len(tasks)} tasks on one trunk", height=400,
                      margin={"t": 80, "b": 40}, legend={"orientation": "h", "y": -0.25})
    return ReportPanel(title="Multi-task: per-task curves", figure=json.loads(fig.to_json()),
                       markdown="\n".join(lines) or None)

"""Modular meta-learning's report panel, built from the data the training worker stored (Plotly only)."""

from __future__ import annotations

import json
from typing import Any

from metalab.api import ReportPanel


def module_usage_panel(data: dict[str, Any]) -> ReportPanel:
    """Heatmaps of how often each module was chosen in each slot, for training and evaluation tasks.

    Args:
        data: What ``ModularMetaLearner.report_data()`` returned (``num_modules``, ``num_slots``, ``search``,
            ``train`` and ``evaluation``, each with ``slot_counts``, ``tasks``, ``structures`` and
            ``distinct_structures``).

    Returns:
        The :class:`ReportPanel`: the heatmaps and a table of the most used structures.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    parts = [("train", "meta-training tasks"), ("evaluation", "evaluated tasks")]
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"{title} ({data[key]['tasks']})" for key, title in parts],
                        horizontal_spacing=0.12)
    modules = [f"module {k}" for k in range(int(data["num_modules"]))]
    slots = [f"slot {s}" for s in range(int(data["num_slots"]))]
    for col, (key, _) in enumerate(parts, start=1):
        counts = data[key]["slot_counts"]
        total = max(1, int(data[key]["tasks"]))
        share = [[c / total for c in row] for row in counts]
        fig.add_trace(go.Heatmap(
            z=share, x=modules, y=slots, zmin=0, zmax=1, colorscale="Blues", showscale=col == 2,
            text=counts, texttemplate="%{text}", hovertemplate="%{y}, %{x}: %{text} tasks<extra></extra>",
        ), row=1, col=col)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=f"Modules chosen per slot ({data['search']} search; colour: share of tasks)",
                      height=160 + 50 * len(slots))
    lines = []
    for key, title in parts:
        part = data[key]
        lines.append(f"**Most used structures, {title}** ({part['distinct_structures']} distinct):")
        lines.append("")
        lines.append("| structure (module per slot) | tasks |")
        lines.append("| --- | ---: |")
        for row in part["structures"][:10]:
            lines.append(f"| {' → '.join(str(m) for m in row['modules'])} | {row['count']} |")
        lines.append("")
    lines.append("Evaluated tasks include validation and meta-test episodes; no weight is adapted at test time, only "
                 "the structure is searched on each task's support set.")
    return ReportPanel(title="Module usage", figure=json.loads(fig.to_json()), markdown="\n".join(lines))

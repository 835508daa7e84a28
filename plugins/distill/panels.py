"""The distillation report panel, built from the data the training worker stored (Plotly only, no TensorFlow)."""

from __future__ import annotations

import json
from typing import Any

from metalab.api import ReportPanel

_COLORS = {"teacher": "#7f7f7f", "student": "#2ca02c"}


def comparison_panel(data: dict[str, Any]) -> ReportPanel:
    """Bars of teacher and student accuracy, parameters and images per second, with a table of the numbers.

    Args:
        data: What ``Distill.report_data()`` returned (``teacher`` is ``None`` for a run without a teacher).

    Returns:
        The :class:`ReportPanel`.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    student, teacher = data["student"], data.get("teacher")
    if teacher is None:
        markdown = (
            "No `teacher_run` was given, so nothing was distilled: the student trained as a plain supervised "
            f"classifier on the hard labels (alpha ignored).\n\n| | parameters | images/s |\n| --- | ---: | ---: |\n"
            f"| student | {student['params']:,} | {student['images_per_s']:,.0f} |"
        )
        return ReportPanel(title="Distillation: teacher vs student", markdown=markdown)

    rows = [("teacher", teacher), ("student", student)]
    has_accuracy = all(r.get("accuracy") is not None for _, r in rows)
    titles = (["Few-shot accuracy (nearest centroid)"] if has_accuracy else []) + ["Parameters", "Images per second"]
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.1)
    col = 1
    if has_accuracy:
        fig.add_trace(go.Bar(
            x=[n for n, _ in rows], y=[100 * r["accuracy"] for _, r in rows],
            error_y={"type": "data", "array": [100 * (r.get("ci95") or 0) for _, r in rows]},
            marker={"color": [_COLORS[n] for n, _ in rows]}, showlegend=False,
            hovertemplate="%{x}: %{y:.1f}%<extra></extra>"), row=1, col=col)
        fig.update_yaxes(title_text="accuracy (%)", row=1, col=col)
        col += 1
    for key, label in (("params", "parameters"), ("images_per_s", "images/s")):
        fig.add_trace(go.Bar(x=[n for n, _ in rows], y=[r[key] for _, r in rows],
                             marker={"color": [_COLORS[n] for n, _ in rows]}, showlegend=False,
                             hovertemplate="%{x}: %{y:,.0f}<extra></extra>"), row=1, col=col)
        fig.update_yaxes(title_text=label, row=1, col=col)
        col += 1
    fig.update_layout(title=f"Distillation from run {data['teacher_run']} (T={data['temperature']:g}, "
                            f"alpha={data['alpha']:g})", height=380, margin={"t": 80, "b": 40})

    episode = data.get("episode") or {}
    lines = ["| | model | parameters | images/s | accuracy (same episodes) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for name, r in rows:
        model = f"{teacher['algorithm']} / {teacher['backbone']}" if name == "teacher" else "student backbone + head"
        accuracy = "—" if r.get("accuracy") is None else f"{100 * r['accuracy']:.1f}% ± {100 * (r.get('ci95') or 0):.1f}"
        lines.append(f"| {name} | {model} | {r['params']:,} | {r['images_per_s']:,.0f} | {accuracy} |")
    lines.append("")
    ratio_params = teacher["params"] / max(student["params"], 1)
    ratio_speed = student["images_per_s"] / max(teacher["images_per_s"], 1e-9)
    lines.append(f"The student has {ratio_params:.2g}× fewer parameters than the teacher and runs {ratio_speed:.2g}× "
                 "as many images per second (inference of the logits, compiled, batches of 256).")
    source = ("its classifier's logits over the training classes" if data.get("mode") == "head"
              else "minus the squared distances of its features to class prototypes of the training classes")
    lines.append(f"Soft targets: the teacher's {source}.")
    if episode:
        lines.append(f"Accuracy: nearest class centroid of each model's features on the same {episode['episodes']} "
                     f"fixed {episode['ways']}-way {episode['shots']}-shot test episodes.")
    recorded = teacher.get("recorded") or {}
    if recorded.get("accuracy") is not None:
        lines.append(f"The teacher run's own test score ({teacher['algorithm']}'s protocol, {recorded.get('ways')}-way "
                     f"{recorded.get('shots')}-shot, {recorded.get('episodes')} episodes): "
                     f"{100 * recorded['accuracy']:.1f}% ± {100 * (recorded.get('ci95') or 0):.1f}.")
    return ReportPanel(title="Distillation: teacher vs student", figure=json.loads(fig.to_json()),
                       markdown="\n".join(lines))

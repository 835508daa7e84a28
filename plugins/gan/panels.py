"""The GAN's report panel, drawn from the ``uint8`` samples the training worker stored (Plotly only, no TensorFlow)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from metalab.api import ReportPanel


def _rgb(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def samples_panel(data: dict[str, Any]) -> ReportPanel:
    """One row of generator samples (the same fixed noise) per recorded training step, oldest at the top.

    Args:
        data: What ``DCGAN.report_data()`` returned (``input_shape``, ``steps``, ``snapshots``).

    Returns:
        The :class:`ReportPanel` (a Markdown note when the inputs are not images).
    """
    shape = list(data.get("input_shape", []))
    steps = list(data.get("steps", []))
    if not (len(shape) == 3 and shape[-1] in (1, 3)):
        return ReportPanel(title="GAN samples over training",
                           markdown="The inputs are not images, so the generator's samples are not drawn.")
    import plotly.graph_objects as go

    snapshots = np.asarray(data["snapshots"], dtype=np.uint8)
    height, width = shape[0], shape[1]
    samples = snapshots.shape[1]
    gap = 1
    canvas = np.full(((height + gap) * len(snapshots) - gap, (width + gap) * samples - gap, 3), 230, dtype=np.uint8)
    for r, row in enumerate(snapshots):
        for c, image in enumerate(_rgb(row)):
            canvas[r * (height + gap):r * (height + gap) + height, c * (width + gap):c * (width + gap) + width] = image
    fig = go.Figure(go.Image(z=canvas, hoverinfo="skip"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=True, showgrid=False, zeroline=False, title="training step",
                     tickvals=[r * (height + gap) + height / 2 for r in range(len(steps))],
                     ticktext=[str(s) for s in steps])
    scale = max(1, math.floor(480 / max(canvas.shape[1], 1)))
    fig.update_layout(title="Generator samples of the same noise vectors over training (top: first step)",
                      height=min(1000, canvas.shape[0] * scale + 90), margin={"t": 50, "b": 10, "l": 60, "r": 10})
    return ReportPanel(
        title="GAN samples over training",
        figure=json.loads(fig.to_json()),
        markdown=(f"Rows: the generator after {', '.join(str(s) for s in steps)} updates, each from the same "
                  f"{samples} fixed noise vectors; recorded inside the compiled training step."),
    )

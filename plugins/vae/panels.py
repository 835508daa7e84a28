"""The VAE's report panels, drawn from the ``uint8`` images the training worker stored (Plotly only, no TensorFlow)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from metalab.api import ReportPanel


def mosaic(rows: list[np.ndarray], cols: int | None = None, gap: int = 1) -> np.ndarray:
    """Tiles rows of images ``[n, H, W(, C)]`` into one RGB ``uint8`` image, a light gap between tiles.

    Args:
        rows: One array of images per row of the mosaic (a longer array wraps onto further rows).
        cols: Tiles per row; by default the longest input row's length.
        gap: Pixels between tiles.

    Returns:
        ``[rows * (H + gap) - gap, cols * (W + gap) - gap, 3]`` ``uint8``.
    """
    rows = [np.asarray(r, dtype=np.uint8) for r in rows if len(r)]
    cols = cols or max(len(r) for r in rows)
    lines: list[list[np.ndarray]] = []
    for images in rows:
        if images.ndim == 3:
            images = images[..., None]
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        for start in range(0, len(images), cols):
            lines.append(list(images[start:start + cols]))
    height, width = lines[0][0].shape[:2]
    out = np.full(((height + gap) * len(lines) - gap, (width + gap) * cols - gap, 3), 230, dtype=np.uint8)
    for r, line in enumerate(lines):
        for c, image in enumerate(line):
            out[r * (height + gap):r * (height + gap) + height, c * (width + gap):c * (width + gap) + width] = image
    return out


def image_figure(image: np.ndarray, title: str) -> dict[str, Any]:
    """A Plotly figure (as JSON) showing one RGB image with hidden axes."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Image(z=image, hoverinfo="skip"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    scale = max(1, math.floor(480 / max(image.shape[1], 1)))
    fig.update_layout(title=title, height=min(900, image.shape[0] * scale + 90), margin={"t": 50, "b": 10, "l": 10, "r": 10})
    return json.loads(fig.to_json())


def _is_image(shape: list[int]) -> bool:
    return len(shape) == 3 and shape[-1] in (1, 3)


def vae_panels(data: dict[str, Any]) -> list[ReportPanel]:
    """Reconstructions of held-out images (originals above, reconstructions below) and samples from the prior.

    Args:
        data: What ``VAE.report_data()`` returned (``input_shape``, ``likelihood``, ``prior_samples``,
            ``originals``, ``reconstructions``).

    Returns:
        Two :class:`ReportPanel` for image inputs; one Markdown note for inputs that are not images.
    """
    if not _is_image(list(data.get("input_shape", []))):
        return [ReportPanel(title="VAE", markdown="The inputs are not images, so no reconstructions are drawn.")]
    panels = []
    originals, reconstructions = data.get("originals") or [], data.get("reconstructions") or []
    if originals:
        panels.append(ReportPanel(
            title="VAE reconstructions of held-out images",
            figure=image_figure(mosaic([np.asarray(originals), np.asarray(reconstructions)]),
                                "Top: held-out images; bottom: their reconstructions E[x | z = mu(x)]"),
            markdown="The images are the first queries of the latest evaluated episode (meta-test classes, unseen in "
                     "training, when the run evaluates at the end).",
        ))
    samples = np.asarray(data["prior_samples"])
    panels.append(ReportPanel(
        title="VAE samples from the prior",
        figure=image_figure(mosaic([samples], cols=min(8, len(samples))),
                            "Decoder means E[x|z] for codes z ~ N(0, I) (fixed seed)"),
        markdown=f"Likelihood: {data.get('likelihood', '?')}. Each tile is the decoder's mean, not a noisy draw.",
    ))
    return panels

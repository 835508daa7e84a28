"""The report's charts say what the data says, checked on the figure objects: bands without stray markers,
accuracies in percent, score axes that show differences, distinct class colours, a gallery that shows every query
it scores, and one heading per figure."""

from __future__ import annotations

import base64
import io
import itertools
import json
import re

import numpy as np
import pytest

from metalab.core.engine.report_data import gallery_queries
from metalab.core.reports import figures as reports


def _episode(ways: int, shots: int, queries: int, wrong: float = 0.2, seed: int = 0) -> dict:
    """A classification episode as the worker stores it (classes in order, a share of queries mislabelled)."""
    rng = np.random.default_rng(seed)
    image = lambda: rng.integers(0, 256, (8, 8)).tolist()  # noqa: E731 - tiny tiles keep the test fast
    labels = [c for c in range(ways) for _ in range(queries)]
    predictions = [int((c + 1) % ways) if rng.random() < wrong else c for c in labels]
    return {"ways": ways, "shots": shots, "accuracy": float(np.mean(np.equal(labels, predictions))),
            "support_images": [image() for _ in range(ways * shots)],
            "support_labels": [c for c in range(ways) for _ in range(shots)],
            "query_images": [image() for _ in labels], "query_labels": labels, "query_predictions": predictions}


def _marks(fig) -> list[str]:
    """The query tiles' titles of a gallery page (a support tile's title has no ✓ or ✗)."""
    return [a.text for a in fig.layout.annotations if "✓" in a.text or "✗" in a.text]


# -- bands and single points ------------------------------------------------------------------------------


def test_a_single_validation_point_is_one_marker_with_an_error_bar_not_three_dots():
    fig = reports.learning_curves_figure({"train/loss": [(5, 1.0)], "train/accuracy": [(5, 0.4)],
                                          "val/accuracy": [(10, 0.5)], "val/ci95": [(10, 0.1)]})
    assert not [t for t in fig.data if t.name.endswith("95% CI")]  # no zero-width band whose edges became dots
    val = next(t for t in fig.data if t.name == "val accuracy")
    assert list(val.y) == [50.0] and list(val.error_y.array) == [10.0] and val.error_y.visible
    # Every trace says its mode: Plotly's default for short scatters is lines+markers.
    assert all(t.mode for t in fig.data)


def test_bands_of_curves_are_filled_outlines_without_markers():
    fig = reports.learning_curves_figure({"val/accuracy": [(10, 0.5), (20, 0.6)], "val/ci95": [(10, 0.1), (20, 0.05)]})
    adaptation = reports.adaptation_curve_figure({"accuracy": 0.9, "ci95": 0.01, "episodes": 600, "split": "test",
                                                  "curve": [0.2, 0.9], "curve_ci95": [0.02, 0.01]})
    bands = [t for f in (fig, adaptation) for t in f.data if t.fill == "toself"]
    assert len(bands) == 2 and {t.mode for t in bands} == {"lines"}
    assert sorted(bands[0].y) == pytest.approx([40.0, 55.0, 60.0, 65.0])
    assert sorted(bands[1].y) == pytest.approx([18.0, 22.0, 89.0, 91.0])


# -- percent everywhere -----------------------------------------------------------------------------------


def test_accuracy_curves_and_tables_are_in_percent_like_the_headline():
    fig = reports.learning_curves_figure({"train/accuracy": [(10, 0.35)], "val/accuracy": [(10, 0.943)]})
    assert next(t for t in fig.data if t.name == "train accuracy").y == (35.0,)
    assert next(t for t in fig.data if t.name == "val accuracy").y == pytest.approx((94.3,))
    assert fig.layout.yaxis2.title.text == "accuracy (%)"
    # Regression keeps its raw MSE.
    mse = reports.learning_curves_figure({"val/mse": [(10, 0.25)]})
    assert next(t for t in mse.data if t.name == "val mse").y == (0.25,)
    assert mse.layout.yaxis2.title.text == "MSE"
    compare = reports.compare_curves_figure({"a": [(1, 0.5)]}, "val/accuracy")
    assert compare.data[0].y == (50.0,) and compare.layout.yaxis.title.text == "val/accuracy (%)"
    assert reports.final_metrics({"val/accuracy": [(1, 0.5), (2, 0.943)], "val/ci95": [(2, 0.01)],
                                  "train/loss": [(2, 0.3)]}) == pytest.approx(
        {"train/loss": 0.3, "val/accuracy (%)": 94.3, "val/ci95 (%)": 1.0})


def test_the_offline_report_shows_percent_in_its_charts_and_tables():
    report = {"run": {"id": "r1", "config": {"test_episodes": 10}},
              "metrics": {"val/accuracy": [(10, 0.943)], "val/ci95": [(10, 0.01)]},
              "evaluations": [{"split": "test", "episodes": 10, "seed": 2017, "accuracy": 0.943, "ci95": 0.01}]}
    text = reports.report_html(report, generated=0)
    assert "<th>val/accuracy (%)</th><td>94.3</td>" in text
    figures = _embedded_figures(text)
    curves = figures[0]
    val = next(t for t in curves["data"] if t.get("name") == "val accuracy")
    assert val["y"] == [pytest.approx(94.3)] and val["mode"] == "lines+markers"
    assert all(t.get("mode") for t in curves["data"])  # no trace left to Plotly's marker default


def _embedded_figures(text: str) -> list[dict]:
    """The figure JSON that ``Plotly.newPlot(div, data, layout, config)`` calls of an offline report embed."""
    decoder = json.JSONDecoder()
    figures = []
    for match in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', text):
        data, end = decoder.raw_decode(text, match.end())
        layout, _ = decoder.raw_decode(text, text.index("{", end))
        figures.append({"data": data, "layout": layout})
    return figures


# -- score axes ---------------------------------------------------------------------------------------


def test_scores_are_points_with_intervals_on_an_axis_that_shows_their_differences():
    fig = reports.scores_figure([
        {"label": "this run", "value": 94.0, "ci95": 0.8, "metric": "accuracy (%)", "group": "this run"},
        {"label": "MAML (Finn et al.)", "value": 98.7, "ci95": 0.4, "group": "published"},
        {"label": "no CI", "value": 99.0, "ci95": None, "group": "published"},
    ])
    assert {t.type for t in fig.data} == {"scatter"} and {t.mode for t in fig.data} == {"markers"}
    low, high = fig.layout.yaxis.range
    # The axis spans the intervals with a margin, not 0..100: 94 and 99 stand far apart on it.
    assert 90 < low < 93.2 and 99.1 < high < 101
    assert (98.7 - 94.0) / (high - low) > 0.5
    assert list(fig.data[0].error_y.array) == [0.8] and list(fig.data[1].error_y.array) == [0.4, 0]


def test_a_score_axis_never_goes_below_zero_for_non_negative_scores():
    fig = reports.scores_figure([{"label": "a", "value": 0.02, "ci95": 0.01, "metric": "MSE"},
                                 {"label": "b", "value": 0.5, "ci95": 0.1}])
    low, high = fig.layout.yaxis.range
    assert low == 0.0 and 0.6 < high < 0.8
    assert reports.scores_figure([{"label": "a", "value": float("nan"), "ci95": 1.0}]).layout.yaxis.range is None


# -- colours --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 20, 24, 40])
def test_class_colours_stay_distinct_for_20_classes_and_more(n):
    colors = reports.class_colors(n)
    assert len(colors) == n == len(set(colors))
    rgb = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in colors]
    closest = min(sum((a - b) ** 2 for a, b in zip(x, y)) ** 0.5 for x, y in itertools.combinations(rgb, 2))
    assert closest > 20  # of 441 between black and white: no two classes share a colour by eye


def test_a_20_way_embedding_gives_every_class_its_own_colour():
    labels = [c for c in range(20) for _ in range(3)]
    fig = reports.embedding_figure({"points": [[float(i), 0.0] for i in range(60)], "labels": labels})
    assert len(fig.data) == 20 and len({t.marker.color for t in fig.data}) == 20


# -- the episode gallery ----------------------------------------------------------------------------------


def test_a_3_way_gallery_shows_every_query_and_its_title_scores_what_is_shown():
    data = _episode(3, 5, 15, seed=1)
    data["accuracy"] = 0.6  # an old report's score of queries it did not show: the title no longer repeats it
    (fig,) = [f for title, f in reports.report_figures({"run": {}, "report_data": {"episode": data}})
              if title.startswith(reports.GALLERY_TITLE)]
    marks = _marks(fig)
    right = sum("✓" in m for m in marks)
    assert len(marks) == 45 == len(data["query_labels"])
    assert right == sum(a == b for a, b in zip(data["query_labels"], data["query_predictions"]))
    assert f"{right}/45 queries right ({100 * right / 45:.1f}%)" in fig.layout.title.text
    assert "60.0%" not in fig.layout.title.text
    assert len([t for t in fig.data if t.type == "image"]) == 15 + 45  # every support and query image is drawn


def test_a_20_way_gallery_is_paged_by_class_and_shows_every_scored_query_once():
    data = _episode(20, 1, 15)
    pages = reports.episode_gallery_pages(data)
    assert len(pages) > 1 and sorted(c for page in pages for c in page) == list(range(20))
    figures = [reports.episode_gallery_figure(data, p) for p in range(len(pages))]
    marks = [m for fig in figures for m in _marks(fig)]
    assert len(marks) == 300 == len(data["query_labels"])
    right = sum(a == b for a, b in zip(data["query_labels"], data["query_predictions"]))
    assert sum("✓" in m for m in marks) == right
    for page, fig in zip(pages, figures):
        shown = sum(1 for label in data["query_labels"] if label in page)
        page_right = sum("✓" in m for m in _marks(fig))
        assert fig.layout.meta["queries"] == shown == len(_marks(fig)) and fig.layout.meta["correct"] == page_right
        assert f"{page_right}/{shown} queries right" in fig.layout.title.text
        assert f"all pages: {right}/300 queries right" in fig.layout.title.text
        # Each class's row starts with its name: queries of every class on the page are there.
        assert [a.text for a in fig.layout.annotations if a.text.startswith("<b>class")] == [
            f"<b>class {c}</b>" for c in page]
    titles = [t for t, _ in reports.report_figures({"run": {}, "report_data": {"episode": data}})]
    assert titles == [f"{reports.GALLERY_TITLE}, page {i + 1} of {len(pages)}" for i in range(len(pages))]


def test_gallery_tiles_hold_the_episode_images():
    data = _episode(2, 1, 1)
    fig = reports.episode_gallery_figure(data)
    from PIL import Image

    first = fig.data[0].source
    assert first.startswith("data:image/png;base64,")
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(first.split(",", 1)[1]))))
    assert pixels.tolist() == data["support_images"][0]


def test_the_worker_keeps_every_query_or_the_same_number_of_each_class():
    labels = np.repeat(np.arange(20), 15)
    assert list(gallery_queries(labels, 600)) == list(range(300))
    kept = gallery_queries(labels, 100)
    assert np.bincount(labels[kept]).tolist() == [5] * 20


# -- headings ----------------------------------------------------------------------------------------


def test_each_report_heading_is_printed_once():
    report = {"run": {"id": "r1", "config": {"test_episodes": 10}},
              "metrics": {"train/loss": [(1, 1.0)], "val/accuracy": [(1, 0.5)]},
              "evaluations": [{"split": "test", "episodes": 10, "seed": 2017, "accuracy": 0.9, "ci95": 0.01,
                               "curve": [0.5, 0.9], "curve_ci95": [0.01, 0.01]}],
              "report_data": {"embedding": {"points": [[0, 0], [1, 1]], "labels": [0, 1], "method": "PCA"}}}
    for heading, fig in reports.report_figures(report):
        title = fig.layout.title.text or ""
        assert heading not in title, (heading, title)
    text = reports.report_html(report, generated=0)
    assert text.count("Learning curves") == 1 and text.count("Adaptation curve") == 1

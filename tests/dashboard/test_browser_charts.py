"""In Chromium, the report of a finished 20-way run draws honest charts: the test reads the figure data the page's
Plotly received (``gd.data``, ``gd._fullData``, ``gd._fullLayout``), on the dashboard and in the downloaded offline
HTML report.

Needs Debian's Chromium and the ``playwright`` Python package (as ``test_browser.py``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.processes import streamlit_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]

WAYS, QUERIES = 20, 5  # 100 queries: two gallery pages of ten classes
CONFIG = {"dataset": "metalab.omniglot", "algorithm": "metalab.maml", "backbone": "metalab.conv4",
          "dataset_params": {"split": "vinyals", "rotations": True, "image_size": 28},
          "algorithm_params": {"first_order": False}, "backbone_params": {},
          "ways": WAYS, "shots": 1, "queries": QUERIES, "steps": 100, "seed": 0, "test_episodes": 50}

#: Every Plotly chart on the page, as Plotly holds it after drawing (full data: the modes it really used).
CHARTS_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
    names: gd.data.map(t => t.name || null), y: gd.data.map(t => t.y ? Array.from(t.y) : null),
    modes: gd._fullData.map(t => t.mode || null), fills: gd._fullData.map(t => t.fill || null),
    colors: gd._fullData.map(t => (t.marker && typeof t.marker.color === 'string') ? t.marker.color : null),
    types: gd._fullData.map(t => t.type), yrange: gd._fullLayout.yaxis ? gd._fullLayout.yaxis.range : null,
    meta: gd.layout.meta || null, title: (gd.layout.title && gd.layout.title.text) || null,
    annotations: (gd.layout.annotations || []).map(a => a.text)}))"""


@pytest.fixture
def server(tmp_path: Path):
    """A headless ``streamlit run streamlit_app.py`` on a free port with its own METALAB_HOME."""
    with streamlit_server(tmp_path, METALAB_HOME=str(tmp_path / "home")) as url:
        yield url, tmp_path / "home"


def _finished_20_way_run(home: Path) -> tuple[str, int]:
    """A completed 20-way one-shot run written to the store: one validation point, a test score, an episode of
    300 queries and its embedding. Returns the run id and how many of the episode's queries were right."""
    from metalab.core.settings import load_settings
    from metalab.core.store import RunStore

    settings = load_settings(home=home)
    store = RunStore(settings.store_path, settings.runs_dir)
    run_id = store.create_run(dict(CONFIG), name="charts", versions={"keras": "3.15.1"})
    store.log_metrics(run_id, 50, {"train/loss": 1.2, "train/accuracy": 0.55})
    store.log_metrics(run_id, 100, {"train/loss": 0.6, "train/accuracy": 0.81, "val/accuracy": 0.90,
                                    "val/ci95": 0.02, "val/loss": 0.4})
    store.add_evaluation(run_id, "test", 50, {"episodes": 50, "loss": 0.3, "accuracy": 0.943, "ci95": 0.008,
                                              "curve": [0.05, 0.9, 0.943], "curve_ci95": [0.01, 0.01, 0.008]},
                         seed=2017)
    rng = np.random.default_rng(0)
    labels = [c for c in range(WAYS) for _ in range(QUERIES)]
    predictions = [(c + 1) % WAYS if rng.random() < 0.1 else c for c in labels]
    image = lambda c: np.full((28, 28), 10 * c, dtype=np.uint8).tolist()  # noqa: E731
    data = {"episode": {"ways": WAYS, "shots": 1, "accuracy": float(np.mean(np.equal(labels, predictions))),
                        "support_images": [image(c) for c in range(WAYS)], "support_labels": list(range(WAYS)),
                        "query_images": [image(c) for c in labels], "query_labels": labels,
                        "query_predictions": predictions},
            "embedding": {"points": rng.normal(size=(len(labels), 2)).round(3).tolist(), "labels": labels,
                          "correct": [a == b for a, b in zip(labels, predictions)], "method": "PCA"}}
    path = store.run_dir(run_id) / "report_data.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    store.add_artifact(run_id, "report_data", "json", path)
    now = time.time()
    store.update_run(run_id, status="completed", started=now - 60, finished=now, step=100, device="/device:CPU:0")
    return run_id, sum(a == b for a, b in zip(labels, predictions))


def _chart(charts: list[dict], name: str) -> dict:
    return next(c for c in charts if name in c["names"])


def _check_curves_and_scores(charts: list[dict]) -> None:
    curves = _chart(charts, "val accuracy")
    # One validation point: one marker (with its CI as an error bar), no band whose edges Plotly drew as dots.
    assert not [n for n in curves["names"] if n and n.endswith("95% CI")]
    assert [m for m, f in zip(curves["modes"], curves["fills"]) if f == "toself" and "markers" in (m or "")] == []
    assert curves["y"][curves["names"].index("val accuracy")] == [pytest.approx(90.0)]  # percent
    assert curves["y"][curves["names"].index("train accuracy")] == [pytest.approx(55.0), pytest.approx(81.0)]
    scores = _chart(charts, "this run")
    assert set(scores["types"]) == {"scatter"} and set(scores["modes"]) == {"markers"}
    low, high = scores["yrange"]
    assert 80 < low < 93.5 and 96 < high < 101  # 94.3 beside the papers' 88-96, not bars from 0


def test_a_finished_runs_report_gives_the_browser_honest_chart_data(server, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    url, home = server
    run_id, right = _finished_20_way_run(home)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 6000}, accept_downloads=True)
            page.set_default_timeout(60_000)
            page.goto(f"{url}/report?run={run_id}")
            page.get_by_text("Meta-test accuracy (%)").wait_for()
            page.get_by_role("heading", name="Query embeddings").wait_for()
            # Streamlit loads plotly.js once the first chart arrives: seconds, more on a busy machine.
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 5", timeout=120_000)
            charts = page.evaluate(CHARTS_JS)
            if os.environ.get("METALAB_TEST_ARTIFACTS"):
                page.screenshot(path=str(Path(os.environ["METALAB_TEST_ARTIFACTS"]) / "charts-report.png"),
                                full_page=True)
            _check_curves_and_scores(charts)
            assert page.get_by_role("heading", name="Learning curves").count() == 1
            assert "Learning curves" not in [c["title"] for c in charts]

            embedding = _chart(charts, "class 0")
            assert len(embedding["names"]) == WAYS and len(set(embedding["colors"])) == WAYS

            # The gallery: every query it scores, a page of whole classes at a time, its title scoring what it shows.
            gallery = next(c for c in charts if c["meta"] and "all_queries" in c["meta"])
            pages = gallery["meta"]["pages"]
            assert pages > 1 and gallery["meta"]["all_queries"] == WAYS * QUERIES
            shown, correct = [], 0
            for number in range(1, pages + 1):
                if number > 1:
                    page.get_by_test_id("stButtonGroup").get_by_text(str(number), exact=True).click()
                    page.wait_for_function(
                        "n => Array.from(document.querySelectorAll('.js-plotly-plot'))"
                        ".some(gd => gd.layout.meta && gd.layout.meta.page === n)", arg=number - 1)
                gd = next(c for c in page.evaluate(CHARTS_JS) if c["meta"] and c["meta"].get("page") == number - 1)
                marks = [a for a in gd["annotations"] if "✓" in a or "✗" in a]
                assert len(marks) == gd["meta"]["queries"]
                assert f"{sum('✓' in m for m in marks)}/{len(marks)} queries right" in gd["title"]
                shown += marks
                correct += sum("✓" in m for m in marks)
            assert len(shown) == WAYS * QUERIES and correct == right

            # The offline report holds the same charts: the browser draws them from its embedded JSON.
            with page.expect_download() as download:
                page.get_by_role("button", name="Download report (HTML)").click()
            report = tmp_path / "report.html"
            download.value.save_as(report)
            offline = browser.new_page(viewport={"width": 1400, "height": 3000})
            offline.goto(report.as_uri())
            offline.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 5")
            charts = offline.evaluate(CHARTS_JS)
            _check_curves_and_scores(charts)
            galleries = [c for c in charts if c["meta"] and "all_queries" in c["meta"]]
            assert len(galleries) == pages
            assert sum(c["meta"]["queries"] for c in galleries) == WAYS * QUERIES
            assert sum(c["meta"]["correct"] for c in galleries) == right
        finally:
            browser.close()

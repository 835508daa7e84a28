"""End to end in a real browser: launch a sinusoid MAML run from the Train page, watch it, download its report.

Needs Debian's Chromium (``apt-get install -y chromium chromium-driver``) and the ``playwright`` Python package;
screenshots of each page go to ``$METALAB_TEST_ARTIFACTS`` (default: a ``screenshots`` folder under the test's
temporary directory).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

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


@pytest.fixture
def server(tmp_path: Path):
    """A headless ``streamlit run streamlit_app.py`` on a free port with its own METALAB_HOME."""
    with streamlit_server(tmp_path, METALAB_HOME=str(tmp_path / "home"), METALAB_DASHBOARD_POLL_S="1") as url:
        yield url, tmp_path / "home"


@pytest.fixture
def shots_dir(tmp_path: Path) -> Path:
    path = Path(os.environ.get("METALAB_TEST_ARTIFACTS") or tmp_path / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_launch_watch_and_download_a_sinusoid_run(server, shots_dir, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    url, home = server
    setup = ("dataset=metalab.sinusoid&algorithm=metalab.maml&steps=200&log_every=10&val_every=100"
             "&checkpoint_every=200&test_episodes=50&name=browser-test")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 3000}, accept_downloads=True)
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_role("heading", name="metalab").wait_for()
            page.screenshot(path=str(shots_dir / "01-home.png"), full_page=True)

            page.goto(f"{url}/plugins")
            page.get_by_text("broken_import").first.wait_for()
            page.screenshot(path=str(shots_dir / "02-plugins.png"), full_page=True)

            page.goto(f"{url}/train?{setup}")
            # The Train page renders without waiting for the worker's device list (a probe process lists it).
            page.get_by_text("Valid: MAML on Sinusoid regression").wait_for(timeout=60_000)
            assert "steps=200" in page.url
            page.get_by_role("button", name="Launch").wait_for()
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots_dir / "03-train.png"), full_page=True)
            page.get_by_role("button", name="Launch").click()

            # The live view: the URL names the run, a curve appears while it trains, then the report.
            page.wait_for_url(re.compile(r".*/report\?run=.+"))
            run_id = page.url.split("run=")[1].split("&")[0]
            page.get_by_text("Live learning curves").first.wait_for(timeout=120_000)
            # The heading comes first; Plotly draws the curve a moment later (counting at once raced it in CI).
            page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
            page.screenshot(path=str(shots_dir / "04-live.png"), full_page=True)
            page.get_by_text("Meta-test MSE").wait_for(timeout=240_000)
            page.get_by_text("Sinusoid fits").wait_for()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shots_dir / "05-report.png"), full_page=True)

            with page.expect_download() as download_info:
                page.get_by_role("button", name="Download report (HTML)").click()
            report = tmp_path / "report.html"
            download_info.value.save_as(report)
            text = report.read_text(encoding="utf-8")
            assert run_id in text
            assert text.count("Plotly.newPlot") >= 4  # curves, adaptation, score, sinusoid fits
            for title in ("Learning curves", "Adaptation curve", "Sinusoid fits"):
                assert title in text
            assert "window.PlotlyConfig" in text  # plotly.js inlined: the file opens offline

            page.goto(f"{url}/runs")
            page.get_by_test_id("stDataFrame").first.wait_for()
            page.get_by_text("1 of 1 runs").wait_for()
            page.screenshot(path=str(shots_dir / "06-runs.png"), full_page=True)
            page.goto(f"{url}/compare?runs={run_id}")
            page.get_by_text("Parameters and metrics").wait_for()
            page.locator(".js-plotly-plot").first.wait_for()
            page.screenshot(path=str(shots_dir / "07-compare.png"), full_page=True)
        finally:
            browser.close()
    assert (home / "runs.sqlite").exists()

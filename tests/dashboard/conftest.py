"""Fixtures of the dashboard tests: a fresh run store per test and AppTest drivers of each page."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from metalab.core.settings import load_settings
from metalab.core.store import RunStore

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = REPO_ROOT / "streamlit_app.py"


def _page_script(name: str) -> None:
    # Runs inside AppTest: only what is imported here exists there.
    from metalab.dashboard import pages

    getattr(pages, name)()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh METALAB_HOME; the dashboard's cached services are rebuilt on it."""
    from metalab.dashboard.state import reset_services as services_reset

    path = tmp_path / "home"
    monkeypatch.setenv("METALAB_HOME", str(path))
    monkeypatch.setenv("METALAB_DISABLE_PLUGINS", "")
    monkeypatch.setenv("METALAB_STRICT_PLUGINS", "0")
    services_reset()
    yield path
    services_reset()


@pytest.fixture
def store(home: Path) -> RunStore:
    settings = load_settings()
    return RunStore(settings.store_path, settings.runs_dir)


@pytest.fixture
def page(home: Path):
    """``page("train")`` returns an AppTest of that page function (run it with ``.run()``)."""

    def make(name: str, query: dict[str, str] | None = None) -> AppTest:
        at = AppTest.from_function(_page_script, args=(name,), default_timeout=60)
        for key, value in (query or {}).items():
            at.query_params[key] = value
        return at

    return make


@pytest.fixture
def app(home: Path):
    """``app(query)`` returns an AppTest of the whole router (``streamlit_app.py``)."""

    def make(query: dict[str, str] | None = None) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=60)
        for key, value in (query or {}).items():
            at.query_params[key] = value
        return at

    return make


SINUSOID_CONFIG: dict[str, Any] = {
    "dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "backbone": "metalab.mlp",
    "dataset_params": {}, "algorithm_params": {"inner_lr": 0.01, "eval_inner_steps": 2}, "backbone_params": {},
    "ways": 1, "shots": 5, "queries": 5, "steps": 40, "seed": 3, "test_episodes": 20,
}


def make_completed_run(store: RunStore, *, name: str = "", config: dict[str, Any] | None = None,
                       classification: bool = False) -> str:
    """A completed run written straight to the store: metrics, a test evaluation and report data."""
    config = dict(config or SINUSOID_CONFIG)
    run_id = store.create_run(config, name=name, versions={"python": "3.11", "keras": "3.15.1"})
    score = "accuracy" if classification else "mse"
    for step in range(10, 41, 10):
        store.log_metrics(run_id, step, {"train/loss": 1.0 / step, "train/steps_per_s": 50.0})
        store.log_metrics(run_id, step, {f"val/{score}": 0.5 + step / 100, "val/ci95": 0.05, "val/loss": 1.0 / step})
    evaluation = {"episodes": 20, "loss": 0.3, score: 0.8, "ci95": 0.04, "curve": [1.5, 0.6, 0.3],
                  "curve_ci95": [0.2, 0.1, 0.05]}
    store.add_evaluation(run_id, "test", 20, evaluation, seed=2017)  # the run's canonical protocol
    data = {"sinusoid": {"x": [-1.0, 0.0, 1.0], "tasks": [{
        "amplitude": 1.0, "phase": 0.5, "true": [0.1, 0.2, 0.3], "support_x": [0.5], "support_y": [0.25],
        "predictions": {"0": [0.0, 0.0, 0.0], "1": [0.1, 0.1, 0.1], "10": [0.1, 0.2, 0.3]}}]}}
    path = store.run_dir(run_id) / "report_data.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    store.add_artifact(run_id, "report_data", "json", path)
    now = time.time()
    store.update_run(run_id, status="completed", started=now - 30, finished=now, step=40, device="/device:CPU:0")
    return run_id


def make_failed_run(store: RunStore) -> str:
    run_id = store.create_run(dict(SINUSOID_CONFIG))
    store.update_run(run_id, status="failed", step=7, error="ValueError: the loss became NaN",
                     traceback="Traceback (most recent call last):\n  File 'x.py'\nValueError: the loss became NaN")
    return run_id


def make_running_run(store: RunStore) -> str:
    """A run marked running by this (alive) process, with a few metrics."""
    run_id = store.create_run(dict(SINUSOID_CONFIG))
    store.update_run(run_id, status="running", pid=os.getpid(), host=os.uname().nodename, started=time.time(),
                     step=20)
    store.log_metrics(run_id, 10, {"train/loss": 0.9, "train/steps_per_s": 10.0})
    store.log_metrics(run_id, 20, {"train/loss": 0.7, "train/steps_per_s": 10.0, "val/mse": 0.8, "val/ci95": 0.1})
    return run_id


def plotly_specs(at: AppTest) -> list[dict[str, Any]]:
    """The figure JSON of every Plotly chart on the page (AppTest sees them as unknown elements)."""
    specs = []
    for element in at.get("plotly_chart"):
        specs.append(json.loads(element.proto.spec))
    return specs


@pytest.fixture
def fake_runs(store: RunStore):
    """Makers of runs written straight to the store (no training): ``completed``, ``failed``, ``running``."""
    from types import SimpleNamespace

    return SimpleNamespace(
        completed=lambda **kw: make_completed_run(store, **kw),
        failed=lambda: make_failed_run(store),
        running=lambda: make_running_run(store),
    )


@pytest.fixture
def figures():
    """``figures(at)``: the Plotly figure specs on an AppTest page."""
    return plotly_specs

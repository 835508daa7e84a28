"""The pages of a shared dashboard: links never set machine parameters, demo hides them and keeps to its caps."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamlit.testing.v1 import AppTest

from metalab.core.store import RunStore


def _script(name: str) -> None:
    # Runs inside AppTest: only what is imported here exists there.
    import importlib

    module, _, function = name.partition(":")
    getattr(importlib.import_module(f"metalab.dashboard.{module}"), function)()


def _page(name: str, query: dict[str, str] | None = None) -> AppTest:
    """An AppTest of ``module:function`` with a generous timeout (the first Train run starts a device probe)."""
    at = AppTest.from_function(_script, args=(name,), default_timeout=240)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at

IMAGEFOLDER_PATH = "train.dataset.metalab.imagefolder.metalab.imagefolder.path"


@pytest.fixture
def demo(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A demo-mode dashboard on fresh folders."""
    from metalab.dashboard.datasets import _summary
    from metalab.dashboard.state import reset_services

    monkeypatch.setenv("METALAB_MODE", "demo")
    monkeypatch.setenv("METALAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("METALAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("METALAB_OFFLINE", "1")
    (tmp_path / "data").mkdir()
    reset_services()
    _summary.clear()
    yield tmp_path
    reset_services()


def _texts(at) -> str:
    return " ".join(str(e.value) for kind in (at.error, at.warning, at.caption, at.markdown, at.info) for e in kind)


def test_a_link_never_fills_a_path_in_private_mode(home):
    at = _page("train:train", {"dataset": "metalab.imagefolder", "algorithm": "metalab.protonet",
                        "dataset.path": "/etc", "dataset.image_size": "32"}).run()
    assert not at.exception
    assert at.text_input(key=IMAGEFOLDER_PATH).value == ""  # the default, not the link's /etc
    assert at.number_input(key="train.dataset.metalab.imagefolder.metalab.imagefolder.image_size").value == 32
    assert "dataset.path names a server path" in _texts(at)
    assert "dataset.path" not in at.query_params


def test_demo_hides_machine_fields_and_ignores_them_in_links(demo):
    at = _page("train:train", {"dataset": "metalab.imagefolder", "algorithm": "metalab.protonet",
                        "dataset.path": "/etc"}).run()
    assert not at.exception
    assert IMAGEFOLDER_PATH not in [t.key for t in at.text_input]
    assert "dataset.path" not in at.query_params
    at = _page("datasets:datasets", {"dataset": "metalab.mini_imagenet", "dataset.url": "file:///etc/passwd",
                           "dataset.sha256": "a" * 64}).run()
    assert not at.exception
    keys = [t.key for t in at.text_input]
    assert not any(k.endswith((".url", ".sha256", ".path")) for k in keys)
    assert "Paths, URLs and checksums keep the plugin's defaults in demo mode." in _texts(at)
    at.button(key="datasets.load").click().run()
    assert not at.exception
    assert not any(p.is_file() for p in (demo / "cache").rglob("*")) if (demo / "cache").exists() else True


def test_demo_presets_fit_the_step_cap_and_launch_is_capped(demo):
    at = _page("train:train").run()
    assert not at.exception
    steps = at.number_input(key="train.run.metalab.sinusoid.metalab.maml.steps")
    assert steps.value == 2000  # the 4000-step preset shortened to demo's cap
    assert "Valid:" in at.success[0].value
    assert "2,000 steps per run" in _texts(at)
    steps.set_value(5000).run()
    assert "at most 2,000 steps per run here (METALAB_MAX_STEPS). Received: steps=5000" in _texts(at)
    launch = next(b for b in at.button if b.key == "train.launch")
    assert launch.disabled
    store = RunStore(Path(demo / "home" / "runs.sqlite"))
    assert store.list_runs() == []

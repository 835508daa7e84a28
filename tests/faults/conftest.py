"""The fault-injection suite's fixtures: real worker processes on a throw-away store."""

from __future__ import annotations

from pathlib import Path

import pytest

from metalab.core.contract.manager import make_plugin_manager
from metalab.core.services import Services
from metalab.core.settings import load_settings


@pytest.fixture(scope="session")
def registry():
    return make_plugin_manager(distributions={"metalab"}, strict=False)


@pytest.fixture
def svc(tmp_path: Path, registry, monkeypatch: pytest.MonkeyPatch) -> Services:
    """Services on fresh folders; workers inherit the same folders through the environment."""
    for name, sub in (("METALAB_HOME", "home"), ("METALAB_DATA_DIR", "data"), ("METALAB_CACHE_DIR", "cache")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.setenv("METALAB_DISABLE_PLUGINS", "metalab-testplugins,metalab-matchingnet")
    monkeypatch.setenv("METALAB_INTRA_OP_THREADS", "1")
    monkeypatch.setenv("METALAB_INTER_OP_THREADS", "1")
    return Services(settings=load_settings(), registry=registry)



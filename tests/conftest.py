"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from metalab.core.plugin_manager import PluginRegistry, make_plugin_manager
from metalab.core.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def builtin_registry() -> PluginRegistry:
    """A fresh registry of the built-in plugins only, whatever else is installed or disabled in the shell."""
    return make_plugin_manager(distributions={"metalab"}, settings=load_settings(disable_plugins=""), strict=False)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared data folder beside the repository (``<repo>/../shared/data``); skips when it is absent."""
    path = (REPO_ROOT.parent / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"Shared data folder not found (expected {path}, beside the repository).")
    return path


@pytest.fixture
def float64():
    """Runs a test with Keras in float64 (gradient checks); Keras caches the global dtype policy on first use, so
    floatx and the policy are set together, and both restored."""
    import keras

    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)

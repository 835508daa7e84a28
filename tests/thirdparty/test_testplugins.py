"""Tests for the third-party test package's good plugin: the lines regression task family."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

from metalab.api import RegressionTaskFamily
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.settings import load_settings

try:
    importlib.metadata.distribution("metalab-testplugins")
except importlib.metadata.PackageNotFoundError:
    pytest.skip(
        "metalab-testplugins is not installed; run `pip install --no-deps -e tests/thirdparty/metalab-testplugins`.",
        allow_module_level=True,
    )


@pytest.fixture
def spec():
    registry = make_plugin_manager(distributions={"metalab-testplugins"}, settings=load_settings(disable_plugins=""),
                                   strict=False)
    return registry.dataset("metalab_testplugins.lines")


def test_spec_declares_a_regression_family(spec):
    assert spec.kind == "regression"
    assert spec.default_backbone == "metalab.mlp"
    assert spec.episode_defaults == {"shots": 10, "queries": 10}
    assert spec.params().noise_std == 0.0
    with pytest.raises(ValueError):
        spec.params(noise_std=-1.0)


def test_family_samples_lines_in_range(spec):
    family = spec.factory(spec.params(), None)
    assert isinstance(family, RegressionTaskFamily)
    assert (family.kind, family.input_shape, family.output_dim) == ("regression", (1,), 1)
    rng = np.random.default_rng(0)
    tasks = [family.sample_task(rng) for _ in range(200)]
    slopes = np.array([t.slope for t in tasks])
    intercepts = np.array([t.intercept for t in tasks])
    assert slopes.min() >= -2 and slopes.max() <= 2 and slopes.std() > 0.5
    assert intercepts.min() >= -1 and intercepts.max() <= 1
    x, y = family.sample_points(tasks[0], 25, rng)
    assert x.shape == (25, 1) and y.shape == (25, 1)
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert x.min() >= -3 and x.max() <= 3
    np.testing.assert_allclose(y, tasks[0].slope * x + tasks[0].intercept, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(family.evaluate(tasks[0], x), y)


def test_noise_is_added_and_reproducible(spec):
    family = spec.factory(spec.params(noise_std=0.5), None)
    task = family.sample_task(np.random.default_rng(1))
    x, y = family.sample_points(task, 500, np.random.default_rng(2))
    residual = y - family.evaluate(task, x)
    assert 0.4 < residual.std() < 0.6
    x2, y2 = family.sample_points(task, 500, np.random.default_rng(2))
    np.testing.assert_array_equal(y, y2)


def test_slow_import_is_quick_unless_told_to_sleep(monkeypatch):
    # The rest of the suite loads every installed plugin: slow_import must cost nothing there.
    monkeypatch.delenv("METALAB_TESTPLUGINS_IMPORT_SLEEP", raising=False)
    registry = make_plugin_manager(distributions={"metalab-testplugins"}, settings=load_settings(disable_plugins=""),
                                   strict=False)
    slow = next(r for r in registry.plugins if r.name == "slow_import")
    assert slow.status == "loaded" and slow.hooks == [] and slow.seconds < 5
    broken = {r.name for r in registry.failures}
    assert broken == {"broken_import", "bad_spec", "future_api", "exit_at_import"}
    assert "metalab_testplugins.string_dataset" in registry.datasets  # it registers; only its factory is broken

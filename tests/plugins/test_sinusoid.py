"""Tests for the metalab.sinusoid task family plugin."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import metalab.plugins.sinusoid as sinusoid_plugin
from metalab.core.contract.specs import RegressionTaskFamily
from metalab.plugins.sinusoid.family import SinusoidFamily, SinusoidTask


def test_spec_matches_the_paper_setup():
    (spec,) = sinusoid_plugin.metalab_register_datasets()
    spec.validate()
    assert spec.id == "metalab.sinusoid" and spec.kind == "regression"
    assert spec.default_backbone == "metalab.mlp"
    assert spec.episode_defaults == {"shots": 10, "queries": 10}
    assert "Finn" in spec.paper
    p = spec.params()
    assert (p.amplitude_min, p.amplitude_max, p.phase_min, p.phase_max, p.x_min, p.x_max) == (
        0.1, 5.0, 0.0, np.pi, -5.0, 5.0)


def test_factory_returns_a_task_family():
    family = sinusoid_plugin.make_sinusoid(sinusoid_plugin.SinusoidParams(amplitude_max=2.0), None)
    assert isinstance(family, RegressionTaskFamily)
    assert family.kind == "regression" and family.input_shape == (1,) and family.output_dim == 1
    rng = np.random.default_rng(0)
    tasks = [family.sample_task(rng) for _ in range(500)]
    amplitudes = np.array([t.amplitude for t in tasks])
    phases = np.array([t.phase for t in tasks])
    assert 0.1 <= amplitudes.min() and amplitudes.max() <= 2.0
    assert 0.0 <= phases.min() and phases.max() <= np.pi
    assert amplitudes.std() > 0.3 and phases.std() > 0.5  # spread over the ranges, not a constant


def test_points_follow_a_sin_x_minus_phase():
    family = SinusoidFamily()
    task = SinusoidTask(amplitude=2.0, phase=0.5)
    x, y = family.sample_points(task, 50, np.random.default_rng(1))
    assert x.shape == (50, 1) and y.shape == (50, 1) and x.dtype == np.float32 and y.dtype == np.float32
    assert x.min() >= -5.0 and x.max() <= 5.0
    np.testing.assert_allclose(y, 2.0 * np.sin(x.astype(np.float64) - 0.5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(family.evaluate(task, np.array([[0.5], [0.5 + np.pi / 2]])), [[0.0], [2.0]], atol=1e-6)


def test_params_reject_reversed_ranges():
    with pytest.raises(ValueError, match="Received: amplitude_min=3.0, amplitude_max=1.0"):
        sinusoid_plugin.SinusoidParams(amplitude_min=3.0, amplitude_max=1.0)
    with pytest.raises(ValueError):
        sinusoid_plugin.SinusoidParams(unknown=1)


def test_registration_modules_import_nothing_heavy():
    code = (
        "import sys\n"
        "import metalab.plugins.sinusoid, metalab.plugins.digits, metalab.plugins.omniglot\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'PIL', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert 'metalab.plugins.omniglot.loader' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

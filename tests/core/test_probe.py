"""The pre-launch probe: the device list and a short timed estimate, in-process and through the service facade."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from metalab.core.engine import probe
from metalab.core.engine.config import resolve_config
from metalab.core.engine.session import build_session
from metalab.core.services import ProbeError, Services
from metalab.core.services import estimates as estimates_module
from metalab.core.settings import load_settings

TINY_MAML = {
    "dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 500, "shots": 5, "queries": 5,
    "algorithm_params": {"meta_batch_size": 3, "inner_steps": 1, "first_order": False},
}


def _rss_counter_slack() -> int:
    """Bytes by which two reads of this process's RSS may disagree because Linux folds its counters in batches.

    Since Linux 6.2 RSS lives in per-CPU counters, each holding back up to ``max(32, 2 * CPUs)`` pages before
    folding them into the total; before that, each thread held back up to 64 pages. ``ru_maxrss`` (the kernel's
    high-water mark) reads the folded total, ``/proc/self/statm`` may read the exact sum.
    """
    cpus = os.cpu_count() or 1
    threads = 1
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
    return max(cpus * max(32, 2 * cpus), 64 * threads) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def svc(tmp_path, monkeypatch) -> Services:
    monkeypatch.setenv("METALAB_HOME", str(tmp_path / "home"))
    # Each test lists devices afresh and leaves the process's remembered list as it was.
    monkeypatch.setattr(estimates_module, "_DEVICES", {})
    return Services(settings=load_settings(disable_plugins=""))


def test_devices_lists_the_cpu_with_its_memory(svc):
    assert svc.devices_listed() is None  # nothing asked yet, and it does not wait
    devices = svc.devices()
    cpu = next(d for d in devices if d["type"] == "CPU")
    assert cpu["id"] == "CPU:0" and "cores" in cpu["description"]
    assert cpu["memory_bytes"] > 2**28
    assert 0 < cpu["memory_available_bytes"] <= cpu["memory_bytes"]
    # Listed once per process: the second call answers from memory.
    assert svc.devices() == devices and estimates_module._DEVICES["answer"] == devices
    assert svc.devices_listed() == devices


def test_device_probe_failure_is_a_clear_error_remembered_until_refresh(svc):
    with pytest.raises(ProbeError, match="longer than 0.01 s"):
        svc.devices(timeout=0.01)
    with pytest.raises(ProbeError, match="longer than 0.01 s"):
        svc.devices()
    with pytest.raises(ProbeError, match="longer than 0.01 s"):
        svc.devices_listed()


def test_estimate_of_tiny_second_order_maml_is_measured(builtin_registry):
    result = probe.estimate(TINY_MAML, registry=builtin_registry, steps=3, max_seconds=5, min_seconds=0.2)
    assert result["ok"] is True and result["device"] == "CPU:0"
    config = resolve_config(builtin_registry, TINY_MAML)
    model = build_session(builtin_registry, config).algorithm.model
    assert result["parameters"] == model.count_params() == 1 * 40 + 40 + 40 * 40 + 40 + 40 + 1
    assert result["meta_batch_size"] == 3 and result["run_steps"] == 500
    assert result["compile_seconds"] > 0 and result["seconds_per_step"] > 0 and result["timed_steps"] >= 2
    # Compiling costs more than a compiled step.
    assert result["compile_seconds"] > result["seconds_per_step"]
    assert result["estimated_run_seconds"] == pytest.approx(
        result["compile_seconds"] + 499 * result["seconds_per_step"])
    memory = result["memory"]
    # The peak is a high-water mark of the baseline's own quantity, so it is never below it (exactly, no tolerance);
    # and it is the process's high-water mark as the kernel keeps it, to within the kernel's counter batching.
    assert memory["kind"] == "host RSS" and memory["peak_bytes"] >= memory["baseline_bytes"] > 2**20
    assert memory["peak_bytes"] <= probe.peak_rss() + _rss_counter_slack()
    assert memory["available_bytes"] > memory["peak_bytes"]
    assert result["second_order"] is True and result["fits"] is True and result["hint"] is None
    # The analytic estimate comes with the measured figures: same parameters, the measured baseline under it.
    analytic = result["memory_estimate"]
    assert analytic["modelled"] is True and analytic["second_order"] is True
    assert analytic["parameters"] == result["parameters"] and analytic["meta_batch"] == 3
    assert analytic["baseline_bytes"] == memory["baseline_bytes"]
    assert analytic["total_bytes"] == analytic["baseline_bytes"] + analytic["step_bytes"] > memory["baseline_bytes"]


def test_host_peak_is_a_high_water_mark_of_the_readings_even_when_the_kernel_lags(monkeypatch):
    # Measured on an AVX2 host: statm read 1123860480 bytes as the baseline, then ru_maxrss said 1123713024.
    readings = iter([1123860480, 1123800000, 1123700000])
    monkeypatch.setattr(probe, "current_rss", lambda: next(readings))
    monkeypatch.setattr(probe, "peak_rss", lambda: 1123713024)
    meter = probe._Meter(None, "CPU:0")
    baseline = meter.current()
    meter.reset_peak()
    assert meter.peak() == baseline == 1123860480
    monkeypatch.setattr(probe, "peak_rss", lambda: 1200000000)
    assert meter.peak() == 1200000000  # the kernel's mark, when it is the higher


def test_second_order_that_would_not_fit_gets_a_first_order_hint(builtin_registry):
    # Planning for a machine with 1 MB: the single-task step already shows that ten tasks cannot fit.
    config = {**TINY_MAML, "algorithm_params": {**TINY_MAML["algorithm_params"], "meta_batch_size": 10}}
    result = probe.estimate(config, registry=builtin_registry, max_seconds=2, available_bytes=2**20)
    assert result["ok"] is True and result["fits"] is False and result["extrapolated"] is True
    assert "algorithm.first_order" in result["hint"] and "10 tasks per step" in result["hint"]
    assert result["memory"]["peak_bytes"] > result["memory"]["available_bytes"]
    assert result["seconds_per_step"] > 0
    # The analytic estimate is made before the pilot step, so a run judged too large still gets it.
    assert result["memory_estimate"]["modelled"] is True and result["memory_estimate"]["meta_batch"] == 10


def test_first_order_gets_no_first_order_hint(builtin_registry):
    config = {**TINY_MAML, "algorithm_params": {**TINY_MAML["algorithm_params"], "first_order": True}}
    result = probe.estimate(config, registry=builtin_registry, max_seconds=2, min_seconds=0.1,
                            available_bytes=2**20)
    assert result["second_order"] is False and result["fits"] is False and not result["extrapolated"]
    assert "first_order" not in result["hint"] and "fewer tasks per step" in result["hint"]


def test_bad_config_gives_a_clear_error(svc):
    result = svc.estimate({"dataset": "metalab.sinusoid", "algorithm": "nobody.nothing"})
    assert result["ok"] is False
    assert result["error"].startswith("ConfigError: algorithm: Unknown algorithm 'nobody.nothing'")
    assert "Received: algorithm='nobody.nothing'" in result["error"]


def test_estimate_timeout_is_returned_not_raised(svc):
    result = svc.estimate(TINY_MAML, timeout=0.01)
    assert result == {"ok": False, "error": result["error"], "traceback": result["traceback"]}
    assert "longer than 0.01 s" in result["error"]

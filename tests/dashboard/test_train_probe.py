"""The Train page's device selector and pre-launch estimate (the real probe runs in a worker process)."""

from __future__ import annotations

import time

import pytest

from metalab.core.services import ProbeError, Services
from metalab.core.services import estimates as estimates_module

#: A setup whose estimate takes a few seconds: two tasks per step, one inner step.
QUICK = {"steps": "50", "algorithm.meta_batch_size": "2", "algorithm.inner_steps": "1"}
#: Seconds a script run that starts a probe process may take: longer than the page's own wait for the probe
#: (Services.estimate, 300 s), so that a slow probe shows the page's message rather than ending the script run.
#: These tests took 25-41 s each on an idle 2-core AVX2 host; one ran past 120 s in a full run on a loaded one.
PROBE_WAIT = 330


@pytest.fixture(autouse=True)
def fresh_device_list(monkeypatch):
    """Each test lists the devices itself and leaves the process's remembered list as it was."""
    monkeypatch.setattr(estimates_module, "_DEVICES", {})


def _estimated(at):
    """Presses Estimate, then reruns the page until the background estimate has answered (AppTest fires no
    ``run_every``: in a browser the page's fragment does this)."""
    at.button(key="train.estimate").click().run(timeout=PROBE_WAIT)
    deadline = time.monotonic() + PROBE_WAIT
    while any(i.value.startswith("Estimating") for i in at.info):
        assert time.monotonic() < deadline, "the estimate did not answer"
        time.sleep(0.5)
        at.run(timeout=PROBE_WAIT)
    return at


def _flat(at) -> dict[str, str]:
    return {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}


def test_device_selector_lists_the_workers_devices_and_round_trips_the_link(page):
    # The first render does not wait for the probe process: it offers auto and the CPU, and says it is listing.
    at = page("train", {"device": "cpu"}).run()
    assert not at.exception
    assert at.selectbox(key="train.device").options[1] == "CPU:0 — the host CPU"
    assert any(c.value.startswith("Listing the worker's devices") for c in at.caption)
    assert "Valid:" in at.success[0].value
    # A linked device the page cannot check yet is kept, marked unchecked, until the list says it is absent.
    linked = page("train", {"device": "TPU:7"}).run()
    assert not linked.exception
    assert linked.selectbox(key="train.device").value == "TPU:7"
    assert "TPU:7 — not checked yet (listing devices)" in linked.selectbox(key="train.device").options
    # Once the probe has answered (here: waited for), the next run shows the worker's devices.
    Services().devices(timeout=PROBE_WAIT)
    linked.run()
    assert linked.selectbox(key="train.device").value == "auto"
    assert any("Device 'TPU:7' is not available to the worker" in w.value for w in linked.warning)
    at.run()
    device = at.selectbox(key="train.device")
    assert device.options[0].startswith("auto") and any(o.startswith("CPU:0 — ") and "cores" in o
                                                        for o in device.options)
    assert not any(c.value.startswith("Listing the worker's devices") for c in at.caption)
    # The link's "cpu" names the CPU:0 entry, and the address bar holds the canonical name.
    assert device.value == "CPU:0" and _flat(at)["device"] == "CPU:0"
    at.selectbox(key="train.device").set_value("auto").run()
    assert _flat(at)["device"] == "auto"


@pytest.mark.slow
def test_a_linked_device_the_worker_lacks_is_ignored_with_a_warning(page):
    Services().devices(timeout=PROBE_WAIT)
    at = page("train", {"device": "TPU:7"}).run()
    assert not at.exception
    assert at.selectbox(key="train.device").value == "auto"
    assert any("device='TPU:7' is not available to the worker" in w.value for w in at.warning)


def test_estimate_shows_parameters_times_memory_and_run_time(page):
    at = page("train", QUICK).run()
    assert at.success, [e.value for e in at.error]
    _estimated(at)
    assert not at.exception and not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Parameters"] == "1,761"
    assert metrics["Compile (first step)"].endswith(("ms", "s"))
    assert metrics["Per step"].endswith("ms")
    assert "Run, 50 steps" in metrics and "Peak memory" in metrics and metrics["Peak memory"].endswith("GiB")
    assert any("Measured on CPU:0" in c.value for c in at.caption)
    # The analytic estimate sits beside the measured peak, with its breakdown.
    assert metrics["Estimated peak"].endswith("GiB")
    summary = next(c.value for c in at.caption if c.value.startswith("Memory estimate (from the layer shapes"))
    assert "per task x 2 of 2 tasks alive, 1 inner step." in summary
    items = list(at.table[0].value["item"])
    assert "Weights (1,761 parameters)" in items and items[-1] == "Total"
    # The run time follows the steps without probing again, and the estimate is not marked stale.
    at.number_input(key="train.run.metalab.sinusoid.metalab.maml.steps").set_value(5000).run()
    assert "Run, 5,000 steps" in {m.label for m in at.metric}
    assert not any("setup changed" in c.value for c in at.caption)
    # Another setup marks the shown estimate as stale.
    at.number_input(key="train.algorithm.metalab.sinusoid.metalab.maml.meta_batch_size").set_value(3).run()
    assert any("setup changed since this estimate" in c.value for c in at.caption)


@pytest.mark.slow
def test_a_failed_estimate_is_shown_not_raised(page, monkeypatch, tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("METALAB_DATA_DIR", str(empty))
    monkeypatch.setenv("METALAB_OFFLINE", "1")
    at = page("train", {"dataset": "metalab.omniglot", "algorithm": "metalab.protonet"}).run()
    assert at.success, [e.value for e in at.error]
    _estimated(at)
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(e.startswith("Estimate failed: FileNotFoundError: Omniglot needs") for e in errors), errors
    assert not at.button(key="train.launch").disabled


def test_page_works_when_the_device_list_fails_and_can_list_again(page):
    # A real failure: the probe is given no time. It is remembered, as a slow or broken probe would be.
    with pytest.raises(ProbeError):
        Services().devices(timeout=0.01)
    at = page("train", {"device": "GPU:1"}).run()
    assert not at.exception
    assert any(w.value.startswith("Could not list the devices") for w in at.warning)
    device = at.selectbox(key="train.device")
    # Unknown devices from a link are kept unchecked (the worker checks them); launch stays possible.
    assert device.value == "GPU:1" and device.options[:2] == ["auto — TensorFlow's choice (the first GPU if there "
                                                              "is one, else the CPU)", "CPU:0 — the host CPU"]
    assert "Valid:" in at.success[0].value
    at.button(key="train.devices_retry").click().run(timeout=PROBE_WAIT)
    assert not any(w.value.startswith("Could not list the devices") for w in at.warning)
    assert any("cores" in o for o in at.selectbox(key="train.device").options)
    # Now that the list is known, the linked device it lacks falls back to auto, with a warning.
    assert at.selectbox(key="train.device").value == "auto"
    assert any("'GPU:1' is not available to the worker" in w.value for w in at.warning)


@pytest.mark.slow
def test_estimate_of_an_algorithm_the_model_does_not_cover_says_so(page):
    at = page("train", {**QUICK, "algorithm": "metalab.reptile", "algorithm.meta_batch_size": "2"}).run()
    assert at.success, [e.value for e in at.error]
    _estimated(at)
    assert not at.exception and not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Estimated peak"] == "not modelled" and metrics["Peak memory"].endswith("GiB")
    assert any(c.value.startswith("Memory estimate: not modelled. The memory estimate does not model "
                                  "metalab.reptile") for c in at.caption)


def test_memory_estimate_rows_show_the_breakdown():
    from metalab.dashboard.train import memory_estimate_rows

    assert memory_estimate_rows({"modelled": False, "reason": "x"}) == []
    estimate = {"modelled": True, "second_order": True, "parameters": 112261, "parameter_bytes": 449044,
                "optimizer_bytes": 898088, "gradient_bytes": 898088, "batch_bytes": 3010560,
                "transient_bytes": 10035200, "query_pass_bytes": 14924800, "support_pass_bytes": 5642340,
                "per_task_activation_bytes": 21465228, "inner_steps": 1, "meta_batch": 32, "tasks_alive": 3,
                "activation_bytes": 64395684, "step_bytes": 79686764, "all_tasks_bytes": 700000000,
                "baseline_bytes": 2 * 2**30, "total_bytes": 2 * 2**30 + 79686764}
    rows = dict(memory_estimate_rows(estimate))
    assert rows["Weights (112,261 parameters)"] == "439 KB"
    assert rows["Per task, kept for the backward pass (1 inner step, second order)"] == "20.5 MB"
    assert rows["Activations: 3 of 32 tasks alive at once"] == "61.4 MB"
    assert rows["Step"] == "76.0 MB" and rows["Total"] == "2.07 GiB"


def test_a_jax_estimate_shows_xlas_plan_for_the_step():
    from streamlit.testing.v1 import AppTest

    def app():
        import streamlit as st

        from metalab.dashboard.train import _ESTIMATE, _estimate_section

        st.session_state[_ESTIMATE] = {"config": {}, "result": {
            "ok": True, "device": "GPU:0", "parameters": 112005, "weights": 112261, "meta_batch_size": 32,
            "run_steps": 60000, "compile_seconds": 8.0, "seconds_per_step": 0.0206, "timed_steps": 30,
            "memory": {"kind": "GPU:0 allocator", "baseline_bytes": 10**6, "peak_bytes": 927715584,
                       "available_bytes": 80 * 2**30, "xla_plan_bytes": 925472036},
            "memory_estimate": {"modelled": False, "reason": "x"}}}
        _estimate_section(None, None)

    at = AppTest.from_function(app).run()
    assert not at.exception, at.exception
    assert any(c.value.startswith("XLA's plan for one step (JAX: arguments, outputs and temporaries, exact): 882.6 MB")
               for c in at.caption), [c.value for c in at.caption]

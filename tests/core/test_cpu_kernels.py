"""oneDNN's kernels on every x86-64 CPU (issue 22 point 1).

TensorFlow turns oneDNN on by itself only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX; on an AVX2-only
host it computed with Eigen's kernels, and ProtoNet ran at 0.77x the PyTorch reference there (1.6x where oneDNN was
on). Every metalab process that trains or predicts now asks for oneDNN before TensorFlow loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from metalab.core import worker
from metalab.core.engine import devices

SWITCH = devices.ONEDNN_SWITCH


def test_onednn_is_asked_for_on_x86_64_linux_only_and_a_users_choice_is_kept():
    environment = devices.cpu_kernel_environment
    assert environment({}, "x86_64", "Linux") == {SWITCH: "1"}
    assert environment({}, "AMD64", "Linux") == {SWITCH: "1"}
    # The user's own value, whatever it is, wins: 0 gives Eigen's kernels.
    assert environment({SWITCH: "0"}, "x86_64", "Linux") == {}
    assert environment({SWITCH: "1"}, "x86_64", "Linux") == {}
    # Elsewhere TensorFlow's own choice stands (no oneDNN build to switch on, or one TensorFlow tunes itself).
    assert environment({}, "aarch64", "Linux") == {}
    assert environment({}, "x86_64", "Darwin") == {}
    assert environment({}, "x86_64", "Windows") == {}


def _probe(env: dict[str, str], code: str) -> dict:
    """Runs ``code`` (which prints one JSON line last) in a fresh interpreter with ``env`` over a clean copy of ours."""
    base = {k: v for k, v in os.environ.items() if k not in (SWITCH, "KERAS_BACKEND")}
    proc = subprocess.run([sys.executable, "-c", code], env={**base, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Chooses, loads TensorFlow (without Keras: faster), asks it which kernels it computes with, then chooses again.
_CHOOSE_THEN_LOAD = """
import json, os
from metalab.core.engine.devices import configure_cpu_kernels
in_time = configure_cpu_kernels()
from tensorflow.python.util import _pywrap_util_port
print(json.dumps({"in_time": in_time, "switch": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                  "onednn": bool(_pywrap_util_port.IsMklEnabled()), "again": configure_cpu_kernels()}))
"""


@pytest.mark.skipif(devices.cpu_kernel_environment({}) == {}, reason="oneDNN is chosen on x86-64 Linux only")
def test_a_process_that_chooses_before_tensorflow_loads_computes_with_onednn_and_0_still_turns_it_off():
    # Once TensorFlow has loaded, a second call says it came too late ("again") instead of pretending.
    chosen = _probe({}, _CHOOSE_THEN_LOAD)
    assert chosen == {"in_time": True, "switch": "1", "onednn": True, "again": False}
    # TensorFlow reads the same switch: the user's 0 is kept, and TensorFlow then runs Eigen's kernels.
    refused = _probe({SWITCH: "0"}, _CHOOSE_THEN_LOAD)
    assert refused == {"in_time": True, "switch": "0", "onednn": False, "again": False}


@pytest.mark.skipif(devices.cpu_kernel_environment({}) == {}, reason="oneDNN is chosen on x86-64 Linux only")
def test_every_worker_job_asks_for_onednn_before_its_backend_loads(monkeypatch):
    monkeypatch.delenv(SWITCH, raising=False)
    monkeypatch.setitem(worker._HANDLERS, "devices", lambda request, settings: os.environ.get(SWITCH))
    assert worker.run_job({"job": "devices"}) == "1"
    # prepare_process, which `metalab train`, prediction and every job call, sets it too.
    monkeypatch.delenv(SWITCH, raising=False)
    monkeypatch.setattr(devices, "configure_threads", lambda *threads: True)
    worker.prepare_process(worker.load_settings())
    assert os.environ.get(SWITCH) == "1"

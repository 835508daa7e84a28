"""One run across hosts (``metalab train --hosts ... --host-index i``): two processes on loopback end with the weights
of one process, and bad host settings are refused naming the setting and its value."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from metalab.core.engine.config import ConfigError
from metalab.core.engine.parallel import Hosts, device_count, parse_hosts

#: The run both sides train: sinusoid MAML, a meta-batch of 4 (2 tasks on each process), validated and meta-tested
#: at the end on the chief.
SETS = ["meta_batch_size=4", "val_episodes=4", "test_episodes=4"]
ARGS = ["-d", "metalab.sinusoid", "-a", "metalab.maml", "--steps", "3", "--seed", "3",
        *(arg for value in SETS for arg in ("--set", value))]
#: Wall-clock limit of the two processes together (each imports TensorFlow, then they train in step).
TIMEOUT_S = 150


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _start(index: int, hosts: str, home: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", METALAB_HOME=str(home),
               METALAB_HOSTS=hosts, METALAB_HOST_INDEX=str(index), COLUMNS="200")
    env.pop("METALAB_CPU_DEVICES", None)
    # Its own process group, so a timeout ends it and anything it started.
    return subprocess.Popen([sys.executable, "-m", "metalab.core.cli", "train", *ARGS, *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(processes: list[subprocess.Popen], deadline: float) -> list[tuple[int, str, str]]:
    """Every process's (exit code, stdout, stderr); all are killed, with their groups, past ``deadline``."""
    results = []
    try:
        for process in processes:
            out, errors = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((process.returncode, out, errors))
    except subprocess.TimeoutExpired:
        pytest.fail(f"a process of the run across hosts did not end within {TIMEOUT_S} s")
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
    return results


def _weights(home: Path) -> dict[str, np.ndarray]:
    """The run's checkpointed weights and optimizer state (Adam's moments: they scale with the meta-gradients,
    which the weights Adam moves barely do)."""
    [run_dir] = [d for d in (home / "runs").iterdir() if (d / "checkpoint.npz").exists()]
    with np.load(run_dir / "checkpoint.npz") as data:
        return {name: data[name] for name in data.files if name.startswith(("var_", "opt_"))}


@pytest.mark.integration
def test_two_processes_on_loopback_train_the_weights_of_one(tmp_path):
    from metalab.core.engine.config import parse_assignments
    from metalab.core.services import Services
    from metalab.core.settings import Settings
    from metalab.core.store import RunStore

    hosts = ",".join(f"127.0.0.1:{port}" for port in _free_ports(2))
    homes = [tmp_path / "chief", tmp_path / "other", tmp_path / "one"]
    processes = [_start(0, hosts, homes[0], "--json"), _start(1, hosts, homes[1])]
    deadline = time.monotonic() + TIMEOUT_S
    try:
        # Meanwhile, the same run in one process (this one), on one device.
        services = Services(settings=Settings(home=homes[2]))
        raw = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "backbone": None, "steps": 3, "seed": 3}
        config = services.resolve(raw, parse_assignments(SETS), recommended=True)
        one = services.create_run(config)
        assert services.train(one) == "completed"
    finally:
        (chief_code, chief_out, chief_err), (other_code, _, other_err) = _finish(processes, deadline)
    assert chief_code == 0, chief_err[-4000:]
    assert other_code == 0, other_err[-4000:]
    assert "process 1 of 2" in other_err and "trained 3 steps with the chief" in other_err
    settings = Settings(home=homes[0])
    [run] = RunStore(settings.store_path, settings.runs_dir).list_runs()
    assert run.status == "completed" and run.step == 3 and run.config["devices"] == 1
    assert run.device == ",".join(f"{host}/device:CPU:0" for host in hosts.split(","))
    assert f'"id": "{run.id}"' in chief_out
    # The other process recorded nothing: no run in its (empty) store, no run folder.
    other = Settings(home=homes[1])
    assert RunStore(other.store_path, other.runs_dir).list_runs() == []
    assert not other.runs_dir.exists() or not any(other.runs_dir.iterdir())
    # Two tasks on each process, against four on one device: the same steps, up to float32 round-off.
    across, alone = _weights(homes[0]), _weights(homes[2])
    assert sorted(across) == sorted(alone) and any(name.startswith("opt_") for name in alone)
    for name, value in alone.items():
        np.testing.assert_allclose(across[name], value, rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("hosts, index, field, fragment", [
    ("127.0.0.1:5000,127.0.0.1:5001", 2, "host_index", "from 0 (the chief) to 1"),
    ("127.0.0.1:5000,127.0.0.1:5001", "-1", "host_index", "from 0 (the chief) to 1"),
    ("127.0.0.1:5000,127.0.0.1:5001", "one", "host_index", "from 0 (the chief) to 1"),
    ("127.0.0.1:5000;127.0.0.1:5001", 0, "hosts", "is not a host name or address with a port"),
    ("127.0.0.1,127.0.0.1:5001", 0, "hosts", "is not a host name or address with a port"),
    ("127.0.0.1:99999,127.0.0.1:5001", 0, "hosts", "a port from 1 to 65535"),
    ("127.0.0.1:5000,127.0.0.1:5000", 0, "hosts", "an address is repeated"),
    ("127.0.0.1:5000", 0, "hosts", "at least two processes"),
])
def test_bad_hosts_are_refused_naming_the_setting_and_its_value(hosts, index, field, fragment):
    with pytest.raises(ConfigError) as err:
        parse_hosts(hosts, index)
    message = str(err.value)
    assert message.startswith(f"{field}:") and fragment in message
    value = hosts if field == "hosts" else index
    assert message.endswith(f"Received: {field}={value!r}")


def test_hosts_are_parsed_chief_first():
    assert parse_hosts("", 0) is None and parse_hosts("  ", "3") is None
    parsed = parse_hosts(" node-a:2222, [::1]:2223,10.0.0.3:2224", " 1")
    assert parsed == Hosts(("node-a:2222", "[::1]:2223", "10.0.0.3:2224"), 1) and not parsed.chief
    assert parse_hosts("a:1,b:2", 0).chief


def test_the_meta_batch_splits_across_every_hosts_devices():
    assert device_count(1, ["CPU:0"], meta_batch_size=4, hosts=2) == 1
    with pytest.raises(ConfigError) as err:
        device_count(2, ["GPU:0", "GPU:1"], meta_batch_size=6, hosts=2)
    assert "4 devices (2 on each of 2 hosts)" in str(err.value) and "multiple of 4" in str(err.value)
    assert str(err.value).endswith("Received: devices=2, meta_batch_size=6")


def test_the_cli_refuses_bad_hosts_with_one_line_and_no_traceback(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from metalab.core.cli import app

    monkeypatch.setenv("METALAB_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "300")
    done = CliRunner().invoke(app, ["train", *ARGS, "--hosts", "127.0.0.1:5000,127.0.0.1:5001", "--host-index", "2"])
    assert done.exit_code == 2
    assert "host_index: expected this process's place in hosts" in done.output
    assert "Received: host_index='2'" in done.output and "Traceback" not in done.output
    monkeypatch.setenv("METALAB_HOSTS", "127.0.0.1")
    done = CliRunner().invoke(app, ["train", *ARGS])
    assert done.exit_code == 2 and "Received: hosts='127.0.0.1'" in done.output and "Traceback" not in done.output
    assert not (tmp_path / "runs").exists()  # refused before any run was made

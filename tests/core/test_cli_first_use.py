"""What a new user of the CLI sees: quiet start-up, progress in words, a dashboard that stops with its command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metalab.core import cli
from tests.support.processes import free_port, running

REPO_ROOT = Path(__file__).resolve().parents[2]
#: What TensorFlow prints on start-up when its C++ logging is on (absl's prefix "I1203 18:40:01.123 ...", its
#: oneDNN and CPU-instructions notes).
TF_START_UP = ("oneDNN custom operations are on", "This TensorFlow binary is optimized", "absl::InitializeLog",
               "cpu_feature_guard")


def test_the_progress_bar_names_its_metrics_in_words(capsys):
    assert cli.progress_label({"val/accuracy": 0.81, "train/loss": 0.1234}) == "train loss 0.123  val accuracy 0.810"
    assert cli.progress_label({"train/steps_per_s": 3.0}) == ""

    def start(progress):
        progress(5, 10, {"train/loss": 0.5})
        progress(10, 10, {"train/loss": 0.25, "val/mse": 0.125})
        return "completed"

    assert cli._train_with_progress(None, "r", start) == "completed"
    shown = capsys.readouterr().err
    assert "train loss 0.250" in shown and "val mse 0.125" in shown and "t.los" not in shown



def test_the_progress_bar_shows_the_meta_test_with_its_own_count(tmp_path, monkeypatch):
    """Between training steps the bar follows the run's phase in the store: a 600-episode meta-test is not
    'step 300 of 300'."""
    import io

    from rich.console import Console

    from metalab.core.services import Services

    monkeypatch.setenv("METALAB_HOME", str(tmp_path / "home"))
    services = Services()
    store = services.store
    run_id = store.create_run({"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 10})
    screen = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=screen, force_terminal=True, width=160))

    def start(progress):
        store.start_phase(run_id, "training")
        progress(10, 10, {"train/loss": 0.25})
        store.start_phase(run_id, "meta-testing", total=600, detail="test")
        store.phase_progress(run_id, 120, 600)
        time.sleep(1.5)  # the bar reads the store twice a second
        store.end_phases(run_id)
        return "completed"

    assert cli._train_with_progress(services, run_id, start) == "completed"
    frames = screen.getvalue()
    assert "meta-testing" in frames and "120/600" in frames and "test episodes" in frames
    # It ends on the training it counted.
    last = frames.rsplit("\r\x1b[2K", 1)[-1]
    assert last.startswith("training") and "10/10" in last and "train loss 0.250" in last


def _quiet_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return {**env, "METALAB_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}


def _cli_then(code: str, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    """Runs a CLI command in a fresh process (its options first), then ``code`` in the same process."""
    script = ("import os, sys; from typer.testing import CliRunner; from metalab.core.cli import app; "
              "CliRunner().invoke(app, sys.argv[1:] + ['plugins', 'list', '--json']); " + code)
    return subprocess.run([sys.executable, "-c", script, *flags], env=_quiet_env(tmp_path), capture_output=True,
                          text=True, timeout=300)


def test_tensorflow_start_up_lines_are_silenced_unless_verbose(tmp_path):
    """The reviewer saw TensorFlow's start-up lines (absl's notice, cpu_feature_guard) above `metalab train`'s
    progress bar: a command's options are applied before any command imports TensorFlow."""
    quiet = _cli_then("import tensorflow as tf; print(float(tf.constant(1.0) + 1))", tmp_path)
    assert quiet.returncode == 0 and quiet.stdout.split()[-1] == "2.0", quiet.stderr
    assert not [line for line in quiet.stderr.splitlines() if any(s in line for s in TF_START_UP)], quiet.stderr
    # --verbose leaves TensorFlow's logging on, here and in the workers the command starts (they inherit it); a
    # level the user set is kept either way.
    level = "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"
    assert _cli_then(level, tmp_path).stdout.split()[-1] == "2"
    assert _cli_then(level, tmp_path, "--verbose").stdout.split()[-1] == "0"


def test_workers_are_quiet_unless_their_caller_chose_a_level(monkeypatch):
    import logging

    from metalab.core import worker

    tf_logger = logging.getLogger("tensorflow")
    before = tf_logger.level
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    assert worker._JOB_ENV["train"]["TF_CPP_MIN_LOG_LEVEL"] == worker.QUIET_TF_LOG_LEVEL == "2"
    try:
        tf_logger.setLevel(logging.NOTSET)
        worker.quiet_backend_logs()
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2" and tf_logger.level == logging.ERROR
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # `metalab --verbose` (or the user) chose it
        tf_logger.setLevel(logging.NOTSET)
        worker.quiet_backend_logs()
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" and tf_logger.level == logging.NOTSET
    finally:
        tf_logger.setLevel(before)


@pytest.mark.slow
def test_metalab_train_prints_no_tensorflow_start_up_lines(tmp_path):
    train = ["train", "-d", "metalab.sinusoid", "-a", "metalab.maml", "--steps", "2", "--set", "meta_batch_size=2",
             "--set", "val_episodes=2", "--set", "test_episodes=4", "--set", "eval_inner_steps=1"]
    quiet = subprocess.run([sys.executable, "-m", "metalab.core.cli", *train], env=_quiet_env(tmp_path),
                           capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0, quiet.stderr
    assert not [line for line in quiet.stderr.splitlines() if any(s in line for s in TF_START_UP)], quiet.stderr
    assert "train loss" in quiet.stderr
    # The bar's clock ran through loading and meta-testing too: the summary says where the time went.
    times = next(line for line in quiet.stderr.splitlines() if line.startswith("time: "))
    assert times.startswith("time: loading ") and " · training " in times and " · meta-testing " in times
    assert " · total " in times


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _port_free(port: int) -> bool:
    """Whether a new server can listen on the port. With SO_REUSEADDR, as Streamlit's server binds: a closed
    connection's TIME-WAIT (the health check's) does not hold a port, a listening server does."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
        return True


@pytest.mark.parametrize("sig", [
    signal.SIGTERM,
    pytest.param(signal.SIGINT, marks=pytest.mark.slow),  # the same handler as SIGTERM
    pytest.param(signal.SIGHUP, marks=pytest.mark.slow),
    signal.SIGKILL,  # no handler sees it: the server learns from the kernel (PR_SET_PDEATHSIG)
], ids=lambda sig: sig.name)
def test_the_dashboard_command_stops_its_server_on_a_signal(tmp_path, sig):
    """The reviewer's finding: a signal to `metalab dashboard` left the Streamlit server holding the port (before
    the fix, SIGHUP and SIGKILL to the command left the server listening)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "metalab.core.cli", "dashboard", "--port", str(port)],
                            env=_quiet_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    servers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the dashboard command ended on its own"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the dashboard never answered its health check")
        servers = _children(proc.pid)
        assert servers, "no Streamlit server process under the command"
        proc.send_signal(sig)  # to the command only, as a process manager does
        assert proc.wait(timeout=15) == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (any(running(pid) for pid in servers) or not _port_free(port)):
            time.sleep(0.1)
        assert not [pid for pid in servers if running(pid)], "the Streamlit server outlived its command"
        assert _port_free(port), f"port {port} is still held"
    finally:
        for pid in [proc.pid, *servers]:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_the_dashboard_has_no_deploy_button(monkeypatch, tmp_path):
    """Streamlit's "Deploy" button is a developer option: `metalab dashboard` and `streamlit run` from the
    repository both hide it (client.toolbarMode)."""
    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["client"]["toolbarMode"] in ("viewer", "minimal")
    # Nor does either watch the source files (about 1 s of every new browser session before its page started).
    assert config["server"]["fileWatcherType"] == "none"
    started = []

    class Server:
        def __init__(self, cmd, **kwargs):
            started.append(cmd)

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setenv("METALAB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(subprocess, "Popen", Server)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(cli.app, ["dashboard", "--port", "8599"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (cmd,) = started
    assert cmd[cmd.index("--client.toolbarMode") + 1] in ("viewer", "minimal")
    assert cmd[cmd.index("--server.fileWatcherType") + 1] == "none"
    # The command's signal handlers are gone with it.
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers

"""Process helpers shared by the browser tests and benchmarks/load.py: free ports, live pids, ending workers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

#: The repository's root, where streamlit_app.py is.
REPO_ROOT = Path(__file__).resolve().parents[2]


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def end_workers(pids: list[int], grace: float = 30.0) -> None:
    """SIGTERM to these worker processes (the runner takes it as a cancel and checkpoints), SIGKILL to any
    still alive after ``grace`` seconds, so none outlives the folders it writes to."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = [pid for pid in alive if running(pid)]
    for pid in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(folder: Path, **env: str) -> Iterator[str]:
    """A headless ``streamlit run streamlit_app.py`` on a free port of 127.0.0.1, yielding its URL once its health
    check answers; its log is ``folder/streamlit.log`` and ``env`` goes over this process's environment."""
    import subprocess
    import sys
    import urllib.request

    import pytest

    port = free_port()
    full_env = dict(os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false", **env)
    log_path = Path(folder) / "streamlit.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none"],
            cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while True:
                with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("streamlit did not start:\n" + log_path.read_text())
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_on_backend(code: str | None, tmp_path: Path, backend: str, *, x64: bool = False, args: tuple[str, ...] = (),
                   module: str | None = None, env: dict[str, str] | None = None,
                   timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs ``code`` (a script, dedented) or ``python -m module`` in a fresh process on Keras backend ``backend``
    (JAX on the CPU, float64 with ``x64``), in ``tmp_path``; returns the finished process, its output as text."""
    environ = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
                   JAX_ENABLE_X64="1" if x64 else "0", **(env or {}))
    if module:
        command = [sys.executable, "-m", module, *args]
    else:
        script = tmp_path / f"{backend}_side.py"
        script.write_text(textwrap.dedent(code or ""))
        command = [sys.executable, str(script), *args]
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)

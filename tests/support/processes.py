"""Process helpers shared by the browser tests and benchmarks/load.py: free ports, live pids, ending workers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path


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

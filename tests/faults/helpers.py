"""Helpers of the fault-injection suite: a tiny run's config, polling with a deadline, SIGKILL."""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Callable

import pytest

#: A sinusoid MAML run that trains in seconds once TensorFlow is imported; checkpoints every 25 steps.
TINY = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 150, "checkpoint_every": 25,
        "log_every": 5, "val_every": 50, "val_episodes": 5, "test_episodes": 20,
        "algorithm_params": {"meta_batch_size": 2, "inner_steps": 1}}
CHECKPOINT_EVERY = TINY["checkpoint_every"]
#: How long a worker may take to import TensorFlow, train the tiny run and evaluate, on a loaded 2-core machine.
WORKER_TIMEOUT_S = 300


def wait_for(predicate: Callable[[], Any], timeout: float = WORKER_TIMEOUT_S, what: str = "the condition") -> Any:
    """Polls ``predicate`` until it returns something truthy; fails the test naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def kill9(pid: int) -> None:
    """SIGKILL, and reap it if it is our child (so it is not left a zombie)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def finished(svc: Any, run_id: str) -> Any:
    run = svc.store.get_run(run_id)
    return run if run.status not in ("queued", "running") else None

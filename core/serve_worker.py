"""The warm prediction worker: one long-lived worker process that answers predict requests line by line.

A one-shot worker (:mod:`metalab.core.worker`) imports TensorFlow and builds the run's model for every prediction;
this one keeps both between requests, so a second prediction costs the adaptation alone.

``python -m metalab.core.serve_worker [LIMITS]`` applies ``LIMITS`` (JSON ``{"nice": 10, "memory_mb": 0}``) and the
predict job's environment, imports the backend, then reads one JSON request per line on stdin — the worker's
``predict`` request (``{"job": "predict", "store", "runs_dir", "run", "support", "query", "invert"}``) — and writes
one JSON reply per line on stdout, the worker's reply with ``"pid"`` added. It keeps the last few runs' models
(:class:`~metalab.core.engine.predict.SessionCache`, keyed by run and checkpoint file) and ends when stdin closes
(its parent is gone or let it go).

The caller's side is :class:`WarmWorker` (no TensorFlow): it starts the process on first use, sends one request at a
time, starts a crashed process again once, and ends it after ``idle_seconds`` without a request and when this
process exits. :func:`warm_worker` gives the one shared per environment. The checks of a request (whose folders,
which run) are the service facade's, made before the request is sent.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, ContextManager

__all__ = ["IDLE_SECONDS", "WarmWorker", "warm_worker", "close_all", "serve"]

#: Seconds a warm worker may wait for its next request before it is ended (``METALAB_PREDICT_IDLE_S``).
IDLE_SECONDS = float(os.environ.get("METALAB_PREDICT_IDLE_S", "600"))
#: Models the worker keeps loaded.
MODELS_KEPT = 3


# -- the worker's side -----------------------------------------------------------------------------------------


def serve(argv: list[str] | None = None) -> int:
    """The worker process: set-up once, then one reply line per request line until stdin closes."""
    from metalab.core import worker
    from metalab.core.settings import load_settings

    argv = list(sys.argv[1:] if argv is None else argv)
    # Replies go to a private copy of stdout; anything else written to stdout (Python or native code) goes to stderr.
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    limits = json.loads(argv[0]) if argv else {}
    worker.apply_limits(**worker._limits({"limits": limits}))
    worker.job_environment("predict")
    settings = load_settings()
    worker.prepare_process(settings)
    from metalab.core.engine.predict import SessionCache, adapt_to_task, predict

    import keras  # noqa: F401 - imported now, while nobody waits, not on the first request

    sessions = SessionCache(MODELS_KEPT)
    registry = None
    for line in sys.stdin:
        if not line.strip():
            continue
        job = None
        try:
            request = json.loads(line)
            job = worker._check_job(request)
            if job not in ("predict", "adapt"):
                raise worker.RequestError(f"The prediction worker runs predict and adapt requests only. "
                                          f"Received: job={job!r}")
            if registry is None:
                registry = worker._registry(settings)
            store = worker._store(request)
            if job == "adapt":  # an environment run adapting to one of its test tasks (RL Predict)
                result = adapt_to_task(store, worker._field(request, "run", str), registry,
                                       worker._field(request, "task", int), settings=settings,
                                       steps=worker._field(request, "steps", int, required=False))
            else:
                result = predict(store, worker._field(request, "run", str), registry,
                                 worker._field(request, "support", str), worker._field(request, "query", str),
                                 settings=settings, invert=worker._field(request, "invert", bool, required=False),
                                 sessions=sessions)
            reply: dict[str, Any] = {"ok": True, "job": job, "result": result}
        except Exception as exc:  # noqa: BLE001 - every failure becomes a reply; the process serves on
            error = {"type": type(exc).__name__, "message": str(exc)}
            if not isinstance(exc, (ValueError, FileNotFoundError)):
                error["traceback"] = traceback.format_exc()
            reply = {"ok": False, "job": job, "error": error}
        reply["pid"] = os.getpid()
        reply["models_built"] = sessions.built
        replies.write(json.dumps(reply, default=str) + "\n")
        replies.flush()
    return 0


# -- the caller's side (no TensorFlow) ---------------------------------------------------------------------------


class _Gone(Exception):
    """The worker process ended (or its pipe broke) before it answered."""


class WarmWorker:
    """One long-lived prediction worker process, started on first use and ended when idle.

    Args:
        env: The process's environment (the service facade's worker environment).
        limits: ``{"nice": ..., "memory_mb": ...}``, applied by the process before anything else.
        idle_seconds: The process is ended this long after its last answer.
    """

    def __init__(self, env: dict[str, str], limits: dict[str, int], idle_seconds: float = IDLE_SECONDS):
        self.env, self.limits, self.idle_seconds = dict(env), dict(limits), float(idle_seconds)
        #: Processes started so far (a respawn counts).
        self.spawned = 0
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue | None = None
        self._log: Any = None
        self._busy = threading.Lock()  # one request at a time
        self._state = threading.Lock()  # the process fields
        self._last_used = time.monotonic()
        self._timer: threading.Timer | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "metalab.core.serve_worker", json.dumps(self.limits, separators=(",", ":"))]

    @property
    def pid(self) -> int | None:
        """The process's id while it runs, else ``None``."""
        with self._state:
            proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> int:
        """Starts the process unless it runs (it imports the backend while nobody waits); returns its id."""
        with self._state:
            proc = self._spawn_locked()
            self._last_used = time.monotonic()
        self._schedule_idle()
        return proc.pid

    def request(self, request: dict[str, Any], timeout: float, error: type[Exception], what: str = "Prediction",
                hold: Callable[[], ContextManager[Any]] | None = None) -> dict[str, Any]:
        """Sends ``request`` and returns the reply (``ok`` true or false, and the process's ``pid``).

        Waits for an earlier request first. A process that ended without answering is started again and asked
        once more; a second end is an error.

        Args:
            hold: Entered while the process computes (after the wait for an earlier request), e.g. a worker slot.

        Raises:
            error: The wait and the answer took longer than ``timeout`` (the process is ended), or the process
                ended twice without an answer; the message starts with ``what``.
        """
        deadline = time.monotonic() + float(timeout)
        if not self._busy.acquire(timeout=max(0.0, float(timeout))):
            raise error(f"{what} waited {timeout:g} s for an earlier prediction to finish. "
                        f"Received: timeout={timeout:g}")
        try:
            with hold() if hold is not None else contextlib.nullcontext():
                for attempt in (1, 2):
                    try:
                        return self._exchange(request, deadline, error, what)
                    except _Gone as gone:
                        if attempt == 2:
                            raise error(f"{what}: the prediction worker ended twice without an answer "
                                        f"({gone}); its output ends with:\n{self._log_tail()}") from None
        finally:
            self._last_used = time.monotonic()
            self._busy.release()
            self._schedule_idle()
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Ends the process (stdin closed, then SIGTERM, then SIGKILL) if it runs."""
        with self._state:
            proc, self._proc = self._proc, None
            log, self._log = self._log, None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if proc is not None:
            _end(proc)
        if log is not None:
            with contextlib.suppress(OSError):
                log.close()

    # -- inside --

    def _spawn_locked(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
        # An anonymous file: read back only to explain a crash, never a path anyone sees.
        self._log = tempfile.TemporaryFile()
        proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                env=self.env, text=True, bufsize=1)
        lines: queue.Queue = queue.Queue()

        def read() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, name=f"metalab-predict-reader-{proc.pid}", daemon=True).start()
        self._proc, self._lines = proc, lines
        self.spawned += 1
        return proc

    def _exchange(self, request: dict[str, Any], deadline: float, error: type[Exception],
                  what: str) -> dict[str, Any]:
        with self._state:
            proc = self._spawn_locked()
            lines = self._lines
        try:
            proc.stdin.write(json.dumps(request, separators=(",", ":")) + "\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError, ValueError) as exc:
            self._forget(proc)
            raise _Gone(type(exc).__name__) from None
        while True:
            left = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(0.01, left)) if left > 0 else lines.get_nowait()  # type: ignore[union-attr]
            except queue.Empty:
                self._forget(proc)
                proc.kill()  # busy past its time: nothing to wait for
                proc.wait()
                raise error(f"{what} took longer than its time limit and was stopped. "
                            f"Received: job={request.get('job')!r}") from None
            if line is None:
                proc.wait()
                self._forget(proc)
                code = proc.returncode
                raise _Gone(f"killed by signal {-code}" if code < 0 else f"exit code {code}")
            with contextlib.suppress(ValueError):
                reply = json.loads(line)
                if isinstance(reply, dict) and isinstance(reply.get("ok"), bool):
                    return reply

    def _forget(self, proc: subprocess.Popen) -> None:
        with self._state:
            if self._proc is proc:
                self._proc = None

    def _log_tail(self, chars: int = 3000) -> str:
        with self._state:
            log = self._log
        if log is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            log.flush()
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - chars))
            return log.read().decode("utf-8", errors="replace")
        return ""

    def _schedule_idle(self) -> None:
        with self._state:
            if self._timer is not None:
                self._timer.cancel()
            if self._proc is None:
                self._timer = None
                return
            self._timer = threading.Timer(self.idle_seconds, self._idle)
            self._timer.daemon = True
            self._timer.start()

    def _idle(self) -> None:
        if not self._busy.acquire(blocking=False):
            return  # computing: the request reschedules when it ends
        try:
            if time.monotonic() - self._last_used >= self.idle_seconds - 0.05:
                self.close()
        finally:
            self._busy.release()


def _end(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError, ValueError):
        proc.stdin.close()  # type: ignore[union-attr]
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_WORKERS: dict[str, WarmWorker] = {}
_WORKERS_LOCK = threading.Lock()


def warm_worker(env: dict[str, str], limits: dict[str, int]) -> WarmWorker:
    """The warm worker of this process for an environment and limits (made, not started, on first call).

    Workers differ when what their settings read differs: the ``METALAB_*`` and ``KERAS_*`` variables and the limits.
    A process keeps one warm (each holds TensorFlow, hundreds of MB): making another ends those not computing.
    """
    key = json.dumps([sorted((k, v) for k, v in env.items() if k.startswith(("METALAB_", "KERAS_"))),
                      sorted(limits.items())])
    retired = []
    with _WORKERS_LOCK:
        found = _WORKERS.get(key)
        if found is None:
            for other, worker in list(_WORKERS.items()):
                if not worker._busy.locked():
                    retired.append(_WORKERS.pop(other))
            found = _WORKERS[key] = WarmWorker(env, limits, IDLE_SECONDS)
    for worker in retired:
        worker.close()
    return found


@atexit.register
def close_all() -> None:
    """Ends every warm worker of this process (at exit; a worker whose parent died ends when its stdin closes)."""
    with _WORKERS_LOCK:
        workers = list(_WORKERS.values())
    for found in workers:
        found.close()


if __name__ == "__main__":
    raise SystemExit(serve())

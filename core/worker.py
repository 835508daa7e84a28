"""The one worker process: every job that needs TensorFlow (or JAX) runs in it, never in the dashboard.

``python -m metalab.core.worker REQUEST`` runs one job and answers with one JSON object, the last line of its
stdout (anything else the job prints goes to stderr). REQUEST is a JSON object; ``-`` or no argument reads it from
stdin. The jobs and their fields:

- ``{"job": "train", "store": PATH, "runs_dir": PATH, "run": RUN_ID}`` trains (or resumes) a run; every outcome is
  recorded in the run store, the reply says the final status;
- ``{"job": "estimate", "config": {...}, "steps": 3, "max_seconds": 30.0, "memory_bytes": null}`` times a few train
  steps of a run config (:func:`metalab.core.engine.probe.estimate`);
- ``{"job": "devices"}`` lists the devices the backend sees (:func:`metalab.core.engine.probe.list_devices`);
- ``{"job": "predict", "store", "runs_dir", "run", "support": DIR, "query": DIR, "invert": null}`` adapts a finished
  run to a support set and classifies the query images, or the query texts of a text run (``support``: a folder of
  ``<class>.txt`` files or one ``class: example`` file, ``query``: a ``.txt`` file)
  (:func:`metalab.core.engine.predict.predict`);
- ``{"job": "adapt", "store", "runs_dir", "run", "task": INDEX, "steps": null}`` adapts a finished environment run
  to one of its fixed test tasks and returns the returns after each step and where the agent went
  (:func:`metalab.core.engine.predict.adapt_to_task`).

Any request may carry ``"limits": {"nice": 10, "memory_mb": 0}``. The reply is ``{"ok": true, "job": JOB,
"result": ...}`` or ``{"ok": false, "job": JOB, "error": {"type": ..., "message": ...}}``, the error with a
``"traceback"`` too when it is a crash rather than a refusal (``ValueError``, ``FileNotFoundError``: a bad request,
config, file or image, or a failed run); the exit code is 0 or 1. A process killed on the way (out of memory, a
signal) leaves no reply: callers say so.

A worker process applies the request's limits and the job's environment first, then every job calls
:func:`prepare_process` once, before the backend starts (image cap, thread pools); ``metalab train`` trains in the
user's own process (for its progress bar) through :func:`run_training`, which makes the same call.
Importing this module is cheap (no TensorFlow): the service facade builds requests and reads replies with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from typing import Any, Callable

from metalab.core.settings import Settings, load_settings

__all__ = ["JOBS", "TRAIN_OK", "RequestError", "RunFailedError", "worker_command", "read_reply", "apply_limits",
           "quiet_backend_logs", "job_environment", "prepare_process", "run_training", "run_job", "main"]

#: The jobs a worker runs.
JOBS = ("train", "estimate", "devices", "predict", "adapt")
#: Final statuses of a train job that succeeded: the run completed, stopped resumably, or was deleted under it.
TRAIN_OK = ("completed", "cancelled", "interrupted", "deleted")
#: TensorFlow's C++ log level in a process that is not verbose: its start-up lines (INFO and WARNING) are
#: silenced, its errors kept.
QUIET_TF_LOG_LEVEL = "2"
#: Environment each job needs before the backend is imported (set only where the caller has not set it: ``metalab
#: --verbose`` sets TF_CPP_MIN_LOG_LEVEL=0 for the workers it starts).
_JOB_ENV = {
    "train": {"TF_CPP_MIN_LOG_LEVEL": QUIET_TF_LOG_LEVEL},
    "estimate": {"TF_CPP_MIN_LOG_LEVEL": "2"},
    # JAX reserves most of a GPU's memory when it starts; a listing must not (TensorFlow's: memory growth).
    "devices": {"TF_CPP_MIN_LOG_LEVEL": "2", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
    "predict": {"TF_CPP_MIN_LOG_LEVEL": "2"},
    "adapt": {"TF_CPP_MIN_LOG_LEVEL": "2"},
}


class RequestError(ValueError):
    """A worker request that is not a JSON object naming a known job with the fields it needs."""


class RunFailedError(RuntimeError):
    """A train job whose run ended ``failed``; the run's error and traceback are in the run store."""


# -- the caller's side (no TensorFlow) ------------------------------------------------------------------------


def worker_command(request: dict[str, Any]) -> list[str]:
    """The command line of a new worker process that runs ``request`` (the request travels as its argument).

    Raises:
        RequestError: The request names no known job.
    """
    _check_job(request)
    # "job" first: a process listing then shows what each worker does.
    ordered = {"job": request["job"], **{k: v for k, v in request.items() if k != "job"}}
    return [sys.executable, "-m", "metalab.core.worker", json.dumps(ordered, separators=(",", ":"))]


def read_reply(stdout: str) -> dict[str, Any] | None:
    """The worker's reply: the last non-empty line of its stdout as a JSON object with ``ok``; ``None`` if none."""
    lines = [line for line in (stdout or "").splitlines() if line.strip()]
    try:
        reply = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return reply if isinstance(reply, dict) and isinstance(reply.get("ok"), bool) else None


# -- the process set-up --------------------------------------------------------------------------------------


def quiet_backend_logs(verbose: bool = False) -> None:
    """Silences TensorFlow's start-up log lines in this process and the processes it starts, unless ``verbose``.

    Call it before TensorFlow is imported: it sets ``TF_CPP_MIN_LOG_LEVEL`` (2 quiet, 0 verbose; a value the user
    set is kept, and child processes inherit it) and, when quiet, raises the ``tensorflow`` Python logger to ERROR.
    """
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else QUIET_TF_LOG_LEVEL)
    try:
        quiet = int(os.environ["TF_CPP_MIN_LOG_LEVEL"]) >= int(QUIET_TF_LOG_LEVEL)
    except ValueError:
        quiet = False
    if quiet:
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _QuietImport())


#: The start-up notices TensorFlow's C++ side writes while it loads, whatever TF_CPP_MIN_LOG_LEVEL says: on some
#: hosts (AVX-512 ones) the oneDNN notice is logged before absl's logging is initialised, which ignores the level.
_START_UP_NOTICES = ("absl::InitializeLog", "oneDNN custom operations are on", "cpu_feature_guard",
                     "This TensorFlow binary is optimized")


class _QuietImport:
    """Imports ``tensorflow`` (once, the first time anything does) with the process's stderr (file descriptor 2)
    caught, and writes back every line but TensorFlow's start-up notices: errors while loading stay visible."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader:
    def __init__(self, loader: Any):
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        import tempfile

        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                self.loader.exec_module(module)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                kept = [line for line in caught.read().decode("utf-8", "replace").splitlines(keepends=True)
                        if not any(notice in line for notice in _START_UP_NOTICES)]
                if kept:
                    sys.stderr.write("".join(kept))
                    sys.stderr.flush()


def apply_limits(nice: int = 0, memory_mb: int = 0) -> None:
    """Lowers this process's priority by ``nice`` and caps its address space at ``memory_mb`` MB (0: no cap)."""
    import resource

    if nice:
        os.nice(int(nice))
    if memory_mb:
        limit = int(memory_mb) << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def prepare_process(settings: Settings, *, meta_batch_size: int = 1) -> tuple[int, int]:
    """The set-up of a process that runs a job, once, before the backend starts: oneDNN kernels on x86 CPUs, the
    image cap, thread pools and logical CPU devices (``METALAB_CPU_DEVICES``).

    Every job of the worker calls it, and so does ``metalab train`` in its own process (:func:`run_training`);
    a worker process has had its limits and environment applied before (:func:`run_job`).

    Args:
        settings: metalab settings (the image cap, thread overrides).
        meta_batch_size: Tasks per compiled step of the run, which choose the thread pools
            (:func:`~metalab.core.engine.devices.thread_counts`).

    Returns:
        The ``(intra_op, inter_op)`` thread counts asked for (0: the backend's default).
    """
    from metalab.core.data.images import configure_pixel_cap
    from metalab.core.engine.devices import configure_cpu_kernels, configure_threads, thread_counts
    from metalab.core.engine.parallel import configure_cpu_devices

    configure_cpu_kernels()  # oneDNN on every x86-64 CPU (effective if the backend has not loaded yet)
    configure_pixel_cap(settings.max_image_pixels)
    # Before the backend starts, like the thread pools: METALAB_CPU_DEVICES splits the CPU for devices=N runs.
    configure_cpu_devices(settings.cpu_devices)
    threads = thread_counts(settings, meta_batch_size)
    # A fresh process: its thread pools can still be chosen before the runtime starts (later: kept as they are).
    configure_threads(*threads)
    return threads


def _meta_batch_size(registry: Any, config: Any) -> int:
    """Tasks per step of a validated run config (1 when it cannot be told: the job itself reports the problem)."""
    try:
        params = registry.algorithm(config.algorithm).params(**config.algorithm_params)
        return int(getattr(params, "meta_batch_size", 1))
    except Exception:  # noqa: BLE001 - a bad config is the job's to report
        return 1


def run_training(store: Any, run_id: str, registry: Any, *, settings: Settings, progress: Any = None,
                 hosts: Any = None) -> str:
    """Trains (or resumes) a run in this process after the worker's process set-up; returns its final status.

    The worker's ``train`` job and ``metalab train`` (in the user's process, for its progress bar) both train
    through here, so both get the same thread pools and image cap. With ``hosts`` (a
    :class:`~metalab.core.engine.parallel.Hosts` whose index is 0; ``metalab train --hosts`` only) this process is
    the chief of a run across hosts: it joins them first, and a setting they refuse fails the run.
    """
    from metalab.core.engine.config import ConfigError, RunConfig
    from metalab.core.engine.runner import train_run

    try:
        config = RunConfig(**store.get_run(run_id).config)
        meta_batch = _meta_batch_size(registry, config)
    except Exception:  # noqa: BLE001 - a bad config is recorded as the run's failure by train_run
        config, meta_batch = None, 1
    prepare_process(settings, meta_batch_size=meta_batch)
    if hosts is not None and config is not None:
        from metalab.core.engine.parallel import join_hosts

        try:
            join_hosts(hosts, config.devices, device=config.device)
        except ConfigError as exc:  # the user's setting, named in the message: no traceback
            store.update_run(run_id, status="failed", finished=time.time(), error=f"ConfigError: {exc}",
                             traceback=None)
            return "failed"
    return train_run(store, run_id, registry, settings=settings, progress=progress)


def run_follower(config: Any, registry: Any, *, settings: Settings, hosts: Any, progress: Any = None) -> int:
    """Trains as a process after the chief of a run across hosts (``metalab train --host-index 1`` or more).

    The same process set-up as :func:`run_training`, then :func:`~metalab.core.engine.parallel.join_hosts` and
    :func:`~metalab.core.engine.runner.follow_run`; nothing is written to a run store. Returns the steps trained.

    Raises:
        ConfigError: The hosts or the config are refused (the message names the setting and its value).
    """
    from metalab.core.engine.parallel import join_hosts
    from metalab.core.engine.runner import follow_run

    prepare_process(settings, meta_batch_size=_meta_batch_size(registry, config))
    join_hosts(hosts, config.devices, device=config.device)
    return follow_run(config, registry, settings=settings, progress=progress)


# -- the jobs ------------------------------------------------------------------------------------------------


def _check_job(request: Any) -> str:
    if not isinstance(request, dict):
        raise RequestError(f"A worker request must be a JSON object. "
                           f"Received: request of type {type(request).__name__}")
    job = request.get("job")
    if job not in JOBS:
        raise RequestError(f"job: expected one of {', '.join(JOBS)}. Received: job={job!r}")
    return job


def _field(request: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = True,
           default: Any = None) -> Any:
    value = request.get(name)
    if value is None and not required:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # JSON's true and false are Python bools, which are ints too: only a bool field takes them.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise RequestError(f"{request.get('job')} request: {name} must be {names}. Received: {name}={value!r}")
    return value


def _registry(settings: Settings) -> Any:
    from metalab.core.contract.manager import make_plugin_manager

    # Not strict: one broken plugin must not stop a job that does not use it.
    return make_plugin_manager(settings=settings, strict=False)


def _store(request: dict[str, Any]) -> Any:
    from metalab.core.store import RunStore

    return RunStore(_field(request, "store", str), _field(request, "runs_dir", str, required=False))


def _train(request: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from metalab.core.store import RunNotFoundError

    store, run_id = _store(request), _field(request, "run", str)
    try:
        # Within a second of launch, before the plugins and TensorFlow are imported (seconds to tens of seconds):
        # the live view then says the worker is starting, not that it has not been heard from.
        _mark_starting(store, run_id)
    except RunNotFoundError:
        return {"run": run_id, "status": "deleted"}  # deleted before its worker started
    try:
        registry = _registry(settings)
    except Exception as exc:  # noqa: BLE001 - a run must never stay queued because plugins could not load
        store.update_run(run_id, status="failed", finished=time.time(),
                         error=f"The plugins could not be loaded: {type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc())
        raise
    try:
        status = run_training(store, run_id, registry, settings=settings)
    except RunNotFoundError:
        status = "deleted"  # deleted before its worker started
    if status not in TRAIN_OK:
        error = store.get_run(run_id).error or ""
        raise RunFailedError(f"Run {run_id} ended {status!r}: {error}")
    return {"run": run_id, "status": status}


def _mark_starting(store: Any, run_id: str) -> None:
    """Records this worker's pid and the phase ``starting`` on the run (its status stays ``queued`` until training
    starts, so a worker that dies while importing is still found dead by the store's pid check)."""
    store.update_run(store.get_run(run_id).id, pid=os.getpid(), host=os.uname().nodename)
    store.start_phase(run_id, "starting", detail="importing TensorFlow and the plugins")


def _estimate(request: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from metalab.core.engine.config import resolve_config
    from metalab.core.engine.probe import estimate

    config = _field(request, "config", dict)
    steps = _field(request, "steps", int, required=False, default=3)
    max_seconds = _field(request, "max_seconds", (int, float), required=False, default=30.0)
    memory_bytes = _field(request, "memory_bytes", int, required=False)
    registry = _registry(settings)
    try:
        meta_batch = _meta_batch_size(registry, resolve_config(registry, dict(config)))
    except ValueError:
        meta_batch = 1  # estimate() reports the bad config
    # The same thread pools as the run's worker, so the seconds per step are the worker's.
    prepare_process(settings, meta_batch_size=meta_batch)
    return estimate(config, registry=registry, settings=settings, steps=steps, max_seconds=float(max_seconds),
                    available_bytes=memory_bytes)


def _devices(request: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    from metalab.core.engine.probe import list_devices

    prepare_process(settings)
    return list_devices()


def _predict(request: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    from metalab.core.engine.predict import predict

    store, run_id = _store(request), _field(request, "run", str)
    support, query = _field(request, "support", str), _field(request, "query", str)
    invert = _field(request, "invert", bool, required=False)
    prepare_process(settings)
    return predict(store, run_id, _registry(settings), support, query, settings=settings, invert=invert)


def _adapt(request: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from metalab.core.engine.predict import adapt_to_task

    store, run_id = _store(request), _field(request, "run", str)
    task, steps = _field(request, "task", int), _field(request, "steps", int, required=False)
    prepare_process(settings)
    return adapt_to_task(store, run_id, _registry(settings), task, settings=settings, steps=steps)


_HANDLERS: dict[str, Callable[[dict[str, Any], Settings], Any]] = {
    "train": _train, "estimate": _estimate, "devices": _devices, "predict": _predict, "adapt": _adapt,
}


def run_job(request: dict[str, Any], settings: Settings | None = None) -> Any:
    """Runs one job in this process and returns its result: the worker's ``main`` without the reply.

    The process gets the request's ``limits`` and the job's environment first (before plugins load or the backend
    starts), then the job calls :func:`prepare_process`.

    Raises:
        RequestError: The request is malformed.
        RunFailedError: A train job's run failed (recorded in the store).
        Exception: Whatever the job raises (e.g. ``ConfigError``, ``PredictionError``).
    """
    job = _check_job(request)
    apply_limits(**_limits(request))
    job_environment(job)
    return _HANDLERS[job](request, settings or load_settings())


def job_environment(job: str) -> None:
    """A worker process's environment for ``job``, set before anything loads the backend: the job's variables
    (where the caller has not set them), oneDNN's kernels on x86-64 CPUs, and the backend's logs at the level
    the job's environment (or the caller) chose."""
    from metalab.core.engine.devices import configure_cpu_kernels

    for name, value in _JOB_ENV.get(job, {}).items():
        os.environ.setdefault(name, value)
    configure_cpu_kernels()
    quiet_backend_logs(verbose=False)


def _limits(request: dict[str, Any]) -> dict[str, int]:
    """The request's ``limits`` as :func:`apply_limits` takes them (none: no limits)."""
    limits = request.get("limits") or {}
    if not isinstance(limits, dict) or set(limits) - {"nice", "memory_mb"}:
        raise RequestError(f"limits must be an object with the keys nice and memory_mb. Received: limits={limits!r}")
    for name, value in limits.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise RequestError(f"limits.{name} must be a non-negative integer. Received: {name}={value!r}")
    return {"nice": limits.get("nice", 0), "memory_mb": limits.get("memory_mb", 0)}


def _read_request(argv: list[str]) -> Any:
    text = sys.stdin.read() if not argv or argv[0] == "-" else argv[0]
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RequestError(f"The worker request must be a JSON object ({exc}). "
                           f"Received: request={text[:200]!r}") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m metalab.core.worker [REQUEST | -]``: runs the job, prints its JSON reply, returns 0 or 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    job = None
    try:
        # Anything printed while working goes to stderr: stdout carries only the reply.
        with contextlib.redirect_stdout(sys.stderr):
            request = _read_request(argv)
            job = request.get("job") if isinstance(request, dict) else None
            reply: dict[str, Any] = {"ok": True, "job": job, "result": run_job(request)}
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reply the caller can show
        error = {"type": type(exc).__name__, "message": str(exc)}
        # A refusal (a bad request, config, file or image: the message says it all) has no traceback; a crash has.
        if not isinstance(exc, (ValueError, FileNotFoundError, RunFailedError)):
            error["traceback"] = traceback.format_exc()
        reply = {"ok": False, "job": job, "error": error}
    print(json.dumps(reply, default=str), flush=True)
    return 0 if reply["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

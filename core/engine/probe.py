"""Device listing and a short pre-launch probe; the worker process runs them, so the dashboard never imports TF.

:func:`list_devices` lists the devices the Keras backend sees (TensorFlow's, or JAX's under ``KERAS_BACKEND=jax``);
:func:`estimate` builds a run's session as the runner does, times a few compiled train steps and reports the
parameter count, compile time, seconds per step, peak memory beside the analytic estimate of
:mod:`~metalab.core.engine.memory` and, for second-order MAML, whether it fits. The worker's ``devices`` and
``estimate`` jobs (:mod:`metalab.core.worker`) call them.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from metalab.core.engine.config import RunConfig
from metalab.core.settings import Settings, load_settings

#: Share of the available memory a run may use before the probe advises first order (headroom for evaluation).
FIT_FRACTION = 0.9

# -- memory readings (no TensorFlow) ----------------------------------------------------------------------


def _meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes (empty where there is none)."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


def _cgroup_headroom() -> int | None:
    """Bytes this container may still allocate under a cgroup memory limit, or ``None`` when unlimited."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        # cgroup v1 writes "no limit" as a huge number rather than "max".
        if limit == "max" or int(limit) >= 1 << 60:
            return None
        return max(int(limit) - usage, 0)
    return None


def current_rss() -> int:
    """Resident memory of this process now, in bytes."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


def peak_rss() -> int:
    """Peak resident memory of this process so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def host_memory() -> dict[str, int | None]:
    """Total and available host memory in bytes (the smaller of ``/proc/meminfo`` and a cgroup limit)."""
    info = _meminfo()
    total = info.get("MemTotal")
    available = info.get("MemAvailable", info.get("MemFree"))
    headroom = _cgroup_headroom()
    if headroom is not None:
        available = headroom if available is None else min(available, headroom)
    return {"total_bytes": total, "available_bytes": available}


def _cpu_description() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return f"{cores} cores" + (f", {model}" if model else "")


# -- the backend side (TensorFlow, or JAX under KERAS_BACKEND=jax) -----------------------------------------


def _on_jax() -> bool:
    from metalab.core.engine.devices import keras_backend

    return keras_backend() == "jax"


def _jax_memory_stats(device: Any) -> dict[str, int] | None:
    """``device.memory_stats()`` (JAX), or ``None`` where the platform keeps none (the CPU) or the call fails."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - memory is then "not available", never an error
        return None
    return dict(stats) if stats else None


def _device_row(dev_id: str, kind: str, host: dict[str, Any]) -> dict[str, Any]:
    """A :func:`list_devices` row; the CPU's is complete (host memory), an accelerator's is filled by the caller."""
    row: dict[str, Any] = {"id": dev_id, "type": kind, "description": kind, "memory_bytes": None,
                           "memory_available_bytes": None}
    if kind == "CPU":
        row.update(description=_cpu_description(), memory_bytes=host["total_bytes"],
                   memory_available_bytes=host["available_bytes"])
    return row


def _jax_list_devices() -> list[dict[str, Any]]:
    from metalab.core.engine.devices import jax_devices

    host = host_memory()
    devices = []
    for dev_id, device in jax_devices().items():
        kind = dev_id.partition(":")[0]
        row = _device_row(dev_id, kind, host)
        if kind != "CPU":
            row["description"] = str(getattr(device, "device_kind", "") or kind)
            stats = _jax_memory_stats(device) or {}
            limit = stats.get("bytes_limit")
            row["memory_bytes"] = limit
            row["memory_available_bytes"] = None if limit is None else limit - stats.get("bytes_in_use", 0)
        devices.append(row)
    return devices


def _grow_gpu_memory(tf: Any) -> None:
    # Without memory growth TensorFlow reserves nearly all GPU memory at start, which a listing must not do.
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.experimental.set_memory_growth(gpu, True)
    # Start the runtime now, so every later use of a GPU (the private device listing too) shares its allocator.
    tf.config.list_logical_devices()


def _accelerator_limits() -> dict[str, int]:
    """Bytes the backend's allocator may use on each GPU/TPU (``{"GPU:0": bytes}``); empty when unknown."""
    if _on_jax():
        from metalab.core.engine.devices import jax_devices

        limits = {}
        for dev_id, device in jax_devices().items():
            stats = _jax_memory_stats(device) if not dev_id.startswith("CPU") else None
            if stats and stats.get("bytes_limit"):
                limits[dev_id] = int(stats["bytes_limit"])
        return limits
    try:
        from tensorflow.python.client import device_lib

        return {d.name.removeprefix("/device:"): int(d.memory_limit) for d in device_lib.list_local_devices()
                if d.device_type != "CPU" and d.memory_limit}
    except Exception:  # noqa: BLE001 - a private API; memory is then "unknown", never an error
        return {}


def list_devices() -> list[dict[str, Any]]:
    """The logical devices the backend sees, with their memory where known (imports TensorFlow, or JAX).

    Returns:
        One dict per device: ``id`` (what ``RunConfig.device`` takes, e.g. ``"CPU:0"``, ``"GPU:0"``), ``type``,
        ``description``, ``memory_bytes`` (total; ``None`` when unknown) and ``memory_available_bytes``
        (host memory free now for the CPU; the allocator limit for an accelerator).
    """
    if _on_jax():
        return _jax_list_devices()
    import tensorflow as tf

    _grow_gpu_memory(tf)
    physical = {d.name.removeprefix("/physical_device:"): d for d in tf.config.list_physical_devices()}
    limits = _accelerator_limits() if any(d.device_type != "CPU" for d in physical.values()) else {}
    host = host_memory()
    devices = []
    for logical in tf.config.list_logical_devices():
        dev_id = logical.name.removeprefix("/device:")
        kind = logical.device_type
        row = _device_row(dev_id, kind, host)
        if kind != "CPU":
            details: dict[str, Any] = {}
            if dev_id in physical:
                with contextlib.suppress(Exception):
                    details = dict(tf.config.experimental.get_device_details(physical[dev_id]))
            name = details.get("device_name") or kind
            capability = details.get("compute_capability")
            row["description"] = name + (f" (compute capability {capability[0]}.{capability[1]})"
                                         if capability else "")
            row["memory_bytes"] = row["memory_available_bytes"] = limits.get(dev_id)
        devices.append(row)
    return devices


def _run_device(device: str) -> str:
    """The device a run with ``RunConfig.device == device`` lands on, as ``KIND:INDEX``."""
    from metalab.core.engine.devices import default_device_id, device_id

    return default_device_id() if device in ("", "auto") else device_id(device)


class _Meter:
    """Peak memory of the run's device: the process RSS on CPU, the backend's allocator on a GPU.

    On the host the peak is a high-water mark of the same quantity as :meth:`current`: the larger of the kernel's
    ``ru_maxrss`` and every RSS reading this meter took (including one taken when the peak is asked for). Linux
    keeps RSS in per-CPU (older kernels: per-thread) counters that it folds in batches, and ``/proc/self/statm``
    and ``ru_maxrss`` may read them at different precision, so on their own the two can disagree by a few hundred
    KB and a "peak" could come out below the baseline it is compared with.

    ``tf`` is the TensorFlow module, or ``None`` on the JAX backend, whose device memory statistics
    (``memory_stats()``) may be missing (then readings are ``None``: "not available") and whose peak cannot be
    reset (it then counts from the start of the process).
    """

    def __init__(self, tf: Any, device: str):
        self.tf, self.device = tf, device
        self.on_host = device.startswith("CPU")
        self.kind = "host RSS" if self.on_host else f"{device} allocator"
        self._host_high = 0
        self._jax_device = None
        if tf is None and not self.on_host:
            from metalab.core.engine.devices import jax_devices

            self._jax_device = jax_devices().get(device)

    def _jax_stat(self, name: str) -> int | None:
        stats = _jax_memory_stats(self._jax_device) if self._jax_device is not None else None
        return None if not stats or name not in stats else int(stats[name])

    def _host_rss(self) -> int:
        rss = current_rss()
        self._host_high = max(self._host_high, rss)
        return rss

    def current(self) -> int | None:
        if self.on_host:
            return self._host_rss()
        if self.tf is None:
            return self._jax_stat("bytes_in_use")
        return int(self.tf.config.experimental.get_memory_info(self.device)["current"])

    def reset_peak(self) -> None:
        # The process's RSS high-water mark cannot be reset: on the host the peak counts from the start.
        if not self.on_host and self.tf is not None:
            with contextlib.suppress(Exception):
                self.tf.config.experimental.reset_memory_stats(self.device)

    def peak(self) -> int | None:
        if self.on_host:
            self._host_rss()
            return max(peak_rss(), self._host_high)
        if self.tf is None:
            return self._jax_stat("peak_bytes_in_use")
        return int(self.tf.config.experimental.get_memory_info(self.device)["peak"])


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the backend running out of device (or host) memory."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ == "ResourceExhaustedError":  # TensorFlow
        return True
    # JAX raises its runtime error with XLA's status in the message.
    return type(exc).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and "RESOURCE_EXHAUSTED" in str(exc)


def _timed_step(step_fn: Any, sampler: Any, num_tasks: int) -> tuple[float, float]:
    """One train step on a freshly sampled batch; returns ``(seconds, loss)`` once its result is on the host."""
    from metalab.core.engine import functional

    start = time.perf_counter()
    batch = sampler.sample_batch(num_tasks)
    metrics = step_fn(batch)
    loss = float(functional.to_numpy(metrics["loss"]))
    return time.perf_counter() - start, loss


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def estimate(
    config: dict[str, Any] | RunConfig,
    *,
    registry: Any | None = None,
    settings: Settings | None = None,
    steps: int = 3,
    max_seconds: float = 30.0,
    min_seconds: float = 1.0,
    available_bytes: int | None = None,
) -> dict[str, Any]:
    """Builds a run's session as the runner does and times a few compiled train steps on sampled batches.

    For second-order MAML (an algorithm with ``first_order: false``) one single-task step runs first; its
    memory, scaled to the meta-batch, is checked against the device before the full step is tried, so a run
    that would not fit is reported instead of exhausting the machine.

    Args:
        config: A run config (raw fields or a :class:`RunConfig`); validated against the plugins.
        registry: The plugin registry; made from entry points when omitted.
        settings: Paths for the data; read from the environment when omitted.
        steps: Train steps to run; the first one compiles, the others are timed (at least two run).
        max_seconds: Stop timing steps after this long (the compile step is not counted).
        min_seconds: Keep timing fast steps (up to 100) until this long has been measured, for a steadier mean.
        available_bytes: The memory to plan for instead of what the device has free now (e.g. a smaller
            machine the run will go to).

    Returns:
        ``ok`` (True), ``device``, ``parameters`` (trainable), ``weights`` (every variable's size),
        ``meta_batch_size``, ``compile_seconds`` (the first step), ``seconds_per_step`` (after warm-up),
        ``timed_steps``, ``run_steps`` and ``estimated_run_seconds`` (training steps only, no evaluation),
        ``memory`` (``kind``, ``baseline_bytes``, ``peak_bytes``, ``available_bytes``; on JAX also
        ``xla_plan_bytes``: XLA's buffer assignment of the step, its exact peak), ``second_order``,
        ``fits`` (``None`` when unknown), ``hint`` (advice, or ``None``), ``extrapolated`` (the times and
        peak come from the single-task step because the full step was judged not to fit) and
        ``memory_estimate`` (the analytic breakdown of :func:`metalab.core.engine.memory.estimate_for_session`, made
        from the layer shapes before any step runs, with the baseline above; ``{"modelled": False, "reason"}``
        for algorithms it does not cover).

    Raises:
        ConfigError: The config is invalid.
    """
    import numpy as np

    from metalab.core.engine.config import resolve_config

    settings = settings or load_settings()
    if registry is None:
        from metalab.core.contract.manager import make_plugin_manager

        registry = make_plugin_manager(settings=settings, strict=False)
    raw = config.model_dump() if isinstance(config, RunConfig) else dict(config)
    cfg = resolve_config(registry, raw)
    steps = max(int(steps), 2)

    from metalab.core.engine.devices import device_scope
    from metalab.core.engine.runner import compile_train_step, make_optimizer
    from metalab.core.engine.session import build_session, make_training_sampler

    if _on_jax():
        tf = None
    else:
        import tensorflow as tf

        _grow_gpu_memory(tf)
    device = _run_device(cfg.device)
    meter = _Meter(tf, device)
    if available_bytes is not None:
        available = int(available_bytes)
    elif meter.on_host:
        # The worker starts with the same imports as this process, so what it holds now counts as available.
        available = host_memory()["available_bytes"]
        available = None if available is None else available + current_rss()
    else:
        available = _accelerator_limits().get(device)
    second_order = cfg.algorithm_params.get("first_order") is False

    with device_scope(cfg.device):
        session = build_session(registry, cfg, settings)
        algorithm = session.algorithm
        sampler = make_training_sampler(session)
        optimizer = make_optimizer(algorithm, cfg.precision)
        optimizer.build(algorithm.trainable_variables)

        tasks = int(algorithm.meta_batch_size)
        result: dict[str, Any] = {
            "ok": True, "device": device, "algorithm": cfg.algorithm, "dataset": cfg.dataset,
            "parameters": int(sum(np.prod(v.shape) for v in algorithm.trainable_variables)),
            "weights": int(sum(np.prod(v.shape) for v in algorithm.variables)),
            "meta_batch_size": tasks, "run_steps": int(cfg.steps), "second_order": second_order,
            "fits": None, "hint": None, "extrapolated": False,
        }
        baseline = meter.current()
        memory = {"kind": meter.kind, "baseline_bytes": baseline, "peak_bytes": None, "available_bytes": available}
        result["memory"] = memory
        result["memory_estimate"] = _analytic_estimate(session, registry, settings, meter, tasks, baseline)
        budget = None if available is None else FIT_FRACTION * available

        if second_order and tasks > 1 and budget is not None and baseline is not None:
            # A separate graph: one traced function shared by two batch sizes would relax the task axis to None.
            pilot_fn = compile_train_step(algorithm, optimizer, jit_compile=cfg.jit_compile)
            meter.reset_peak()
            pilot_compile, _ = _timed_step(pilot_fn, sampler, 1)
            pilot_seconds, _ = _timed_step(pilot_fn, sampler, 1)
            per_task = max((meter.peak() or baseline) - baseline, 0)
            # Conservative: the single-task increase includes tracing overhead that does not grow with tasks.
            predicted = baseline + per_task * tasks
            if predicted > budget:
                result.update(
                    fits=False, extrapolated=True, timed_steps=1,
                    compile_seconds=pilot_compile * tasks, seconds_per_step=pilot_seconds * tasks,
                    hint=(f"Second-order MAML with {tasks} tasks per step would need about {_gib(predicted)} of "
                          f"{device} memory ({meter.kind}), more than the {_gib(available)} available: set "
                          "algorithm.first_order (or fewer tasks per step, or fewer inner steps)."),
                )
                memory["peak_bytes"] = predicted
                result["estimated_run_seconds"] = _run_seconds(result)
                return result

        step_fn = compile_train_step(algorithm, optimizer, jit_compile=cfg.jit_compile)
        meter.reset_peak()
        times: list[float] = []
        loss = math.nan
        try:
            while len(times) < 101:
                seconds, loss = _timed_step(step_fn, sampler, tasks)
                times.append(seconds)
                timed = sum(times[1:])
                if len(times) >= 2 and (timed >= max_seconds or (len(times) >= steps and timed >= min_seconds)):
                    break
        except Exception as exc:
            if not (second_order and _out_of_memory(exc)):
                raise
            result.update(fits=False, hint=(
                f"Second-order MAML ran out of {device} memory ({type(exc).__name__}): set algorithm.first_order "
                "(or fewer tasks per step, or fewer inner steps)."))
            memory["peak_bytes"] = meter.peak()
            return result

    peak = meter.peak()
    memory["peak_bytes"] = peak
    if _on_jax():
        # XLA planned the compiled step's buffers: exact for the step itself, whatever the device reports.
        try:
            plan = step_fn.memory_plan(sampler.sample_batch(tasks))
        except Exception:  # noqa: BLE001 - the plan is extra information; the probe's figures stand without it
            plan = None
        memory["xla_plan_bytes"] = None if plan is None else int(plan["peak_bytes"])
    result.update(compile_seconds=times[0], seconds_per_step=float(np.mean(times[1:])), timed_steps=len(times) - 1,
                  loss=loss)
    result["estimated_run_seconds"] = _run_seconds(result)
    if budget is not None and peak is not None:
        result["fits"] = peak <= budget
        if not result["fits"]:
            result["hint"] = (
                f"The train step peaked at {_gib(peak)} of the {_gib(available)} of {device} memory available, too "
                "close to the limit for evaluation to fit as well: "
                + ("set algorithm.first_order (or fewer tasks per step)." if second_order
                   else "use fewer tasks per step, a smaller backbone or another device."))
    return result


def _analytic_estimate(session: Any, registry: Any, settings: Settings, meter: _Meter, tasks: int,
                       baseline: int) -> dict[str, Any]:
    """:func:`metalab.core.engine.memory.estimate_for_session` for the run's device; never raises (the probe goes on)."""
    from metalab.core.engine import memory
    from metalab.core.engine.devices import thread_counts

    try:
        # MAML's task window on TensorFlow is by default the worker's inter-op threads (TensorFlow's default pool:
        # one per core); estimate_for_session counts every task where XLA schedules the step (JAX).
        concurrency = thread_counts(settings, tasks)[1] or os.cpu_count() or 1
        return memory.estimate_for_session(session, registry=registry, concurrency=concurrency,
                                           baseline_bytes=baseline)
    except Exception as exc:  # noqa: BLE001 - an estimate that cannot be made is reported, the probe still runs
        return {"modelled": False, "reason": f"The memory estimate failed: {type(exc).__name__}: {exc}"}


def _run_seconds(result: dict[str, Any]) -> float:
    return float(result["compile_seconds"] + max(result["run_steps"] - 1, 0) * result["seconds_per_step"])

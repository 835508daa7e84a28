"""The Services section that asks a worker process about the machine: its devices, and a run config's cost.

This process never imports TensorFlow: the device listing and the pre-launch probe run as worker jobs.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from metalab.core.engine.config import RunConfig
from metalab.core.services.access import AccessError, CapError
from metalab.core.services.launch import LaunchLimitError


class ProbeError(RuntimeError):
    """Raised when the device probe process fails, times out or answers something that is not its JSON."""


# The device listing costs a TensorFlow import (seconds), and devices do not change while a process lives.
_DEVICES: dict[str, Any] = {}
_DEVICES_LOCK = threading.Lock()


class EstimatesMixin:
    """The device and estimate methods of :class:`~metalab.core.services.Services` (probe processes)."""

    def devices(self, timeout: float = 120.0, refresh: bool = False) -> list[dict[str, Any]]:
        """The devices a worker process sees (CPU, GPUs, TPU), listed once per process by a probe process.

        Args:
            timeout: Seconds to wait for the probe.
            refresh: List again instead of returning the remembered answer (or failure).

        Returns:
            One dict per device: ``id`` (a ``RunConfig.device`` value such as ``"CPU:0"`` or ``"GPU:0"``),
            ``type``, ``description``, ``memory_bytes`` and ``memory_available_bytes`` (``None`` when unknown).

        Raises:
            ProbeError: The probe failed (the failure is remembered too, until ``refresh``).
        """
        with _DEVICES_LOCK:
            if refresh or "answer" not in _DEVICES:
                try:
                    reply = self._run_worker(self._request("devices"), timeout, ProbeError, "The probe")
                    if not reply["ok"]:
                        error = reply.get("error") or {}
                        raise ProbeError(f"Listing devices failed: {error.get('type')}: {error.get('message')}\n"
                                         f"{error.get('traceback') or ''}")
                    _DEVICES["answer"] = list(reply["result"])
                except ProbeError as exc:
                    _DEVICES["answer"] = exc
            answer = _DEVICES["answer"]
        if isinstance(answer, ProbeError):
            raise answer
        return [dict(row) for row in answer]

    def devices_listed(self) -> list[dict[str, Any]] | None:
        """The device list if a probe has already answered, else ``None``; never waits (see :meth:`devices`).

        Raises:
            ProbeError: The last probe failed (remembered until ``devices(refresh=True)``).
        """
        answer = _DEVICES.get("answer")
        if answer is None:
            return None
        if isinstance(answer, ProbeError):
            raise answer
        return [dict(row) for row in answer]

    def prefetch_devices(self) -> None:
        """Starts listing devices in a background thread, so a later :meth:`devices` call waits less."""
        if "answer" in _DEVICES:
            return

        def run() -> None:
            with contextlib.suppress(ProbeError):
                self.devices()

        threading.Thread(target=run, name="metalab-devices", daemon=True).start()

    def estimate(self, config: RunConfig | dict[str, Any], timeout: float = 300.0, steps: int = 3,
                 max_seconds: float = 30.0) -> dict[str, Any]:
        """Times a few train steps of ``config`` in a probe process: parameters, compile, seconds per step, memory.

        Args:
            config: The run config (validated here or in the probe).
            timeout: Seconds to wait for the probe (TensorFlow import, session build, compile, steps).
            steps: Train steps the probe runs (the first compiles).
            max_seconds: Cap on the time the probe spends timing steps after the compile.

        Returns:
            The probe's answer (see :func:`metalab.core.engine.probe.estimate`) with ``ok`` true, or ``{"ok": False,
            "error": "Type: message", "traceback": text}``: a failure is returned, never raised.
        """
        try:
            checked = config if isinstance(config, RunConfig) else self.resolve(dict(config))
            self.check_config(checked)
            self._take_probe_slot()
        except AccessError as exc:  # the message is the whole explanation
            return {"ok": False, "error": self.redact(str(exc)), "traceback": ""}
        except ValueError as exc:  # ConfigError and other bad input: say which kind
            return {"ok": False, "error": self.redact(f"{type(exc).__name__}: {exc}"), "traceback": ""}
        request = self._request("estimate", config=checked.model_dump(mode="json"), steps=int(steps),
                                max_seconds=float(max_seconds))
        try:
            reply = self._run_worker(request, timeout, ProbeError, "The probe")
        except ProbeError as exc:
            return {"ok": False, "error": self.redact(str(exc).splitlines()[0]), "traceback": self.redact(str(exc))}
        finally:
            with self._lock:
                self._probes[self.actor.id] -= 1
        if not reply["ok"]:
            error = reply.get("error") or {}
            return {"ok": False, "error": self.redact(f"{error.get('type')}: {error.get('message')}"),
                    "traceback": self.redact(str(error.get("traceback") or ""))}
        return dict(reply["result"])

    def _take_probe_slot(self) -> None:
        """Counts a probe against ``max_workers`` and ``max_probes_per_owner``, or raises :class:`CapError`."""
        busy = self._busy_workers(self.active_runs())
        with self._lock:
            probes = sum(self._probes.values())
            active = busy - probes
            mine = self._probes.get(self.actor.id, 0)
            if busy >= self.settings.max_workers:
                raise LaunchLimitError(
                    f"{active} runs and {probes} estimates are running; at most {self.settings.max_workers} workers "
                    f"run at once here (METALAB_MAX_WORKERS). Wait for one to finish. Received: workers={active + probes}")
            if mine >= self.settings.max_probes_per_owner:
                raise CapError(f"You have {mine} estimates running; at most {self.settings.max_probes_per_owner} at "
                               f"once (METALAB_MAX_PROBES_PER_OWNER). Received: probes={mine}")
            self._probes[self.actor.id] = mine + 1

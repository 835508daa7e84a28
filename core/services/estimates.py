"""The Services section that asks a worker process about the machine: its devices, and a run config's cost.

This process never imports TensorFlow: the device listing and the pre-launch probe run as worker jobs.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import OrderedDict
from typing import Any

from metalab.core.engine.config import RunConfig
from metalab.core.services.access import AccessError, CapError
from metalab.core.services.launch import LaunchLimitError


class ProbeError(RuntimeError):
    """Raised when the device probe process fails, times out or answers something that is not its JSON."""


# The device listing costs a TensorFlow import (seconds), and devices do not change while a process lives.
_DEVICES: dict[str, Any] = {}
_DEVICES_LOCK = threading.Lock()

#: Estimates remembered in this process (the newest first out when full).
ESTIMATE_CACHE_SIZE = 64
# Successful estimates by request (the resolved config's JSON, steps, max_seconds): a probe costs a TensorFlow
# import, a compile and timed steps, and the same config on the same machine gives the same answer. An entry is
# only returned after the caller's own check of the config (its rights and the caps), so it leaks nothing.
_ESTIMATES: OrderedDict[str, dict[str, Any]] = OrderedDict()
# Background estimates by ticket (who asks + request): None while the probe runs, then the answer (a failure or
# refusal too; successes also go to _ESTIMATES).
_TICKETS: OrderedDict[str, dict[str, Any] | None] = OrderedDict()
_ESTIMATES_LOCK = threading.Lock()
#: Probe processes this process has started for estimates (a cache hit starts none).
PROBES_STARTED = {"count": 0}


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

        A successful answer is remembered in this process for the same resolved config (and ``steps``,
        ``max_seconds``): asked again, by anyone allowed to run the config, it is returned without a probe.

        Args:
            config: The run config (validated here or in the probe).
            timeout: Seconds to wait for the probe (TensorFlow import, session build, compile, steps).
            steps: Train steps the probe runs (the first compiles).
            max_seconds: Cap on the time the probe spends timing steps after the compile.

        Returns:
            The probe's answer (see :func:`metalab.core.engine.probe.estimate`) with ``ok`` true, or ``{"ok": False,
            "error": "Type: message", "traceback": text}``: a failure is returned, never raised.
        """
        checked = self._check_estimate(config)
        if isinstance(checked, dict):
            return checked
        key = _estimate_key(checked, steps, max_seconds)
        cached = _cached_estimate(key)
        if cached is not None:
            return cached
        refused = self._claim_probe()
        if refused is not None:
            return refused
        return self._probe_estimate(checked, key, timeout, steps, max_seconds)

    def start_estimate(self, config: RunConfig | dict[str, Any], timeout: float = 300.0, steps: int = 3,
                       max_seconds: float = 30.0) -> str:
        """Starts :meth:`estimate` in a background thread; returns a ticket for :meth:`estimate_result`.

        The config is checked and the probe slot taken here, before the thread starts (a refusal is the ticket's
        answer at once); a remembered answer, or an estimate of the same request already running for this caller,
        starts nothing.
        """
        checked = self._check_estimate(config)
        if isinstance(checked, dict):
            return _new_ticket(self.actor.id, "refused: " + checked["error"], checked)
        key = _estimate_key(checked, steps, max_seconds)
        ticket = json.dumps([self.actor.id, key])
        with _ESTIMATES_LOCK:
            if key in _ESTIMATES or (ticket in _TICKETS and _TICKETS[ticket] is None):
                return ticket
        refused = self._claim_probe()
        if refused is not None:
            return _new_ticket(self.actor.id, key, refused)
        _new_ticket(self.actor.id, key, None)

        def run() -> None:
            answer: dict[str, Any] = {"ok": False, "error": "The estimate stopped unexpectedly.", "traceback": ""}
            try:
                answer = self._probe_estimate(checked, key, timeout, steps, max_seconds)
            finally:
                with _ESTIMATES_LOCK:
                    _TICKETS[ticket] = answer

        threading.Thread(target=run, name="metalab-estimate", daemon=True).start()
        return ticket

    def estimate_result(self, ticket: str) -> dict[str, Any] | None:
        """The answer of :meth:`start_estimate`'s ``ticket`` (as :meth:`estimate` returns it), ``None`` while it runs.

        Raises:
            KeyError: The ticket is unknown (e.g. forgotten after many newer estimates): start it again.
        """
        with _ESTIMATES_LOCK:
            try:
                who, key = json.loads(ticket)
            except (TypeError, ValueError):
                raise KeyError(ticket) from None
            if who != self.actor.id:  # one caller's tickets are not another's to read
                raise KeyError(ticket)
            if key in _ESTIMATES:
                return dict(_ESTIMATES[key])
            answer = _TICKETS[ticket]
        return None if answer is None else dict(answer)

    def _check_estimate(self, config: RunConfig | dict[str, Any]) -> RunConfig | dict[str, Any]:
        """The validated config, or the refusal :meth:`estimate` returns (the caller's rights and the caps)."""
        try:
            checked = config if isinstance(config, RunConfig) else self.resolve(dict(config))
            self.check_config(checked)
        except AccessError as exc:  # the message is the whole explanation
            return {"ok": False, "error": self.redact(str(exc)), "traceback": ""}
        except ValueError as exc:  # ConfigError and other bad input: say which kind
            return {"ok": False, "error": self.redact(f"{type(exc).__name__}: {exc}"), "traceback": ""}
        return checked

    def _claim_probe(self) -> dict[str, Any] | None:
        """Takes a probe slot (:meth:`_take_probe_slot`); the refusal as an answer, or ``None`` when taken."""
        try:
            self._take_probe_slot()
        except AccessError as exc:
            return {"ok": False, "error": self.redact(str(exc)), "traceback": ""}
        return None

    def _probe_estimate(self, checked: RunConfig, key: str, timeout: float, steps: int,
                        max_seconds: float) -> dict[str, Any]:
        """Runs the probe process for a slot already taken (freed here); remembers a successful answer."""
        request = self._request("estimate", config=checked.model_dump(mode="json"), steps=int(steps),
                                max_seconds=float(max_seconds))
        try:
            with _ESTIMATES_LOCK:
                PROBES_STARTED["count"] += 1
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
        answer = dict(reply["result"])
        with _ESTIMATES_LOCK:
            _ESTIMATES[key] = answer
            _ESTIMATES.move_to_end(key)
            while len(_ESTIMATES) > ESTIMATE_CACHE_SIZE:
                _ESTIMATES.popitem(last=False)
        return dict(answer)

    def _take_probe_slot(self) -> None:
        """Counts a probe against ``max_workers`` and ``max_probes_per_owner``, or raises :class:`CapError`."""
        busy = self._busy_workers(self.active_runs())
        with self._lock:
            probes = sum(self._probes.values())
            active = busy - probes
            mine = self._probes.get(self.actor.id, 0)
            if busy >= self.settings.max_workers:
                raise LaunchLimitError(
                    f"{active} runs and {probes} estimates or predictions are running; at most {self.settings.max_workers} workers "
                    f"run at once here (METALAB_MAX_WORKERS). Wait for one to finish. Received: workers={active + probes}")
            if mine >= self.settings.max_probes_per_owner:
                raise CapError(f"You have {mine} estimates or predictions running; at most {self.settings.max_probes_per_owner} at "
                               f"once (METALAB_MAX_PROBES_PER_OWNER). Received: probes={mine}")
            self._probes[self.actor.id] = mine + 1


def _estimate_key(config: RunConfig, steps: int, max_seconds: float) -> str:
    """What an estimate's answer depends on: the resolved config (as JSON), the steps timed and their cap."""
    return json.dumps([config.model_dump(mode="json"), int(steps), float(max_seconds)], sort_keys=True)


def _cached_estimate(key: str) -> dict[str, Any] | None:
    with _ESTIMATES_LOCK:
        answer = _ESTIMATES.get(key)
        if answer is not None:
            _ESTIMATES.move_to_end(key)
    return None if answer is None else dict(answer)


def _new_ticket(who: str, key: str, answer: dict[str, Any] | None) -> str:
    """Records a background estimate's state (``None``: running) under a new ticket, forgetting the oldest."""
    ticket = json.dumps([who, key])
    with _ESTIMATES_LOCK:
        _TICKETS[ticket] = answer
        _TICKETS.move_to_end(ticket)
        while len(_TICKETS) > 4 * ESTIMATE_CACHE_SIZE:
            oldest = next(iter(_TICKETS))
            if _TICKETS[oldest] is None:  # still running: keep it, its thread writes to it
                _TICKETS.move_to_end(oldest)
                break
            del _TICKETS[oldest]
    return ticket

"""The service facade: the one door through which the CLI and the dashboard reach metalab's core.

Importing this module does not import TensorFlow; only training and evaluation (``train``, ``evaluate``) do,
and the dashboard runs those in worker processes through :meth:`Services.launch`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from functools import cached_property
from pathlib import Path
from typing import Any

from .config import RunConfig, resolve_config
from .settings import Settings, load_settings
from .store import RunRecord, RunStore

#: Statuses of a run whose worker is (or is about to be) busy.
ACTIVE = ("queued", "running")
#: Statuses from which a run can be resumed (its checkpoint, if any, is kept).
RESUMABLE = ("cancelled", "interrupted", "failed")


class LaunchLimitError(RuntimeError):
    """Raised when starting a worker would exceed ``settings.max_workers`` runs at once."""


class ProbeError(RuntimeError):
    """Raised when the device probe process fails, times out or answers something that is not its JSON."""


# The device listing costs a TensorFlow import (seconds), and devices do not change while a process lives.
_DEVICES: dict[str, Any] = {}
_DEVICES_LOCK = threading.Lock()


class Services:
    """metalab's operations over one plugin registry and one run store.

    Args:
        settings: Paths and plugin switches; read from the environment when omitted.
        registry: A :class:`~metalab.core.plugin_manager.PluginRegistry`; made (entry points on) when omitted.
    """

    def __init__(self, settings: Settings | None = None, registry: Any | None = None):
        self.settings = settings or load_settings()
        self._registry = registry
        # Worker processes this object started: polled to reap them and to spot a worker that died early.
        self._workers: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from .plugin_manager import make_plugin_manager

            self._registry = make_plugin_manager(settings=self.settings)
        return self._registry

    @cached_property
    def store(self) -> RunStore:
        return RunStore(self.settings.store_path, self.settings.runs_dir)

    # -- plugins ----------------------------------------------------------------------------------------

    def plugins(self) -> list[dict[str, Any]]:
        """Every algorithm, dataset and backbone, and every failed or disabled plugin (see ``describe``)."""
        return self.registry.describe()

    def catalog(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The loaded specs with what a form needs to offer them (no TensorFlow import).

        Returns:
            ``{"datasets": {id: row}, "algorithms": {id: row}, "backbones": {id: row}}``; every row has ``id``,
            ``title``, ``description``, ``paper``, ``params`` (the JSON schema) and ``defaults`` (every parameter's
            default, those made by a default factory included); datasets add ``kind``,
            ``default_backbone`` and ``episode_defaults``; algorithms ``task_kinds``; backbones ``input_kinds``.
        """
        reg = self.registry

        def row(spec: Any, **extra: Any) -> dict[str, Any]:
            return {"id": spec.id, "title": spec.title, "description": spec.description, "paper": spec.paper,
                    "params": spec.params.model_json_schema(), "defaults": spec.params().model_dump(mode="json"),
                    **extra}

        return {
            "datasets": {i: row(s, kind=s.kind, default_backbone=s.default_backbone,
                                episode_defaults=dict(s.episode_defaults)) for i, s in reg.datasets.items()},
            "algorithms": {i: row(s, task_kinds=list(s.task_kinds)) for i, s in reg.algorithms.items()},
            "backbones": {i: row(s, input_kinds=list(s.input_kinds)) for i, s in reg.backbones.items()},
        }

    def task_kind(self, dataset_id: str) -> str | None:
        """``"classification"`` or ``"regression"`` for a loaded dataset id; ``None`` when it is not loaded."""
        spec = self.registry.datasets.get(dataset_id)
        return spec.kind if spec is not None else None

    # -- runs -------------------------------------------------------------------------------------------

    def resolve(self, raw: dict[str, Any], assignments: dict[str, Any] | None = None) -> RunConfig:
        """Validates a run config against the chosen plugins (raises ``ConfigError`` naming field and value)."""
        return resolve_config(self.registry, raw, assignments)

    def create_run(self, config: RunConfig, name: str = "") -> str:
        """Records a new queued run and returns its id."""
        return self.store.create_run(config.model_dump(), name=name)

    def train(self, run_id: str, progress: Any = None) -> str:
        """Trains (or resumes) a run in this process; returns its final status."""
        from .runner import train_run

        return train_run(self.store, run_id, self.registry, settings=self.settings, progress=progress)

    def launch(self, run_id: str) -> subprocess.Popen:
        """Starts a worker process that trains (or resumes) the run and reports to the store."""
        log_dir = self.store.run_dir(run_id)
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / "worker.log", "ab")  # noqa: SIM115 - handed to the child process
        env = dict(os.environ, METALAB_HOME=str(self.settings.home), METALAB_DATA_DIR=str(self.settings.data_dir))
        return subprocess.Popen(
            [sys.executable, "-m", "metalab.core.runner", str(self.store.path), run_id],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )

    # -- devices and the pre-launch probe (worker processes: this process never imports TensorFlow) -------

    def _worker_env(self) -> dict[str, str]:
        return dict(os.environ, METALAB_HOME=str(self.settings.home), METALAB_DATA_DIR=str(self.settings.data_dir))

    def _probe(self, args: list[str], timeout: float) -> dict[str, Any]:
        """Runs ``python -m metalab.core.probe ARGS`` and returns its JSON answer (``ok`` true or false).

        Raises:
            ProbeError: The process timed out, or died without a JSON answer.
        """
        command = [sys.executable, "-m", "metalab.core.probe", *args]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=self._worker_env(),
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ProbeError(f"The probe took longer than {timeout:g} s and was stopped. "
                             f"Received: command={args[0]!r}, timeout={timeout:g}") from None
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        try:
            answer = json.loads(lines[-1]) if lines else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            # Killed by a signal (e.g. the kernel's out-of-memory killer) or crashed inside TensorFlow.
            reason = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                      else f"exited with code {proc.returncode}")
            raise ProbeError(f"The probe process {reason} without an answer; its output ends with:\n"
                             f"{(proc.stderr or proc.stdout)[-3000:]}")
        return answer

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
                    answer = self._probe(["devices"], timeout)
                    if not answer.get("ok"):
                        raise ProbeError(f"Listing devices failed: {answer.get('error')}\n"
                                         f"{answer.get('traceback', '')}")
                    _DEVICES["answer"] = list(answer["devices"])
                except ProbeError as exc:
                    _DEVICES["answer"] = exc
            answer = _DEVICES["answer"]
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
            The probe's answer (see :func:`metalab.core.probe.estimate`) with ``ok`` true, or ``{"ok": False,
            "error": message, "traceback": text}``: a failure is returned, never raised.
        """
        raw = config.model_dump(mode="json") if isinstance(config, RunConfig) else dict(config)
        args = ["estimate", json.dumps(raw), "--steps", str(int(steps)), "--max-seconds", str(float(max_seconds))]
        try:
            return self._probe(args, timeout)
        except ProbeError as exc:
            return {"ok": False, "error": str(exc).splitlines()[0], "traceback": str(exc)}

    def active_runs(self) -> list[RunRecord]:
        """Runs that are queued or running now (reaps finished worker processes first)."""
        self._reap()
        return [run for status in ACTIVE for run in self.store.list_runs(status=status)]

    def submit(self, config: RunConfig, name: str = "") -> str:
        """Records a new run and starts its worker process, within ``settings.max_workers`` runs at once.

        Raises:
            LaunchLimitError: ``max_workers`` runs are already queued or running.
        """
        self._check_capacity()
        run_id = self.create_run(config, name=name)
        self._start(run_id)
        return run_id

    def relaunch(self, run_id: str) -> None:
        """Resumes a cancelled, interrupted or failed run in a new worker process (from its checkpoint).

        Raises:
            ValueError: The run is not in a resumable state.
            LaunchLimitError: ``max_workers`` runs are already queued or running.
        """
        run = self.store.get_run(run_id)
        if run.status not in RESUMABLE:
            raise ValueError(
                f"Only a {', '.join(RESUMABLE)} run can be resumed; run {run.id} is {run.status}. "
                f"Received: run={run_id!r}"
            )
        self._check_capacity()
        self.store.update_run(run.id, status="queued", cancel_requested=0, finished=None)
        self._start(run.id)

    def _check_capacity(self) -> None:
        active = self.active_runs()
        if len(active) >= self.settings.max_workers:
            raise LaunchLimitError(
                f"{len(active)} runs are already queued or running (the limit is METALAB_MAX_WORKERS="
                f"{self.settings.max_workers}); wait for one to finish or cancel one. "
                f"Received: active={[r.id for r in active]}"
            )

    def _start(self, run_id: str) -> None:
        proc = self.launch(run_id)
        with self._lock:
            self._workers[run_id] = proc

    def _reap(self) -> None:
        """Collects exited workers; a run still queued when its worker exited failed before training began."""
        with self._lock:
            done = {rid: p for rid, p in self._workers.items() if p.poll() is not None}
            for rid in done:
                del self._workers[rid]
        for rid, proc in done.items():
            try:
                run = self.store.get_run(rid)
            except KeyError:
                continue
            if run.status == "queued":
                self.store.update_run(
                    rid, status="failed", error=f"The worker process exited with code {proc.returncode} before "
                    "training started.", traceback=self.worker_log(rid),
                )

    def worker_log(self, run_id: str, max_chars: int = 20_000) -> str:
        """The tail of the run's worker log (its stdout and stderr), or an empty string."""
        path = self.store.run_dir(run_id) / "worker.log"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-max_chars:]

    def resume(self, run_id: str, progress: Any = None) -> str:
        """Continues an interrupted, cancelled or failed run from its last checkpoint."""
        run = self.store.get_run(run_id)
        if run.status in ("running", "queued"):
            raise ValueError(f"Run {run.id} is {run.status}; only a finished run can be resumed. Received: run={run_id!r}")
        return self.train(run.id, progress=progress)

    def cancel(self, run_id: str) -> None:
        self.store.request_cancel(run_id)

    def runs(self, **filters: Any) -> list[RunRecord]:
        return self.store.list_runs(**filters)

    def run(self, run_id: str) -> RunRecord:
        return self.store.get_run(run_id)

    def metrics(self, run_id: str) -> dict[str, list[tuple[int, float]]]:
        return self.store.metrics(run_id)

    def evaluations(self, run_id: str) -> list[dict[str, Any]]:
        return self.store.evaluations(run_id)

    def evaluate(self, run_id: str, episodes: int | None = None, split: str = "test") -> dict[str, Any]:
        """Meta-test score of a run: mean with 95% CI over fixed episodes, plus the adaptation curve."""
        from .runner import evaluate_run

        return evaluate_run(self.store, run_id, self.registry, episodes=episodes, split=split, settings=self.settings)

    def delete_run(self, run_id: str) -> None:
        self.store.delete_run(run_id)

    def rename_run(self, run_id: str, name: str) -> None:
        self.store.rename_run(run_id, name)

    def run_dir(self, run_id: str) -> Path:
        return self.store.run_dir(run_id)

    # -- reports ----------------------------------------------------------------------------------------

    def report_data(self, run_id: str) -> dict[str, Any] | None:
        """The figure data the worker stored at the end of training (``report_data.json``), if any."""
        for artifact in self.store.artifacts(run_id):
            if artifact["name"] == "report_data":
                try:
                    return json.loads(Path(artifact["path"]).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    return None
        return None

    def run_report(self, run_id: str) -> dict[str, Any]:
        """Everything a report shows: ``{"run", "metrics", "evaluations", "report_data", "panels"}`` (plain data)."""
        run = self.store.get_run(run_id)
        data = self.report_data(run.id)
        return {
            "run": run.to_dict(),
            "metrics": self.store.metrics(run.id),
            "evaluations": self.store.evaluations(run.id),
            "report_data": data,
            "panels": self._panels(run.to_dict(), data),
        }

    def report_panels(self, run_id: str) -> list[dict[str, Any]]:
        """The panels plugins add to a run's report (the ``metalab_report_panels`` hook), in plugin load order.

        Each plugin's hook is called on its own: one that raises or returns something other than a list of
        ``ReportPanel`` gives a panel with ``error`` set in its place, and the others are unaffected.

        Returns:
            Dicts ``{"title", "figure" (Plotly JSON or None), "markdown" (str or None), "plugin", "error"}``.
        """
        run = self.store.get_run(run_id)
        return self._panels(run.to_dict(), self.report_data(run.id))

    def _panels(self, run: dict[str, Any], data: dict[str, Any] | None) -> list[dict[str, Any]]:
        from .plugin_api import ReportPanel

        arguments = {"run": run, "report_data": data or {}, "artifacts_dir": str(self.store.run_dir(run["id"]))}
        panels: list[dict[str, Any]] = []
        for impl in self.registry.pm.hook.metalab_report_panels.get_hookimpls():
            try:
                result = impl.function(*[arguments[name] for name in impl.argnames])
                if not isinstance(result, (list, tuple)):
                    raise TypeError(f"expected a list of ReportPanel. Received: {type(result).__name__}")
                found = []
                for panel in result:
                    if not isinstance(panel, ReportPanel):
                        raise TypeError(f"expected ReportPanel objects. Received: {type(panel).__name__}")
                    panel.validate()
                    found.append({"title": panel.title, "figure": panel.figure, "markdown": panel.markdown,
                                  "plugin": impl.plugin_name, "error": None})
            except Exception as exc:  # noqa: BLE001 - a plugin's panel must never break the report
                found = [{"title": f"Panels of plugin {impl.plugin_name}", "figure": None, "markdown": None,
                          "plugin": impl.plugin_name, "error": f"{type(exc).__name__}: {exc}"}]
            panels.extend(found)
        return panels

    def report_html(self, run_id: str) -> str:
        """The run's self-contained HTML report (figures, config, metrics, versions, seed)."""
        from .reports import report_html

        return report_html(self.run_report(run_id))

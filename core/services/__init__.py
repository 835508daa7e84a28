"""The service facade: the one door through which the CLI and the dashboard reach metalab's core.

Importing this module does not import TensorFlow; only training and evaluation (``train``, ``evaluate``) do,
and the dashboard runs those in worker processes through :meth:`Services.launch`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import subprocess
import threading
from functools import cached_property
from pathlib import Path
from typing import Any

from metalab.core.services.access import AccessError, Actor, CapError, Policy
from metalab.core.engine.config import RunConfig, resolve_config
from metalab.core.settings import Settings, load_settings
from metalab.core.store import RunNotFoundError, RunRecord, RunStore
from metalab.core.worker import read_reply, worker_command

#: Statuses of a run whose worker is (or is about to be) busy.
ACTIVE = ("queued", "running")
#: Statuses from which a run can be resumed (its checkpoint, if any, is kept).
RESUMABLE = ("cancelled", "interrupted", "failed")


class LaunchLimitError(CapError):
    """Raised when starting a worker would exceed ``settings.max_workers`` runs and probes at once, or the
    caller's ``max_runs_per_owner``."""


class ProbeError(RuntimeError):
    """Raised when the device probe process fails, times out or answers something that is not its JSON."""


# The device listing costs a TensorFlow import (seconds), and devices do not change while a process lives.
_DEVICES: dict[str, Any] = {}
_DEVICES_LOCK = threading.Lock()


class Services:
    """metalab's operations over one plugin registry and one run store.

    Every request is made as :attr:`actor` and checked by :attr:`policy` here, where it enters core: ownership
    of runs and uploads, parameters that touch the machine, and the caps. The dashboard shares one object and
    calls it through :meth:`for_actor` with each browser session's identity.

    Args:
        settings: Paths, plugin switches, mode and caps; read from the environment when omitted.
        registry: A :class:`~metalab.core.contract.manager.PluginRegistry`; made (entry points on) when omitted.
        actor: Who asks; by default :meth:`Actor.machine` (the CLI: this machine's owner).
    """

    def __init__(self, settings: Settings | None = None, registry: Any | None = None, actor: Actor | None = None):
        self.settings = settings or load_settings()
        self._registry = registry
        self.actor = actor or Actor.machine()
        # Worker processes this object started: polled to reap them and to spot a worker that died early.
        self._workers: dict[str, subprocess.Popen] = {}
        # Estimate probes running now, per owner (they count against max_workers).
        self._probes: dict[str, int] = {}
        self._lock = threading.Lock()
        from metalab.core.data.info import configure_pixel_cap

        configure_pixel_cap(self.settings.max_image_pixels)

    def for_actor(self, actor: Actor) -> "Services":
        """A view of this object that acts as ``actor``, sharing its registry, store, workers and probes."""
        self.store, self.policy  # noqa: B018 - made once here, so every view shares them
        view = copy.copy(self)
        view.actor = actor
        return view

    @cached_property
    def policy(self) -> Policy:
        """The access rules of this process (see :class:`~metalab.core.services.access.Policy`)."""
        return Policy(self.settings, upload_owners=lambda name: (self.store.upload_record(name) or {}).get("owner"))

    def redact(self, message: str) -> str:
        """``message`` as :attr:`actor` may see it (server paths hidden off the machine)."""
        return self.policy.redact(self.actor, message)

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from metalab.core.contract.manager import make_plugin_manager

            self._registry = make_plugin_manager(settings=self.settings)
        return self._registry

    @cached_property
    def store(self) -> RunStore:
        store = RunStore(self.settings.store_path, self.settings.runs_dir)
        self.showcase_error: str | None = None
        if self.settings.showcase_dir:
            from metalab.core.services.showcase import install

            try:
                install(self.settings.showcase_dir, store)
            except (ValueError, RuntimeError) as exc:  # a broken bundle (or its store) leaves the dashboard up
                self.showcase_error = str(exc).replace(str(self.settings.showcase_dir), "METALAB_SHOWCASE_DIR")
            except OSError as exc:
                self.showcase_error = f"The showcase folder could not be read ({type(exc).__name__})."
        return store

    # -- plugins ----------------------------------------------------------------------------------------

    def plugins(self) -> list[dict[str, Any]]:
        """Every algorithm, dataset and backbone, and every failed or disabled plugin (see ``describe``)."""
        return self.registry.describe()

    def slow_plugins(self) -> list[dict[str, Any]]:
        """Plugins that took a second or more to import and register: ``{"plugin", "package", "version",
        "status", "seconds"}`` each, slowest first."""
        return [{"plugin": r.name, "package": r.package, "version": r.version, "status": r.status,
                 "seconds": r.seconds} for r in self.registry.slow_plugins()]

    def catalog(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The loaded specs with what a form needs to offer them (no TensorFlow import).

        Returns:
            ``{"datasets": {id: row}, "algorithms": {id: row}, "backbones": {id: row}}``; every row has ``id``,
            ``title``, ``description``, ``paper``, ``params`` (the JSON schema) and ``defaults`` (every parameter's
            default, those made by a default factory included); datasets add ``kind``,
            ``default_backbone``, ``episode_defaults`` and ``presets`` (the Train form's quick-start values per
            algorithm id, ``"*"`` for all); algorithms ``task_kinds``; backbones ``input_kinds``.
            ``machine`` maps the parameters that touch the machine (paths, URLs, checksums, runs) to their kind:
            pages never fill them from a link, and hide them in ``demo`` mode.
        """
        reg = self.registry

        from metalab.core.contract.specs import machine_params

        def row(spec: Any, **extra: Any) -> dict[str, Any]:
            return {"id": spec.id, "title": spec.title, "description": spec.description, "paper": spec.paper,
                    "params": spec.params.model_json_schema(), "defaults": spec.params().model_dump(mode="json"),
                    "machine": machine_params(spec.params), **extra}

        return {
            "datasets": {i: row(s, kind=s.kind, default_backbone=s.default_backbone,
                                episode_defaults=dict(s.episode_defaults), presets=copy.deepcopy(dict(s.presets)))
                         for i, s in reg.datasets.items()},
            "algorithms": {i: row(s, task_kinds=list(s.task_kinds)) for i, s in reg.algorithms.items()},
            "backbones": {i: row(s, input_kinds=list(s.input_kinds)) for i, s in reg.backbones.items()},
        }

    def task_kind(self, dataset_id: str) -> str | None:
        """``"classification"`` or ``"regression"`` for a loaded dataset id; ``None`` when it is not loaded."""
        spec = self.registry.datasets.get(dataset_id)
        return spec.kind if spec is not None else None

    # -- runs -------------------------------------------------------------------------------------------

    def resolve(self, raw: dict[str, Any], assignments: dict[str, Any] | None = None) -> RunConfig:
        """Validates a run config against the chosen plugins and the caller's rights.

        Raises:
            ConfigError: A field is invalid (the message names field and value).
            AccessError: A parameter names a path, URL, checksum or run the caller may not use.
            CapError: More steps than ``max_steps``.
        """
        config = resolve_config(self.registry, raw, assignments)
        self.check_config(config)
        return config

    def check_config(self, config: RunConfig) -> None:
        """Checks a validated config against the caller's rights and the caps (see :meth:`resolve`)."""
        reg, policy = self.registry, self.policy
        owner_of = self._run_owner
        for section, spec, values in (
            ("dataset", reg.datasets.get(config.dataset), config.dataset_params),
            ("algorithm", reg.algorithms.get(config.algorithm), config.algorithm_params),
            ("backbone", reg.backbones.get(config.backbone or ""), config.backbone_params),
            ("test_dataset", reg.datasets.get(config.test_dataset or ""), config.test_dataset_params),
        ):
            if spec is not None:
                policy.check_params(self.actor, section, spec, values, run_owner=owner_of)
        cap = self.settings.max_steps
        if config.steps > cap and not self.actor.on_machine:
            raise CapError(f"steps: at most {cap:,} steps per run here (METALAB_MAX_STEPS). Received: steps={config.steps}")

    def _run_owner(self, run_id: str) -> str | None:
        try:
            return self.store.get_run(run_id).owner
        except RunNotFoundError:
            return None

    def create_run(self, config: RunConfig, name: str = "") -> str:
        """Records a new queued run owned by :attr:`actor` and returns its id."""
        self.policy.require_actor(self.actor, "create a run")
        self.check_config(config)
        return self.store.create_run(config.model_dump(), name=name, owner=self.actor.id)

    def train(self, run_id: str, progress: Any = None) -> str:
        """Trains (or resumes) a run in this process, with a worker's process set-up; returns its final status."""
        from metalab.core.worker import run_training

        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: train")
        return run_training(self.store, run.id, self.registry, settings=self.settings, progress=progress)

    def _worker_limits(self) -> dict[str, int]:
        """The ``limits`` of every worker request: niced, and with an address-space limit if one is set."""
        return {"nice": int(self.settings.worker_nice), "memory_mb": int(self.settings.worker_memory_mb or 0)}

    def _request(self, job: str, **fields: Any) -> dict[str, Any]:
        """A worker request for ``job`` (:mod:`metalab.core.worker`), with this process's limits."""
        if job in ("train", "predict"):
            fields.update(store=str(self.store.path), runs_dir=str(self.store.runs_dir))
        return {"job": job, **fields, "limits": self._worker_limits()}

    def launch(self, run_id: str) -> subprocess.Popen:
        """Starts a worker process that trains (or resumes) the run and reports to the store.

        The worker runs niced and, when ``worker_memory_mb`` is set, under that address-space limit; its pid is
        recorded at once, so a worker that dies before training frees its slot (the store marks the run failed).
        Its output and its reply go to the run's ``worker.log``.
        """
        log_dir = self.store.run_dir(run_id)
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / "worker.log", "ab")  # noqa: SIM115 - handed to the child process
        try:
            proc = subprocess.Popen(
                worker_command(self._request("train", run=run_id)),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._worker_env(),
                start_new_session=True,
            )
        finally:
            log.close()
        self.store.update_run(run_id, pid=proc.pid, host=os.uname().nodename)
        return proc

    # -- devices and the pre-launch probe (worker processes: this process never imports TensorFlow) -------

    def _worker_env(self) -> dict[str, str]:
        # The caps travel with the mode: a worker reads the same settings (wall time, pixels) as this process.
        return dict(os.environ, METALAB_HOME=str(self.settings.home), METALAB_DATA_DIR=str(self.settings.data_dir),
                    METALAB_CACHE_DIR=str(self.settings.cache_dir), METALAB_MODE=self.settings.mode,
                    METALAB_MAX_RUN_SECONDS=str(self.settings.max_run_seconds),
                    METALAB_MAX_IMAGE_PIXELS=str(self.settings.max_image_pixels))

    def _run_worker(self, request: dict[str, Any], timeout: float, error: type[Exception],
                    what: str) -> dict[str, Any]:
        """Runs ``request`` in a worker process and returns its reply (``ok`` true or false).

        Raises:
            error: The worker took longer than ``timeout`` (it is stopped), or ended without a reply; the
                message starts with ``what`` (e.g. ``"The probe"``).
        """
        try:
            proc = subprocess.run(worker_command(request), capture_output=True, text=True, timeout=timeout,
                                  env=self._worker_env(), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise error(f"{what} took longer than {timeout:g} s and was stopped. "
                        f"Received: job={request['job']!r}, timeout={timeout:g}") from None
        reply = read_reply(proc.stdout)
        if reply is None:
            # Killed by a signal (e.g. the kernel's out-of-memory killer) or crashed inside TensorFlow.
            reason = (f"was killed by signal {-proc.returncode}" if proc.returncode < 0
                      else f"exited with code {proc.returncode}")
            raise error(f"{what} {reason} without an answer; its output ends with:\n"
                        f"{(proc.stderr or proc.stdout)[-3000:]}")
        return reply

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

    def active_runs(self) -> list[RunRecord]:
        """Runs that are queued or running now (reaps finished worker processes first)."""
        self._reap()
        # Reading a run reconciles it with its worker: one found dead is no longer active.
        return [run for status in ACTIVE for run in self.store.list_runs(status=status) if run.status in ACTIVE]

    def submit(self, config: RunConfig, name: str = "") -> str:
        """Records a new run and starts its worker process, within ``settings.max_workers`` runs at once.

        Raises:
            LaunchLimitError: ``max_workers`` runs and probes are already running, or the caller has
                ``max_runs_per_owner`` runs queued or running.
            AccessError, CapError: See :meth:`check_config`.
        """
        self.policy.require_actor(self.actor, "launch a run")
        self.check_config(config)
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
        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: resume")
        if run.status not in RESUMABLE:
            raise ValueError(
                f"Only a {', '.join(RESUMABLE)} run can be resumed; run {run.id} is {run.status}. "
                f"Received: run={run_id!r}"
            )
        self._check_capacity()
        self.store.update_run(run.id, status="queued", cancel_requested=0, finished=None, pid=None)
        self._start(run.id)

    def _busy_workers(self, active: list[RunRecord]) -> int:
        """Workers holding a slot: the active runs, and the processes this object started that have not exited
        yet (a worker records 'completed' before its process is gone)."""
        with self._lock:
            alive = {rid for rid, proc in self._workers.items() if proc.poll() is None}
            probes = sum(self._probes.values())
        return len({r.id for r in active} | alive) + probes

    def _check_capacity(self) -> None:
        active = self.active_runs()
        busy = self._busy_workers(active)
        if busy >= self.settings.max_workers:
            raise LaunchLimitError(
                f"{busy} workers (runs queued, running or still exiting, and estimates) are busy; the limit is "
                f"METALAB_MAX_WORKERS={self.settings.max_workers}. Wait for one to finish or cancel one. "
                f"Received: workers={busy}"
            )
        mine = [r for r in active if r.owner == self.actor.id]
        cap = self.settings.max_runs_per_owner
        if len(mine) >= cap:
            raise LaunchLimitError(
                f"You have {len(mine)} runs queued or running; at most {cap} at once (METALAB_MAX_RUNS_PER_OWNER). "
                f"Wait for one to finish or cancel one. Received: active={[r.id for r in mine]}"
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
            if run.status == "queued" or (run.status == "failed" and not run.traceback):
                self.store.update_run(
                    rid, status="failed", error=f"The worker process exited with code {proc.returncode} before "
                    "training started.", traceback=self.worker_log(rid),
                )

    def untracked_workers(self) -> list[RunRecord]:
        """Runs whose worker is alive on this machine but was not started by this process (an earlier
        dashboard's, or the CLI's): they still obey cancel requests through the store."""
        with self._lock:
            tracked = set(self._workers)
        return [r for r in self.active_runs() if r.status == "running" and r.id not in tracked]

    def worker_log(self, run_id: str, max_chars: int = 20_000) -> str:
        """The tail of the run's worker log (its stdout and stderr), or an empty string."""
        path = self.store.run_dir(run_id) / "worker.log"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return self.redact(text[-max_chars:])

    def resume(self, run_id: str, progress: Any = None) -> str:
        """Continues an interrupted, cancelled or failed run from its last checkpoint."""
        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: resume")
        if run.status in ("running", "queued"):
            raise ValueError(f"Run {run.id} is {run.status}; only a finished run can be resumed. Received: run={run_id!r}")
        return self.train(run.id, progress=progress)

    def cancel(self, run_id: str) -> None:
        """Asks the run's worker to stop (its owner or an admin only)."""
        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: cancel")
        self.store.request_cancel(run.id)

    def runs(self, **filters: Any) -> list[RunRecord]:
        """Runs the caller may see, newest first (``store.list_runs`` filters)."""
        return [r for r in self.store.list_runs(**filters) if self.policy.can_see(self.actor, r.owner)]

    def run(self, run_id: str) -> RunRecord:
        """One run the caller may see; :class:`RunNotFoundError` otherwise (another visitor's run is not there)."""
        from metalab.core.store import AmbiguousRunError

        try:
            run = self.store.get_run(run_id)
        except AmbiguousRunError:
            if self.settings.mode != "demo" or self.actor.admin:
                raise
            # Listing the matches would name other visitors' runs.
            raise RunNotFoundError(f"Run id prefix {run_id!r} is ambiguous; give more of the id. "
                                   f"Received: run={run_id!r}") from None
        if not self.policy.can_see(self.actor, run.owner):
            raise RunNotFoundError(f"No run with id {run_id!r}. Received: run={run_id!r}")
        return run

    def can_modify(self, run: RunRecord) -> bool:
        """Whether the caller may cancel, delete, resume or rename ``run`` (pages hide the buttons otherwise)."""
        return self.policy.can_modify(self.actor, run.owner)

    def metrics(self, run_id: str) -> dict[str, list[tuple[int, float]]]:
        return self.store.metrics(self.run(run_id).id)

    def evaluations(self, run_id: str) -> list[dict[str, Any]]:
        return self.store.evaluations(self.run(run_id).id)

    def evaluate(self, run_id: str, episodes: int | None = None, split: str = "test") -> dict[str, Any]:
        """Meta-test score of a run: mean with 95% CI over fixed episodes, plus the adaptation curve."""
        from metalab.core.engine.evaluation import evaluate_run

        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: evaluate")
        return evaluate_run(self.store, run.id, self.registry, episodes=episodes, split=split, settings=self.settings)

    def delete_run(self, run_id: str, *, force: bool = False, wait_s: float = 30.0) -> RunRecord:
        """Deletes a run and its folder (its owner or an admin only).

        A running run (or a queued one whose worker was started) is refused with
        :class:`~metalab.core.store.RunActiveError` unless ``force``: then it is cancelled and its worker given
        up to ``wait_s`` seconds to stop first. Returns the run as it was when deleted.
        """
        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: delete")
        return self.store.delete_run(run.id, force=force, wait_s=wait_s)

    def rename_run(self, run_id: str, name: str) -> None:
        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: rename")
        self.store.rename_run(run.id, name)

    def run_dir(self, run_id: str) -> Path:
        return self.store.run_dir(run_id)

    # -- reports ----------------------------------------------------------------------------------------

    def report_data(self, run_id: str) -> dict[str, Any] | None:
        """The figure data the worker stored at the end of training (``report_data.json``), if any."""
        for artifact in self.store.artifacts(self.run(run_id).id):
            if artifact["name"] == "report_data":
                try:
                    return json.loads(Path(artifact["path"]).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    return None
        return None

    def checkpoint_warnings(self, run_id: str) -> list[dict[str, Any]]:
        """Each time the run went back to an older checkpoint because the newest was unusable, oldest first:
        ``{"time", "action" ("resume" or "evaluate"), "restored" (file name), "step", "warnings": [text]}``."""
        for artifact in self.store.artifacts(self.run(run_id).id):
            if artifact["name"] == "checkpoint_warning":
                try:
                    events = json.loads(Path(artifact["path"]).read_text(encoding="utf-8")).get("events", [])
                except (OSError, ValueError, AttributeError):
                    return []
                return [e for e in events if isinstance(e, dict)]
        return []

    def run_report(self, run_id: str) -> dict[str, Any]:
        """Everything a report shows, as plain data: ``{"run", "metrics", "evaluations", "report_data", "panels",
        "published", "batch_norm"}`` (the last two from :meth:`published_results` and
        :meth:`batch_norm_summary`)."""
        run = self.run(run_id)
        data = self.report_data(run.id)
        record = run.to_dict()
        if not self.actor.on_machine:
            record["error"] = self.redact(record.get("error") or "") or None
            record["traceback"] = self.redact(record.get("traceback") or "") or None
        metrics = self.store.metrics(run.id)
        return {
            "run": record,
            "metrics": metrics,
            "evaluations": self.store.evaluations(run.id),
            "report_data": data,
            "panels": self._panels(run.to_dict(), data, metrics),
            "published": self.published_results(run.config),
            "batch_norm": self.batch_norm_summary(run.config),
        }

    def _filled(self, config: dict[str, Any]) -> dict[str, Any]:
        """A run config whose plugin parameters have every default filled in (from the loaded specs), so that a
        run stored before a parameter existed compares as the plugin's default."""
        filled = dict(config)
        for section, table in (("dataset", self.registry.datasets), ("algorithm", self.registry.algorithms)):
            spec = table.get(config.get(section) or "")
            if spec is None:
                continue
            try:
                defaults = spec.params().model_dump(mode="json")
            except Exception:  # noqa: BLE001 - a plugin's model must never break the report
                defaults = {}
            filled[f"{section}_params"] = {**defaults, **(config.get(f"{section}_params") or {})}
        return filled

    def published_results(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        """The published scores whose protocol matches a run config's, from every loaded dataset's and algorithm's
        ``published_results`` (see :func:`metalab.core.reports.figures.published_results` for the rows)."""
        from metalab.core.reports.figures import published_results

        records = [dataclasses.replace(r, dataset=r.dataset or spec.id)
                   for spec in self.registry.datasets.values() for r in spec.published_results]
        records += [r for spec in self.registry.algorithms.values() for r in spec.published_results]
        return published_results(self._filled(config), records)

    def batch_norm_summary(self, config: dict[str, Any]) -> str | None:
        """How a run config's batch norm works at meta-test time, from its algorithm's ``batch_norm_mode`` and its
        backbone's ``has_batch_norm`` (``None`` when neither says; see
        :func:`metalab.core.reports.figures.batch_norm_summary`)."""
        from metalab.core.reports.figures import batch_norm_summary

        reg = self.registry
        dataset = reg.datasets.get(config.get("dataset") or "")
        backbone_id = config.get("backbone") or (dataset.default_backbone if dataset is not None else None)
        return batch_norm_summary(config, reg.algorithms.get(config.get("algorithm") or ""),
                                  reg.backbones.get(backbone_id or ""))

    def report_panels(self, run_id: str) -> list[dict[str, Any]]:
        """The panels plugins add to a run's report (the ``metalab_report_panels`` hook), in plugin load order.

        Each plugin's hook is called on its own: one that raises or returns something other than a list of
        ``ReportPanel`` gives a panel with ``error`` set in its place, and the others are unaffected.

        Returns:
            Dicts ``{"title", "figure" (Plotly JSON or None), "markdown" (str or None), "plugin", "error"}``.
        """
        run = self.run(run_id)
        return self._panels(run.to_dict(), self.report_data(run.id))

    def _panel_plugins(self, run: dict[str, Any]) -> set[str]:
        """The plugins whose report hook ``run`` skips. A plugin targeting plugin API 1.4 or later that registered
        algorithms, datasets or backbones is called only for runs using one of them; one that registered none, or
        targets an earlier API, for every run."""
        reg = self.registry
        owned: dict[str, set[str]] = {}
        for kind, table in (("algorithm", reg.algorithms), ("dataset", reg.datasets), ("backbone", reg.backbones)):
            for spec_id in table:
                owned.setdefault(reg.plugin_of(spec_id, kind).name, set()).add(spec_id)
        used = {run.get(name) for name in ("algorithm", "dataset", "backbone")}
        versions = {record.name: record.api_version for record in reg.plugins if record.status == "loaded"}
        return {name for name, ids in owned.items() if _api_at_least(versions.get(name), (1, 4)) and not ids & used}

    def _panels(self, run: dict[str, Any], data: dict[str, Any] | None,
                metrics: dict[str, list[tuple[int, float]]] | None = None) -> list[dict[str, Any]]:
        from metalab.core.contract.specs import ReportPanel

        arguments = {"run": run, "report_data": data or {}, "artifacts_dir": str(self.store.run_dir(run["id"])),
                     "metrics": metrics if metrics is not None else self.store.metrics(run["id"])}
        skipped = self._panel_plugins(run)
        panels: list[dict[str, Any]] = []
        for impl in self.registry.pm.hook.metalab_report_panels.get_hookimpls():
            if impl.plugin_name in skipped:
                continue
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
        from metalab.core.reports.figures import report_html

        return report_html(self.run_report(run_id))

    # -- datasets: summaries and uploaded image folders (numpy and Pillow only: no TensorFlow here) ------

    def check_dataset_params(self, dataset_id: str, params: dict[str, Any] | None) -> None:
        """Raises :class:`AccessError` when the caller may not load ``dataset_id`` with ``params`` (pages call it
        before using a cached summary, which another caller may have made)."""
        spec = self.registry.dataset(dataset_id)
        self.policy.check_params(self.actor, "dataset", spec, dict(params or {}), run_owner=self._run_owner)

    def dataset_summary(self, dataset_id: str, params: dict[str, Any] | None = None, *,
                        episode: tuple[int, int, int] | None = None, sample_classes: int = 5,
                        samples_per_class: int = 3, seed: int = 0) -> dict[str, Any]:
        """Loads a dataset in this process and summarises it: counts per split, sample images, its info.

        Dataset factories read files with numpy and Pillow, so this never imports TensorFlow; a large dataset
        does cost this process its memory while it is summarised.

        Args:
            dataset_id: A loaded dataset id.
            params: The dataset's parameters (validated here; missing ones take their defaults).
            episode: ``(ways, shots, queries)`` to check the dataset against (see ``problems`` below).
            sample_classes, samples_per_class, seed: As :func:`~metalab.core.data.info.summarize_dataset`.

        Returns:
            :func:`~metalab.core.data.info.summarize_dataset`'s dict plus ``"id"``, ``"params"`` (every
            parameter, validated) and ``"problems"`` (every reason the dataset cannot serve ``episode``; empty
            when it can or when no ``episode`` is given).

        Raises:
            UnknownPluginError: No loaded plugin provides ``dataset_id``.
            pydantic.ValidationError: A parameter is invalid (a ``ValueError``).
            FileNotFoundError: The dataset's files are missing (the plugin's message names them and where to
                put them).
            ValueError: The files are there but unusable (the plugin says why).
        """
        from metalab.core.data.info import episode_problems, summarize_dataset

        from metalab.core.contract.manager import check_factory_result

        spec = self.registry.dataset(dataset_id)
        self.policy.check_params(self.actor, "dataset", spec, dict(params or {}), run_owner=self._run_owner)
        validated = spec.params(**(params or {}))
        dataset = check_factory_result(spec, spec.factory(validated, self.settings.data_context()),
                                       registry=self.registry)
        summary = summarize_dataset(dataset, sample_classes=sample_classes, samples_per_class=samples_per_class,
                                    seed=seed)
        problems: list[str] = []
        if episode is not None and summary["kind"] == "classification":
            problems = episode_problems(dataset, *(int(v) for v in episode))
        summary.update({"id": spec.id, "params": validated.model_dump(mode="json"), "problems": problems})
        return summary

    @property
    def uploads_dir(self) -> Path:
        """Where uploaded image folders are extracted: ``METALAB_DATA_DIR/uploads/``."""
        return Path(self.settings.uploads_dir)

    def upload_caps(self) -> dict[str, int]:
        """What the caller may still upload: ``{"max_bytes", "uploads_left", "unpacked_bytes_left", "max_files"}``."""
        mine = self.store.upload_records(owner=self.actor.id)
        used = sum(int(r["unpacked_bytes"]) for r in mine)
        return {"max_bytes": int(self.settings.max_upload_mb) << 20,
                "uploads_left": max(int(self.settings.max_uploads_per_owner) - len(mine), 0),
                "unpacked_bytes_left": max((int(self.settings.max_unpacked_mb_per_owner) << 20) - used, 0),
                "max_files": int(self.settings.max_archive_files)}

    def upload_dataset(self, archive: bytes | Any, name: str, *, max_bytes: int | None = None) -> dict[str, Any]:
        """Extracts an uploaded zip of class sub-folders into ``METALAB_DATA_DIR/uploads/<name>/``, safely.

        Every member is checked before anything is written (see
        :func:`~metalab.core.data.info.safe_extract_zip`): absolute or ``..`` paths, links and encrypted
        members are refused, and so are archives over ``max_bytes``, unpacking to more than
        :func:`upload_limits` allow, or expanding like a zip bomb. A refused archive leaves nothing behind.

        Args:
            archive: The zip's bytes, or a binary file object (e.g. Streamlit's ``UploadedFile``).
            name: A name for the folder (the upload's file name will do): reduced to letters, digits, ``-`` and
                ``_``; a suffix ``-2``, ``-3``, ... is added when the name is taken.
            max_bytes: The largest archive accepted; ``None`` for :data:`DEFAULT_MAX_UPLOAD_BYTES`.

        Returns:
            :meth:`upload_info` of the new folder.

        Raises:
            UnsafeArchiveError: Not a zip, over a cap, or an unsafe member (a ``ValueError`` naming it).
        """
        import io

        from metalab.core.data.info import safe_extract_zip

        from metalab.core.data.info import UnsafeArchiveError, ZipLimits

        self.policy.require_actor(self.actor, "upload")
        caps = self.upload_caps()
        max_bytes = caps["max_bytes"] if max_bytes is None else min(int(max_bytes), caps["max_bytes"])
        if caps["uploads_left"] <= 0:
            raise CapError(f"You have {self.settings.max_uploads_per_owner} uploaded folders, the most allowed here "
                           "(METALAB_MAX_UPLOADS_PER_OWNER); delete one first. "
                           f"Received: uploads={self.settings.max_uploads_per_owner}")
        if isinstance(archive, (bytes, bytearray, memoryview)):
            archive = io.BytesIO(bytes(archive))
        base = _upload_slug(name)
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        limits = upload_limits(max_bytes)
        limits = ZipLimits(max_archive_bytes=limits.max_archive_bytes,
                           max_total_bytes=min(limits.max_total_bytes, caps["unpacked_bytes_left"]),
                           max_file_bytes=limits.max_file_bytes, max_files=caps["max_files"], max_ratio=limits.max_ratio)
        with self._lock:  # two uploads of the same name in two sessions must not pick the same folder
            folder, n = base, 1
            while (self.uploads_dir / folder).exists() or self.store.upload_record(folder) is not None:
                n += 1
                folder = f"{base}-{n}"
            (self.uploads_dir / folder).mkdir(parents=True)
        try:
            written = safe_extract_zip(archive, self.uploads_dir / folder, limits)
            self._check_image_headers(written, self.uploads_dir / folder)
        except BaseException as exc:
            import shutil

            shutil.rmtree(self.uploads_dir / folder, ignore_errors=True)
            if isinstance(exc, UnsafeArchiveError):
                raise UnsafeArchiveError(self.redact(str(exc))) from None
            raise
        with contextlib.suppress(AttributeError, OSError, ValueError):
            archive.seek(0, os.SEEK_END)
        archive_bytes = int(getattr(archive, "tell", lambda: 0)() or 0)
        self.store.add_upload(folder, self.actor.id, archive_bytes=archive_bytes,
                              unpacked_bytes=sum(p.stat().st_size for p in written if p.is_file()), files=len(written))
        return self.upload_info(folder)

    def _check_image_headers(self, files: list[Path], root: Path) -> None:
        """Refuses an upload holding an image over ``max_image_pixels`` (read from its header: nothing is decoded)."""
        from metalab.core.data.info import IMAGE_EXTENSIONS, UnreadableImageError, UnsafeArchiveError, check_image_header

        cap = int(self.settings.max_image_pixels)
        for path in files:
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                name = path.relative_to(root).as_posix()
                try:
                    check_image_header(path, name, cap)
                except UnreadableImageError as exc:
                    if "more than the" in str(exc):
                        raise UnsafeArchiveError(f"The zip holds an image that is too large: {exc}") from None

    def uploads(self) -> list[dict[str, Any]]:
        """Every uploaded image folder, newest first: :meth:`upload_info` of each."""
        if not self.uploads_dir.is_dir():
            return []
        folders = [p for p in self.uploads_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        folders = [p for p in folders if self.policy.can_see(self.actor, self._upload_owner(p.name))]
        folders.sort(key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
        return [self.upload_info(p.name) for p in folders]

    def _upload_owner(self, name: str) -> str:
        # Folders made before owners were recorded belong to this machine's user.
        return (self.store.upload_record(name) or {}).get("owner") or "local"

    def upload_info(self, name: str) -> dict[str, Any]:
        """Class folders and image counts of an uploaded image folder (read from the file names, not decoded).

        Args:
            name: The folder's name under :attr:`uploads_dir`.

        Returns:
            ``{"name", "path" (the folder), "root" (the folder holding the class folders: a single wrapping
            folder such as ``photos/`` is looked through, as the image-folder dataset does), "classes": {class:
            image files}, "images" (their sum), "other_files": [paths of files that are not images or not in a
            class folder]}``.

        Raises:
            ValueError: ``name`` is not a plain folder name.
            FileNotFoundError: No such upload.
        """
        from pathlib import PurePosixPath

        from metalab.core.data.info import IMAGE_EXTENSIONS, is_hidden

        if not name or name != Path(name).name or name in (".", ".."):
            raise ValueError(f"An upload is named by its folder name alone. Received: name={name!r}")
        path = self.uploads_dir / name
        if not path.is_dir() or path.is_symlink() or not self.policy.can_see(self.actor, self._upload_owner(name)):
            raise FileNotFoundError(f"No uploaded image folder {name!r}. Received: name={name!r}")
        files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        files = [f for f in files if not is_hidden(f)]
        parts = [PurePosixPath(f).parts for f in files]
        depth = 0
        # As the image-folder loader: leading folders shared by every file only wrap the class folders.
        while parts and all(len(p) >= depth + 3 for p in parts) and len({p[depth] for p in parts}) == 1:
            depth += 1
        classes: dict[str, int] = {}
        other: list[str] = []
        for relative, p in zip(files, parts):
            rest = p[depth:]
            if len(rest) < 2 or PurePosixPath(relative).suffix.lower() not in IMAGE_EXTENSIONS:
                other.append(relative)
                continue
            classes[rest[0]] = classes.get(rest[0], 0) + 1
        root = path.joinpath(*parts[0][:depth]) if parts and depth else path
        return {"name": name, "path": str(path), "root": str(root), "classes": dict(sorted(classes.items())),
                "images": sum(classes.values()), "other_files": other}

    def delete_upload(self, name: str) -> None:
        """Deletes an uploaded image folder (the dataset's cached arrays are left to the cache)."""
        import shutil

        info = self.upload_info(name)
        self.policy.require_modify(self.actor, self._upload_owner(name), f"upload {name}: delete")
        shutil.rmtree(info["path"])
        self.store.delete_upload_record(name)

    # -- prediction on new images (a worker process: this process never imports TensorFlow) ----------------

    def stage_prediction(self, support_zip: bytes | Any | None = None,
                         queries: list[tuple[str, bytes]] | None = None, *,
                         max_bytes: int | None = None) -> dict[str, Path | None]:
        """Writes uploaded support and query images to a fresh folder for :meth:`predict`.

        The folder is ``METALAB_HOME/predictions/<time>-<random>/`` with ``support/`` (the zip, extracted
        safely) and ``query/`` (the query files); folders older than a day are deleted on each call.

        Args:
            support_zip: A zip of class sub-folders (bytes or a binary file object), or ``None``.
            queries: ``(file name, bytes)`` of each query image, or ``None``.
            max_bytes: The largest support zip, and the largest total of the query files (``None``: the
                default of :meth:`upload_dataset`).

        Returns:
            ``{"support": folder or None, "query": folder or None}``.

        Raises:
            UnsafeArchiveError: The support zip is refused (see :meth:`upload_dataset`).
            ValueError: The query files are over ``max_bytes`` together.
        """
        import io
        import shutil
        import tempfile
        import time

        from metalab.core.data.info import UnsafeArchiveError, ZipLimits, check_image_header, safe_extract_zip

        cap = int(self.settings.max_upload_mb) << 20
        max_bytes = cap if max_bytes is None else min(int(max_bytes), cap)
        base = Path(self.settings.predictions_dir)
        base.mkdir(parents=True, exist_ok=True)
        for old in base.iterdir():
            with contextlib.suppress(OSError):
                if old.is_dir() and time.time() - old.stat().st_mtime > 86_400:
                    shutil.rmtree(old, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=base))
        out: dict[str, Path | None] = {"support": None, "query": None}
        try:
            if support_zip is not None:
                if isinstance(support_zip, (bytes, bytearray, memoryview)):
                    support_zip = io.BytesIO(bytes(support_zip))
                out["support"] = folder / "support"
                limits = upload_limits(max_bytes)
                limits = ZipLimits(max_archive_bytes=limits.max_archive_bytes, max_total_bytes=limits.max_total_bytes,
                                   max_file_bytes=limits.max_file_bytes, max_files=int(self.settings.max_archive_files),
                                   max_ratio=limits.max_ratio)
                try:
                    safe_extract_zip(support_zip, out["support"], limits)
                except UnsafeArchiveError as exc:
                    raise UnsafeArchiveError(self.redact(str(exc))) from None
            if queries:
                total = sum(len(data) for _, data in queries)
                if total > max_bytes:
                    raise ValueError(f"The query images are {total} bytes together; at most {max_bytes} are "
                                     f"allowed. Received: total_bytes={total}")
                out["query"] = folder / "query"
                out["query"].mkdir()
                used: set[str] = set()
                for i, (name, data) in enumerate(queries):
                    # Keep the file's own name (it labels the result) but never its folders.
                    clean = Path(str(name).replace("\\", "/")).name.lstrip(".") or f"query-{i}"
                    if clean in used:
                        clean = f"{i}-{clean}"
                    used.add(clean)
                    # Refused from the header, before anything decodes it (here, in the worker or on the page).
                    check_image_header(bytes(data), clean, int(self.settings.max_image_pixels))
                    (out["query"] / clean).write_bytes(bytes(data))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return out

    def predict(self, run_id: str, support_dir: str | os.PathLike, query_dir: str | os.PathLike, *,
                invert: bool | None = None, timeout: float = 300.0) -> list[dict[str, Any]]:
        """Adapts a finished run to a support set and classifies query images, in a worker process.

        Runs the worker's ``predict`` job (:mod:`metalab.core.worker`, which calls
        :func:`metalab.core.engine.predict.predict`), so TensorFlow is imported there, never here.

        Args:
            run_id: The run (a unique prefix of its id works).
            support_dir: A folder with one sub-folder per class, a few images each.
            query_dir: A folder of images (any depth), or one image file.
            invert: Override the dataset's inversion of grey levels; ``None`` follows the run's dataset.
            timeout: Seconds to wait for the worker (TensorFlow import, model build, adaptation).

        Returns:
            One dict per query image: ``{"file", "path", "predicted", "probabilities": {class: p}}``.

        Raises:
            PredictionError: The worker refused the inputs or the run (its message, e.g. a support set with
                the wrong number of classes), failed, or took longer than ``timeout``.
        """
        from metalab.core.engine.predict import PredictionError

        run = self.run(run_id)
        if not self.actor.on_machine:
            staged = Path(self.settings.predictions_dir).resolve()
            for field, folder in (("support", support_dir), ("query", query_dir)):
                real = Path(folder).resolve()
                if staged not in real.parents:
                    self.policy.resolve_data_path(self.actor, str(folder), field)
        request = self._request("predict", run=run.id, support=str(support_dir), query=str(query_dir), invert=invert)
        try:
            reply = self._run_worker(request, timeout, PredictionError, "Prediction")
        except PredictionError as exc:
            raise PredictionError(self.redact(str(exc))) from None
        if reply["ok"]:
            return list(reply["result"])
        error = reply.get("error") or {}
        message = str(error.get("message"))
        if error.get("traceback"):
            # A crash, not a refusal of the run or the images: say what failed, without the traceback.
            message = f"Prediction failed: {error.get('type')}: {message}"
        raise PredictionError(self.redact(message))


#: The largest upload the dashboard accepts by default (Streamlit's own ``server.maxUploadSize`` default).
DEFAULT_MAX_UPLOAD_BYTES = 200 << 20


def _api_at_least(version: str | None, wanted: tuple[int, int]) -> bool:
    """Whether a plugin's ``METALAB_PLUGIN_API`` (``"MAJOR.MINOR"``) is ``wanted`` or later."""
    major, _, minor = (version or "").partition(".")
    return major.isdigit() and minor.isdigit() and (int(major), int(minor)) >= wanted


def upload_limits(max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> Any:
    """The zip caps of an upload of at most ``max_bytes``: it may unpack to 10 times that (4 GiB at most).

    Images barely compress, so a larger expansion means a zip bomb; the per-member and whole-archive ratio
    caps of :class:`~metalab.core.data.info.ZipLimits` stay at their defaults.
    """
    from metalab.core.data.info import ZipLimits

    return ZipLimits(max_archive_bytes=int(max_bytes), max_total_bytes=min(10 * int(max_bytes), 4 << 30),
                     max_file_bytes=min(int(max_bytes), 256 << 20))


def _upload_slug(name: str) -> str:
    """A folder name from an upload's file name: ``"My photos (2).zip"`` gives ``"My-photos-2"``."""
    import re

    stem = Path(str(name).replace("\\", "/")).name
    for suffix in (".zip", ".ZIP"):
        stem = stem.removesuffix(suffix)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_")[:64]
    return slug or "upload"

"""The Services section that trains runs: in this process, or in worker processes it starts, counts and reaps.

Worker processes also answer the one-shot jobs of the other sections (devices, estimates, predictions); the
requests they are sent, and how their replies are read, live here.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from metalab.core.engine.config import RunConfig
from metalab.core.services.access import CapError
from metalab.core.store import RunRecord
from metalab.core.worker import read_reply, worker_command

#: Statuses of a run whose worker is (or is about to be) busy.
ACTIVE = ("queued", "running")
#: Statuses from which a run can be resumed (its checkpoint, if any, is kept).
RESUMABLE = ("cancelled", "interrupted", "failed")


class LaunchLimitError(CapError):
    """Raised when starting a worker would exceed ``settings.max_workers`` runs and probes at once, or the
    caller's ``max_runs_per_owner``."""


class LaunchMixin:
    """The training methods of :class:`~metalab.core.services.Services`, and its worker processes within the caps."""

    def train(self, run_id: str, progress: Any = None, *, hosts: Any = None) -> str:
        """Trains (or resumes) a run in this process, with a worker's process set-up; returns its final status.

        ``hosts`` (:func:`metalab.core.engine.parallel.parse_hosts`, index 0) makes this process the chief of a
        run across hosts.
        """
        from metalab.core.worker import run_training

        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: train")
        return run_training(self.store, run.id, self.registry, settings=self.settings, progress=progress,
                            hosts=hosts)

    def follow(self, config: RunConfig, hosts: Any, progress: Any = None) -> int:
        """Trains in this process as one of the processes after the chief of a run across hosts; records nothing.

        Returns the steps trained. Raises ``ConfigError`` for hosts or a config the run refuses.
        """
        from metalab.core.worker import run_follower

        self.policy.require_actor(self.actor, "train a run")
        return run_follower(config, self.registry, settings=self.settings, hosts=hosts, progress=progress)

    def resume(self, run_id: str, progress: Any = None) -> str:
        """Continues an interrupted, cancelled or failed run from its last checkpoint."""
        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: resume")
        if run.status in ("running", "queued"):
            raise ValueError(f"Run {run.id} is {run.status}; only a finished run can be resumed. Received: run={run_id!r}")
        return self.train(run.id, progress=progress)

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

    def _start(self, run_id: str) -> None:
        proc = self.launch(run_id)
        with self._lock:
            self._workers[run_id] = proc

    def active_runs(self) -> list[RunRecord]:
        """Runs that are queued or running now (reaps finished worker processes first)."""
        self._reap()
        # Reading a run reconciles it with its worker: one found dead is no longer active.
        return [run for status in ACTIVE for run in self.store.list_runs(status=status) if run.status in ACTIVE]

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

    def _worker_limits(self) -> dict[str, int]:
        """The ``limits`` of every worker request: niced, and with an address-space limit if one is set."""
        return {"nice": int(self.settings.worker_nice), "memory_mb": int(self.settings.worker_memory_mb or 0)}

    def _request(self, job: str, **fields: Any) -> dict[str, Any]:
        """A worker request for ``job`` (:mod:`metalab.core.worker`), with this process's limits."""
        if job in ("train", "predict", "adapt"):
            fields.update(store=str(self.store.path), runs_dir=str(self.store.runs_dir))
        return {"job": job, **fields, "limits": self._worker_limits()}

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

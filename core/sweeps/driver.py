"""The sweep driver: runs a sweep's trials with Ray Tune (its search algorithm, ASHA, its storage) and writes each
trial's run, metrics, checkpoints and outcome into the run store from what the trial reports through Ray."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ray import tune

from metalab.core.sweeps.book import SweepBook, record_sweep, sweep_tag
from metalab.core.sweeps.space import SweepError, SweepSpec, describe_point, plan
from metalab.core.sweeps.trial import train_trial

EventFn = Callable[[str], None]

#: Files of a run folder sent to a resumed trial so it continues from its checkpoint.
_RESUME_FILES = ("checkpoint.npz", "checkpoint.prev.npz")


def start_sweep(services: Any, spec: SweepSpec, *, address: str | None = None, num_cpus: int | None = None,
                storage: str | None = None, on_event: EventFn | None = None) -> SweepBook:
    """Validates the sweep, records it, and runs its trials (see :func:`run_trials`).

    Args:
        address: An existing Ray cluster (``auto``, ``ray://host:10001``); ``None`` starts a local one (``num_cpus``
            CPUs; default all of the machine's).
        storage: Where Ray Tune keeps trial checkpoints: a path or URI every node of the cluster reaches (default
            ``METALAB_HOME/sweeps/<id>/``, enough for one machine).
        on_event: Called with a line of text as trials start and end.

    Raises:
        SweepError: The space, a grid point or the storage is invalid; nothing is recorded and Ray is not started.
    """
    book = record_sweep(services, spec, storage=storage, address=address)
    return run_trials(services, book, address=address, num_cpus=num_cpus, on_event=on_event)


def resume_sweep(services: Any, ref: str, *, trials: int | None = None, address: str | None = None,
                 num_cpus: int | None = None, on_event: EventFn | None = None) -> SweepBook:
    """Runs the trials of sweep ``ref`` that never ended (a trial whose run has a checkpoint continues from it);
    finished trials are never run again. ``trials`` raises the budget.

    Raises:
        SweepError: No such sweep, or ``trials`` below the trials already started.
    """
    book = SweepBook.load(services.settings.home, ref)
    if book.state == "running":
        raise SweepError(f"Sweep {book.id} is running (its driver, process {book.driver.get('pid')}, is alive); "
                         f"resume it once it has stopped. Received: sweep={ref!r}")
    if trials is not None:
        started = max(book.trials, default=-1) + 1
        if trials < started:
            raise SweepError(f"trials: sweep {book.id} has started {started} trials already; the budget cannot go "
                             f"below that. Received: trials={trials}")
        book.spec.trials = trials
    _, book.max_steps = plan(services, book.spec)
    return run_trials(services, book, address=address or book.address, num_cpus=num_cpus, on_event=on_event)


def run_trials(services: Any, book: SweepBook, *, address: str | None = None, num_cpus: int | None = None,
               on_event: EventFn | None = None) -> SweepBook:
    """Runs the sweep's pending trials as one Ray Tune experiment (``<storage>/attempt-N``) and records them.

    Joins the Ray cluster at ``address`` (or the one this process already joined), else starts a local one and
    stops it at the end.
    """
    import ray
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    spec = book.spec
    slots = book.pending_slots()
    writer = StoreWriter(services, book, on_event)
    if not slots:
        book.status = "completed"
        book.save()
        return book
    trial_spec = writer.trial_spec(slots)
    started_ray = False
    # Every checkpoint forces a snapshot of the experiment's state (num_to_keep): expected here, not a warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SweepError(f"Ray could not {'join the cluster at ' + address if address else 'start'}: {exc}. "
                             f"Received: address={address!r}") from None
        started_ray = True
    client = ray.util.client.ray.is_connected()
    book.attempts += 1
    book.status = "running"
    book.driver = {"pid": os.getpid(), "host": os.uname().nodename}
    book.save()
    param_space: dict[str, Any] = {"slot": tune.grid_search(slots)}
    if spec.random:
        param_space["params"] = {name: _domain(dim) for name, dim in spec.random.items()}
    max_steps = int(book.max_steps or 1)
    if spec.scheduler == "asha" and len(slots) > 1 and max_steps > 1:
        grace = min(spec.grace_steps or max(1, max_steps // 4), max_steps)
        # A trial at its last step is not stopped (stop_last_trials): it still meta-tests and reports its outcome.
        scheduler = ASHAScheduler(time_attr="step", max_t=max_steps, grace_period=grace, reduction_factor=3,
                                  stop_last_trials=False)
    else:
        scheduler = FIFOScheduler()
    relay = _Relay(writer) if client else None
    callback = _TuneEvents(spec.tune_metric, relay.queue if relay else None, writer if not client else None)
    trainable = tune.with_resources(tune.with_parameters(train_trial, spec=trial_spec), {"cpu": spec.cpus_per_trial})
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric=spec.tune_metric, mode=spec.mode, scheduler=scheduler,
                                    max_concurrent_trials=spec.max_concurrent,
                                    # A worker keeps TensorFlow imported from one trial to the next; not under
                                    # ASHA, whose stops end a trial's worker midway.
                                    reuse_actors=not isinstance(scheduler, ASHAScheduler)),
        run_config=tune.RunConfig(name=f"attempt-{book.attempts}", storage_path=book.storage, callbacks=[callback],
                                  verbose=0, failure_config=tune.FailureConfig(max_failures=0),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    try:
        if relay:
            relay.start()
        # Tune prints its tables on stdout whatever its verbosity; stdout is the command's (--json) alone.
        with contextlib.redirect_stdout(sys.stderr):
            tuner.fit()
    finally:
        if relay:
            relay.stop()
        writer.close_unfinished()
        book.status = "completed" if not book.pending_slots() else "interrupted"
        book.save()
        if started_ray:
            ray.shutdown()
    return book


def _domain(dim: dict[str, Any]) -> Any:
    if dim["kind"] == "choice":
        return tune.choice(dim["values"])
    if dim["kind"] == "loguniform":
        return tune.loguniform(dim["low"], dim["high"])
    return tune.uniform(dim["low"], dim["high"])


class _TuneEvents(tune.Callback):
    """Turns Ray Tune's trial events into plain events for :class:`StoreWriter`: handed over directly when Tune's
    loop runs in this process, or put on a Ray queue when it runs on the cluster (a ``ray://`` client)."""

    def __init__(self, metric: str, queue: Any | None, writer: "StoreWriter | None"):
        self.metric, self.queue, self.writer = metric, queue, writer

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment's state; the writer (store, locks) stays here.
        return {"metric": self.metric, "queue": self.queue, "writer": None}

    def _send(self, event: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.handle(event)
        elif self.queue is not None:
            self.queue.put(event)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send({"event": "start", "trial": trial.trial_id, "slot": int(trial.config["slot"]),
                    "params": dict(trial.config.get("params") or {})})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "metalab_seq" not in result:
            return
        keep = ("metalab_seq", "metalab_metrics", "metalab_outcome", "step", "hostname")
        self._send({"event": "result", "trial": trial.trial_id, "slot": int(trial.config["slot"]),
                    "result": {k: result[k] for k in keep if k in result}, "value": _finite(result.get(self.metric))})

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        files: dict[str, bytes] = {}
        with checkpoint.as_directory() as folder:
            for item in Path(folder).iterdir():
                if item.is_file():
                    files[item.name] = item.read_bytes()
        self._send({"event": "checkpoint", "trial": trial.trial_id, "slot": int(trial.config["slot"]), "files": files})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._send({"event": "end", "trial": trial.trial_id, "slot": int(trial.config["slot"]), "error": None})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:
            error = trial.get_error()
        except Exception:  # noqa: BLE001 - the error text is a courtesy; the failure itself is recorded
            error = None
        self._send({"event": "end", "trial": trial.trial_id, "slot": int(trial.config["slot"]),
                    "error": str(error or "The trial failed in its Ray worker.")})


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


class _Relay:
    """Drains a Ray queue of trial events into the writer on a thread of this process (``ray://`` clients)."""

    def __init__(self, writer: "StoreWriter"):
        from ray.util.queue import Queue

        self.writer, self.queue = writer, Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _drain(self) -> None:
        from ray.util.queue import Empty

        while not (self._stop.is_set() and self.queue.empty()):
            try:
                self.writer.handle(self.queue.get(timeout=0.5))
            except Empty:
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class StoreWriter:
    """Writes a sweep's trials into the run store and its record, one event at a time (this process only)."""

    def __init__(self, services: Any, book: SweepBook, on_event: EventFn | None = None):
        self.services, self.book, self.on_event = services, book, on_event
        self.store = services.store
        self._seen: dict[str, int] = {}
        self._outcomes: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def trial_spec(self, slots: list[int]) -> dict[str, Any]:
        """What every trial of this attempt is given: the plan, and for a trial an earlier attempt left unfinished
        its values and its run's checkpoint files."""
        spec = self.book.spec
        fixed, resume = {}, {}
        for slot in slots:
            entry = self.book.trials.get(slot)
            if not entry:
                continue
            fixed[str(slot)] = entry.get("params") or {}
            folder = self.store.run_dir(entry["run"])
            files = {name: (folder / name).read_bytes() for name in _RESUME_FILES if (folder / name).is_file()}
            if files:
                resume[str(slot)] = files
        return {"raw": dict(spec.raw), "assignments": dict(spec.assignments), "points": self.book.points,
                "objective": spec.store_metric, "tune_metric": spec.tune_metric, "fixed": fixed, "resume": resume}

    def _say(self, text: str) -> None:
        if self.on_event:
            self.on_event(text)

    def handle(self, event: dict[str, Any]) -> None:
        with self._lock:
            getattr(self, f"_on_{event['event']}")(event)

    def _on_start(self, event: dict[str, Any]) -> None:
        slot, book = event["slot"], self.book
        entry = book.trials.get(slot)
        now = time.time()
        if entry and entry.get("run") and self._exists(entry["run"]):
            run_id = entry["run"]
            # It continues from the checkpoint sent to it (or from step 0): later points are logged again.
            self.store.truncate_metrics(run_id, int(entry.get("checkpoint_step") or 0))
            what = f"resumed from step {int(entry.get('checkpoint_step') or 0)}"
        else:
            params = {**book.point_of(slot), **event["params"]}
            config = self.services.resolve(dict(book.spec.raw), {**book.spec.assignments, **params}, recommended=True)
            name = f"{book.id} #{slot} {describe_point(params)}"[:200]
            run_id = self.services.create_run(config, name=name)
            self.store.set_tags(run_id, [sweep_tag(book.id)])
            entry = {"run": run_id, "params": params, "objective": None, "step": 0}
            what = "started"
        # The driver is the run's writer: if it dies, the store finds the run interrupted.
        self.store.update_run(run_id, status="running", pid=os.getpid(), host=os.uname().nodename, started=now,
                              finished=None, error=None, traceback=None, cancel_requested=0)
        entry.update(trial=event["trial"], state="running", error=None)
        book.trials[slot] = entry
        book.save()
        self._say(f"trial {slot} {what}: run {run_id} ({describe_point(entry['params']) or 'fixed values'})")

    def _exists(self, run_id: str) -> bool:
        from metalab.core.store import RunNotFoundError

        try:
            self.store.get_run(run_id)
        except RunNotFoundError:
            return False
        return True

    def _on_result(self, event: dict[str, Any]) -> None:
        entry = self.book.trials.get(event["slot"])
        result = event["result"]
        if entry is None or result["metalab_seq"] <= self._seen.get(event["trial"], 0):
            return  # Tune repeats a trial's last result when it ends
        self._seen[event["trial"]] = result["metalab_seq"]
        run_id = entry["run"]
        for step, values in json.loads(result.get("metalab_metrics") or "[]"):
            self.store.log_metrics(run_id, int(step), values)
        step = int(result.get("step") or 0)
        self.store.update_run(run_id, step=step)
        value = _finite(event.get("value"))
        if value is not None:
            entry["objective"] = value
        entry["step"], entry["node"] = step, result.get("hostname") or entry.get("node")
        if "metalab_outcome" in result:
            self._outcomes[event["trial"]] = json.loads(result["metalab_outcome"])
        self.book.save()

    def _on_checkpoint(self, event: dict[str, Any]) -> None:
        from metalab.core.engine.checkpoints import checkpoint_step

        entry = self.book.trials.get(event["slot"])
        if entry is None:
            return
        run_id = entry["run"]
        folder = self.store.run_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in event["files"].items():
            name = Path(name).name
            tmp = folder / f".{name}.home"
            tmp.write_bytes(data)
            os.replace(tmp, folder / name)
        if (folder / "checkpoint.npz").is_file():
            run = self.store.get_run(run_id)
            step = checkpoint_step(folder, total_steps=run.total_steps or None, config=run.config)
            self.store.add_artifact(run_id, "checkpoint", "checkpoint", folder / "checkpoint.npz", step=step)
            entry["checkpoint_step"] = step
        self.book.save()

    def _on_end(self, event: dict[str, Any]) -> None:
        slot, book = event["slot"], self.book
        entry = book.trials.get(slot)
        if entry is None:
            return
        run_id, store = entry["run"], self.store
        outcome = self._outcomes.pop(event["trial"], None)
        fields: dict[str, Any] = {"finished": time.time()}
        if event["error"]:
            lines = [line for line in event["error"].strip().splitlines() if line.strip()]
            fields.update(status="failed", error=(lines[-1] if lines else "The trial failed.")[:2000],
                          traceback=event["error"][-20_000:])
            state = "failed"
        elif outcome is not None:
            self._record_outcome(run_id, outcome)
            fields.update(status=outcome["status"], error=outcome.get("error"), traceback=outcome.get("traceback"),
                          step=int(outcome.get("step") or 0), versions=outcome.get("versions") or {},
                          device=outcome.get("device"))
            state = {"completed": "completed", "failed": "failed"}.get(outcome["status"], "interrupted")
            entry["node"] = outcome.get("node") or entry.get("node")
        else:
            value = entry.get("objective")
            fields.update(status="cancelled", error=(
                f"Stopped early by sweep {book.id}'s ASHA scheduler at step {entry.get('step', 0)}: its "
                f"{book.spec.metric} ({value if value is not None else 'not reported'}) trailed the other trials'."))
            state = "stopped"
        store.update_run(run_id, **fields)
        entry.update(state=state, error=fields.get("error"))
        book.save()
        shown = f"{book.spec.metric} {entry['objective']:.4g}" if entry.get("objective") is not None else "no objective"
        self._say(f"trial {slot} {state}: run {run_id}, {shown}")

    def _record_outcome(self, run_id: str, outcome: dict[str, Any]) -> None:
        """The trial's evaluations, phases and files, as its scratch store had them, into this store."""
        store = self.store
        for ev in reversed(outcome.get("evaluations") or []):  # oldest first, so the newest stays newest
            result = {k: v for k, v in ev.items() if k not in ("created", "split", "episodes", "seed")}
            store.add_evaluation(run_id, ev["split"], int(ev["episodes"]), result, seed=ev.get("seed"))
        phases = outcome.get("phases") or []
        for row in phases:
            store.start_phase(run_id, row["name"], total=row.get("total"), detail=row.get("detail") or "",
                              at=row["started"])
            if row.get("done") is not None:
                store.phase_progress(run_id, int(row["done"]), row.get("total"))
        if phases:
            store.end_phases(run_id, at=phases[-1].get("finished") or time.time())
        folder = store.run_dir(run_id)
        for artifact in outcome.get("artifacts") or []:
            path = folder / Path(artifact["file"]).name
            if path.is_file():
                store.add_artifact(run_id, artifact["name"], artifact["kind"], path, step=artifact.get("step"))

    def close_unfinished(self) -> None:
        """Records the trials still running when Tune's loop ended (stopped, or the driver interrupted) as
        interrupted: ``metalab sweep resume`` continues them."""
        with self._lock:
            for slot, entry in self.book.trials.items():
                if entry.get("state") != "running":
                    continue
                entry["state"] = "interrupted"
                try:
                    self.store.update_run(entry["run"], status="interrupted", finished=time.time(), error=(
                        f"The driver of sweep {self.book.id} stopped before this trial ended; `metalab sweep resume "
                        f"{self.book.id}` continues it."))
                except KeyError:
                    continue
            self.book.save()

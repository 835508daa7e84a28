"""The Services section over sweeps: listing them, one sweep's trials, its best trial and its seeds summary, and
launching one (or the best trial's longer run) in the background, within the mode's rules.

A sweep's driver is ``metalab sweep resume <id>`` in a process of its own (it starts a local Ray and imports
TensorFlow in its trials, never in the dashboard); the record it writes (:class:`~metalab.core.sweeps.SweepBook`)
and the runs it stores are what the pages read.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from typing import Any

from metalab.core.services.access import LOCAL_OWNER, AccessError, CapError
from metalab.core.sweeps.book import SweepBook, record_sweep, sweeps_dir
from metalab.core.sweeps.space import SweepError, describe_point, spec_from_sources

#: The grid field that the seeds summary averages over.
SEED_FIELD = "run.seed"
#: Trials one sweep may have when launched from a shared dashboard (the CLI on the machine is not capped).
MAX_SHARED_TRIALS = 200


def seed_summary(trials: list[dict[str, Any]], mode: str = "max", key: str = "objective",
                 seed_field: str = SEED_FIELD) -> list[dict[str, Any]]:
    """Groups completed trials by every swept value except the seed and gives each setting's mean and 95% interval
    over its seeds: what a paper's table reports.

    Args:
        trials: Trial rows with ``state``, ``params`` and the value under ``key``.
        mode: ``max`` or ``min``: the best setting comes first.
        key: The value to summarise (``objective``, or ``test`` for the meta-test score).
        seed_field: The swept field that holds the seed.

    Returns:
        ``[{"setting", "label", "n", "mean", "std", "ci95", "low", "high", "seeds", "runs"}]``, best mean first.
        ``ci95`` is the half-width of Student's t interval, ``t(0.975, n - 1) * std / sqrt(n)`` with the sample
        standard deviation (``ddof=1``); ``None`` (and ``std`` too) for a setting of one seed.
    """
    groups: dict[str, dict[str, Any]] = {}
    for trial in trials:
        value = trial.get(key)
        if trial.get("state") != "completed" or not _finite(value):
            continue
        params = dict(trial.get("params") or {})
        seed = params.pop(seed_field, None)
        group = groups.setdefault(json.dumps(params, sort_keys=True, default=str), {
            "setting": params, "label": describe_point(params) or "(the fixed values)", "values": [], "seeds": [],
            "runs": []})
        group["values"].append(float(value))
        group["seeds"].append(seed)
        group["runs"].append(trial.get("run"))
    rows = []
    for group in groups.values():
        values = group.pop("values")
        n = len(values)
        mean = sum(values) / n
        std = ci95 = None
        if n > 1:
            from scipy import stats

            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
            ci95 = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        rows.append({**group, "n": n, "mean": mean, "std": std, "ci95": ci95,
                     "low": None if ci95 is None else mean - ci95, "high": None if ci95 is None else mean + ci95})
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (sign * r["mean"], r["label"]))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class SweepsMixin:
    """The sweep methods of :class:`~metalab.core.services.Services`, each checked against the caller's rights."""

    # -- reading -------------------------------------------------------------------------------------------------

    def _can_see_sweeps(self) -> bool:
        # A sweep's driver runs as this machine's user, so its trials are runs owned by LOCAL_OWNER: whoever may
        # see those runs may see the sweep (in demo mode, a visitor sees neither).
        return self.policy.can_see(self.actor, LOCAL_OWNER)

    def sweeps(self) -> list[dict[str, Any]]:
        """Every sweep the caller may see, newest first: ``id``, ``status``, ``dataset``, ``algorithm``,
        ``trials`` (the budget), ``states`` (trials by state), ``metric``, ``mode``, ``best`` (objective) and
        ``best_run``, ``created``."""
        if not self._can_see_sweeps():
            return []
        return [self._sweep_row(book) for book in SweepBook.all(self.settings.home)]

    def sweep(self, ref: str) -> SweepBook:
        """The record of sweep ``ref`` (its id or a unique prefix).

        Raises:
            SweepError: No such sweep, or not one the caller may see (the same message: it names nothing else).
        """
        if not self._can_see_sweeps():
            raise SweepError(f"No sweep {str(ref)[:60]!r}. Received: sweep={str(ref)[:60]!r}")
        return SweepBook.load(self.settings.home, ref)

    def sweep_status(self, ref: str) -> dict[str, Any]:
        """One sweep's row of :meth:`sweeps`, plus ``swept`` (the swept names), ``spec`` (its space as recorded)
        and ``launch_error`` (a driver this process started that exited before running a trial: its log's tail)."""
        book = self.sweep(ref)
        row = self._sweep_row(book)
        spec = book.spec
        row["swept"] = [*spec.grid, *spec.random]
        row["spec"] = spec.to_dict()
        row["launch_error"] = None
        proc = self._sweep_drivers.get(book.id)
        if proc is not None and proc.poll() not in (None, 0) and book.status == "created":
            row["status"] = "failed"
            row["launch_error"] = (f"The sweep's driver exited with code {proc.returncode} before its first trial: "
                                   + self.redact(self._sweep_log(book)[-3000:]))
        return row

    def _sweep_row(self, book: SweepBook) -> dict[str, Any]:
        best = book.best()
        return {"id": book.id, "status": book.state, "dataset": book.spec.raw.get("dataset"),
                "algorithm": book.spec.raw.get("algorithm"), "trials": book.total, "states": book.counts(),
                "metric": book.spec.metric, "mode": book.spec.mode, "created": book.created,
                "best": None if best is None else best[1].get("objective"),
                "best_run": None if best is None else best[1].get("run")}

    def _sweep_log(self, book: SweepBook) -> str:
        try:
            return (sweeps_dir(self.settings.home) / f"{book.id}.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def sweep_trials(self, ref: str) -> list[dict[str, Any]]:
        """The sweep's started trials, best objective first: ``trial`` (its slot), ``state``, ``objective``,
        ``step``, ``run``, ``params`` (the swept values), and ``test`` / ``test_ci95``: the run's meta-test score
        on the test split (its canonical protocol; ``None`` until it has one)."""
        from metalab.core.reports.scores import headline, score_of

        book = self.sweep(ref)
        ranked = book.ranked()
        run_ids = [entry.get("run") for _, entry in ranked if entry.get("run")]
        configs = {run.id: run.config for run in self.store.get_runs(run_ids)}
        evaluations = self.store.evaluations_by_run(run_ids, split="test")
        rows = []
        for slot, entry in ranked:
            run_id = entry.get("run")
            top = headline(evaluations.get(run_id, []), configs.get(run_id)) if run_id in configs else None
            test = ci = None
            if top is not None:
                _, test, ci = score_of(top)
            rows.append({"trial": slot, "state": entry.get("state", ""), "objective": entry.get("objective"),
                         "step": int(entry.get("step") or 0), "run": run_id,
                         "params": dict(entry.get("params") or {}), "test": test, "test_ci95": ci,
                         "error": self.redact(str(entry.get("error") or "")) or None})
        return rows

    def sweep_best(self, ref: str) -> dict[str, Any] | None:
        """The completed trial with the best objective (``None`` before one completes): a row of
        :meth:`sweep_trials`, with ``config`` (its run's whole config) and ``slot``."""
        book = self.sweep(ref)
        best = book.best()
        if best is None:
            return None
        row = next(r for r in self.sweep_trials(book.id) if r["trial"] == best[0])
        return {**row, "slot": best[0], "config": self.run(row["run"]).config}

    def sweep_seeds(self, ref: str, key: str = "objective") -> list[dict[str, Any]]:
        """The sweep's settings, each with its mean and 95% interval over seeds (:func:`seed_summary`) of the
        objective (``key="objective"``, the sweep's mode) or of the meta-test score (``key="test"``)."""
        book = self.sweep(ref)
        if key not in ("objective", "test"):
            raise ValueError(f"key: objective or test. Received: key={key!r}")
        mode = book.spec.mode if key == "objective" else (
            "min" if book.spec.store_metric.rsplit("/", 1)[-1] in ("mse", "loss") else "max")
        return seed_summary(self.sweep_trials(book.id), mode, key)

    # -- launching -----------------------------------------------------------------------------------------------

    def sweep_refusal(self) -> str | None:
        """Why the caller may not launch a sweep here (``None`` when it may): pages disable their button with it,
        and :meth:`launch_sweep` raises it."""
        actor, mode = self.actor, self.settings.mode
        if actor.on_machine or mode == "private":
            return None
        if actor.id == "anonymous":
            return f"Sweeps: sign in first (this dashboard is in {mode} mode)."
        if mode == "demo":
            return ("Sweeps are not offered on a demo dashboard: one trains many runs on this server's few CPUs. "
                    "Run `metalab sweep` on your own machine. Received: mode='demo'")
        if not actor.admin:
            return (f"Sweeps: on a team dashboard only an admin (METALAB_ADMINS) may launch one, and you "
                    f"({actor.name}) are not. Received: mode='team'")
        return None

    def build_sweep(self, raw: dict[str, Any], *, grid: dict[str, Any] | None = None, seeds: str | None = None,
                    trials: int | None = None, metric: str | None = None, mode: str | None = None,
                    max_concurrent: int | None = None, scheduler: str | None = None) -> Any:
        """A :class:`~metalab.core.sweeps.SweepSpec` from a run's fields (what the Train page's form gives, or a
        run's config) and the values to sweep; nothing is checked against the plugins yet (:meth:`record_sweep`).

        Args:
            raw: Run fields, as :meth:`resolve` takes them.
            grid: ``{name: "a,b,c" or [a, b, c]}``, names as ``--set`` takes them (``algorithm.inner_lr``).
            seeds: ``"0-4"`` or ``"0,3,7"``: the seed as a grid dimension.

        Raises:
            SweepError: A malformed list, or a value the space itself refuses (the message names it).
        """
        pairs = []
        for name, values in (grid or {}).items():
            text = ",".join(json.dumps(v) if not isinstance(v, str) else v for v in values) \
                if isinstance(values, (list, tuple)) else str(values)
            pairs.append(f"{name}={text}")
        spec = spec_from_sources(None, grid=pairs, seeds=seeds or None, trials=trials, metric=metric, mode=mode,
                                 max_concurrent=max_concurrent, scheduler=scheduler)
        if not spec.grid and not spec.random:
            raise SweepError("A sweep needs at least one swept field or several seeds. Received: grid={}, seeds=None")
        # The form's own values are the sweep's fixed ones; the swept names win over them.
        spec.raw = json.loads(json.dumps(raw, default=str))
        for name in spec.grid:
            head, _, tail = name.partition(".")
            if head == "run" and tail:
                spec.raw.pop(tail, None)
            elif tail:
                spec.raw.get(f"{head}_params", {}).pop(tail, None)
            else:
                spec.raw.pop(name, None)
        return spec

    def record_sweep(self, spec: Any) -> SweepBook:
        """Resolves every grid point as the caller (its rights and caps) and records the sweep, not yet started.

        Raises:
            AccessError: The caller may not launch sweeps here (:meth:`sweep_refusal`).
            CapError: More than :data:`MAX_SHARED_TRIALS` trials on a shared dashboard.
            SweepError: A grid point is invalid (the message names the field and the value); nothing is written.
        """
        refusal = self.sweep_refusal()
        if refusal:
            raise AccessError(refusal)
        if not self.actor.on_machine and self.settings.mode != "private" and spec.total_trials() > MAX_SHARED_TRIALS:
            raise CapError(f"trials: at most {MAX_SHARED_TRIALS} per sweep on a shared dashboard. "
                           f"Received: trials={spec.total_trials()}")
        return record_sweep(self, spec)

    def sweep_command(self, sweep_id: str) -> list[str]:
        """The driver process of a recorded sweep: ``metalab sweep resume <id>``, niced like the workers."""
        command = [sys.executable, "-m", "metalab.core.cli", "sweep", "resume", sweep_id]
        nice = shutil.which("nice")
        return [nice, "-n", str(int(self.settings.worker_nice)), *command] if nice else command

    def launch_sweep(self, spec: Any) -> str:
        """Records the sweep (:meth:`record_sweep`) and starts its driver process; returns the sweep's id.

        Raises:
            AccessError, CapError, SweepError: See :meth:`record_sweep`; also a sweep already running (one at a
                time from a dashboard) or Ray Tune not installed, before anything is written.
        """
        from metalab.core.sweeps import ray_available

        refusal = self.sweep_refusal()
        if refusal:
            raise AccessError(refusal)
        if not ray_available():
            raise SweepError('Sweeps run on Ray Tune, which is not installed here: pip install "metalab[sweep]". '
                             "Received: ray=None")
        busy = [b.id for b in SweepBook.all(self.settings.home) if b.state == "running"] + [
            sid for sid, proc in self._sweep_drivers.items() if proc.poll() is None]
        if busy:
            raise CapError(f"Sweep {busy[0]} is running; the dashboard runs one sweep at a time. Wait for it or "
                           f"stop it. Received: running={sorted(set(busy))}")
        book = self.record_sweep(spec)
        self._start_sweep_driver(book)
        return book.id

    def _start_sweep_driver(self, book: SweepBook) -> subprocess.Popen:
        log = open(sweeps_dir(self.settings.home) / f"{book.id}.log", "ab")  # noqa: SIM115 - the child's
        try:
            proc = subprocess.Popen(self.sweep_command(book.id), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self._worker_env(), start_new_session=True)
        finally:
            log.close()
        with self._lock:
            self._sweep_drivers[book.id] = proc
        return proc

    def train_best_longer(self, ref: str, steps: int) -> str:
        """Launches an ordinary run (:meth:`submit`) with the sweep's best configuration and ``steps`` steps (the
        cadences scale with them, as a new run's do); returns its run id.

        Raises:
            SweepError: No trial has completed yet.
            ValueError: ``steps`` not above the sweep's.
            AccessError, CapError, LaunchLimitError, ConfigError: As :meth:`submit` (the step cap included).
        """
        book = self.sweep(ref)
        best = self.sweep_best(book.id)
        if best is None:
            raise SweepError(f"Sweep {book.id} has no completed trial yet. Received: sweep={ref!r}")
        steps = int(steps)
        if steps <= int(best["config"].get("steps") or 0):
            raise ValueError(f"steps: more than the sweep's {best['config'].get('steps')} steps. Received: "
                             f"steps={steps}")
        config = self.resolve(dict(book.spec.raw), {**book.spec.assignments, **best["params"], "run.steps": steps},
                              recommended=True)
        run_id = self.submit(config, name=f"{book.id} best (trial {best['slot']}), {steps} steps"[:200])
        self.store.set_tags(run_id, [f"from-sweep:{book.id}"])
        return run_id

    @property
    def _sweep_drivers(self) -> dict[str, subprocess.Popen]:
        # Made in Services.__init__, so every for_actor view shares it, like the training workers.
        return self._sweep_procs

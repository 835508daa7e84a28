"""The Services section over stored runs: validating configs, creating, reading, annotating (name, tags, notes),
deleting and scoring runs, and the runs table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from metalab.core.engine.config import RunConfig, config_warnings, recommended_values, resolve_config
from metalab.core.services.access import CapError
from metalab.core.store import PHASES, RunNotFoundError, RunRecord

#: Limits on what a person writes about a run (they are stored for every reader of the store).
MAX_NAME_CHARS = 200
MAX_TAGS = 20
MAX_TAG_CHARS = 40
MAX_NOTES_CHARS = 10_000


#: What each phase of a run is called where people read it (the live view, the report, the CLI).
PHASE_LABELS = {
    "starting": "Starting the worker (importing TensorFlow)",
    "loading": "Loading data and building the model",
    "compiling": "Compiling the training step (first step trace)",
    "training": "Training",
    "validating": "Validating",
    "meta-testing": "Meta-testing",
    "report": "Writing the report",
}
#: Their short names in a time split ("training 2 min 50 s").
PHASE_NAMES = {"starting": "worker start", "report": "report"}


def format_seconds(seconds: float | None) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``; ``"–"`` for ``None``."""
    if seconds is None:
        return "–"
    seconds = int(round(max(0.0, seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def phase_summary(phases: list[dict[str, Any]], run: RunRecord, now: float | None = None) -> dict[str, Any]:
    """Where a run is and where its time went, from its recorded phases (``RunStore.phases``).

    Args:
        phases: The run's phase rows, in the order they happened.
        run: The run (its status says whether an unfinished phase still lasts).
        now: The time to measure a phase that still lasts against (default: the clock).

    Returns:
        ``current``: the phase a queued or running run is in (``None`` otherwise, or when none is recorded) as
        ``{name, label, detail, started, elapsed_s, done, total, rate, eta_s}``, where ``rate`` (items per second)
        and ``eta_s`` are known once a counted phase (validating, meta-testing) has done some of its items;
        ``times``: ``[{name, label, seconds}]``, one per phase the run went through, in :data:`PHASES` order
        (training and validating summed over their stretches, and over resumed sessions); ``total_s``: their
        sum (``None`` without phases); ``training_s``: the training phase's seconds alone (``None`` without it);
        ``line``: the split in one line (:func:`phase_line`).
    """
    now = time.time() if now is None else float(now)
    active = run.status in ("queued", "running")
    # A phase a finished run left open (its worker was killed) ends when the run was last written.
    stop = now if active else (run.finished or run.updated)
    seconds: dict[str, float] = {}
    current = None
    for i, row in enumerate(phases):
        end = row["finished"]
        if end is None:
            end = stop if stop is not None else row["started"]
        seconds[row["name"]] = seconds.get(row["name"], 0.0) + max(0.0, float(end) - float(row["started"]))
        if active and i == len(phases) - 1 and row["finished"] is None:
            elapsed = max(0.0, now - float(row["started"]))
            done, total = row["done"], row["total"]
            rate = done / elapsed if done and elapsed > 0 else None
            current = {"name": row["name"], "label": PHASE_LABELS.get(row["name"], row["name"]),
                       "detail": row["detail"] or "", "started": row["started"], "elapsed_s": elapsed,
                       "done": done, "total": total, "rate": rate,
                       "eta_s": (total - done) / rate if rate and total is not None else None}
    order = [name for name in PHASES if name in seconds] + [name for name in seconds if name not in PHASES]
    times = [{"name": name, "label": PHASE_NAMES.get(name, name), "seconds": seconds[name]} for name in order]
    summary = {"current": current, "times": times, "total_s": sum(seconds.values()) if seconds else None,
               "training_s": seconds.get("training")}
    summary["line"] = phase_line(summary)
    return summary


def phase_line(summary: dict[str, Any]) -> str:
    """The time split of :func:`phase_summary` in one line: ``"loading 3 s · training 2 min 50 s · … · total …"``
    (empty when no phases were recorded)."""
    if not summary.get("times"):
        return ""
    parts = [f"{t['label']} {format_seconds(t['seconds'])}" for t in summary["times"]]
    return " · ".join(parts + [f"total {format_seconds(summary['total_s'])}"])


class RunsMixin:
    """The run methods of :class:`~metalab.core.services.Services`, each checked against the caller's rights."""

    def resolve(self, raw: dict[str, Any], assignments: dict[str, Any] | None = None, *,
                recommended: bool = False) -> RunConfig:
        """Validates a run config against the chosen plugins and the caller's rights.

        Args:
            raw: Run fields (``dataset``, ``algorithm``, ``steps``, ``algorithm_params``, ...).
            assignments: ``--set`` values (see :func:`~metalab.core.engine.config.resolve_config`).
            recommended: Fill what ``raw`` and ``assignments`` leave unset from :meth:`recommended_values` (what
                ``metalab train`` and the Train page do, so both launch the same run for the same choices).

        Raises:
            ConfigError: A field is invalid (the message names field and value).
            AccessError: A parameter names a path, URL, checksum or run the caller may not use.
            CapError: More steps than ``max_steps``.
        """
        config = resolve_config(self.registry, raw, assignments, recommended=recommended)
        self.check_config(config)
        return config

    def recommended_values(self, dataset_id: str, algorithm_id: str) -> dict[str, Any]:
        """The recommended starting values of a run of this algorithm on this dataset (see
        :func:`~metalab.core.engine.config.recommended_values`): run fields, and plugin parameters as
        ``algorithm.NAME``; cadences among them are references that scale with the run's steps.

        Raises:
            UnknownPluginError: The dataset is not loaded.
        """
        return recommended_values(self.registry.dataset(dataset_id), algorithm_id)

    @staticmethod
    def config_warnings(config: RunConfig) -> list[str]:
        """What a valid config makes its run skip (a cadence above the steps), one line each naming the field
        and value; see :func:`~metalab.core.engine.config.config_warnings`."""
        return config_warnings(config)

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

    def run_phases(self, run_id: str) -> dict[str, Any]:
        """Where the run is and where its time went: :func:`phase_summary` of its recorded phases."""
        run = self.run(run_id)
        return phase_summary(self.store.phases(run.id), run)

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
        """Sets the run's name (its owner or an admin only; at most :data:`MAX_NAME_CHARS` characters)."""
        name = str(name).strip()
        if len(name) > MAX_NAME_CHARS:
            raise ValueError(f"name: at most {MAX_NAME_CHARS} characters. Received: name of {len(name)} characters")
        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: rename")
        self.store.rename_run(run.id, name)

    def set_run_tags(self, run_id: str, tags: list[str] | str) -> list[str]:
        """Replaces the run's tags (its owner or an admin only) and returns them as stored.

        Args:
            tags: A list, or one text of comma-separated tags; each is stripped, empty ones and repeats dropped.

        Raises:
            ValueError: More than :data:`MAX_TAGS` tags, or one longer than :data:`MAX_TAG_CHARS` characters.
        """
        items = tags.split(",") if isinstance(tags, str) else list(tags)
        clean = list(dict.fromkeys(str(t).strip() for t in items if str(t).strip()))
        if len(clean) > MAX_TAGS:
            raise ValueError(f"tags: at most {MAX_TAGS} per run. Received: {len(clean)} tags")
        for tag in clean:
            if len(tag) > MAX_TAG_CHARS or "," in tag:
                raise ValueError(f"tags: each at most {MAX_TAG_CHARS} characters, without commas. "
                                 f"Received: tag={tag[:60]!r}")
        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: tag")
        self.store.set_tags(run.id, clean)
        return clean

    def set_run_notes(self, run_id: str, notes: str) -> None:
        """Replaces the run's notes (its owner or an admin only; at most :data:`MAX_NOTES_CHARS` characters)."""
        notes = str(notes).strip()
        if len(notes) > MAX_NOTES_CHARS:
            raise ValueError(f"notes: at most {MAX_NOTES_CHARS:,} characters. Received: notes of {len(notes):,} "
                             "characters")
        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: notes")
        self.store.set_notes(run.id, notes)

    def runs_table(self, **filters: Any) -> Any:
        """The runs the caller may see as a :class:`~metalab.core.reports.runs_table.RunsTable`, newest first.

        Each row carries the run's fields, its headline score (canonical protocol) with 95% CI, its flattened
        parameters and its latest metrics, and ``short_id``: the shortest prefix (8 characters or more) unique among
        every run in the store, which ``metalab runs show`` accepts.

        Args:
            filters: ``dataset``, ``algorithm``, ``status``, ``owner`` (exact values) and ``limit``, as
                :meth:`runs` takes them.

        Built for thousands of runs: while the store is unchanged (``RunStore.data_version``) the same table is
        returned (callers must not modify it); after a change, one query stamps every run and only the rows of
        runs whose stamp moved (a training run's, an edited one's) are read again, in three more queries.
        """
        from metalab.core.reports.runs_table import RunsTable

        store = self.store
        store.reconcile_active()  # as listing runs would: a dead worker's run is not shown as running
        key = (tuple(sorted(filters.items())), self.actor.id, self.actor.admin)
        with self._tables_lock:
            cache = self._tables["tables"]
            version = store.data_version()
            hit = cache.get(key)
            if hit is not None and hit[0] == version:
                return hit[1]
            rows = self._table_rows()
            wanted = {k: v for k, v in filters.items() if k in ("dataset", "algorithm", "status", "owner") and v}
            rows = [r for r in rows if all(r[1][k] == v for k, v in wanted.items())
                    and self.policy.can_see(self.actor, r[1]["owner"])]
            if filters.get("limit"):
                rows = rows[: int(filters["limit"])]
            table = RunsTable([r[1] for r in rows], sorted({p for r in rows for p in r[2]}),
                              sorted({m for r in rows for m in r[3]}))
            if len(cache) >= 32:
                cache.clear()
            cache[key] = (version, table)
            return table

    def _table_rows(self) -> list[tuple[tuple, dict[str, Any], list[str], list[str]]]:
        """Every run's ``(stamp, row, params, metrics)``, newest first, rebuilding only the rows whose stamp moved
        (kept in ``self._tables["rows"]``, shared by every actor: a row is the same whoever reads it)."""
        from metalab.core.reports.runs_table import build_row, short_ids

        store = self.store
        memo: dict[str, tuple] = self._tables["rows"]
        stamps = store.run_stamps()
        stale = [run_id for run_id, stamp in stamps if memo.get(run_id, (None,))[0] != stamp]
        if stale:
            few = len(stale) <= 500  # past a few hundred, reading all is cheaper than naming them
            records = store.get_runs(stale) if few else store.list_runs()
            evaluations = store.evaluations_by_run(stale if few else None, split="test")  # the headline's split
            latest = store.latest_metrics(stale if few else None)
            stamp_of = dict(stamps)
            for record in records:
                if record.id in stamp_of:
                    row, params, metrics = build_row(record.__dict__, evaluations.get(record.id, []),
                                                     latest.get(record.id, {}))
                    memo[record.id] = (stamp_of[record.id], row, params, metrics)
        ids = [run_id for run_id, _ in stamps]
        shorts: dict[str, str] = self._tables.setdefault("shorts", {})
        if shorts.keys() != set(ids):  # a new run may lengthen its neighbours' shortest unique prefixes
            shorts.clear()
            shorts.update(short_ids(ids))
            stale = ids
        for gone in set(memo) - shorts.keys():
            del memo[gone]
        for run_id in stale:
            if run_id in memo:
                memo[run_id][1]["short_id"] = shorts[run_id]
        return [memo[run_id] for run_id in ids if run_id in memo]

    def run_dir(self, run_id: str) -> Path:
        return self.store.run_dir(run_id)

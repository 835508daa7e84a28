"""The run store: one SQLite file (WAL mode) holding runs, their metrics, evaluations and artifact paths.

One writer per run (its training process), many readers (CLI, dashboard). Every write commits at once, so
nothing a run wrote is lost if its process dies. No TensorFlow here: the dashboard reads the store directly.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
FINISHED = ("completed", "failed", "cancelled", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    dataset TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    backbone TEXT,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    updated REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    host TEXT,
    device TEXT,
    versions TEXT,
    error TEXT,
    traceback TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT 'local'
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_run_name_step ON metrics(run_id, name, step);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    created REAL NOT NULL,
    split TEXT NOT NULL,
    episodes INTEGER NOT NULL,
    result TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created REAL NOT NULL,
    archive_bytes INTEGER NOT NULL DEFAULT 0,
    unpacked_bytes INTEGER NOT NULL DEFAULT 0,
    files INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    step INTEGER,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, name)
);
"""


#: The schema's version, kept in ``PRAGMA user_version``. 0: the first release (no owners, no uploads table).
SCHEMA_VERSION = 1

#: ``{version: statements}`` that bring a store of ``version - 1`` to ``version``; applied in order on open.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT 'local'",
        # The uploads table is created by the schema script itself (CREATE TABLE IF NOT EXISTS).
    ),
}


class RunNotFoundError(KeyError):
    """Raised when a run id is not in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass
class RunRecord:
    """One row of the runs table, with the config decoded."""

    id: str
    name: str
    dataset: str
    algorithm: str
    backbone: str | None
    config: dict[str, Any]
    status: str
    created: float
    started: float | None
    finished: float | None
    updated: float | None
    step: int
    total_steps: int
    pid: int | None
    host: str | None
    device: str | None
    versions: dict[str, Any]
    error: str | None
    traceback: str | None
    cancel_requested: bool
    owner: str = "local"

    def summary(self) -> dict[str, Any]:
        """The fields `metalab runs list --json` prints."""
        return {
            "id": self.id,
            "name": self.name,
            "dataset": self.dataset,
            "algorithm": self.algorithm,
            "backbone": self.backbone,
            "status": self.status,
            "step": self.step,
            "total_steps": self.total_steps,
            "created": _iso(self.created),
            "owner": self.owner,
        }

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key in ("created", "started", "finished", "updated"):
            data[key] = _iso(data[key])
        return data


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """A sortable, collision-resistant run id such as ``20261126-081512-3fa9c1``."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _pid_alive(pid: int | None, host: str | None) -> bool:
    if not pid or host != os.uname().nodename:
        return True  # cannot tell for another host: trust the recorded status
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process still answers kill(0); its status file says it is dead.
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        pass
    return True


class RunStore:
    """Reads and writes runs in a SQLite database file.

    Args:
        path: The database file (created with its folder if missing).
        runs_dir: Folder for per-run artifacts (checkpoints, reports); defaults to ``<path's folder>/runs``.

    Each method opens a short-lived connection, so one store object may be shared by threads, and separate
    processes may open the same file.
    """

    def __init__(self, path: str | os.PathLike, runs_dir: str | os.PathLike | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.runs_dir = Path(runs_dir) if runs_dir else self.path.parent / "runs"
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            self._migrate(conn)

    def _migrate(self, conn: Any) -> None:
        """Creates the schema, or brings an older store's schema up to :data:`SCHEMA_VERSION`."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()}
        if "runs" not in tables:
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"The run store {self.path.name} has schema version {version}, newer than this metalab's "
                f"{SCHEMA_VERSION}; upgrade metalab to open it. Received: user_version={version}"
            )
        columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)").fetchall()}
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _MIGRATIONS[target]:
                    added = re.match(r"ALTER TABLE runs ADD COLUMN (\w+)", statement)
                    if added and added.group(1) in columns:
                        continue  # a store that already had it (written by a development build)
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={target}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return _ClosingConnection(conn)

    # -- runs -------------------------------------------------------------------------------------------

    def create_run(
        self,
        config: dict[str, Any],
        *,
        run_id: str | None = None,
        name: str = "",
        versions: dict[str, Any] | None = None,
        status: str = "queued",
        owner: str = "local",
    ) -> str:
        """Inserts a new run and returns its id (``owner``: who may cancel, delete and resume it)."""
        run_id = run_id or new_run_id()
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO runs (id, name, dataset, algorithm, backbone, config, status, created, updated,"
                " total_steps, versions, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    name,
                    config["dataset"],
                    config["algorithm"],
                    config.get("backbone"),
                    json.dumps(config, sort_keys=True),
                    status,
                    time.time(),
                    time.time(),
                    int(config.get("steps", 0)),
                    json.dumps(versions or {}),
                    owner,
                ),
            )
        return run_id

    def get_run(self, run_id: str) -> RunRecord:
        """Returns the run, or raises :class:`RunNotFoundError` naming the id."""
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                # Accept a unique prefix, as git does for commits.
                rows = conn.execute("SELECT * FROM runs WHERE id LIKE ?", (run_id + "%",)).fetchall()
                if len(rows) == 1:
                    row = rows[0]
        if row is None:
            raise RunNotFoundError(f"No run with id {run_id!r} in {self.path}. Received: run={run_id!r}")
        return self._reconcile(self._record(row))

    def list_runs(
        self,
        *,
        dataset: str | None = None,
        algorithm: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        owner: str | None = None,
    ) -> list[RunRecord]:
        """Runs, newest first, optionally filtered."""
        query, args = "SELECT * FROM runs WHERE 1=1", []
        for column, value in (("dataset", dataset), ("algorithm", algorithm), ("status", status), ("owner", owner)):
            if value:
                query += f" AND {column} = ?"
                args.append(value)
        query += " ORDER BY created DESC, id DESC"
        if limit:
            query += f" LIMIT {int(limit)}"
        with self._connect() as conn:
            rows = conn.execute(query, args).fetchall()
        return [self._reconcile(self._record(row)) for row in rows]

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Sets columns of a run (``config`` and ``versions`` may be dicts)."""
        if not fields:
            return
        for key in ("config", "versions"):
            if key in fields and not isinstance(fields[key], str):
                fields[key] = json.dumps(fields[key], sort_keys=True)
        fields["updated"] = time.time()
        columns = ", ".join(f"{key} = ?" for key in fields)
        with self._connect() as conn:
            cur = conn.execute(f"UPDATE runs SET {columns} WHERE id = ?", (*fields.values(), run_id))
            if cur.rowcount == 0:
                raise RunNotFoundError(f"No run with id {run_id!r} in {self.path}. Received: run={run_id!r}")

    def rename_run(self, run_id: str, name: str) -> None:
        self.update_run(self.get_run(run_id).id, name=name)

    def delete_run(self, run_id: str) -> None:
        """Deletes a run, its metrics, evaluations and artifact folder."""
        run = self.get_run(run_id)
        with self._connect() as conn:
            conn.execute("DELETE FROM runs WHERE id = ?", (run.id,))
        shutil.rmtree(self.run_dir(run.id), ignore_errors=True)

    def request_cancel(self, run_id: str) -> None:
        """Asks the run's worker to stop at its next step (it saves a checkpoint first)."""
        self.update_run(self.get_run(run_id).id, cancel_requested=1)

    def cancel_requested(self, run_id: str) -> bool:
        with self._connect() as conn:
            row = conn.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row[0])

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    # -- metrics ----------------------------------------------------------------------------------------

    def log_metrics(self, run_id: str, step: int, values: dict[str, float]) -> None:
        """Appends scalar metrics of one step (committed at once)."""
        now = time.time()
        rows = [(run_id, int(step), name, float(value), now) for name, value in values.items()]
        with self._connect() as conn:
            conn.executemany("INSERT INTO metrics (run_id, step, name, value, time) VALUES (?,?,?,?,?)", rows)

    def metrics(self, run_id: str, names: Iterable[str] | None = None) -> dict[str, list[tuple[int, float]]]:
        """``{name: [(step, value), ...]}`` sorted by step; later rows for a step win (after a resume)."""
        query, args = "SELECT step, name, value FROM metrics WHERE run_id = ?", [run_id]
        names = list(names) if names else None
        if names:
            query += f" AND name IN ({','.join('?' * len(names))})"
            args += names
        query += " ORDER BY rowid"
        with self._connect() as conn:
            rows = conn.execute(query, args).fetchall()
        series: dict[str, dict[int, float]] = {}
        for step, name, value in rows:
            series.setdefault(name, {})[step] = value
        return {name: sorted(points.items()) for name, points in series.items()}

    def truncate_metrics(self, run_id: str, after_step: int) -> None:
        """Drops metrics logged after ``after_step`` (a resumed run recomputes them)."""
        with self._connect() as conn:
            conn.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, int(after_step)))

    # -- evaluations and artifacts ---------------------------------------------------------------------

    def add_evaluation(self, run_id: str, split: str, episodes: int, result: dict[str, Any]) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO evaluations (run_id, created, split, episodes, result) VALUES (?,?,?,?,?)",
                (run_id, time.time(), split, int(episodes), json.dumps(result)),
            )

    def evaluations(self, run_id: str) -> list[dict[str, Any]]:
        """Evaluations of a run, newest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT created, split, episodes, result FROM evaluations WHERE run_id = ? ORDER BY created DESC",
                (run_id,),
            ).fetchall()
        return [
            {"created": _iso(r["created"]), "split": r["split"], "episodes": r["episodes"], **json.loads(r["result"])}
            for r in rows
        ]

    def add_artifact(self, run_id: str, name: str, kind: str, path: str | os.PathLike, step: int | None = None) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO artifacts (run_id, name, kind, path, step, created) VALUES (?,?,?,?,?,?)",
                (run_id, name, kind, str(path), step, time.time()),
            )

    def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT name, kind, path, step FROM artifacts WHERE run_id = ? ORDER BY created", (run_id,)
            ).fetchall()
        return [dict(r) for r in rows]

    # -- uploads ----------------------------------------------------------------------------------------

    def add_upload(self, name: str, owner: str, *, archive_bytes: int, unpacked_bytes: int, files: int) -> None:
        """Records an uploaded image folder and its owner."""
        with self._connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO uploads (name, owner, created, archive_bytes, unpacked_bytes, files) "
                "VALUES (?,?,?,?,?,?)", (name, owner, time.time(), int(archive_bytes), int(unpacked_bytes), int(files)),
            )

    def upload_record(self, name: str) -> dict[str, Any] | None:
        """The upload's row (``name``, ``owner``, ``created``, sizes), or ``None``."""
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM uploads WHERE name = ?", (name,)).fetchone()
        return dict(row) if row else None

    def upload_records(self, owner: str | None = None) -> list[dict[str, Any]]:
        """Every recorded upload (of ``owner``), newest first."""
        query, args = "SELECT * FROM uploads", ()
        if owner is not None:
            query, args = query + " WHERE owner = ?", (owner,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY created DESC", args).fetchall()
        return [dict(r) for r in rows]

    def delete_upload_record(self, name: str) -> None:
        with self._connect() as conn:
            conn.execute("DELETE FROM uploads WHERE name = ?", (name,))

    # -- helpers ----------------------------------------------------------------------------------------

    @staticmethod
    def _record(row: sqlite3.Row) -> RunRecord:
        data = dict(row)
        data["config"] = json.loads(data["config"])
        data["versions"] = json.loads(data["versions"] or "{}")
        data["cancel_requested"] = bool(data["cancel_requested"])
        return RunRecord(**data)

    def _reconcile(self, run: RunRecord) -> RunRecord:
        """A run marked running whose process is gone was interrupted; record that."""
        if run.status == "running" and not _pid_alive(run.pid, run.host):
            run.status = "interrupted"
            run.error = run.error or "The training process ended without finishing (killed or crashed)."
            self.update_run(run.id, status=run.status, error=run.error)
        elif run.status == "queued" and run.pid and not _pid_alive(run.pid, run.host):
            # Its worker was started (the launcher records the pid) and is gone before training began: the run
            # must not hold a worker slot for good. A failed run can be resumed or deleted.
            run.status = "failed"
            run.error = "The worker process ended before training started (see its worker log)."
            self.update_run(run.id, status=run.status, error=run.error, finished=time.time())
        return run


class _ClosingConnection:
    """A sqlite3 connection used as a context manager that also closes (sqlite3's own only commits)."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self._conn

    def __exit__(self, *exc: Any) -> None:
        self._conn.close()

    def execute(self, *args: Any) -> sqlite3.Cursor:
        return self._conn.execute(*args)

    def executescript(self, script: str) -> sqlite3.Cursor:
        return self._conn.executescript(script)

"""The run store: one SQLite file (WAL mode) holding runs, their metrics, phases, evaluations and artifact paths.

One writer per run (its training process), many readers (CLI, dashboard). Every write commits at once, so
nothing a run wrote is lost if its process dies. No TensorFlow here: the dashboard reads the store directly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
FINISHED = ("completed", "failed", "cancelled", "interrupted")

#: What a run's worker is doing, one row per stretch of one phase (training and validating alternate), in the order
#: they happened: ``finished`` is NULL while it lasts; ``done`` of ``total`` counts its items (episodes), if any.
_PHASES_TABLE = """
CREATE TABLE IF NOT EXISTS phases (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    done INTEGER,
    total INTEGER,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS phases_run ON phases(run_id);
"""

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
    owner TEXT NOT NULL DEFAULT 'local',
    tags TEXT NOT NULL DEFAULT '[]',
    notes TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_run_name_step ON metrics(run_id, name, step);
-- Each run's newest value of each metric (the one of its highest step), kept by the trigger below, so a table of
-- thousands of runs reads their metrics without scanning every logged point.
-- (seq: the rowid of the metrics row it holds, so any change of a run's latest values changes its largest seq.)
CREATE TABLE IF NOT EXISTS latest_metrics (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    step INTEGER NOT NULL,
    value REAL NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, name)
);
CREATE TRIGGER IF NOT EXISTS metrics_keep_latest AFTER INSERT ON metrics BEGIN
    INSERT INTO latest_metrics (run_id, name, step, value, seq) VALUES (new.run_id, new.name, new.step, new.value,
                                                                        new.rowid)
    ON CONFLICT (run_id, name) DO UPDATE SET step = excluded.step, value = excluded.value, seq = excluded.seq
    WHERE excluded.step >= latest_metrics.step;
END;
CREATE TABLE IF NOT EXISTS evaluations (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    created REAL NOT NULL,
    split TEXT NOT NULL,
    episodes INTEGER NOT NULL,
    result TEXT NOT NULL,
    seed INTEGER
);
CREATE INDEX IF NOT EXISTS evaluations_run ON evaluations(run_id, created);
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
""" + _PHASES_TABLE


#: Fills ``latest_metrics`` from ``metrics`` (``where``: an extra condition on ``metrics``): per run and name the
#: value of the highest step, the last row written for that step winning (as :meth:`RunStore.metrics` reads).
_LATEST_FROM_METRICS = (
    "INSERT OR REPLACE INTO latest_metrics (run_id, name, step, value, seq) "
    "SELECT g.run_id, g.name, m.step, m.value, m.rowid "
    "FROM (SELECT DISTINCT run_id, name FROM metrics WHERE 1=1{where}) g "
    "JOIN metrics m ON m.rowid = (SELECT rowid FROM metrics WHERE run_id = g.run_id AND name = g.name "
    "ORDER BY step DESC, rowid DESC LIMIT 1)"
)

#: The schema's version, kept in ``PRAGMA user_version``. 0: the first release (no owners, no uploads table).
SCHEMA_VERSION = 4

#: The phases a run's worker goes through, in order (``RunStore.start_phase``); training and validating alternate.
PHASES = ("starting", "loading", "compiling", "training", "validating", "meta-testing", "report")

#: ``{version: statements}`` that bring a store of ``version - 1`` to ``version``; applied in order on open.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT 'local'",
        # The uploads table is created by the schema script itself (CREATE TABLE IF NOT EXISTS).
    ),
    2: (
        # Each evaluation keeps the seed of its episodes; every earlier fixed evaluation used seed 2017
        # (EVAL_SEED), and a benchmark's fixed tasks have none.
        "ALTER TABLE evaluations ADD COLUMN seed INTEGER",
        "UPDATE evaluations SET seed = 2017 WHERE seed IS NULL AND split NOT LIKE 'benchmark:%'",
    ),
    3: (
        # Tags and notes beside the name; each run's latest metric values, filled from the points it logged (the
        # schema script then adds the trigger that keeps them).
        "ALTER TABLE runs ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE runs ADD COLUMN notes TEXT NOT NULL DEFAULT ''",
        "CREATE TABLE IF NOT EXISTS latest_metrics (run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, "
        "name TEXT NOT NULL, step INTEGER NOT NULL, value REAL NOT NULL, seq INTEGER NOT NULL DEFAULT 0, "
        "PRIMARY KEY (run_id, name))",
        _LATEST_FROM_METRICS.format(where=""),
    ),
    4: (
        # Each run's phases with their times (older runs have none: readers fall back to started/finished).
        *[s.strip() for s in _PHASES_TABLE.split(";") if s.strip()],
    ),
}


class RunNotFoundError(KeyError):
    """Raised when a run id is not in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class AmbiguousRunError(RunNotFoundError):
    """Raised when a run id prefix matches more than one run (the message lists them)."""


class RunActiveError(ValueError):
    """Raised when a queued or running run is deleted without ``force``."""


class StoreError(RuntimeError):
    """Raised when a file cannot be opened as a metalab run store; the message names it and says what to do.

    The file is left as it was: nothing is written to a file that is refused.
    """


#: The first 16 bytes of every SQLite database file.
_SQLITE_MAGIC = b"SQLite format 3\x00"
#: Columns every metalab store has had since the first release (schema version 0).
_V0_RUN_COLUMNS = frozenset({"id", "dataset", "algorithm", "config", "status", "created", "step", "pid", "host"})


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
    tags: list[str] = field(default_factory=list)
    notes: str = ""

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
            "tags": list(self.tags),
            "notes": self.notes,
        }

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["tags"] = list(self.tags)
        for key in ("created", "started", "finished", "updated"):
            data[key] = _iso(data[key])
        return data


def _where(path: Path) -> str:
    """``runs.sqlite in /folder (METALAB_HOME)``: the file's name and the folder it is in."""
    folder = path.parent
    home = os.environ.get("METALAB_HOME")
    if not home:
        try:
            import platformdirs

            home = platformdirs.user_data_dir("metalab")
        except ImportError:  # pragma: no cover - a dependency of metalab
            home = None
    try:
        is_home = home is not None and Path(home).expanduser().resolve() == folder.resolve()
    except OSError:
        is_home = False
    return f"{path.name} in {folder}" + (" (METALAB_HOME)" if is_home else "")


def _check(check: str, items: list[str], repaired: int, detail: str) -> dict[str, Any]:
    """One row of :meth:`RunStore.doctor`'s report."""
    status = "ok" if not items else "repaired" if repaired >= len(items) else "problem"
    return {"check": check, "status": status, "found": len(items), "repaired": repaired,
            "detail": detail if items else "", "items": items[:50]}


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """A sortable, collision-resistant run id such as ``20261126-081512-3fa9c1``."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _process_info(pid: int) -> tuple[str, float] | None:
    """``(state, started_at)`` of a local process from ``/proc``: its state letter (``"Z"``: zombie) and the wall
    time it started (field 22 of ``/proc/<pid>/stat``, clock ticks since boot, plus the boot time); ``None``
    where ``/proc`` cannot tell (not Linux, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
        with open("/proc/stat") as fh:
            boot = next(float(line.split()[1]) for line in fh if line.startswith("btime "))
        # The command name (field 2) may hold spaces and parentheses: split after its closing one.
        fields = stat[stat.rindex(")") + 2:].split()
        return fields[0], boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_alive(pid: int | None, host: str | None, not_after: float | None = None) -> bool:
    """Whether the run's worker ``pid`` on ``host`` may still be alive (``True`` whenever this host cannot tell).

    Args:
        not_after: When the worker was known to be running already (the run's ``started``, or the time its pid
            was recorded): a process under that pid which started later is another process that reused the pid.
    """
    if not pid or host != os.uname().nodename:
        return True  # cannot tell for another host: trust the recorded status
    if pid == os.getpid():
        return True  # a run trained in this very process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user: /proc still tells its state and start
    info = _process_info(pid)
    if info is None:
        return True
    state, started_at = info
    if state in ("Z", "X"):
        return False  # a zombie (e.g. a child of this process) still answers kill(0)
    # Boot time is whole seconds and start ticks 1/100 s: allow for that rounding.
    return not (not_after is not None and started_at > not_after + 2.0)


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
        self.runs_dir = Path(runs_dir) if runs_dir else self.path.parent / "runs"
        self._watch: tuple[int, sqlite3.Connection] | None = None  # see data_version
        self._watch_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not os.path.lexists(self.path):
                self._create()
            self._open()
        except StoreError:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"The run store {_where(self.path)} could not be opened ({_reason(exc)}). Check that the folder "
                f"exists and that you may read and write it. Received: path={str(self.path)!r}"
            ) from None

    def _create(self) -> None:
        """Makes a new store file whole, then links it in place: no process ever sees a half-made store, so an
        empty or table-less file at ``path`` is never one of ours (and is refused, not silently reused)."""
        tmp = self.path.with_name(f".{self.path.name}.new-{os.getpid()}-{secrets.token_hex(3)}")
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            finally:
                conn.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another process made the store first: open that one
            except OSError:  # a filesystem without hard links
                if not os.path.lexists(self.path):
                    os.replace(tmp, self.path)
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{tmp}{suffix}").unlink(missing_ok=True)

    def _open(self) -> None:
        """Checks that ``path`` is a metalab store before anything is written to it, then migrates it."""
        if self.path.is_dir():
            raise StoreError(self._refusal("it is a folder, not a file", "Move it away, or set METALAB_HOME to "
                                           "another folder"))
        if self.path.stat().st_size == 0:
            raise StoreError(self._refusal(
                "it is empty (0 bytes); an empty file is not a store, and a store that lost its contents looks "
                "just like this", "If it should hold your runs, restore it from a backup; otherwise delete it or move "
                "it away to start a new store there"))
        with open(self.path, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
        if head != _SQLITE_MAGIC:
            raise StoreError(self._refusal(
                "it is not an SQLite database (it does not start with the SQLite header)",
                "If it should hold your runs, restore it from a backup; otherwise move it away or delete it to start "
                "a new store there, or set METALAB_HOME to the folder that holds your store"))
        sidecars = [Path(f"{self.path}{suffix}") for suffix in ("-wal", "-shm")]
        had_sidecars = any(p.exists() for p in sidecars)
        try:
            with self._connect() as conn:
                self._check_schema(conn)
                conn.execute("PRAGMA journal_mode=WAL")
                self._migrate(conn)
                conn.execute("SELECT count(*) FROM runs").fetchone()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "malformed" not in str(exc):
                raise
            # SQLite leaves an empty -wal and its -shm beside a file it could not read: they were ours, and hold
            # nothing, so the folder is left as it was found.
            if not had_sidecars and sidecars[0].exists() and sidecars[0].stat().st_size == 0:
                for sidecar in sidecars:
                    sidecar.unlink(missing_ok=True)
            raise StoreError(self._damaged(exc)) from None

    def _check_schema(self, conn: Any) -> None:
        """Refuses (before any write) a database without metalab's tables, or one of a newer schema."""
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()}
        if "runs" not in tables:
            found = f"its tables are {', '.join(sorted(tables)[:8])}" if tables else "it has no tables at all"
            raise StoreError(self._refusal(
                f"it is an SQLite database without metalab's tables ({found})",
                "Set METALAB_HOME to the folder that holds your metalab store, or move this file away to start a new "
                "store there"))
        columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)").fetchall()}
        missing = sorted(_V0_RUN_COLUMNS - columns)
        if missing or not {"metrics", "artifacts", "evaluations"} <= tables:
            raise StoreError(self._refusal(
                "it is an SQLite database whose runs table is not metalab's (missing: "
                f"{', '.join(missing or sorted({'metrics', 'artifacts', 'evaluations'} - tables))})",
                "Set METALAB_HOME to the folder that holds your metalab store, or move this file away to start a new "
                "store there"))
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"The run store {_where(self.path)} has schema version {version}, newer than this metalab's "
                f"{SCHEMA_VERSION}: a newer metalab wrote it. Upgrade metalab to open it; this one left the file "
                f"untouched. Received: user_version={version}"
            )

    def _refusal(self, reason: str, advice: str) -> str:
        return (f"The file {_where(self.path)} is not a metalab run store: {reason}. {advice}. metalab left the file "
                f"untouched. Received: path={str(self.path)!r}")

    def _damaged(self, exc: BaseException) -> str:
        return (f"The run store {_where(self.path)} is damaged ({_reason(exc)}): it may be truncated or corrupted. "
                f"Restore it from a backup, or recover what SQLite can read with "
                f"`sqlite3 {self.path.name} .recover | sqlite3 recovered.sqlite` and use that file; move the damaged "
                f"file away to start a new store there. metalab left the file untouched. "
                f"Received: path={str(self.path)!r}")

    def _migrate(self, conn: Any) -> None:
        """Creates the schema, or brings an older store's schema up to :data:`SCHEMA_VERSION`."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()}
        if "runs" not in tables:
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"The run store {_where(self.path)} has schema version {version}, newer than this metalab's "
                f"{SCHEMA_VERSION}: a newer metalab wrote it. Upgrade metalab to open it; this one left the file "
                f"untouched. Received: user_version={version}"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _MIGRATIONS[target]:
                    added = re.match(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", statement)
                    if added and added.group(2) in {r[1] for r in conn.execute(
                            f"PRAGMA table_info({added.group(1)})").fetchall()}:
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
            if row is None and run_id:
                # Accept a unique prefix, as git does for commits: an exact prefix (no LIKE, whose % and _ match
                # anything).
                rows = conn.execute(
                    "SELECT * FROM runs WHERE substr(id, 1, ?) = ? ORDER BY id LIMIT 11", (len(run_id), run_id)
                ).fetchall()
                if len(rows) > 1:
                    shown = ", ".join(r["id"] for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
                    raise AmbiguousRunError(
                        f"The run id prefix {run_id!r} matches {'more than 10' if len(rows) > 10 else len(rows)} runs "
                        f"({shown}); give more of the id. Received: run={run_id!r}"
                    )
                if rows:
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
        """Runs, newest first, optionally filtered.

        With a ``status`` filter, queued and running runs are first reconciled with their workers, so a run whose
        worker died is found as ``interrupted`` (or ``failed``) before anything has read it.
        """
        if status:
            self._reconcile_active()
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
        runs = []
        for row in rows:
            try:
                runs.append(self._reconcile(self._record(row)))
            except RunNotFoundError:
                continue  # deleted since the query
        return runs

    def data_version(self) -> tuple[int, int]:
        """A value that changes whenever any connection (any process) commits to the store, or the file is replaced.

        The file's inode and SQLite's ``PRAGMA data_version``, read on one connection this object keeps open for it
        alone: a cache of what the store holds (the runs table of thousands of runs) is current while the value is
        unchanged.
        """
        with self._watch_lock:
            inode = os.stat(self.path).st_ino
            if self._watch is None or self._watch[0] != inode:  # first use, or a store restored over this one
                if self._watch is not None:
                    self._watch[1].close()
                self._watch = (inode, sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                                      check_same_thread=False))
            return inode, int(self._watch[1].execute("PRAGMA data_version").fetchone()[0])

    def reconcile_active(self) -> None:
        """Records queued or running runs whose worker is dead as interrupted (or failed), without listing runs."""
        self._reconcile_active()

    def _reconcile_active(self) -> None:
        """Reconciles every queued or running run with its worker (those found dead are recorded so)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM runs WHERE status IN ('queued', 'running')").fetchall()
        for row in rows:
            try:
                self._reconcile(self._record(row))
            except RunNotFoundError:
                continue

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Sets columns of a run (``config`` and ``versions`` may be dicts)."""
        if not fields:
            return
        for key in ("config", "versions", "tags"):
            if key in fields and not isinstance(fields[key], str):
                fields[key] = json.dumps(fields[key], sort_keys=key != "tags")
        fields["updated"] = time.time()
        columns = ", ".join(f"{key} = ?" for key in fields)
        with self._connect() as conn:
            cur = conn.execute(f"UPDATE runs SET {columns} WHERE id = ?", (*fields.values(), run_id))
            if cur.rowcount == 0:
                raise RunNotFoundError(f"No run with id {run_id!r} in {self.path}. Received: run={run_id!r}")

    def rename_run(self, run_id: str, name: str) -> None:
        self.update_run(self.get_run(run_id).id, name=name)

    def set_tags(self, run_id: str, tags: Iterable[str]) -> None:
        """Replaces the run's tags (kept in the order given, duplicates dropped)."""
        self.update_run(self.get_run(run_id).id, tags=list(dict.fromkeys(tags)))

    def set_notes(self, run_id: str, notes: str) -> None:
        """Replaces the run's free-text notes."""
        self.update_run(self.get_run(run_id).id, notes=notes)

    def get_runs(self, run_ids: Iterable[str]) -> list[RunRecord]:
        """The runs of ``run_ids`` (exact ids; those not in the store are left out), newest first, in one query;
        unlike :meth:`get_run`, a run's worker is not checked (see :meth:`reconcile_active`)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM runs WHERE id IN (SELECT value FROM json_each(?)) "
                                "ORDER BY created DESC, id DESC", (json.dumps(list(run_ids)),)).fetchall()
        return [self._record(r) for r in rows]

    def run_stamps(self) -> list[tuple[str, tuple]]:
        """``[(run id, stamp)]`` of every run, newest first, in one query: a run's stamp changes whenever its row,
        its evaluations or its latest metric values change, so a cache of per-run data refreshes only those."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT r.id, r.updated, r.status, (SELECT max(rowid) FROM evaluations e WHERE e.run_id = r.id), "
                "(SELECT max(seq) FROM latest_metrics l WHERE l.run_id = r.id) FROM runs r "
                "ORDER BY r.created DESC, r.id DESC").fetchall()
        return [(r[0], tuple(r[1:])) for r in rows]

    def run_ids(self) -> list[str]:
        """Every run id in the store, sorted (whoever owns it)."""
        with self._connect() as conn:
            return [r[0] for r in conn.execute("SELECT id FROM runs ORDER BY id").fetchall()]

    def delete_run(self, run_id: str, *, force: bool = False, wait_s: float = 30.0, poll_s: float = 0.2) -> RunRecord:
        """Deletes a run, its metrics, evaluations and artifact folder.

        Args:
            run_id: The run's id or a unique prefix.
            force: Also delete a running run (or a queued one whose worker was started): request its cancel,
                wait up to ``wait_s`` seconds for its worker to stop (its status leaves queued/running, or its
                process is found dead), then delete it even if it has not stopped (its worker then ends at its
                next write to the store).
            wait_s: How long ``force`` waits for the worker.
            poll_s: How often it looks.

        Returns:
            The run as it was when deleted (still ``running`` if its worker did not stop in time).

        Raises:
            RunActiveError: The run is running, or queued with a worker started, and ``force`` is false.
            RunNotFoundError: No such run.
        """
        run = self.get_run(run_id)
        # A queued run with no recorded worker (never launched) has nothing that could still write to it.
        if run.status == "running" or (run.status == "queued" and run.pid):
            if not force:
                raise RunActiveError(
                    f"Run {run.id} is {run.status}; cancel it and wait for it to stop before deleting it, or delete "
                    f"it with force. Received: run={run_id!r}, status={run.status!r}"
                )
            self.request_cancel(run.id)
            deadline = time.monotonic() + max(0.0, wait_s)
            while (run.status == "running" or run.pid) and run.status in ("queued", "running"):
                if time.monotonic() >= deadline:
                    break
                time.sleep(poll_s)
                run = self.get_run(run.id)
                if run.status == "running" and not run.cancel_requested:
                    self.request_cancel(run.id)  # a worker that was starting cleared the request
        with self._connect() as conn:
            conn.execute("DELETE FROM runs WHERE id = ?", (run.id,))
        shutil.rmtree(self.run_dir(run.id), ignore_errors=True)
        return run

    def request_cancel(self, run_id: str) -> None:
        """Asks the run's worker to stop at its next step (it saves a checkpoint first)."""
        self.update_run(self.get_run(run_id).id, cancel_requested=1)

    def cancel_requested(self, run_id: str) -> bool:
        """Whether the run's worker should stop: a cancel was requested, or the run was deleted under it."""
        with self._connect() as conn:
            row = conn.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row is None or bool(row[0])

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    # -- metrics ----------------------------------------------------------------------------------------

    def log_metrics(self, run_id: str, step: int, values: dict[str, float]) -> None:
        """Appends scalar metrics of one step (committed at once).

        Raises:
            ValueError: A value is not a finite number (SQLite would store NaN as NULL); nothing is written.
        """
        now = time.time()
        for name, value in values.items():
            if not math.isfinite(float(value)):
                raise ValueError(f"Metric {name} of step {step} is {float(value)}; the store keeps finite numbers "
                                 f"only. Received: {name}={float(value)}")
        rows = [(run_id, int(step), name, float(value), now) for name, value in values.items()]
        with self._connect() as conn, self._deleted_as_not_found(run_id):
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
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, int(after_step)))
            conn.execute("DELETE FROM latest_metrics WHERE run_id = ?", (run_id,))
            conn.execute(_LATEST_FROM_METRICS.format(where=" AND run_id = ?"), (run_id,))
            conn.execute("COMMIT")

    def latest_metrics(self, run_ids: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
        """``{run id: {metric name: value at its highest step}}`` of every run (or of ``run_ids``), in one query."""
        query, args = "SELECT run_id, name, value FROM latest_metrics", []
        if run_ids is not None:
            query += " WHERE run_id IN (SELECT value FROM json_each(?))"
            args = [json.dumps(list(run_ids))]
        with self._connect() as conn:
            rows = conn.execute(query, args).fetchall()
        latest: dict[str, dict[str, float]] = {}
        for run_id, name, value in rows:
            latest.setdefault(run_id, {})[name] = value
        return latest

    # -- phases ---------------------------------------------------------------------------------------

    def start_phase(self, run_id: str, name: str, *, total: int | None = None, detail: str = "",
                    at: float | None = None) -> None:
        """Records that the run's worker entered phase ``name`` (one of :data:`PHASES`) now (or at ``at``).

        The phase it was in ends at the same moment, in the same transaction, so a reader never sees two phases at
        once or a gap between them. ``total``: the items (episodes) the phase will go through, when it counts any.
        """
        now = time.time() if at is None else float(at)
        with self._connect() as conn, self._deleted_as_not_found(run_id):
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("UPDATE phases SET finished = ? WHERE run_id = ? AND finished IS NULL", (now, run_id))
                conn.execute("INSERT INTO phases (run_id, name, started, done, total, detail) VALUES (?,?,?,?,?,?)",
                             (run_id, name, now, 0 if total is not None else None,
                              None if total is None else int(total), detail))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def phase_progress(self, run_id: str, done: int, total: int | None = None) -> None:
        """Sets how many items (episodes) of the current phase are done (and its total, if given)."""
        with self._connect() as conn:
            conn.execute(
                "UPDATE phases SET done = ?, total = coalesce(?, total) WHERE rowid = (SELECT max(rowid) FROM phases "
                "WHERE run_id = ? AND finished IS NULL)", (int(done), None if total is None else int(total), run_id))

    def end_phases(self, run_id: str, at: float | None = None) -> None:
        """Ends the run's current phase (its worker is done: the run completed, stopped or failed)."""
        with self._connect() as conn:
            conn.execute("UPDATE phases SET finished = ? WHERE run_id = ? AND finished IS NULL",
                         (time.time() if at is None else float(at), run_id))

    def phases(self, run_id: str) -> list[dict[str, Any]]:
        """The run's phases in the order they happened: ``name``, ``started``, ``finished`` (``None`` while it
        lasts), ``done``, ``total`` (``None`` for a phase that counts nothing) and ``detail``."""
        with self._connect() as conn:
            rows = conn.execute("SELECT name, started, finished, done, total, detail FROM phases WHERE run_id = ? "
                                "ORDER BY rowid", (run_id,)).fetchall()
        return [dict(r) for r in rows]

    # -- evaluations and artifacts ---------------------------------------------------------------------

    def add_evaluation(self, run_id: str, split: str, episodes: int, result: dict[str, Any],
                       seed: int | None = None) -> None:
        """Stores one evaluation: its split, episode count, episode seed (``None``: fixed tasks) and result.

        Every evaluation is kept; :func:`metalab.core.reports.scores.headline` picks the canonical one.
        """
        with self._connect() as conn, self._deleted_as_not_found(run_id):
            conn.execute(
                "INSERT INTO evaluations (run_id, created, split, episodes, result, seed) VALUES (?,?,?,?,?,?)",
                (run_id, time.time(), split, int(episodes), json.dumps(result), None if seed is None else int(seed)),
            )

    def evaluations(self, run_id: str) -> list[dict[str, Any]]:
        """Evaluations of a run, newest first, each with ``created``, ``split``, ``episodes`` and ``seed``."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT created, split, episodes, seed, result FROM evaluations WHERE run_id = ? "
                "ORDER BY created DESC, rowid DESC",
                (run_id,),
            ).fetchall()
        return [
            {**json.loads(r["result"]), "created": _iso(r["created"]), "split": r["split"], "episodes": r["episodes"],
             "seed": r["seed"]}
            for r in rows
        ]

    def evaluations_by_run(self, run_ids: Iterable[str] | None = None,
                           split: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """``{run id: its evaluations, newest first}`` of every run (or of ``run_ids``; of one ``split``), in one
        query: the runs table scores thousands of runs with this, not one :meth:`evaluations` call each."""
        query, args = "SELECT run_id, created, split, episodes, seed, result FROM evaluations WHERE 1=1", []
        if run_ids is not None:
            query += " AND run_id IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(list(run_ids)))
        if split is not None:
            query += " AND split = ?"
            args.append(split)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY run_id, created DESC, rowid DESC", args).fetchall()
        found: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            found.setdefault(r["run_id"], []).append(
                {**json.loads(r["result"]), "created": _iso(r["created"]), "split": r["split"],
                 "episodes": r["episodes"], "seed": r["seed"]})
        return found

    def add_artifact(self, run_id: str, name: str, kind: str, path: str | os.PathLike, step: int | None = None) -> None:
        with self._connect() as conn, self._deleted_as_not_found(run_id):
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

    # -- checks -----------------------------------------------------------------------------------------

    def doctor(self, *, repair: bool = False, min_age_s: float = 60.0) -> dict[str, Any]:
        """Checks the store and its run folders; with ``repair``, fixes what can be fixed without losing data.

        Checks: SQLite's ``integrity_check``; metrics, evaluations and artifacts rows whose run is gone; folders
        under :attr:`runs_dir` with no run (older than ``min_age_s``, so a run being made is not one); artifact
        rows whose file is missing; queued or running runs whose worker is dead. Repairs: deletes orphan rows,
        moves orphan folders to ``runs/.orphans/``, points an artifact row at its file when the file is in the
        run's folder (the store moved) or else forgets the row, and records dead runs as interrupted (or failed).
        A damaged database is never repaired here (writing to it could only make it worse).

        Returns:
            ``{"store", "schema_version", "healthy", "checks": [{"check", "status", "found", "repaired",
            "detail", "items"}]}``; ``status`` is ``ok``, ``repaired`` or ``problem``; ``healthy`` is false
            while any check is a problem.
        """
        with self._connect() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            try:
                problems = [r[0] for r in conn.execute("PRAGMA integrity_check(20)").fetchall()]
            except sqlite3.DatabaseError as exc:
                problems = [str(exc)]
        damaged = problems != ["ok"]
        checks = [_check("integrity", problems if damaged else [], 0,
                         "SQLite reports damage: restore runs.sqlite from a backup, or recover it with "
                         "`sqlite3 FILE .recover`; nothing else is repaired in a damaged store")]
        repair = repair and not damaged
        for name, check in (("orphan rows", self._orphan_rows), ("orphan folders", self._orphan_folders),
                            ("missing files", self._missing_files), ("dead workers", self._dead_workers)):
            try:
                items, repaired, detail = check(repair, min_age_s)
            except sqlite3.DatabaseError as exc:
                items, repaired, detail = [f"could not be checked: {exc}"], 0, "the store could not be read"
            checks.append(_check(name, items, repaired, detail))
        return {"store": str(self.path), "schema_version": version,
                "healthy": all(c["status"] != "problem" for c in checks), "checks": checks}

    def _orphan_rows(self, repair: bool, min_age_s: float) -> tuple[list[str], int, str]:
        """Metrics, evaluations and artifacts rows whose run is gone (written without foreign keys)."""
        orphans: list[str] = []
        with self._connect() as conn:
            for table in ("metrics", "evaluations", "artifacts", "phases"):
                where = f"FROM {table} WHERE run_id NOT IN (SELECT id FROM runs)"
                found = conn.execute(f"SELECT run_id, count(*) {where} GROUP BY run_id").fetchall()
                orphans += [f"{table}: {count} rows of run {run_id}" for run_id, count in found]
                if repair and found:
                    conn.execute(f"DELETE {where}")
            if repair:  # the latest values of orphan metrics (kept by the trigger) go with them
                conn.execute("DELETE FROM latest_metrics WHERE run_id NOT IN (SELECT id FROM runs)")
        fixed = len(orphans) if repair else 0
        return orphans, fixed, "metrics, evaluations or artifacts rows whose run is gone" + (
            "; deleted" if fixed else "; `metalab doctor --repair` deletes them")

    def _orphan_folders(self, repair: bool, min_age_s: float) -> tuple[list[str], int, str]:
        """Run folders without a run: a delete that could not remove its folder, or a worker writing after one."""
        with self._connect() as conn:
            ids = {r[0] for r in conn.execute("SELECT id FROM runs").fetchall()}
        folders: list[Path] = []
        if self.runs_dir.is_dir():
            now = time.time()
            for entry in sorted(self.runs_dir.iterdir()):
                if entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir() or entry.name in ids:
                    continue
                try:
                    if now - entry.stat().st_mtime < min_age_s:
                        continue  # perhaps a run being made or installed right now
                except OSError:
                    continue
                folders.append(entry)
        moved = 0
        if repair and folders:
            attic = self.runs_dir / ".orphans"
            attic.mkdir(exist_ok=True)
            for entry in folders:
                target, n = attic / entry.name, 1
                while target.exists():
                    target, n = attic / f"{entry.name}-{n}", n + 1
                try:
                    entry.rename(target)
                    moved += 1
                except OSError:
                    continue
        return [f"runs/{f.name}" for f in folders], moved, "run folders with no run in the store" + (
            "; moved to runs/.orphans/" if moved else "; `metalab doctor --repair` moves them to runs/.orphans/")

    def _missing_files(self, repair: bool, min_age_s: float) -> tuple[list[str], int, str]:
        """Artifact rows whose file is gone: its run folder was removed, or the store was moved elsewhere."""
        with self._connect() as conn:
            rows = conn.execute("SELECT run_id, name, path FROM artifacts WHERE run_id IN (SELECT id FROM runs)"
                                ).fetchall()
        missing: list[tuple[str, str, str, Path | None]] = []
        for run_id, name, path in rows:
            path = Path(path)
            if path.exists():
                continue
            here = None
            if run_id in path.parts:  # the same file under this store's folder for the run
                index = len(path.parts) - 1 - path.parts[::-1].index(run_id)
                candidate = self.run_dir(run_id).joinpath(*path.parts[index + 1:])
                here = candidate if candidate.exists() else None
            missing.append((run_id, name, str(path), here))
        mended = 0
        if repair and missing:
            with self._connect() as conn:
                for run_id, name, _, here in missing:
                    if here is not None:
                        conn.execute("UPDATE artifacts SET path = ? WHERE run_id = ? AND name = ?",
                                     (str(here), run_id, name))
                    else:
                        conn.execute("DELETE FROM artifacts WHERE run_id = ? AND name = ?", (run_id, name))
                    mended += 1
        items = [f"run {r}: {n} at {p}" + (" (found in the run's folder)" if h else "") for r, n, p, h in missing]
        return items, mended, "artifact rows (checkpoints, report data) whose file is gone" + (
            "; pointed at the file in the run's folder where it was found, otherwise forgotten (such a run keeps its "
            "metrics and evaluations; without a checkpoint it cannot be evaluated or resumed)" if mended
            else "; `metalab doctor --repair` points them at the run's folder or forgets them")

    def _dead_workers(self, repair: bool, min_age_s: float) -> tuple[list[str], int, str]:
        """Queued or running runs whose worker process is gone (read raw: reading through get_run would fix them)."""
        with self._connect() as conn:
            active = [self._record(r) for r in conn.execute(
                "SELECT * FROM runs WHERE status IN ('queued', 'running')").fetchall()]
        # The same tests as _reconcile: a running run's worker since `started`, a queued run's since its pid was
        # recorded (`updated`).
        dead = [run for run in active
                if (run.status == "running" and not _pid_alive(run.pid, run.host, run.started))
                or (run.status == "queued" and run.pid and not _pid_alive(run.pid, run.host, run.updated))]
        marked = 0
        if repair:
            for run in dead:
                try:
                    if self._reconcile(run).status not in ("queued", "running"):
                        marked += 1
                except RunNotFoundError:
                    marked += 1  # deleted meanwhile: nothing left to mark
        items = [f"run {r.id}: {r.status}, worker pid {r.pid} is gone" for r in dead]
        return items, marked, "runs recorded as queued or running whose worker process is dead" + (
            "; recorded as interrupted (or failed, if it never started)" if marked
            else "; `metalab doctor --repair` records them as interrupted")

    # -- helpers ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _deleted_as_not_found(self, run_id: str) -> Iterator[None]:
        """A row written for a run that is gone (deleted while its worker ran) raises :class:`RunNotFoundError`,
        as :meth:`update_run` does, instead of SQLite's foreign-key ``IntegrityError``."""
        try:
            yield
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" not in str(exc):
                raise
            raise RunNotFoundError(
                f"Run {run_id!r} is no longer in {self.path}: it was deleted. Received: run={run_id!r}"
            ) from None

    @staticmethod
    def _record(row: sqlite3.Row) -> RunRecord:
        data = dict(row)
        data["config"] = json.loads(data["config"])
        data["versions"] = json.loads(data["versions"] or "{}")
        data["cancel_requested"] = bool(data["cancel_requested"])
        try:
            tags = json.loads(data.get("tags") or "[]")
        except ValueError:
            tags = []
        data["tags"] = [str(t) for t in tags] if isinstance(tags, list) else []
        data["notes"] = data.get("notes") or ""
        return RunRecord(**data)

    def _reconcile(self, run: RunRecord) -> RunRecord:
        """A run marked running whose process is gone was interrupted; record that."""
        if run.status == "running" and not _pid_alive(run.pid, run.host, run.started):
            run.status = "interrupted"
            run.error = run.error or "The training process ended without finishing (killed or crashed)."
            # Its phase ended when the worker was last heard from (its last write), not when this found it dead.
            self.end_phases(run.id, at=run.updated)
            self.update_run(run.id, status=run.status, error=run.error)
        # A queued run's pid was recorded right after its worker was forked; `updated` is at or after that.
        elif run.status == "queued" and run.pid and not _pid_alive(run.pid, run.host, run.updated):
            # Its worker was started (the launcher records the pid) and is gone before training began: the run
            # must not hold a worker slot for good. A failed run can be resumed or deleted.
            run.status = "failed"
            run.error = "The worker process ended before training started (see its worker log)."
            self.end_phases(run.id, at=run.updated)
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

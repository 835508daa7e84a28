"""Showcase bundles: finished runs packed read-only (store rows, reports, checkpoints) for a shared dashboard.

``metalab demo pack RUN... --out DIR`` writes a bundle; a dashboard started with ``METALAB_SHOWCASE_DIR=DIR``
installs it into its own run store on start (once per run), owned by ``showcase``: every visitor may open the
reports, compare them and run Predict against them, and nobody but this machine's own user may change them.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from metalab.core.services.access import SHOWCASE_OWNER
from metalab.core.store import RunStore

__all__ = ["pack", "install", "MANIFEST"]

#: The bundle's table of contents: ``{"format": 1, "created": ..., "runs": [ids]}``.
MANIFEST = "showcase.json"
_FORMAT = 1
#: Run folder files a showcase serves; logs and half-written files stay home.
_KEEP_SUFFIXES = (".npz", ".json", ".html", ".png")


def pack(store: RunStore, run_ids: list[str], out: str | Path) -> Path:
    """Writes the finished runs ``run_ids`` of ``store`` as a showcase bundle in the new folder ``out``.

    Args:
        store: The run store holding the runs.
        run_ids: Ids (or unique prefixes) of completed runs.
        out: A folder that does not exist yet (or is empty).

    Returns:
        ``out`` as a ``Path``.

    Raises:
        ValueError: A run is not completed, or ``out`` is a non-empty folder.
        RunNotFoundError: A run id is unknown.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"demo pack writes into a new or empty folder. Received: out={str(out)!r}")
    runs = [store.get_run(run_id) for run_id in run_ids]
    if not runs:
        raise ValueError("demo pack needs at least one run. Received: runs=[]")
    for run in runs:
        if run.status != "completed":
            raise ValueError(f"Only completed runs can be shown; run {run.id} is {run.status}. Received: run={run.id!r}")
    out.mkdir(parents=True, exist_ok=True)
    bundle = RunStore(out / "runs.sqlite", out / "runs")
    for run in runs:
        _copy_run(store.path, store.run_dir(run.id), bundle, run.id, owner=SHOWCASE_OWNER)
    # One self-contained file (no -wal/-shm beside it), so the bundle can be mounted read-only.
    with sqlite3.connect(bundle.path) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    (out / MANIFEST).write_text(json.dumps({"format": _FORMAT, "created": time.time(),
                                            "runs": [r.id for r in runs]}, indent=2), encoding="utf-8")
    return out


def install(bundle_dir: str | Path, store: RunStore) -> list[str]:
    """Copies a bundle's runs into ``store`` (owned by ``showcase``) unless they are there already.

    Returns:
        The ids installed now.

    Raises:
        ValueError: ``bundle_dir`` holds no readable bundle (the message names the manifest, not a path).
    """
    bundle_dir = Path(bundle_dir)
    try:
        manifest = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))
        ids = [str(i) for i in manifest["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"The showcase folder has no readable {MANIFEST} ({type(exc).__name__}); write one with "
                         "`metalab demo pack RUN... --out DIR`.") from None
    if manifest.get("format") != _FORMAT:
        raise ValueError(f"The showcase bundle has format {manifest.get('format')!r}; this metalab reads {_FORMAT}. "
                         f"Received: format={manifest.get('format')!r}")
    installed = []
    for run_id in ids:
        try:
            store.get_run(run_id)
            continue
        except KeyError:
            pass
        _copy_run(bundle_dir / "runs.sqlite", bundle_dir / "runs" / run_id, store, run_id, owner=SHOWCASE_OWNER,
                  read_only=True)
        installed.append(run_id)
    return installed


def _copy_run(source_db: Path, src_dir: Path, target: RunStore, run_id: str, *, owner: str,
              read_only: bool = False) -> None:
    """Copies one run's rows (run, metrics, evaluations, artifacts) and its folder's served files.

    A bundle is read as an immutable file, so a read-only mount (or a folder the dashboard's user cannot write)
    serves as well as a writable one.
    """
    dst_dir = target.run_dir(run_id)
    source = f"file:{Path(source_db).resolve()}?mode=ro&immutable=1" if read_only else str(source_db)
    if read_only and not Path(source_db).is_file():
        raise ValueError("The showcase folder has no runs.sqlite; write it with `metalab demo pack RUN... --out DIR`.")
    try:
        rows = _read_rows(source, read_only, run_id)
    except sqlite3.Error as exc:
        raise ValueError(f"The showcase's runs.sqlite cannot be read ({type(exc).__name__}: {exc}).") from None
    if rows is None:
        raise ValueError(f"The showcase's manifest names run {run_id}, which its runs.sqlite lacks. "
                         f"Received: run={run_id!r}")
    run, metrics, evaluations, artifacts = rows
    _write_run(src_dir, dst_dir, target, run_id, owner, run, metrics, evaluations, artifacts)


def _read_rows(source: str, read_only: bool, run_id: str) -> tuple | None:
    with sqlite3.connect(source, uri=read_only) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if found is None:
            return None
        run = dict(found)
        metrics = [tuple(r) for r in conn.execute("SELECT run_id, step, name, value, time FROM metrics WHERE run_id = ?",
                                                  (run_id,))]
        # A bundle made before schema 2 has no seed column: its fixed evaluations all used seed 2017 (see the store's
        # migration 2), a benchmark's fixed tasks none.
        has_seed = "seed" in {r[1] for r in conn.execute("PRAGMA table_info(evaluations)")}
        seed = "seed" if has_seed else "CASE WHEN split LIKE 'benchmark:%' THEN NULL ELSE 2017 END"
        evaluations = [tuple(r) for r in conn.execute(
            f"SELECT run_id, created, split, episodes, result, {seed} FROM evaluations WHERE run_id = ?", (run_id,))]
        artifacts = [dict(r) for r in conn.execute("SELECT * FROM artifacts WHERE run_id = ?", (run_id,))]
    conn.close()
    return run, metrics, evaluations, artifacts


def _write_run(src_dir: Path, dst_dir: Path, target: RunStore, run_id: str, owner: str, run: dict[str, Any],
               metrics: list[tuple], evaluations: list[tuple], artifacts: list[dict[str, Any]]) -> None:
    if dst_dir.exists():
        shutil.rmtree(dst_dir)
    dst_dir.mkdir(parents=True)
    for path in sorted(src_dir.rglob("*")) if src_dir.is_dir() else []:
        if path.is_file() and not path.is_symlink() and path.suffix in _KEEP_SUFFIXES:
            dest = dst_dir / path.relative_to(src_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
    run.update(owner=owner, pid=None, host=None, cancel_requested=0)
    columns = ", ".join(run)
    with sqlite3.connect(target.path) as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"INSERT INTO runs ({columns}) VALUES ({', '.join('?' * len(run))})", tuple(run.values()))
        conn.executemany("INSERT INTO metrics (run_id, step, name, value, time) VALUES (?,?,?,?,?)", metrics)
        conn.executemany("INSERT INTO evaluations (run_id, created, split, episodes, result, seed) "
                         "VALUES (?,?,?,?,?,?)", evaluations)
        for artifact in artifacts:
            moved = _moved(Path(artifact["path"]), src_dir, dst_dir)
            if moved is not None and moved.exists():
                conn.execute("INSERT OR REPLACE INTO artifacts (run_id, name, kind, path, step, created) "
                             "VALUES (?,?,?,?,?,?)", (run_id, artifact["name"], artifact["kind"], str(moved),
                                                      artifact["step"], artifact["created"]))
    conn.close()


def _moved(path: Path, src_dir: Path, dst_dir: Path) -> Path | None:
    try:
        return dst_dir / path.resolve().relative_to(src_dir.resolve())
    except ValueError:
        return None  # an artifact outside the run's folder is not part of the showcase


def showcase_runs(store: RunStore) -> list[Any]:
    """The store's showcase runs, newest first."""
    return store.list_runs(owner=SHOWCASE_OWNER)

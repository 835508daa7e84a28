"""The run store under faults, on real SQLite files: files that are not stores are refused untouched, prefixes are
exact, killed and deleted runs are handled, and ``doctor`` finds and repairs what it safely can."""

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from metalab.core.store import (
    SCHEMA_VERSION,
    AmbiguousRunError,
    RunActiveError,
    RunNotFoundError,
    RunStore,
    StoreError,
)

CONFIG = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "backbone": "metalab.mlp", "steps": 10}


@pytest.fixture
def home(tmp_path, monkeypatch):
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("METALAB_HOME", str(folder))
    return folder


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(path, *phrases):
    """Opens ``path``, expects a StoreError naming the file and its folder, and checks nothing was written."""
    before = _digest(path)
    siblings = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(StoreError) as info:
        RunStore(path)
    message = " ".join(str(info.value).split())
    assert f"{path.name} in {path.parent} (METALAB_HOME)" in message
    for phrase in phrases:
        assert phrase in message, message
    assert "left the file untouched" in message
    assert _digest(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == siblings  # no -wal, -shm or new store beside it
    return message


def _full_store(path, runs=3, metrics=400):
    """A store of ``runs`` runs with ``metrics`` train/loss points each (written in one transaction per run)."""
    store = RunStore(path)
    ids = []
    for _ in range(runs):
        run_id = store.create_run(CONFIG)
        with sqlite3.connect(store.path) as conn:
            conn.executemany("INSERT INTO metrics (run_id, step, name, value, time) VALUES (?,?,?,?,?)",
                             [(run_id, step, name, 1.0 / (step + 1), 0.0) for step in range(metrics)
                              for name in ("train/loss", "train/accuracy")])
        conn.close()
        ids.append(run_id)
    return store, ids


# -- files that are not stores ----------------------------------------------------------------------------


def test_garbage_bytes_are_refused_with_what_to_do(home):
    path = home / "runs.sqlite"
    path.write_bytes(os.urandom(5000))
    _refused(path, "is not a metalab run store", "not an SQLite database", "move it away or delete it")


def test_a_zero_byte_file_is_not_silently_a_new_store(home):
    path = home / "runs.sqlite"
    path.touch()
    _refused(path, "empty (0 bytes)", "an empty file is not a store", "delete it or move it away to start a new store")
    assert path.stat().st_size == 0


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_a_truncated_store_is_refused_as_damaged(home, tmp_path, keep):
    source = tmp_path / "whole.sqlite"
    _full_store(source)
    data = source.read_bytes()
    path = home / "runs.sqlite"
    path.write_bytes(data[: max(100, int(len(data) * keep))])
    _refused(path, "is damaged", "truncated or corrupted", "Restore it from a backup", ".recover")


def test_another_sqlite_database_is_refused_and_left_as_it_was(home):
    path = home / "runs.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT); INSERT INTO notes (text) VALUES ('x');")
    conn.close()
    _refused(path, "without metalab's tables", "its tables are notes", "Set METALAB_HOME")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # never switched to WAL
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    conn.close()


def test_a_database_with_someone_elses_runs_table_is_refused(home):
    path = home / "runs.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE runs (id TEXT, distance REAL);")
    conn.close()
    _refused(path, "runs table is not metalab's", "missing: algorithm")


def test_an_empty_sqlite_database_is_refused(home):
    path = home / "runs.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=7")  # writes the header, no tables
    conn.close()
    _refused(path, "it has no tables at all")


def test_a_store_of_a_newer_schema_is_refused(home):
    path = home / "runs.sqlite"
    RunStore(path).create_run(CONFIG)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than this metalab's") as info:
        RunStore(path)
    assert "Upgrade metalab" in str(info.value) and "runs.sqlite in" in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_a_folder_where_the_store_should_be_is_refused(home):
    (home / "runs.sqlite").mkdir()
    with pytest.raises(StoreError, match="it is a folder"):
        RunStore(home / "runs.sqlite")


def test_a_new_store_is_made_whole_even_by_racing_processes(tmp_path):
    path = tmp_path / "new" / "runs.sqlite"
    errors = []

    def open_it():
        try:
            RunStore(path).create_run(CONFIG)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(RunStore(path).list_runs()) == 6
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.startswith("runs.sqlite")) == []
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


# -- run ids ----------------------------------------------------------------------------------------------


def test_prefixes_are_exact_not_like_patterns(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run = store.create_run(CONFIG, run_id="20260101-000000-fb14c7")
    for pattern in ("%fb14c7", "_0260101", "%", "2026010_", ""):
        with pytest.raises(RunNotFoundError):
            store.get_run(pattern)
    assert store.get_run("2026").id == run


def test_an_ambiguous_prefix_lists_the_matches(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    a = store.create_run(CONFIG, run_id="20260101-000000-aaaaaa")
    b = store.create_run(CONFIG, run_id="20260101-000000-bbbbbb")
    with pytest.raises(AmbiguousRunError) as info:
        store.get_run("20260101")
    assert a in str(info.value) and b in str(info.value) and "matches 2 runs" in str(info.value)
    assert isinstance(info.value, RunNotFoundError)
    assert store.get_run("20260101-000000-b").id == b


# -- killed and deleted runs ------------------------------------------------------------------------------


def _worker(store, run_id, body):
    """A real process that marks the run running with its own pid, prints ready, then runs ``body``."""
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from metalab.core.store import RunNotFoundError, RunStore
        s = RunStore({str(store.path)!r})
        run = {run_id!r}
        s.update_run(run, status="running", pid=os.getpid(), host=os.uname().nodename)
        print("ready", flush=True)
        """
    ) + textwrap.dedent(body)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def test_a_status_filter_finds_killed_runs_before_anything_read_them(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run = store.create_run(CONFIG)
    proc = _worker(store, run, "sys.stdin.read()")
    assert [r.id for r in store.list_runs(status="running")] == [run]
    proc.kill()
    proc.wait()
    assert [r.id for r in store.list_runs(status="interrupted")] == [run]  # the first read after the kill
    assert store.list_runs(status="running") == []


def test_writes_for_a_deleted_run_raise_run_not_found(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run = store.create_run(CONFIG)
    store.delete_run(run)
    for write in (lambda: store.log_metrics(run, 1, {"x": 1.0}),
                  lambda: store.add_evaluation(run, "test", 2, {"mse": 1.0}),
                  lambda: store.add_artifact(run, "checkpoint", "checkpoint", tmp_path / "c.npz", step=1),
                  lambda: store.update_run(run, step=3)):
        with pytest.raises(RunNotFoundError, match=run):
            write()
    assert store.cancel_requested(run)  # a worker whose run is gone stops


def test_a_running_run_is_not_deleted_without_force(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run = store.create_run(CONFIG)
    store.log_metrics(run, 1, {"x": 1.0})
    proc = _worker(store, run, "sys.stdin.read()")
    try:
        with pytest.raises(RunActiveError, match="is running"):
            store.delete_run(run)
        assert store.get_run(run).status == "running" and store.metrics(run)["x"] == [(1, 1.0)]
        assert not store.cancel_requested(run)
    finally:
        proc.kill()
        proc.wait()


def test_force_delete_cancels_waits_for_the_worker_then_deletes(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run = store.create_run(CONFIG)
    store.run_dir(run).mkdir(parents=True)
    proc = _worker(store, run, """
        step = 0
        while not s.cancel_requested(run):
            step += 1
            s.log_metrics(run, step, {"x": float(step)})
            time.sleep(0.05)
        time.sleep(0.3)  # saving its checkpoint
        s.update_run(run, status="cancelled", step=step)
        print("stopped", flush=True)
    """)
    started = time.monotonic()
    last = store.delete_run(run, force=True, wait_s=20)
    assert last.status == "cancelled" and time.monotonic() - started < 15
    out, errors = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "stopped" in out and "Traceback" not in errors
    with pytest.raises(RunNotFoundError):
        store.get_run(run)
    assert store.metrics(run) == {} and not store.run_dir(run).exists()


def test_force_delete_of_a_worker_that_does_not_stop_deletes_after_the_wait(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run = store.create_run(CONFIG)
    # A worker that ignores cancel requests but, like the runner, ends quietly once its run is gone.
    proc = _worker(store, run, """
        step = 0
        try:
            while True:
                step += 1
                s.log_metrics(run, step, {"x": float(step)})
                time.sleep(0.05)
        except RunNotFoundError:
            print("gone", flush=True)
    """)
    last = store.delete_run(run, force=True, wait_s=1.0)
    assert last.status == "running"
    out, errors = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "gone" in out and "IntegrityError" not in errors
    assert store.list_runs() == []


def test_force_delete_of_a_dead_worker_does_not_wait(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run = store.create_run(CONFIG)
    proc = _worker(store, run, "sys.stdin.read()")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    started = time.monotonic()
    assert store.delete_run(run, force=True, wait_s=20).status == "interrupted"
    assert time.monotonic() - started < 5


# -- doctor -----------------------------------------------------------------------------------------------


def _by_check(report):
    return {c["check"]: c for c in report["checks"]}


def test_doctor_on_a_healthy_store(tmp_path):
    store, _ = _full_store(tmp_path / "runs.sqlite", runs=2, metrics=5)
    report = store.doctor()
    assert report["healthy"] and report["schema_version"] == SCHEMA_VERSION
    assert {c["status"] for c in report["checks"]} == {"ok"}
    assert set(_by_check(report)) == {"integrity", "orphan rows", "orphan folders", "missing files", "dead workers"}


def _sick_store(tmp_path):
    """A store with one of each problem doctor repairs; returns (store, facts)."""
    store, (kept, moved, lost) = _full_store(tmp_path / "home" / "runs.sqlite", runs=3, metrics=5)
    # Orphan rows: written without foreign keys (as an old build or a hand edit could).
    conn = sqlite3.connect(store.path)
    conn.execute("INSERT INTO metrics (run_id, step, name, value, time) VALUES ('gone-run', 1, 'x', 1.0, 0)")
    conn.execute("INSERT INTO evaluations (run_id, created, split, episodes, result) "
                 "VALUES ('gone-run', 0, 'test', 1, '{}')")
    conn.commit()
    conn.close()
    # An orphan folder, old enough not to be a run being made.
    orphan = store.runs_dir / "20250101-000000-0rphan"
    orphan.mkdir(parents=True)
    (orphan / "checkpoint.npz").write_bytes(b"weights")
    os.utime(orphan, (time.time() - 3600, time.time() - 3600))
    # A checkpoint whose row points where the store used to be (the folder was moved), and one that is gone.
    store.run_dir(moved).mkdir(parents=True)
    (store.run_dir(moved) / "checkpoint.npz").write_bytes(b"weights")
    store.add_artifact(moved, "checkpoint", "checkpoint", tmp_path / "old-home" / "runs" / moved / "checkpoint.npz", 5)
    store.add_artifact(lost, "checkpoint", "checkpoint", store.run_dir(lost) / "checkpoint.npz", 5)
    # A run whose worker was killed.
    proc = _worker(store, kept, "sys.stdin.read()")
    proc.kill()
    proc.wait()
    return store, {"kept": kept, "moved": moved, "lost": lost, "orphan": orphan}


def test_doctor_finds_problems_and_repairs_them_without_losing_runs(tmp_path):
    store, facts = _sick_store(tmp_path)
    report = store.doctor()
    checks = _by_check(report)
    assert not report["healthy"]
    assert checks["integrity"]["status"] == "ok"
    assert checks["orphan rows"]["found"] == 2 and checks["orphan rows"]["status"] == "problem"
    assert checks["orphan folders"]["items"] == ["runs/20250101-000000-0rphan"]
    assert checks["missing files"]["found"] == 2
    assert checks["dead workers"]["found"] == 1 and facts["kept"] in checks["dead workers"]["items"][0]
    # Checking changed nothing.
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT status FROM runs WHERE id = ?", (facts["kept"],)).fetchone()[0] == "running"
    assert conn.execute("SELECT count(*) FROM metrics WHERE run_id = 'gone-run'").fetchone()[0] == 1
    conn.close()
    assert facts["orphan"].exists()

    repaired = store.doctor(repair=True)
    assert repaired["healthy"], repaired
    assert {c["status"] for c in repaired["checks"]} <= {"ok", "repaired"}
    assert not facts["orphan"].exists()
    assert (store.runs_dir / ".orphans" / facts["orphan"].name / "checkpoint.npz").read_bytes() == b"weights"
    assert store.get_run(facts["kept"]).status == "interrupted"
    arts = {r: {a["name"]: a["path"] for a in store.artifacts(r)} for r in (facts["moved"], facts["lost"])}
    assert arts[facts["moved"]]["checkpoint"] == str(store.run_dir(facts["moved"]) / "checkpoint.npz")
    assert arts[facts["lost"]] == {}
    # Every run is still there with its metrics.
    assert len(store.list_runs()) == 3
    assert all(len(store.metrics(r)["train/loss"]) == 5 for r in (facts["kept"], facts["moved"], facts["lost"]))
    again = store.doctor()
    assert again["healthy"] and {c["status"] for c in again["checks"]} == {"ok"}


def test_doctor_leaves_a_fresh_folder_alone(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    (store.runs_dir / "being-made").mkdir(parents=True)
    assert store.doctor(repair=True)["healthy"]
    assert (store.runs_dir / "being-made").exists()


def test_doctor_reports_a_damaged_database_and_repairs_nothing(tmp_path):
    store, ids = _full_store(tmp_path / "runs.sqlite", runs=2, metrics=300)
    conn = sqlite3.connect(store.path)
    conn.execute("INSERT INTO metrics (run_id, step, name, value, time) VALUES ('gone-run', 1, 'x', 1.0, 0)")
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'metrics_run_name_step'").fetchone()[0]
    conn.close()
    with open(store.path, "r+b") as fh:  # scribble over the metrics index: the runs table still reads
        fh.seek((root - 1) * page_size + 8)
        fh.write(os.urandom(page_size - 16))
    report = RunStore(store.path).doctor(repair=True)
    checks = _by_check(report)
    assert not report["healthy"] and checks["integrity"]["status"] == "problem"
    assert "restore runs.sqlite from a backup" in checks["integrity"]["detail"]
    assert checks["orphan rows"]["status"] == "problem" and checks["orphan rows"]["repaired"] == 0


def test_a_first_release_store_survives_a_round_trip_through_doctor(tmp_path):
    from tests.core.test_access import _V0_SCHEMA

    path = tmp_path / "runs.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(_V0_SCHEMA)
    conn.close()
    store = RunStore(path)
    assert store.doctor()["healthy"]
    assert store.get_run("20260101-000000-abcdef").owner == "local"

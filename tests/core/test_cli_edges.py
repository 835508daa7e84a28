"""The CLI at its edges: a store that is not a store, `metalab doctor`, deleting a running run, run-id prefixes,
status filters that see killed runs, and where a resume restarts."""

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from metalab.core.cli import _checkpoint_step, app
from metalab.core.store import RunStore

runner = CliRunner()
CONFIG = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "backbone": "metalab.mlp", "steps": 10}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    folder = tmp_path / "home"
    monkeypatch.setenv("METALAB_HOME", str(folder))
    return folder


def invoke(*args):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    result.text = " ".join(result.output.split())  # rich wraps long lines at the terminal's width
    return result


@pytest.fixture
def store(home):
    return RunStore(home / "runs.sqlite")


def _worker(store, run_id, body="sys.stdin.read()"):
    """A real process that marks the run running with its own pid, then runs ``body``."""
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


# -- a store that is not a store ------------------------------------------------------------------------


@pytest.mark.parametrize("content, phrase", [
    (os.urandom(3000), "not an SQLite database"),
    (b"", "an empty file is not a store"),
    (b"SQLite format 3\x00" + b"\x00" * 84, "is damaged"),
])
def test_a_bad_store_file_is_an_error_not_a_traceback(home, content, phrase):
    home.mkdir()
    path = home / "runs.sqlite"
    path.write_bytes(content)
    before = hashlib.sha256(content).hexdigest()
    for args in (("runs", "list"), ("runs", "show", "x"), ("runs", "delete", "x", "--yes")):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert result.text.startswith("error: ") and phrase in result.text
        assert f"runs.sqlite in {home} (METALAB_HOME)" in result.text
        assert "Traceback" not in result.output
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_another_database_is_refused_and_doctor_says_so(home):
    home.mkdir()
    conn = sqlite3.connect(home / "runs.sqlite")
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    assert invoke("runs", "list").exit_code == 2
    result = invoke("doctor", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert not report["healthy"] and "without metalab's tables" in report["error"]


# -- doctor -----------------------------------------------------------------------------------------------


def test_doctor_healthy_problems_repair_and_json(store):
    run = store.create_run(CONFIG)
    result = invoke("doctor")
    assert result.exit_code == 0, result.output
    assert "integrity" in result.text and "healthy" in result.text

    proc = _worker(store, run)
    proc.kill()
    proc.wait()
    orphan = store.runs_dir / "20250101-000000-0rphan"
    orphan.mkdir(parents=True)
    os.utime(orphan, (time.time() - 3600, time.time() - 3600))

    result = invoke("doctor", "--json")
    assert result.exit_code == 1
    checks = {c["check"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["dead workers"]["status"] == "problem" and checks["orphan folders"]["found"] == 1
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT status FROM runs").fetchone()[0] == "running"  # checking changed nothing
    conn.close()

    result = invoke("doctor", "--repair")
    assert result.exit_code == 0, result.output
    assert "repaired" in result.text and "runs/.orphans/" in result.text
    assert (store.runs_dir / ".orphans" / orphan.name).is_dir()
    assert store.get_run(run).status == "interrupted"
    assert invoke("doctor").exit_code == 0


# -- run ids and status filters ---------------------------------------------------------------------------


def test_run_id_prefixes_are_exact_and_ambiguity_lists_the_matches(store):
    a = store.create_run(CONFIG, run_id="20260101-000000-fb14c7")
    b = store.create_run(CONFIG, run_id="20260101-000000-fb9999")
    for pattern in ("%fb14c7", "_0260101-000000-fb14c7", "%"):
        result = invoke("runs", "show", pattern)
        assert result.exit_code == 2 and "No run with id" in result.text, (pattern, result.output)
    result = invoke("runs", "show", "20260101-000000-fb")
    assert result.exit_code == 2
    assert "matches 2 runs" in result.text and a in result.text and b in result.text
    assert json.loads(invoke("runs", "show", "20260101-000000-fb1", "--json").stdout)["id"] == a


def test_status_interrupted_lists_a_killed_run_at_once(store):
    run = store.create_run(CONFIG)
    proc = _worker(store, run)
    proc.kill()
    proc.wait()
    listed = json.loads(invoke("runs", "list", "--status", "interrupted", "--json").stdout)
    assert [r["id"] for r in listed] == [run]
    assert json.loads(invoke("runs", "list", "--status", "running", "--json").stdout) == []
    result = invoke("runs", "list", "--status", "killed")
    assert result.exit_code == 2 and "expected one of queued, running" in result.text


# -- deleting a running run -------------------------------------------------------------------------------


def test_deleting_a_running_run_needs_force(store):
    run = store.create_run(CONFIG)
    store.log_metrics(run, 1, {"x": 1.0})
    proc = _worker(store, run)
    try:
        result = invoke("runs", "delete", run, "--yes")
        assert result.exit_code == 2
        assert f"run {run} is running" in result.text
        assert f"metalab runs cancel {run}" in result.text and "--force" in result.text
        assert store.get_run(run).status == "running" and store.metrics(run)["x"] == [(1, 1.0)]
        assert not store.cancel_requested(run)
    finally:
        proc.kill()
        proc.wait()


def test_force_delete_stops_the_worker_then_deletes(store):
    run = store.create_run(CONFIG)
    store.run_dir(run).mkdir(parents=True)
    proc = _worker(store, run, """
        step = 0
        while not s.cancel_requested(run):
            step += 1
            s.log_metrics(run, step, {"x": float(step)})
            time.sleep(0.05)
        s.update_run(run, status="cancelled", step=step)
    """)
    result = invoke("runs", "delete", run, "--yes", "--force")
    assert result.exit_code == 0, result.output
    assert f"deleted {run}" in result.text and "cancelling run" in result.text
    assert "did not stop" not in result.text
    _, errors = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in errors
    assert store.list_runs() == [] and not store.run_dir(run).exists()


def test_force_delete_says_when_the_worker_did_not_stop_in_time(store):
    run = store.create_run(CONFIG)
    proc = _worker(store, run, """
        try:
            while True:
                s.log_metrics(run, 1, {"x": 1.0})
                time.sleep(0.05)
        except RunNotFoundError:
            pass
    """)
    result = invoke("runs", "delete", run, "--yes", "--force", "--wait", "0.5")
    assert result.exit_code == 0, result.output
    assert "did not stop within 0.5 s; deleted it anyway" in result.text
    _, errors = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "IntegrityError" not in errors
    assert store.list_runs() == []


# -- where a resume restarts ------------------------------------------------------------------------------


def test_checkpoint_step_is_read_without_pickle(tmp_path):
    meta = np.frombuffer(json.dumps({"step": 100, "sampler": {}}).encode(), dtype=np.uint8)
    np.savez(tmp_path / "runner.npz", var_0=np.zeros(2), meta=meta)
    np.savez(tmp_path / "plain.npz", step=np.array(40))
    np.savez(tmp_path / "none.npz", var_0=np.zeros(2))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert _checkpoint_step(tmp_path / "runner.npz") == 100
    assert _checkpoint_step(tmp_path / "plain.npz") == 40
    assert _checkpoint_step(tmp_path / "none.npz") is None
    assert _checkpoint_step(tmp_path / "bad.npz") is None


def test_resume_message_names_the_checkpoint_step(store, monkeypatch):
    from metalab.core import cli
    from metalab.core.services import Services

    run = store.create_run({**CONFIG, "steps": 200})
    store.update_run(run, status="interrupted", step=115)
    seen = []
    monkeypatch.setattr(cli, "_train_with_progress", lambda services, run_id, start: seen.append(run_id) or "failed")
    monkeypatch.setattr(cli, "_report_end", lambda *args: None)
    result = invoke("runs", "resume", run[:12])
    assert "from the start (it has no checkpoint)" in result.text and seen == [run]

    store.run_dir(run).mkdir(parents=True)
    meta = {"step": 100, "sampler": {}, "n_vars": 1, "n_opt": 0}
    np.savez(store.run_dir(run) / "checkpoint.npz", var_0=np.zeros(3, np.float32),
             meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))  # as the first release wrote them
    result = invoke("runs", "resume", run)
    assert f"resuming run {run} from its checkpoint at step 100; steps 101-115 are trained again" in result.text
    assert "from step 115" not in result.text
    assert Services().run(run).step == 115

    (store.run_dir(run) / "checkpoint.npz").write_bytes(b"truncated")
    result = invoke("runs", "resume", run)
    assert "from its last checkpoint (none of its checkpoint files passed the checks" in result.text

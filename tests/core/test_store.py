"""The run store: a real SQLite file in WAL mode, shared by a writer and readers, surviving a killed writer."""

import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from metalab.core.store import RunNotFoundError, RunStore

CONFIG = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "backbone": "metalab.mlp", "steps": 10}


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs.sqlite")


def test_database_is_a_wal_file(store):
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_runs_are_listed_newest_first_and_filtered(store):
    first = store.create_run(CONFIG)
    second = store.create_run({**CONFIG, "algorithm": "metalab.protonet"})
    assert [r.id for r in store.list_runs()] == [second, first]
    assert [r.id for r in store.list_runs(algorithm="metalab.maml")] == [first]
    summary = store.list_runs()[0].summary()
    assert {"id", "dataset", "algorithm", "status", "created"} <= set(summary)
    assert summary["status"] == "queued"


def test_metrics_round_trip_and_resume_truncates(store):
    run = store.create_run(CONFIG)
    for step in range(1, 6):
        store.log_metrics(run, step, {"train/loss": 1.0 / step})
    store.truncate_metrics(run, 3)
    store.log_metrics(run, 4, {"train/loss": 0.1})
    points = store.metrics(run)["train/loss"]
    assert [s for s, _ in points] == [1, 2, 3, 4]
    assert points[-1][1] == pytest.approx(0.1)


def test_unknown_run_names_the_id(store):
    with pytest.raises(RunNotFoundError, match="nope"):
        store.get_run("nope")


def test_run_id_prefix_is_accepted(store):
    run = store.create_run(CONFIG)
    assert store.get_run(run[:-2]).id == run


def test_delete_and_rename(store):
    run = store.create_run(CONFIG)
    store.log_metrics(run, 1, {"x": 1})
    store.rename_run(run, "baseline")
    assert store.get_run(run).name == "baseline"
    store.run_dir(run).mkdir(parents=True)
    store.delete_run(run)
    assert store.list_runs() == []
    assert store.metrics(run) == {}
    assert not store.run_dir(run).exists()


def test_killed_writer_loses_nothing_and_is_marked_interrupted(store):
    run = store.create_run(CONFIG)
    code = textwrap.dedent(
        f"""
        import os, sys
        from metalab.core.store import RunStore
        s = RunStore({str(store.path)!r})
        s.update_run({run!r}, status="running", pid=os.getpid(), host=os.uname().nodename)
        for step in range(1, 51):
            s.log_metrics({run!r}, step, {{"train/loss": 1.0 / step}})
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    # A reader sees everything while the writer is alive.
    assert len(store.metrics(run)["train/loss"]) == 50
    proc.kill()
    proc.wait()
    assert len(store.metrics(run)["train/loss"]) == 50
    record = store.get_run(run)
    assert record.status == "interrupted"
    assert "ended without finishing" in record.error


def test_cancel_flag(store):
    run = store.create_run(CONFIG)
    assert not store.cancel_requested(run)
    store.request_cancel(run)
    assert store.cancel_requested(run)


def test_evaluations_and_artifacts(store, tmp_path):
    run = store.create_run(CONFIG)
    store.add_evaluation(run, "test", 600, {"accuracy": 0.9, "ci95": 0.01})
    store.add_artifact(run, "checkpoint", "checkpoint", tmp_path / "c.npz", step=10)
    assert store.evaluations(run)[0]["accuracy"] == 0.9
    assert store.artifacts(run)[0]["step"] == 10
    assert os.path.basename(store.artifacts(run)[0]["path"]) == "c.npz"

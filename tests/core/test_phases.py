"""A run's phases in the store: a real worker records them in order, its 'starting' mark comes before TensorFlow,
older stores gain the table, and the summary splits the time (training alone is training)."""

from __future__ import annotations

import os
import sqlite3
import sys
import time

import pytest

from metalab.core.contract.manager import make_plugin_manager
from metalab.core.services import Services
from metalab.core.services.runs import phase_summary
from metalab.core.settings import load_settings
from metalab.core.store import SCHEMA_VERSION, RunNotFoundError, RunStore

#: Loaded first by every Python process started with this folder on PYTHONPATH: at the first import of
#: ``tensorflow`` it notes the time and ends the process, so all a worker recorded was recorded before it.
_TF_IMPORT_STOP = '''
import importlib.abc, os, sys, time

class _TensorFlowStop(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow":
            with open(os.environ["METALAB_TEST_TF_IMPORTED"], "w") as fh:
                fh.write(repr(time.time()))
            os._exit(3)
        return None

sys.meta_path.insert(0, _TensorFlowStop())
'''

TINY = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 4, "val_every": 2, "log_every": 2,
        "checkpoint_every": 4, "val_episodes": 8, "test_episodes": 20,
        "algorithm_params": {"meta_batch_size": 2, "eval_inner_steps": 1}}


def test_a_worker_marks_its_run_starting_before_it_imports_tensorflow(tmp_path, monkeypatch):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_TF_IMPORT_STOP)
    imported = tmp_path / "tf-imported.txt"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("METALAB_TEST_TF_IMPORTED", str(imported))
    for name, sub in (("METALAB_HOME", "home"), ("METALAB_DATA_DIR", "data"), ("METALAB_CACHE_DIR", "cache")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.setenv("METALAB_DISABLE_PLUGINS", "metalab-testplugins,metalab-matchingnet")
    svc = Services(settings=load_settings(), registry=make_plugin_manager(distributions={"metalab"}, strict=False))
    run_id = svc.submit(svc.resolve(dict(TINY)))
    proc = svc._workers[run_id]
    assert proc.wait(timeout=60) == 3, svc.worker_log(run_id)  # stopped by the hook at `import tensorflow`
    phases = svc.store.phases(run_id)
    assert [(p["name"], p["finished"]) for p in phases] == [("starting", None)]
    assert phases[0]["started"] <= float(imported.read_text())
    run = svc.store.get_runs([run_id])[0]
    assert (run.status, run.pid) == ("queued", proc.pid)  # the worker's own record, before any training
    # The page's reaper then finds the worker gone before training: the run failed, its phase ends then.
    assert svc.run(run_id).status == "failed" and svc.active_runs() == []
    assert svc.run_phases(run_id)["current"] is None


def test_a_short_run_splits_its_time_into_its_phases(tmp_path):
    # The phases of a real run, in order, are asserted in tests/core/test_runner.py (one short run serves both).
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(dict(TINY))
    store.update_run(run_id, status="running", pid=os.getpid(), host=os.uname().nodename, started=time.time())
    for name, total in (("loading", None), ("compiling", None), ("training", None), ("validating", 8),
                        ("training", None), ("meta-testing", 20), ("report", None)):
        store.start_phase(run_id, name, total=total)
        if total:
            store.phase_progress(run_id, total)
    store.end_phases(run_id)
    store.update_run(run_id, status="completed", finished=time.time())
    phases = store.phases(run_id)
    summary = phase_summary(phases, store.get_run(run_id))
    assert [t["name"] for t in summary["times"]] == ["loading", "compiling", "training", "validating",
                                                     "meta-testing", "report"]
    assert all(t["seconds"] >= 0 for t in summary["times"]) and summary["current"] is None
    training = sum(p["finished"] - p["started"] for p in phases if p["name"] == "training")
    assert summary["training_s"] == pytest.approx(training)
    assert summary["total_s"] == pytest.approx(phases[-1]["finished"] - phases[0]["started"])
    assert summary["line"].startswith("loading ") and " · training " in summary["line"]


def test_phases_follow_each_other_count_their_episodes_and_go_with_their_run(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run({"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 10})
    store.start_phase(run_id, "loading", at=100.0)
    store.start_phase(run_id, "meta-testing", total=600, detail="test", at=103.0)
    store.phase_progress(run_id, 320)
    assert store.phases(run_id) == [
        {"name": "loading", "started": 100.0, "finished": 103.0, "done": None, "total": None, "detail": ""},
        {"name": "meta-testing", "started": 103.0, "finished": None, "done": 320, "total": 600, "detail": "test"}]
    store.end_phases(run_id, at=110.0)
    assert [p["finished"] for p in store.phases(run_id)] == [103.0, 110.0]
    store.phase_progress(run_id, 400)  # no phase lasts: nothing changes
    assert store.phases(run_id)[-1]["done"] == 320
    store.delete_run(run_id)
    assert store.phases(run_id) == []
    with pytest.raises(RunNotFoundError):
        store.start_phase(run_id, "loading")


def test_a_version_three_store_gains_the_phases_table_and_its_runs_read_as_before(tmp_path):
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    run_id = store.create_run({"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 10})
    store.update_run(run_id, status="completed", started=1000.0, finished=1200.0, step=10)
    # What version 3 wrote: the same tables without phases.
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE phases")
        conn.execute("PRAGMA user_version=3")
    conn.close()
    reopened = RunStore(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        assert conn.execute("SELECT count(*) FROM phases").fetchone()[0] == 0
    conn.close()
    run = reopened.get_run(run_id)
    assert (run.status, run.step, run.finished - run.started) == ("completed", 10, 200.0)
    assert phase_summary(reopened.phases(run_id), run) == {"current": None, "times": [], "total_s": None,
                                                           "training_s": None, "line": ""}
    reopened.start_phase(run_id, "loading")  # the migrated table takes rows
    assert reopened.doctor()["healthy"]


def _run(store: RunStore, status: str, **fields) -> object:
    run_id = store.create_run({"dataset": "metalab.digits", "algorithm": "metalab.protonet", "steps": 300})
    store.update_run(run_id, status=status, **fields)
    return store.get_run(run_id)


def test_the_summary_gives_the_current_phase_its_rate_and_eta_and_sums_stretches(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    rows = [{"name": "loading", "started": 0.0, "finished": 3.0, "done": None, "total": None, "detail": ""},
            {"name": "compiling", "started": 3.0, "finished": 15.0, "done": None, "total": None, "detail": ""},
            {"name": "training", "started": 15.0, "finished": 65.0, "done": None, "total": None, "detail": ""},
            {"name": "validating", "started": 65.0, "finished": 70.0, "done": 100, "total": 100, "detail": ""},
            {"name": "training", "started": 70.0, "finished": 170.0, "done": None, "total": None, "detail": ""},
            {"name": "meta-testing", "started": 170.0, "finished": None, "done": 150, "total": 600,
             "detail": "test"}]
    running = _run(store, "running", pid=os.getpid(), host=os.uname().nodename, started=time.time())
    summary = phase_summary(rows, running, now=200.0)
    current = summary["current"]
    assert (current["name"], current["label"], current["elapsed_s"]) == ("meta-testing", "Meta-testing", 30.0)
    assert current["rate"] == 5.0 and current["eta_s"] == 90.0  # 150 episodes in 30 s; 450 left
    assert summary["training_s"] == 150.0 and summary["total_s"] == 200.0
    assert [(t["name"], t["seconds"]) for t in summary["times"]] == [
        ("loading", 3.0), ("compiling", 12.0), ("training", 150.0), ("validating", 5.0), ("meta-testing", 30.0)]
    assert summary["line"] == ("loading 3 s · compiling 12 s · training 2 min 30 s · validating 5 s · "
                               "meta-testing 30 s · total 3 min 20 s")
    # A worker killed in meta-testing left that phase open: it ends when the run was last written, not now.
    killed = _run(store, "interrupted", started=0.0)
    killed.updated, killed.finished = 180.0, None
    summary = phase_summary(rows, killed, now=10_000.0)
    assert summary["current"] is None and summary["times"][-1] == {"name": "meta-testing", "label": "meta-testing",
                                                                   "seconds": 10.0}


def test_a_dead_workers_open_phase_is_ended_when_it_was_last_heard_from(tmp_path):
    import subprocess

    store = RunStore(tmp_path / "runs.sqlite")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_id = store.create_run({"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 10})
    store.update_run(run_id, status="running", pid=dead.pid, host=os.uname().nodename, started=time.time())
    store.start_phase(run_id, "training")
    last_write = store.get_runs([run_id])[0].updated  # read without the worker check
    time.sleep(0.05)
    assert store.get_run(run_id).status == "interrupted"
    assert store.phases(run_id)[-1]["finished"] == last_write

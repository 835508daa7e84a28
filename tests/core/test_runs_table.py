"""The runs table in core: tags and notes in the store (and a version-2 store migrated to hold them), each run's
latest metrics and evaluations read for all runs at once, short ids, the filter language, the access checks on
annotations, and `metalab runs list` at 80 columns."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from metalab.core.reports.runs_table import (
    QueryError,
    build_table,
    key_params,
    parse_query,
    resolve_field,
    search_rows,
    short_ids,
    sort_rows,
)
from metalab.core.services import AccessError, Actor, Services
from metalab.core.settings import load_settings
from metalab.core.store import SCHEMA_VERSION, RunStore

CONFIG = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "backbone": "metalab.mlp", "steps": 10,
          "ways": 1, "shots": 5, "test_episodes": 20, "algorithm_params": {"inner_lr": 0.01, "inner_steps": 1}}


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs.sqlite")


def _completed(store, inner_lr=0.01, accuracy=None, mse=0.3, name="", val=0.5):
    run_id = store.create_run({**CONFIG, "algorithm_params": {"inner_lr": inner_lr, "inner_steps": 1}}, name=name)
    store.log_metrics(run_id, 5, {"val/mse": val + 1.0, "train/loss": 2.0})
    store.log_metrics(run_id, 10, {"val/mse": val, "train/loss": 1.0})
    result = {"accuracy": accuracy, "ci95": 0.01} if accuracy is not None else {"mse": mse, "ci95": 0.02}
    store.add_evaluation(run_id, "test", 20, result, seed=2017)
    store.add_evaluation(run_id, "test", 5, {**result, "mse": 99.0}, seed=2017)  # later and shorter: not the headline
    store.update_run(run_id, status="completed", step=10)
    return run_id


# -- the store ------------------------------------------------------------------------------------------------


def test_tags_and_notes_are_stored_with_the_run(store):
    run_id = store.create_run(CONFIG, name="first")
    assert (store.get_run(run_id).tags, store.get_run(run_id).notes) == ([], "")
    store.set_tags(run_id, ["baseline", "sweep", "baseline"])
    store.set_notes(run_id, "lr too high?\nsecond line")
    run = RunStore(store.path).get_run(run_id)
    assert run.tags == ["baseline", "sweep"] and run.notes == "lr too high?\nsecond line"
    assert run.summary()["tags"] == ["baseline", "sweep"] and run.to_dict()["notes"].startswith("lr")


def test_latest_metrics_and_evaluations_of_every_run_in_one_read(store):
    a, b = _completed(store, val=0.4), _completed(store, val=0.7)
    latest = store.latest_metrics()
    assert latest[a] == {"val/mse": 0.4, "train/loss": 1.0} and latest[b]["val/mse"] == 0.7
    assert store.latest_metrics([b]) == {b: latest[b]}
    # A resumed run drops the steps after its checkpoint: its latest values go back with them.
    store.log_metrics(a, 20, {"val/mse": 0.1, "test/only": 5.0})
    assert store.latest_metrics([a])[a]["val/mse"] == 0.1
    store.truncate_metrics(a, 10)
    assert store.latest_metrics([a])[a] == {"val/mse": 0.4, "train/loss": 1.0}
    # A later row for the same step wins, as RunStore.metrics reads it.
    store.log_metrics(a, 10, {"val/mse": 0.35})
    assert store.latest_metrics([a])[a]["val/mse"] == store.metrics(a)["val/mse"][-1][1] == 0.35
    together = store.evaluations_by_run()
    assert together[a] == store.evaluations(a) and together[b] == store.evaluations(b)
    assert store.evaluations_by_run([b]) == {b: store.evaluations(b)}
    store.delete_run(b)
    assert b not in store.latest_metrics() and b not in store.evaluations_by_run()


#: A store as schema version 2 wrote it: runs without tags and notes, no latest_metrics table.
_V2_SCHEMA = """
CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', dataset TEXT NOT NULL, algorithm TEXT NOT NULL,
    backbone TEXT, config TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
    updated REAL, step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER NOT NULL DEFAULT 0, pid INTEGER, host TEXT,
    device TEXT, versions TEXT, error TEXT, traceback TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT 'local');
CREATE TABLE metrics (run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, step INTEGER NOT NULL,
    name TEXT NOT NULL, value REAL NOT NULL, time REAL NOT NULL);
CREATE INDEX metrics_run_name_step ON metrics(run_id, name, step);
CREATE TABLE evaluations (run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, created REAL NOT NULL,
    split TEXT NOT NULL, episodes INTEGER NOT NULL, result TEXT NOT NULL, seed INTEGER);
CREATE TABLE uploads (name TEXT PRIMARY KEY, owner TEXT NOT NULL, created REAL NOT NULL,
    archive_bytes INTEGER NOT NULL DEFAULT 0, unpacked_bytes INTEGER NOT NULL DEFAULT 0,
    files INTEGER NOT NULL DEFAULT 0);
CREATE TABLE artifacts (run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, name TEXT NOT NULL,
    kind TEXT NOT NULL, path TEXT NOT NULL, step INTEGER, created REAL NOT NULL, PRIMARY KEY (run_id, name));
INSERT INTO runs (id, name, dataset, algorithm, config, status, created, owner) VALUES
    ('20260101-000000-abcdef', 'old run', 'metalab.sinusoid', 'metalab.maml', '{"dataset": "metalab.sinusoid"}',
     'completed', 1, 'session:visitor1');
INSERT INTO metrics (run_id, step, name, value, time) VALUES
    ('20260101-000000-abcdef', 10, 'val/mse', 0.9, 1), ('20260101-000000-abcdef', 20, 'val/mse', 0.5, 2),
    ('20260101-000000-abcdef', 20, 'val/mse', 0.4, 3), ('20260101-000000-abcdef', 10, 'train/loss', 2.0, 1);
INSERT INTO evaluations (run_id, created, split, episodes, result, seed) VALUES
    ('20260101-000000-abcdef', 2, 'test', 600, '{"mse": 0.5, "ci95": 0.1}', 2017);
PRAGMA user_version=2;
"""


def test_a_version_two_store_is_migrated_with_empty_tags_and_its_latest_metrics(tmp_path):
    path = tmp_path / "runs.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(_V2_SCHEMA)
    conn.close()
    store = RunStore(path)
    run = store.get_run("20260101-000000-abcdef")
    assert (run.name, run.tags, run.notes, run.owner) == ("old run", [], "", "session:visitor1")
    # The latest values were filled from the points already logged (the later row of step 20 wins).
    assert store.latest_metrics() == {run.id: {"val/mse": 0.4, "train/loss": 2.0}}
    assert store.evaluations(run.id)[0]["mse"] == 0.5
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 3
    conn.close()
    store.set_tags(run.id, ["migrated"])
    store.log_metrics(run.id, 30, {"val/mse": 0.2})  # the trigger keeps them from now on
    assert store.get_run(run.id).tags == ["migrated"] and store.latest_metrics()[run.id]["val/mse"] == 0.2
    RunStore(path)  # opening again is a no-op
    assert store.doctor()["healthy"]


# -- the table, short ids and the filter language ---------------------------------------------------------------


def test_short_ids_are_the_shortest_unique_prefixes_of_at_least_eight_characters():
    ids = ["20261203-101500-aa11bb", "20261203-101500-ab22cc", "20261204-090000-ffffff", "2026abcd"]
    shorts = short_ids(ids)
    assert shorts == {"20261203-101500-aa11bb": "20261203-101500-aa", "20261203-101500-ab22cc": "20261203-101500-ab",
                      "20261204-090000-ffffff": "20261204", "2026abcd": "2026abcd"}
    for run_id, short in shorts.items():
        assert [i for i in ids if i.startswith(short)] == [run_id]


def _table(store):
    runs = [r.__dict__ for r in store.list_runs()]
    return build_table(runs, store.evaluations_by_run(), store.latest_metrics(), short_ids(r["id"] for r in runs))


def test_rows_carry_the_headline_score_parameters_and_latest_metrics(store):
    run_id = _completed(store, inner_lr=0.1, mse=0.25, name="small lr")
    table = _table(store)
    (row,) = table.rows
    assert (row["score"], row["ci95"], row["metric"]) == (0.25, 0.02, "MSE")
    assert row["protocol"] == "test · 20 episodes · seed 2017"  # the canonical one, not the later 5-episode score
    assert row["algorithm.inner_lr"] == 0.1 and row["shots"] == 5 and row["val/mse"] == 0.5
    assert row["short_id"] == run_id[:8] and row["name"] == "small lr"
    assert "algorithm.inner_lr" in table.params and "val/mse" in table.metrics
    assert key_params(table)[:3] == ["ways", "shots", "algorithm.inner_lr"]


def test_filter_by_parameter_metric_tag_date_and_search(store):
    small = _completed(store, inner_lr=0.01, val=0.4, name="alpha")
    big = _completed(store, inner_lr=0.1, val=0.8, name="beta")
    store.set_tags(big, ["baseline"])
    table = _table(store)

    def ids(text, rows=None):
        return {r["id"] for r in parse_query(text).apply(rows or table.rows, table.fields)}

    assert ids("inner_lr = 0.1") == {big} and ids("algorithm.inner_lr=0.01") == {small}
    assert ids("val/mse > 0.5") == {big} and ids("val/mse <= 0.5, inner_lr = 0.01") == {small}
    assert ids("tags = baseline") == {big} and ids("tag != baseline") == {small}
    assert ids("name ~ ALP") == {small} and ids("score < 1 and status = completed") == {small, big}
    assert ids("created >= 2000-01-01") == {small, big} and ids("created < 2000-01-01") == set()
    assert {r["id"] for r in search_rows(table.rows, "beta baseline")} == {big}
    assert {r["id"] for r in search_rows(table.rows, small[-6:])} == {small}
    assert [r["id"] for r in sort_rows(table.rows, "val/mse", descending=True)] == [big, small]
    assert resolve_field("inner_lr", table.fields) == "algorithm.inner_lr"
    with pytest.raises(QueryError, match="Unknown field 'nope'"):
        parse_query("nope = 1").apply(table.rows, table.fields)
    with pytest.raises(QueryError, match="Cannot read the filter clause 'inner_lr >'"):
        parse_query("inner_lr >")
    with pytest.raises(QueryError, match="not a number"):
        parse_query("score > high").apply(table.rows, table.fields)


# -- services: annotations are checked like every run mutation ----------------------------------------------------


def test_tags_and_notes_are_set_through_services_and_checked_by_the_policy(tmp_path):
    settings = load_settings(home=tmp_path / "home", data_dir=tmp_path / "data", mode="demo")
    machine = Services(settings=settings)
    run_id = machine.store.create_run(CONFIG, owner="session:owner-token")
    owner = machine.for_actor(Actor.visitor("owner-token"))
    other = machine.for_actor(Actor.visitor("other-token"))
    assert owner.set_run_tags(run_id, " baseline, sweep ,,baseline") == ["baseline", "sweep"]
    owner.set_run_notes(run_id, "  keep this one  ")
    owner.rename_run(run_id, "mine")
    run = machine.run(run_id)
    assert (run.name, run.tags, run.notes) == ("mine", ["baseline", "sweep"], "keep this one")
    for change in (lambda: other.set_run_tags(run_id, ["x"]), lambda: other.set_run_notes(run_id, "x")):
        with pytest.raises(Exception) as caught:  # another visitor does not even see the run
            change()
        assert isinstance(caught.value, (AccessError, KeyError))
    team = Services(settings=load_settings(home=tmp_path / "home", data_dir=tmp_path / "data", mode="team"))
    with pytest.raises(AccessError, match="tag: only its owner or an admin"):
        team.for_actor(Actor.user("someone@example.org")).set_run_tags(run_id, ["x"])
    with pytest.raises(ValueError, match="at most 40 characters"):
        owner.set_run_tags(run_id, ["x" * 41])
    assert machine.run(run_id).tags == ["baseline", "sweep"]
    rows = machine.runs_table().rows
    assert rows[0]["tags"] == ["baseline", "sweep"] and rows[0]["notes"] == "keep this one"


# -- the CLI ------------------------------------------------------------------------------------------------------


def _cli(home, *args, columns=80):
    env = {**os.environ, "METALAB_HOME": str(home), "COLUMNS": str(columns), "TERM": "dumb"}
    env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "metalab.core.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_runs_list_fits_80_columns_with_a_short_id_runs_show_accepts_and_the_score(tmp_path, monkeypatch):
    home = tmp_path / "home"
    store = RunStore(home / "runs.sqlite")
    ids = [_completed(store, accuracy=0.8123, name="a rather long run name to wrap") for _ in range(3)]
    # Runs made within one second share their first 15 characters: the ids must still not be cut.
    ids.append(store.create_run(CONFIG, run_id=ids[0][:16] + "ffffff"))
    result = _cli(home, "runs", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, result.stdout
    shorts = short_ids(store.run_ids())
    for run_id in ids:
        assert len(shorts[run_id]) >= 8 and any(line.startswith(shorts[run_id] + " ") or f" {shorts[run_id]} " in line
                                                for line in lines), result.stdout
    assert result.stdout.count("81.23% ± 1") == 3  # the score, whole, on each scored run's line
    shown = _cli(home, "runs", "show", shorts[ids[1]], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == ids[1]
    # More columns on request: a parameter and a metric; a filter and a sort.
    wide = _cli(home, "runs", "list", "--columns", "id,score,inner_lr,val/mse", "--filter", "score > 80",
                "--sort", "-score")
    assert wide.returncode == 0, wide.stderr
    assert "inner_lr" in wide.stdout and "val/mse" in wide.stdout and max(map(len, wide.stdout.splitlines())) <= 80
    assert shorts[ids[3]] not in wide.stdout  # no score: filtered out
    # In process from here (the terminal's width no longer matters): faster.
    from typer.testing import CliRunner

    from metalab.core.cli import app

    monkeypatch.setenv("METALAB_HOME", str(home))
    bad = CliRunner().invoke(app, ["runs", "list", "--columns", "+nope"])
    assert bad.exit_code == 2 and "Unknown field 'nope'" in bad.output
    listed = json.loads(CliRunner().invoke(app, ["runs", "list", "--json"]).stdout)
    assert {r["short_id"] for r in listed} == {shorts[i] for i in ids}
    assert sorted(r["score"] is None for r in listed) == [False, False, False, True]


def test_the_table_is_kept_while_the_store_is_unchanged_and_follows_every_change(tmp_path):
    svc = Services(settings=load_settings(home=tmp_path / "home", data_dir=tmp_path / "data"))
    first = _completed(svc.store, val=0.4)
    table = svc.runs_table()
    assert svc.runs_table() is table  # nothing changed: not read again
    other = RunStore(svc.store.path)  # another process's writes, as a training worker's
    other.log_metrics(first, 99, {"val/mse": 0.05})
    assert svc.runs_table().rows[0]["val/mse"] == 0.05
    other.add_evaluation(first, "test", 20, {"mse": 0.01, "ci95": 0.001}, seed=2017)
    assert svc.runs_table().rows[0]["score"] == 0.01
    second = _completed(other, inner_lr=0.5)
    rows = svc.runs_table().rows
    assert [r["id"] for r in rows] == [second, first] and rows[0]["algorithm.inner_lr"] == 0.5
    other.truncate_metrics(first, 10)
    assert svc.runs_table().rows[1]["val/mse"] == 0.4
    other.delete_run(second)
    assert [r["id"] for r in svc.runs_table().rows] == [first]
    assert [r["id"] for r in svc.runs_table(status="failed").rows] == []

"""`metalab runs export --mlflow`: runs copied into a real local MLflow store and read back with MLflow's client."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from metalab.core.cli import app

mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny (the dev extra) is not installed")

runner = CliRunner()
CONFIG = {
    "dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "backbone": "metalab.mlp",
    "dataset_params": {}, "algorithm_params": {"inner_lr": 0.01, "inner_steps": 3}, "backbone_params": {"hidden": [40, 40]},
    "ways": 1, "shots": 5, "queries": 5, "steps": 40, "seed": 3, "test_episodes": 20,
}


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("METALAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from metalab.core.services import Services

    return Services(), f"file:{tmp_path / 'mlruns'}", tmp_path / "mlruns"


def _run(store, name: str, tags: list[str], notes: str = "") -> str:
    run_id = store.create_run(dict(CONFIG), name=name)
    for step in (10, 20, 30, 40):
        store.log_metrics(run_id, step, {"train/loss": 1.0 / step, "val/mse": 0.5 / step})
    store.add_evaluation(run_id, "test", 20, {"mse": 0.125, "ci95": 0.02, "loss": 0.125}, seed=2017)  # canonical
    store.add_evaluation(run_id, "test", 200, {"mse": 0.25, "ci95": 0.01, "loss": 0.25}, seed=5)
    store.set_tags(run_id, tags)
    if notes:
        store.set_notes(run_id, notes)
    now = time.time()
    store.update_run(run_id, status="completed", started=now - 30, finished=now, step=40)
    return run_id


def _invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_a_run_arrives_with_its_settings_points_scores_tags_and_notes(env):
    services, uri, _ = env
    run_id = _run(services.store, "lr 0.01", ["sweep:s1", "baseline"], notes="first try")
    result = _invoke("runs", "export", run_id[:12], "--mlflow", uri, "--experiment", "team", "--json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["run"] == run_id and row["status"] == "exported"

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    got = client.get_run(row["mlflow_run"])
    assert got.info.run_name == "lr 0.01" and got.info.status == "FINISHED"
    assert got.data.params["algorithm.inner_lr"] == "0.01" and got.data.params["run.steps"] == "40"
    assert got.data.params["backbone.hidden"] == "[40, 40]"
    assert got.data.tags["metalab.run_id"] == run_id and got.data.tags["mlflow.note.content"] == "first try"
    assert got.data.tags["metalab.tags"] == "sweep:s1,baseline"
    # Every logged point with its step, not only the last.
    history = client.get_metric_history(row["mlflow_run"], "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / s) for s in (10, 20, 30, 40)]
    # The headline is the canonical protocol's (20 episodes, seed 2017), not the newer 200-episode score.
    assert got.data.metrics["score/test/mse"] == pytest.approx(0.125)
    assert got.data.metrics["score/test/200_episodes/seed_5/mse"] == pytest.approx(0.25)
    artifacts = [a.path for a in client.list_artifacts(row["mlflow_run"])]
    assert artifacts == ["config.json"]


def test_exporting_a_sweep_again_adds_only_its_new_runs(env):
    services, uri, _ = env
    first = _run(services.store, "a", ["sweep:s2"])
    _run(services.store, "other", [])
    result = _invoke("runs", "export", "--tag", "sweep:s2", "--mlflow", uri, "--json")
    assert [r["run"] for r in json.loads(result.stdout)] == [first]
    second = _run(services.store, "b", ["sweep:s2"])
    rows = json.loads(_invoke("runs", "export", "--tag", "sweep:s2", "--mlflow", uri, "--json").stdout)
    assert {r["run"]: r["status"] for r in rows} == {first: "already exported", second: "exported"}
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("metalab")
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_an_unknown_run_is_named_and_nothing_is_written(env):
    services, uri, folder = env
    known = _run(services.store, "a", [])
    result = _invoke("runs", "export", known, "nosuchrun", "--mlflow", uri)
    assert result.exit_code == 2
    assert "nosuchrun" in result.output and "Traceback" not in result.output
    assert not folder.exists()  # checked before the store is opened: the known run was not half-exported either


def test_export_without_runs_or_a_matching_tag_is_refused(env):
    _, uri, folder = env
    result = _invoke("runs", "export", "--tag", "sweep:none", "--mlflow", uri)
    assert result.exit_code == 2 and "--tag 'sweep:none'" in result.output
    assert not folder.exists()


def test_an_environment_runs_score_is_exported_as_a_return():
    from metalab.core.reports.mlflow_export import score_metrics

    evaluation = {"split": "test", "episodes": 40, "seed": 2017, "return": -24.3, "ci95": 4.4, "loss": 24.3,
                  "return_before": -45.7}
    scores = score_metrics([evaluation], {"test_episodes": 40})
    assert scores["score/test/return"] == -24.3 and scores["score/test/return_ci95"] == 4.4
    assert not any(key.endswith("/mse") for key in scores)

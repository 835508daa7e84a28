"""The metalab CLI, driven in-process with a fresh METALAB_HOME."""

import json
import re

import pytest
from typer.testing import CliRunner

from metalab.core.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("METALAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_plugins_list_json_has_every_builtin_with_its_package():
    result = invoke("plugins", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    by_id = {r["id"]: r for r in rows if r["id"]}
    for plugin_id, kind in [("metalab.maml", "algorithm"), ("metalab.reptile", "algorithm"),
                            ("metalab.protonet", "algorithm"), ("metalab.omniglot", "dataset"),
                            ("metalab.sinusoid", "dataset"), ("metalab.digits", "dataset"),
                            ("metalab.conv4", "backbone"), ("metalab.mlp", "backbone")]:
        assert by_id[plugin_id]["kind"] == kind
        assert by_id[plugin_id]["package"] == "metalab"
        assert by_id[plugin_id]["status"] == "loaded"
    for row in rows:
        assert set(row) == {"id", "kind", "title", "plugin", "package", "version", "status", "error", "seconds"}


def test_train_rejects_a_bad_value_naming_field_and_value():
    result = invoke("train", "--dataset", "metalab.sinusoid", "--algorithm", "metalab.maml", "--set", "inner_lr=-2")
    assert result.exit_code == 2
    assert "inner_lr" in result.output and "-2" in result.output


def test_train_list_show_eval_round_trip():
    result = invoke("train", "-d", "metalab.sinusoid", "-a", "metalab.maml", "--steps", "6", "--seed", "3",
                    "--set", "meta_batch_size=2", "--set", "test_episodes=8", "--set", "val_every=3",
                    "--set", "eval_inner_steps=2", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    run_id = summary["id"]
    assert summary["status"] == "completed" and summary["evaluation"]["episodes"] == 8

    listed = json.loads(invoke("runs", "list", "--json").stdout)
    assert [r["id"] for r in listed] == [run_id]
    assert {"id", "dataset", "algorithm", "status", "created"} <= set(listed[0])

    shown = json.loads(invoke("runs", "show", run_id, "--json").stdout)
    assert shown["config"]["seed"] == 3 and shown["config"]["algorithm_params"]["meta_batch_size"] == 2

    evaluated = json.loads(invoke("eval", run_id, "--episodes", "10", "--json").stdout)
    assert evaluated["episodes"] == 10 and evaluated["mse"] > 0 and evaluated["ci95"] > 0
    assert len(evaluated["curve"]) == 3


def test_unknown_run_is_a_clear_error():
    result = invoke("runs", "show", "no-such-run")
    assert result.exit_code == 2
    assert "no-such-run" in result.output


def test_supervised_mlp_run_prints_its_test_accuracy_panel():
    result = invoke("train", "-d", "metalab.digits", "-a", "metalab.mlp_classifier", "--set", "dataset.mode=supervised",
                    "--steps", "60", "--set", "test_episodes=20", "--set", "val_episodes=10")
    assert result.exit_code == 0, result.output
    assert "Supervised accuracy (no meta-learning)" in result.stdout
    match = re.search(r"Test accuracy ([\d.]+)%", result.stdout)
    assert match and float(match.group(1)) > 80.0  # ten digit classes: chance is 10%
    run_id = result.stdout.strip().splitlines()[-1]
    assert "Test accuracy" in invoke("runs", "show", run_id).stdout

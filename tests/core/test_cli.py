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

    # The later 10-episode score is kept beside the end-of-training one and never replaces the headline: that is
    # the run's canonical protocol (its own 8 test episodes, seed 2017).
    shown = json.loads(invoke("runs", "show", run_id, "--json").stdout)
    assert [(e["split"], e["episodes"], e["seed"]) for e in shown["evaluations"]] == [("test", 10, 2017),
                                                                                     ("test", 8, 2017)]
    assert shown["headline"]["episodes"] == 8 and shown["headline"]["mse"] == summary["evaluation"]["mse"]
    text = invoke("runs", "show", run_id).stdout
    assert re.search(r"headline: meta-test MSE [\d.]+ ± [\d.]+ \(8 episodes\)", text), text
    assert "also test · 10 episodes · seed 2017: meta-test MSE" in text


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


# -- `metalab plugins show` and how `plugins list` reports failures -------------------------------------------


def test_plugins_show_prints_the_description_and_every_parameter():
    result = invoke("plugins", "show", "metalab.protonet")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())  # Rich wraps long lines
    assert "metalab.protonet (algorithm): Prototypical Networks" in text
    assert "takes each class's mean support embedding as its prototype" in text  # AlgorithmSpec.description
    assert "task kinds: classification" in text
    assert "outer_lr: float, > 0, <= 1, default 0.001 Adam learning rate." in text
    assert "distance: one of euclidean, cosine, default \"euclidean\"" in text
    assert "transductive: bool, default false" in text


def test_plugins_show_json_gives_types_ranges_defaults_and_descriptions():
    result = invoke("plugins", "show", "metalab.maml", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["id"], shown["kind"], shown["package"]) == ("metalab.maml", "algorithm", "metalab")
    assert shown["task_kinds"] == ["classification", "regression"] and "second order" in shown["description"]
    params = {row["name"]: row for row in shown["params"]}
    assert params["inner_lr"] == {"name": "inner_lr", "type": "float", "range": "> 0, <= 100", "default": 0.4,
                                  "title": "Inner learning rate", "description": params["inner_lr"]["description"]}
    # People's labels, as on the Train page: never pydantic's automatic "Meta Batch Size".
    assert params["meta_batch_size"]["title"] == "Meta batch size"
    assert not [r for r in shown["params"] if r["title"] == r["name"].replace("_", " ").title() and "_" in r["name"]]
    assert "Inner-loop step size" in params["inner_lr"]["description"]
    assert params["vectorize_tasks"]["type"] == "one of auto, on, off"
    assert params["meta_batch_size"]["range"] == ">= 1, <= 1024" and params["first_order"]["default"] is False


def test_plugins_show_of_a_backbone_says_whether_it_gives_feature_maps():
    shown = json.loads(invoke("plugins", "show", "metalab.conv4", "--json").stdout)
    assert shown["kind"] == "backbone" and shown["feature_maps"] is True
    assert json.loads(invoke("plugins", "show", "metalab.mlp", "--json").stdout)["feature_maps"] is False


def test_plugins_show_of_an_unknown_id_lists_the_known_ones_without_a_traceback():
    result = runner.invoke(app, ["plugins", "show", "metalab.nope"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "Unknown spec 'metalab.nope'" in text and "metalab.maml" in text and "Received: spec='metalab.nope'" in text
    assert "Traceback" not in result.output


def _testplugins_installed() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("metalab-testplugins")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _plugins_list(home, strict: bool):
    import os
    import subprocess
    import sys

    env = {**os.environ, "METALAB_HOME": str(home), "METALAB_DISABLE_PLUGINS": "", "COLUMNS": "200",
           "METALAB_STRICT_PLUGINS": "1" if strict else "0"}
    return subprocess.run([sys.executable, "-m", "metalab.core.cli", "plugins", "list"], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.skipif(not _testplugins_installed(), reason="metalab-testplugins (its broken plugins) is not installed")
@pytest.mark.parametrize("strict", [False, True])
def test_plugins_list_prints_each_failure_once_and_strict_mode_exits_without_a_traceback(home, strict):
    result = _plugins_list(home, strict)
    assert result.returncode == (1 if strict else 0), result.stderr
    # A broken plugin of metalab-testplugins, in one line of its own; the loader's log line is not printed too.
    assert result.stderr.count("'metalab_testplugins.broken_import'") == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "metalab.maml" in result.stdout  # the listing is printed in strict mode too
    if strict:
        assert "error: 4 plugin(s) failed to load and strict mode is on" in " ".join(result.stderr.split())


@pytest.mark.skipif(not _testplugins_installed(), reason="metalab-testplugins (its broken plugins) is not installed")
def test_strict_mode_refuses_to_train_with_one_message_and_no_traceback(home):
    import os
    import subprocess
    import sys

    env = {**os.environ, "METALAB_HOME": str(home), "METALAB_DISABLE_PLUGINS": "", "COLUMNS": "200",
           "METALAB_STRICT_PLUGINS": "1"}
    result = subprocess.run([sys.executable, "-m", "metalab.core.cli", "train", "--dataset", "metalab.sinusoid",
                             "--algorithm", "metalab.maml", "--steps", "1"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "error:" in result.stderr and "METALAB_STRICT_PLUGINS=0" in " ".join(result.stderr.split())
    assert not any((home / "runs").glob("*"))  # no run was created

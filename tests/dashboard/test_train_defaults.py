"""The Train page and `metalab train` start from the same defaults, and cadences follow the steps."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from metalab.core import cli
from metalab.core.engine.config import CADENCE_FIELDS
from metalab.core.services import Services

RUN = "train.run.{dataset}.{algorithm}"


@pytest.fixture
def no_workers(monkeypatch):
    """Runs are created as usual but no worker process starts: the test reads the config each front end stored."""
    monkeypatch.setattr(Services, "_start", lambda self, run_id: None)
    monkeypatch.setattr(cli, "_train_with_progress", lambda services, run_id, start: "cancelled")


def _launch_from_form(page, query: dict[str, str], steps: int | None = None) -> dict:
    at = page("train", query).run()
    assert not at.exception
    if steps is not None:
        at.number_input(key=f"{RUN.format(**query)}.steps").set_value(steps).run()
    assert at.success, [e.value for e in at.error]
    at.button(key="train.launch").click().run()
    (run,) = [r for r in Services().runs() if r.name == ""]
    return run.config


def _train_from_cli(*args: str) -> tuple[dict, str]:
    result = CliRunner().invoke(cli.app, ["train", *args, "--name", "cli"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run,) = [r for r in Services().runs() if r.name == "cli"]
    return run.config, " ".join(result.output.split())


@pytest.mark.parametrize("dataset, algorithm", [("metalab.sinusoid", "metalab.maml"),
                                                ("metalab.sinusoid", "metalab.reptile")])
def test_the_form_launches_the_config_metalab_train_runs_for_the_same_pair(page, no_workers, dataset, algorithm):
    """The reviewer's finding: sinusoid MAML got meta-batch 10, log_every 50 and 4,000 steps from the page but
    25, 10 and 1,000 from the CLI; Reptile's sinusoid settings (algorithm_defaults) reached only the CLI."""
    form = _launch_from_form(page, {"dataset": dataset, "algorithm": algorithm})
    command, _ = _train_from_cli("-d", dataset, "-a", algorithm)
    for name in ("steps", *CADENCE_FIELDS, "algorithm_params", "dataset_params", "backbone_params"):
        assert form[name] == command[name], name
    assert form == command


def test_fewer_steps_scale_the_cadences_on_the_page_and_the_cli(page, no_workers):
    """Setting Steps to 300 kept val_every=500 and checkpoint_every=1000: no validation or checkpoint on the way."""
    query = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml"}
    form = _launch_from_form(page, query, steps=300)
    command, _ = _train_from_cli("-d", "metalab.sinusoid", "-a", "metalab.maml", "--steps", "300")
    for config in (form, command):
        assert config["steps"] == 300
        assert all(1 <= config[name] <= 300 for name in CADENCE_FIELDS), config
        assert (config["val_every"], config["checkpoint_every"], config["log_every"]) == (37, 75, 3)


def test_cadence_fields_open_empty_with_their_rule_in_the_help(page):
    at = page("train").run()
    run = RUN.format(dataset="metalab.sinusoid", algorithm="metalab.maml")
    for name in CADENCE_FIELDS:
        field = at.number_input(key=f"{run}.{name}")
        assert field.value is None and "Empty: scales with the steps" in field.proto.help
    assert "validates every 500 steps, checkpoints every 1000, logs every 50" in at.success[0].value
    at.number_input(key=f"{run}.steps").set_value(300).run()
    assert "validates every 37 steps, checkpoints every 75, logs every 3" in at.success[0].value
    assert not [w.value for w in at.warning if "is more than the run's" in w.value]


def test_a_cadence_above_the_steps_warns_on_the_page_and_the_cli(page, no_workers):
    run = RUN.format(dataset="metalab.sinusoid", algorithm="metalab.maml")
    at = page("train").run()
    at.number_input(key=f"{run}.steps").set_value(300).run()
    at.number_input(key=f"{run}.val_every").set_value(500).run()
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("val_every: 500 is more than the run's 300 steps") for w in warnings), warnings
    assert "Valid:" in at.success[0].value  # a warning, not a refusal
    _, output = _train_from_cli("-d", "metalab.sinusoid", "-a", "metalab.maml", "--steps", "300",
                                "--set", "val_every=500")
    assert "warning: val_every: 500 is more than the run's 300 steps" in output

"""The Train page: forms built from the plugins' schemas, inline validation, query parameters, launching."""

from __future__ import annotations

import time

import pytest

from metalab.core.services import Services

MAML = "train.algorithm.metalab.sinusoid.metalab.maml"


def _errors(at) -> list[str]:
    return [e.value for e in at.error]


def test_default_setup_is_sinusoid_maml_with_quick_presets_and_valid(page):
    at = page("train").run()
    assert not at.exception
    assert at.selectbox(key="train.dataset").value == "metalab.sinusoid"
    assert at.selectbox(key="train.algorithm").value == "metalab.maml"
    assert at.selectbox(key="train.backbone.metalab.sinusoid").value == "metalab.mlp"
    # Presets differ from the plugin's Omniglot defaults (inner_lr 0.4, meta-batch 32) so a first run is quick.
    assert at.number_input(key=f"{MAML}.inner_lr").value == pytest.approx(0.01)
    assert at.number_input(key=f"{MAML}.meta_batch_size").value == 10
    assert at.number_input(key="train.run.metalab.sinusoid.metalab.maml.steps").value == 4000
    assert _errors(at) == []
    assert "Valid: MAML on Sinusoid regression" in at.success[0].value


def test_widgets_follow_the_schema_ranges_types_and_help(page):
    at = page("train").run()
    inner_steps = at.number_input(key=f"{MAML}.inner_steps")
    assert inner_steps.proto.min == 1 and inner_steps.proto.max == 100
    assert "Inner gradient steps during meta-training" in inner_steps.proto.help
    assert "allowed: >= 1, <= 100" in inner_steps.proto.help
    first_order = at.checkbox(key=f"{MAML}.first_order")
    assert first_order.value is False and "First-order MAML" in first_order.proto.help
    # A list parameter is edited as JSON, its default (from a default factory) filled in.
    assert at.text_input(key="train.backbone.metalab.sinusoid.metalab.mlp.hidden").value == "[40, 40]"
    # Regression has no "ways".
    assert "train.run.metalab.sinusoid.metalab.maml.ways" not in [w.key for w in at.number_input]
    # Precision and XLA are run options next to the device.
    precision = at.selectbox(key="train.run.metalab.sinusoid.metalab.maml.precision")
    assert precision.value == "float32" and "mixed_bfloat16" in precision.options
    assert at.checkbox(key="train.run.metalab.sinusoid.metalab.maml.jit_compile").value is False


def test_literal_parameters_become_select_boxes(page):
    at = page("train", {"dataset": "metalab.digits", "algorithm": "metalab.protonet"}).run()
    distance = at.selectbox(key="train.algorithm.metalab.digits.metalab.protonet.distance")
    assert distance.options == ["euclidean", "cosine"] and distance.value == "euclidean"
    assert at.number_input(key="train.run.metalab.digits.metalab.protonet.ways").value == 3


def test_out_of_range_value_is_explained_inline(page):
    at = page("train").run()
    at.number_input(key=f"{MAML}.inner_lr").set_value(0.0).run()
    errors = _errors(at)
    assert any(e.startswith("algorithm.inner_lr: Input should be greater than 0") and "Received: inner_lr=0.0" in e
               for e in errors), errors
    assert at.button(key="train.launch").disabled


def test_only_algorithms_that_take_the_datasets_kind_of_task_are_offered(page):
    at = page("train").run()
    offered = " ".join(at.selectbox(key="train.algorithm").options)
    assert "metalab.maml)" in offered and "metalab.protonet" not in offered and "metalab.maml_rl" not in offered
    # An environment dataset offers the meta-RL algorithms only, and its form is valid as it opens.
    at.selectbox(key="train.dataset").set_value("metalab.nav2d").run()
    assert not at.exception
    assert at.selectbox(key="train.algorithm").value == "metalab.maml_rl"
    offered = " ".join(at.selectbox(key="train.algorithm").options)
    assert "metalab.pretrained_policy" in offered and "metalab.maml)" not in offered
    assert any("MAML (metalab.maml) does not take environment tasks (metalab.nav2d)" in i.value for i in at.info)
    assert "train.run.metalab.nav2d.metalab.maml_rl.ways" not in [w.key for w in at.number_input]
    assert _errors(at) == [] and not at.button(key="train.launch").disabled


def test_a_link_naming_an_algorithm_that_does_not_fit_the_dataset_is_refused_by_name(page):
    at = page("train", {"dataset": "metalab.nav2d", "algorithm": "metalab.protonet"}).run()
    assert at.selectbox(key="train.algorithm").value == "metalab.maml_rl"
    warnings = " ".join(w.value for w in at.warning)
    assert "algorithm='metalab.protonet' does not take environment tasks (metalab.nav2d)" in warnings


def test_malformed_json_parameter_is_reported(page):
    at = page("train").run()
    at.text_input(key="train.backbone.metalab.sinusoid.metalab.mlp.hidden").input("[40,").run()
    assert any(e.startswith("hidden: not valid JSON") for e in _errors(at))


def test_query_parameters_set_the_form_and_follow_it(page):
    at = page("train", {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": "123",
                        "algorithm.inner_lr": "0.05", "algorithm.first_order": "true",
                        "backbone.hidden": "[20]", "name": "shared"}).run()
    assert at.number_input(key="train.run.metalab.sinusoid.metalab.maml.steps").value == 123
    assert at.number_input(key=f"{MAML}.inner_lr").value == pytest.approx(0.05)
    assert at.checkbox(key=f"{MAML}.first_order").value is True
    assert at.text_input(key="train.name").value == "shared"
    at.number_input(key=f"{MAML}.inner_steps").set_value(3).run()
    assert at.query_params["algorithm.inner_steps"] == ["3"] or at.query_params["algorithm.inner_steps"] == "3"
    flat = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert flat["steps"] == "123" and flat["algorithm.inner_lr"] == "0.05" and flat["backbone.hidden"] == "[20]"
    assert flat["dataset"] == "metalab.sinusoid" and flat["algorithm.first_order"] == "true"


def test_bad_link_parameters_are_ignored_with_a_warning(page):
    at = page("train", {"dataset": "nobody.nothing", "steps": "many"}).run()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert any("dataset='nobody.nothing' is not loaded" in w for w in warnings), warnings
    assert any("steps: expected an integer" in w for w in warnings), warnings
    assert at.selectbox(key="train.dataset").value == "metalab.sinusoid"


def test_a_bad_link_value_stays_shown_with_every_error_at_once(page):
    run = "train.run.metalab.digits.metalab.protonet"
    at = page("train", {"dataset": "metalab.digits", "algorithm": "metalab.protonet", "shots": "0",
                        "queries": "-3", "backbone.hidden": "[64,"}).run()
    assert not at.exception
    # The fields keep the link's values (not a blank or the default) ...
    assert at.number_input(key=f"{run}.shots").value == 0
    assert at.number_input(key=f"{run}.queries").value == -3
    errors = _errors(at)
    # ... and every problem is listed together, each naming its field and value.
    assert any(e.startswith("shots: Input should be greater than or equal to 1") and "shots=0" in e
               for e in errors), errors
    assert any(e.startswith("queries:") and "queries=-3" in e for e in errors), errors
    assert any(e.startswith("hidden: not valid JSON") for e in errors), errors
    assert not any("default is shown" in e for e in errors), errors
    assert at.button(key="train.launch").disabled
    assert any(c.value.startswith("Launch is disabled: fix the ") for c in at.caption)
    # Fixing them brings the bounds back and enables Launch.
    at.number_input(key=f"{run}.shots").set_value(2).run()
    at.number_input(key=f"{run}.queries").set_value(4).run()
    at.text_input(key="train.backbone.metalab.digits.metalab.mlp.hidden").input("[64]").run()
    assert _errors(at) == [] and not at.exception
    assert at.number_input(key=f"{run}.shots").proto.min == 1
    assert not at.button(key="train.launch").disabled
    assert not any(c.value.startswith("Launch is disabled") for c in at.caption)


def test_launch_is_disabled_when_max_workers_runs_are_active(page, fake_runs, monkeypatch):
    monkeypatch.setenv("METALAB_MAX_WORKERS", "1")
    fake_runs.running()
    at = page("train").run()
    assert at.button(key="train.launch").disabled
    assert any("1 of 1 allowed runs" in w.value for w in at.warning)


def test_launch_starts_a_worker_that_completes_the_run(page, home):
    """A real (tiny) run from the form: a worker process trains it and stores the report data."""
    at = page("train", {"steps": "4", "val_every": "2", "val_episodes": "2", "test_episodes": "4",
                        "log_every": "2", "algorithm.meta_batch_size": "2", "algorithm.eval_inner_steps": "2",
                        "name": "from the form"}).run()
    assert at.success, _errors(at)
    at.button(key="train.launch").click().run()
    assert not at.exception
    services = Services()
    (run,) = services.runs()
    run_id = run.id
    assert at.session_state["train.last_run"] == run_id
    deadline = time.time() + 180
    while services.run(run_id).status in ("queued", "running") and time.time() < deadline:
        time.sleep(0.5)
    run = services.run(run_id)
    assert run.status == "completed", (run.error, services.worker_log(run_id))
    assert run.name == "from the form" and run.config["steps"] == 4
    assert run.config["algorithm_params"]["inner_lr"] == pytest.approx(0.01)
    data = services.report_data(run_id)
    assert data and len(data["sinusoid"]["tasks"]) == 3
    assert set(data["sinusoid"]["tasks"][0]["predictions"]) == {"0", "1", "10"}


def test_dataset_expander_loads_sizes_and_samples_only_when_asked(page, tmp_path, monkeypatch):
    from metalab.dashboard.datasets import _summary

    monkeypatch.setenv("METALAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("METALAB_OFFLINE", "1")
    _summary.clear()
    at = page("train", {"dataset": "metalab.digits", "algorithm": "metalab.protonet"}).run()
    assert not at.exception
    (expander,) = [e for e in at.expander if e.label == "Dataset: sizes and samples"]
    assert not expander.proto.expanded
    assert not at.metric and not at.image  # nothing is read on page load
    at.button(key="train.dataset_load").click().run()
    assert not at.exception
    (expander,) = [e for e in at.expander if e.label == "Dataset: sizes and samples"]
    metrics = {m.label: m.value for m in expander.metric}
    assert metrics["Classes"] == "10" and metrics["Images"] == "1,797" and metrics["Input shape"] == "8 × 8 × 1"
    table = expander.dataframe[0].value
    assert list(table["split"]) == ["train", "val", "test"] and list(table["classes"]) == [4, 3, 3]
    assert len(expander.image) == 10  # every class of each split, as on the Datasets page
    assert "sklearn.datasets.load_digits" in expander.success[0].value
    # Another seed splits the classes differently: the old summary is not shown for it.
    seed = at.number_input(key="train.dataset.metalab.digits.metalab.digits.seed")
    seed.set_value(seed.value + 1).run()
    assert not at.exception and not at.image
    _summary.clear()

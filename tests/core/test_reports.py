"""Report figures and the HTML report are pure functions of store data; report data comes from the worker."""

from __future__ import annotations

import json
import math
import re

import plotly.graph_objects as go
import pytest

from metalab.core.reports import figures as reports

METRICS = {
    "train/loss": [(10, 2.0), (20, 1.5), (30, 1.0)],
    "train/accuracy": [(10, 0.3), (20, 0.5), (30, 0.7)],
    "train/steps_per_s": [(10, 5.0), (20, 10.0), (30, 15.0)],
    "val/accuracy": [(15, 0.4), (30, 0.6)],
    "val/ci95": [(15, 0.05), (30, 0.04)],
    "val/loss": [(15, 1.8), (30, 1.2)],
}
EVALUATION = {"split": "test", "episodes": 600, "seed": 2017, "loss": 0.4, "accuracy": 0.9, "ci95": 0.01,
              "curve": [0.2, 0.8, 0.9], "curve_ci95": [0.01, 0.02, 0.01]}
SINUSOID = {"x": [-1.0, 0.0, 1.0], "tasks": [
    {"amplitude": 2.0, "phase": 0.1, "true": [1, 2, 3], "support_x": [0.5], "support_y": [1.5],
     "predictions": {"0": [0, 0, 0], "1": [1, 1, 1], "10": [1, 2, 3]}},
    {"amplitude": 3.0, "phase": 0.2, "true": [3, 2, 1], "support_x": [0.1, 0.2], "support_y": [2.5, 2.4],
     "predictions": {"0": [0, 0, 0], "1": [2, 2, 2], "10": [3, 2, 1]}},
]}


def _names(fig: go.Figure) -> list[str]:
    return [trace.name for trace in fig.data]


def test_learning_curves_show_train_and_validation_with_ci_band():
    fig = reports.learning_curves_figure(METRICS)
    names = _names(fig)
    assert {"train loss", "val loss", "train accuracy", "val accuracy"} <= set(names)
    val = next(t for t in fig.data if t.name == "val accuracy")
    # Accuracies in percent, like the headline score; the band is a filled outline with no markers.
    assert list(val.x) == [15, 30] and list(val.y) == pytest.approx([40.0, 60.0])
    band = next(t for t in fig.data if t.name == "val accuracy 95% CI")
    assert max(band.y) == pytest.approx(64.0) and min(band.y) == pytest.approx(35.0)
    assert band.mode == "lines"


def test_learning_curves_of_regression_plot_mse_and_no_accuracy():
    fig = reports.learning_curves_figure({"train/loss": [(1, 3.0)], "val/mse": [(1, 2.0)], "val/loss": [(1, 2.0)]})
    assert "val mse" in _names(fig)
    assert "train accuracy" not in _names(fig)


def test_adaptation_curve_in_percent_with_band_and_none_without_curve():
    fig = reports.adaptation_curve_figure(EVALUATION)
    line = next(t for t in fig.data if t.name == "query score")
    assert list(line.x) == [0, 1, 2]
    assert list(line.y) == pytest.approx([20.0, 80.0, 90.0])
    assert "600" in fig.layout.title.text
    assert reports.adaptation_curve_figure({"accuracy": 0.5, "ci95": 0.1}) is None


def test_score_of_accuracy_is_percent_and_mse_is_raw():
    assert reports.score_of(EVALUATION) == ("accuracy (%)", pytest.approx(90.0), pytest.approx(1.0))
    assert reports.score_of({"mse": 0.25, "ci95": 0.03}) == ("MSE", 0.25, 0.03)


def test_scores_figure_groups_bars_and_keeps_error_bars():
    fig = reports.scores_figure([
        {"label": "a", "value": 90.0, "ci95": 1.0, "group": "x"},
        {"label": "b", "value": 80.0, "ci95": float("nan"), "group": "y"},
    ])
    assert len(fig.data) == 2
    assert list(fig.data[0].error_y.array) == [1.0]
    assert list(fig.data[1].error_y.array) == [0]  # an unknown CI draws no bar rather than failing


def test_compare_curves_figure_has_one_line_per_run():
    fig = reports.compare_curves_figure({"run a": [(1, 0.1), (2, 0.2)], "run b": [(1, 0.3)]}, "val/accuracy")
    assert _names(fig) == ["run a", "run b"]
    assert fig.layout.title.text == "val/accuracy"


def test_parallel_coordinates_place_numbers_in_proportion_text_by_level_and_leave_gaps():
    from metalab.core.reports.compare import parallel_coordinates_figure

    rows = [{"id": "r1", "lr": 0.1, "opt": "sgd", "acc": 0.5},
            {"id": "r2", "lr": 0.4, "opt": "adam", "acc": None},
            {"id": "r3", "lr": 1.0, "opt": "sgd", "acc": 0.9}]
    fig = parallel_coordinates_figure(rows, ["lr", "opt", "acc"], {"r1": "#111111", "r2": "#222222"},
                                      labels={"lr": "learning rate"}, run_labels={"r1": "one"})
    assert [t.type for t in fig.data] == ["scatter"] * 3 and [t.name for t in fig.data] == ["one", "r2", "r3"]
    assert [t.line.color for t in fig.data[:2]] == ["#111111", "#222222"]
    assert list(fig.layout.xaxis.ticktext) == ["learning rate", "opt", "acc"]
    lr, opt, acc = zip(*(t.y for t in fig.data))
    assert [round(v, 6) for v in lr] == [0.0, round(0.3 / 0.9, 6), 1.0]
    assert opt == (1.0, 0.0, 1.0)  # levels sorted: adam at the bottom, sgd at the top
    assert acc == (0.0, None, 1.0)  # a run without the metric leaves a gap, not a point at 0
    assert fig.data[1].customdata[2][1] == "–"
    # Each axis is labelled with its range (numbers) or its levels (text).
    texts = {a.text for a in fig.layout.annotations}
    assert {"0.1", "0.55", "1", "adam", "sgd"} <= texts


def test_sinusoid_figure_draws_truth_support_and_each_adaptation_per_task():
    fig = reports.sinusoid_figure(SINUSOID)
    names = _names(fig)
    assert names.count("ground truth") == 2 and names.count("support points") == 2
    assert {"pre-update", "1 grad step", "10 grad steps"} <= set(names)
    # The legend lists each kind of line once, not once per panel.
    assert sum(1 for t in fig.data if t.showlegend) == 5


def test_episode_gallery_marks_mistakes():
    image = [[0, 255], [255, 0]]
    data = {"ways": 2, "shots": 1, "accuracy": 0.5, "support_images": [image, image], "support_labels": [0, 1],
            "query_images": [image, image], "query_labels": [0, 1], "query_predictions": [0, 0]}
    fig = reports.episode_gallery_figure(data)
    assert len(fig.data) == 4
    titles = [a.text for a in fig.layout.annotations]
    # A row per class: "class 1", its support, then its queries; the mistake names the predicted class.
    assert sum("✗ pred 0" in t for t in titles) == 1 and sum("✓" in t for t in titles) == 1
    assert fig.layout.meta["queries"] == 2 and fig.layout.meta["correct"] == 1
    assert "1/2 queries right (50.0%)" in fig.layout.title.text


def test_embedding_figure_colours_by_class():
    fig = reports.embedding_figure({"points": [[0, 0], [1, 1], [2, 2]], "labels": [0, 1, 1],
                                    "correct": [True, False, True], "method": "PCA"})
    assert _names(fig) == ["class 0", "class 1"]
    assert list(fig.data[1].marker.symbol) == ["x", "circle"]


@pytest.fixture
def services(tmp_path, builtin_registry):
    from metalab.core.services import Services
    from metalab.core.settings import load_settings

    return Services(settings=load_settings(home=tmp_path, disable_plugins=""), registry=builtin_registry)


OMNIGLOT_MAML = {"dataset": "metalab.omniglot", "algorithm": "metalab.maml", "backbone": "metalab.conv4", "ways": 5,
                 "shots": 1, "dataset_params": {"split": "vinyals", "rotations": True, "image_size": 28},
                 "algorithm_params": {"first_order": False}}


def test_published_results_match_only_the_papers_protocol(services):
    rows = [r for r in services.published_results(OMNIGLOT_MAML) if r["benchmark"] is None]
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {"MAML", "first-order MAML", "Prototypical Networks", "Reptile",
                              "Reptile + transduction"}
    assert by_method["MAML"]["value"] == 98.7 and by_method["MAML"]["ci95"] == 0.4
    assert by_method["MAML"]["metric"] == "accuracy" and by_method["MAML"]["same_algorithm"]
    assert not by_method["first-order MAML"]["same_algorithm"]
    assert "Snell" in by_method["Prototypical Networks"]["citation"]
    # Parameters a stored config leaves out count as the plugins' defaults (vinyals split; second-order MAML).
    bare = {**OMNIGLOT_MAML, "dataset_params": {}, "algorithm_params": {}}
    assert [r for r in services.published_results(bare) if r["same_algorithm"]] == [by_method["MAML"]]
    first_order = {**OMNIGLOT_MAML, "algorithm_params": {"first_order": True}}
    assert [r["method"] for r in services.published_results(first_order) if r["same_algorithm"]] == [
        "first-order MAML"]
    assert [r for r in services.published_results({**OMNIGLOT_MAML, "shots": 3}) if r["benchmark"] is None] == []
    minimal = {**OMNIGLOT_MAML, "dataset_params": {"split": "minimal"}}
    assert [r for r in services.published_results(minimal) if r["benchmark"] is None] == []
    assert services.published_results({**OMNIGLOT_MAML, "dataset": "metalab.digits"}) == []
    # Lake et al.'s figures stand with their own 20-way one-shot benchmark, whatever the run's episode shape.
    lake = [r for r in services.published_results({**OMNIGLOT_MAML, "shots": 3}) if r["benchmark"] == "lake20"]
    assert [(r["method"], r["value"]) for r in lake] == [("people", 95.5), ("Bayesian Program Learning", 96.7)]


def test_an_algorithm_plugin_publishes_its_own_results_on_any_dataset(tmp_path, builtin_registry):
    """A third-party algorithm declares its paper's scores on a built-in dataset in its own spec."""
    import types

    from metalab.core.contract.manager import make_plugin_manager
    from metalab.core.contract.specs import AlgorithmSpec, Params, PublishedResult, hookimpl
    from metalab.core.services import Services
    from metalab.core.settings import load_settings

    record = PublishedResult(method="Foo", citation="Foo et al. 2030, Table 2", value=0.12, ci95=0.01, metric="mse",
                             shots=10, dataset="metalab.sinusoid", algorithm="acme.foo")
    spec = AlgorithmSpec(id="acme.foo", title="Foo", description="d", params=Params,
                         factory=builtin_registry.algorithm("metalab.maml").factory, published_results=(record,))
    plugin = types.SimpleNamespace(METALAB_PLUGIN_API="1.4", metalab_register_algorithms=hookimpl(lambda: [spec]))
    settings = load_settings(home=tmp_path, disable_plugins="")
    registry = make_plugin_manager(distributions={"metalab"}, settings=settings, strict=True,
                                   plugins=[("acme", plugin)])
    svc = Services(settings=settings, registry=registry)
    config = {"dataset": "metalab.sinusoid", "algorithm": "acme.foo", "ways": 1, "shots": 10, "test_episodes": 10}
    assert svc.published_results(config) == [{"method": "Foo", "metric": "mse", "value": 0.12, "ci95": 0.01,
                                              "citation": "Foo et al. 2030, Table 2", "benchmark": None,
                                              "same_algorithm": True}]
    assert svc.published_results({**config, "shots": 5}) == []
    # The row stands beside the run's MSE in the report's score figure, not beside an accuracy.
    report = {"run": {"id": "r", "config": config}, "metrics": {}, "published": svc.published_results(config),
              "evaluations": [{"split": "test", "episodes": 10, "seed": 2017, "mse": 0.2, "ci95": 0.02, "loss": 0.2}]}
    bars = dict(reports.report_figures(report))["Meta-test score"]
    assert {label: value for trace in bars.data for label, value in zip(trace.x, trace.y)} == {
        "this run": pytest.approx(0.2), "Foo": pytest.approx(0.12)}
    report["evaluations"][0] = {"split": "test", "episodes": 10, "seed": 2017, "accuracy": 0.9, "ci95": 0.02, "loss": 0.2}
    bars = dict(reports.report_figures(report))["Meta-test score"]
    assert [label for trace in bars.data for label in trace.x] == ["this run"]


@pytest.mark.parametrize("record, match", [
    (dict(method="", citation="c", value=1.0), "non-empty method. Received: method=''"),
    (dict(method="m", citation="c", value=float("nan")), "value must be a finite number. Received: value=nan"),
    (dict(method="m", citation="c", value=1.0, metric="f1"), "metric must be 'accuracy' or 'mse'. Received: metric='f1'"),
    (dict(method="m", citation="c", value=1.0, ways=0), "ways must be a positive int or None. Received: ways=0"),
    (dict(method="m", citation="c", value=1.0, algorithm="MAML"), "Received: algorithm='MAML'"),
    (dict(method="m", citation="c", value=1.0, dataset_params=[("split", "a")]), "Received: dataset_params="),
])
def test_malformed_published_results_are_refused(record, match):
    from metalab.core.contract.specs import PublishedResult

    with pytest.raises(ValueError, match=re.escape(match)):
        PublishedResult(**record).validate()


def test_published_results_must_name_a_dataset_they_belong_to(builtin_registry):
    import dataclasses

    from metalab.core.contract.specs import PublishedResult

    record = PublishedResult(method="m", citation="c", value=1.0)
    maml, digits = builtin_registry.algorithm("metalab.maml"), builtin_registry.dataset("metalab.digits")
    with pytest.raises(ValueError, match=r"names the dataset it was measured on\. Received: dataset=''"):
        dataclasses.replace(maml, published_results=(record,)).validate()
    with pytest.raises(ValueError, match=r"Received: dataset='metalab\.omniglot'"):
        dataclasses.replace(digits, published_results=(dataclasses.replace(record, dataset="metalab.omniglot"),)
                            ).validate()
    with pytest.raises(ValueError, match=r"must be a tuple of PublishedResult"):
        dataclasses.replace(digits, published_results=({"method": "m"},)).validate()
    dataclasses.replace(digits, published_results=[record]).validate()


def test_run_progress_eta_from_worker_speed():
    progress = reports.run_progress({"step": 30, "total_steps": 130, "status": "running"}, METRICS)
    assert progress["fraction"] == pytest.approx(30 / 130)
    assert progress["steps_per_s"] == pytest.approx(10.0)
    assert progress["eta_s"] == pytest.approx(10.0)
    assert progress["latest"]["train/loss"] == 1.0
    done = reports.run_progress({"step": 130, "total_steps": 130, "status": "completed"}, METRICS)
    assert done["eta_s"] is None and done["fraction"] == 1.0


def _report() -> dict:
    run = {"id": "20260101-000000-abcdef", "name": "demo", "dataset": "metalab.sinusoid", "algorithm": "metalab.maml",
           "backbone": "metalab.mlp", "status": "completed", "step": 30, "total_steps": 30,
           "config": {"dataset": "metalab.sinusoid", "seed": 7, "test_episodes": 50,
                      "algorithm_params": {"inner_lr": 0.01}},
           "versions": {"keras": "3.15.1"}, "created": "2026-01-01T00:00:00+00:00"}
    regression_eval = {"split": "test", "episodes": 50, "seed": 2017, "loss": 0.3, "mse": 0.3, "ci95": 0.02, "curve": [2.0, 0.5, 0.3],
                       "curve_ci95": [0.1, 0.1, 0.1]}
    return {"run": run, "metrics": {"train/loss": [(10, 1.0)], "val/mse": [(10, 0.5)]},
            "evaluations": [regression_eval], "report_data": {"sinusoid": SINUSOID}}


def test_report_figures_in_reading_order():
    titles = [title for title, _ in reports.report_figures(_report())]
    assert titles == ["Learning curves", "Adaptation curve", "Meta-test score", "Sinusoid fits"]


def test_report_html_is_self_contained_with_every_figure_config_and_versions():
    text = reports.report_html(_report(), generated=0)
    # plotly.js is inlined exactly once (offline), and each figure has its own plot div.
    assert text.count("window.PlotlyConfig") == 1 and text.count("plotly.js v") == 1
    assert "<script src=\"https://cdn" not in text
    assert len(re.findall(r"Plotly\.newPlot", text)) == 4
    assert "Sinusoid fits" in text and "Adaptation curve" in text
    assert "&quot;inner_lr&quot;: 0.01" in text or '"inner_lr": 0.01' in text
    assert "3.15.1" in text and "seed 7" in text
    assert "MSE: <b>0.3</b>" in text


def test_report_html_escapes_run_names():
    report = _report()
    report["run"]["name"] = "<script>alert(1)</script>"
    assert "<script>alert(1)</script>" not in reports.report_html(report)


def test_reports_module_imports_no_streamlit_or_tensorflow():
    import subprocess
    import sys

    code = "import sys, metalab.core.reports.figures; print([m for m in ('streamlit', 'tensorflow') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_worker_writes_report_data_for_classification(tmp_path, builtin_registry):
    """A tiny real run: the end-of-run hook stores an episode gallery and an embedding projection."""
    from metalab.core.engine.config import resolve_config
    from metalab.core.engine.runner import train_run
    from metalab.core.settings import load_settings
    from metalab.core.store import RunStore

    store = RunStore(tmp_path / "runs.sqlite")
    config = resolve_config(builtin_registry, {"dataset": "metalab.digits", "algorithm": "metalab.protonet",
                                               "steps": 3, "val_every": 3, "val_episodes": 2, "test_episodes": 4})
    run_id = store.create_run(config.model_dump())
    assert train_run(store, run_id, builtin_registry, settings=load_settings(home=tmp_path)) == "completed"
    artifact = next(a for a in store.artifacts(run_id) if a["name"] == "report_data")
    data = json.loads(open(artifact["path"]).read())
    episode = data["episode"]
    assert len(episode["support_images"]) == config.ways * config.shots
    assert len(episode["query_predictions"]) == len(episode["query_labels"]) == config.ways * config.queries
    assert all(0 <= p < config.ways for p in episode["query_predictions"])
    assert len(data["embedding"]["points"]) == config.ways * config.queries
    assert all(len(p) == 2 and all(math.isfinite(v) for v in p) for p in data["embedding"]["points"])


def test_cross_domain_scores_stand_beside_the_in_domain_score():
    from metalab.core.reports import figures as reports

    report = {
        "run": {"id": "r", "config": {"dataset": "metalab.omniglot", "algorithm": "metalab.baseline",
                                      "test_episodes": 10}},
        "metrics": {},
        "evaluations": [
            {"split": "test", "episodes": 10, "seed": 2017, "accuracy": 0.8, "ci95": 0.05, "loss": 0.5},
            {"split": "cross:metalab.digits", "episodes": 10, "accuracy": 0.6, "ci95": 0.04, "loss": 0.9},
        ],
    }
    assert [e["split"] for e in reports.cross_domain_evaluations(report)] == ["cross:metalab.digits"]
    figures = dict(reports.report_figures(report))
    labels = [str(label) for trace in figures["Meta-test score"].data for label in (trace.x if trace.x is not None else [])]
    assert any("cross-domain: metalab.digits" in label for label in labels), labels
    assert "cross-domain (metalab.digits)" in reports.report_html(report)


def test_a_benchmark_evaluation_stands_beside_the_published_figures(services):
    from metalab.core.reports import figures as reports

    config = {"dataset": "metalab.omniglot", "algorithm": "metalab.protonet", "ways": 5, "shots": 1,
              "test_episodes": 10}
    report = {
        "run": {"id": "r", "config": config},
        "metrics": {},
        "evaluations": [
            {"split": "benchmark:lake20", "episodes": 20, "accuracy": 0.86, "ci95": 0.04, "loss": 0.5},
            {"split": "test", "episodes": 10, "seed": 2017, "accuracy": 0.9, "ci95": 0.05, "loss": 0.4},
        ],
        "published": services.published_results(config),
    }
    figures = dict(reports.report_figures(report))
    bars = figures["Benchmark: lake20"]
    values = {label: value for trace in bars.data for label, value in zip(trace.x, trace.y)}
    assert values == {"this run": pytest.approx(86.0), "people": pytest.approx(95.5),
                      "Bayesian Program Learning": pytest.approx(96.7)}
    # The benchmark's figures stay off the test split's chart, which has the papers' 5-way one-shot rows.
    test_labels = [label for trace in figures["Meta-test score"].data for label in trace.x]
    assert "people" not in test_labels and "Prototypical Networks" in test_labels
    text = reports.report_html(report)
    assert "Lake, Salakhutdinov and Tenenbaum 2015" in text and "<td>98.8 accuracy (%)</td>" in text


@pytest.mark.parametrize("algorithm, backbone, params, expected", [
    ("metalab.maml", "metalab.conv4", {"transductive": True},
     "Meta-test batch norm: transductive (query batch statistics)."),
    ("metalab.maml", "metalab.conv4", {"transductive": False},
     "Meta-test batch norm: inductive (no query's prediction depends on the other queries)."),
    ("metalab.maml", "metalab.conv4", {"transductive": False, "per_step_bn": True},
     "Meta-test batch norm: inductive (per-step running statistics); per-step batch norm (MAML++)."),
    ("metalab.maml", "metalab.conv4", {"per_step_bn": True},
     "Meta-test batch norm: transductive (query batch statistics); per-step batch norm (MAML++)."),
    # The sinusoid MLP has no batch norm, whatever the algorithm's setting.
    ("metalab.maml", "metalab.mlp", {"transductive": True},
     "Batch norm: none (the MLP backbone has no batch-norm layers)."),
    ("metalab.protonet", "metalab.conv4", {}, "Meta-test batch norm: inductive (running statistics learned in training)."),
    ("metalab.protonet", "metalab.conv4", {"transductive": True},
     "Meta-test batch norm: transductive (each episode's support and query statistics)."),
    ("metalab.reptile", "metalab.conv4", {"transductive": False},
     "Meta-test batch norm: inductive (each query scored in a batch with the support set only)."),
    ("metalab.anil", "metalab.conv4", {}, "Meta-test batch norm: transductive (the backbone normalises the support "
                                          "set and the query set each with its own batch statistics)."),
    ("metalab.metasgd", "metalab.conv4", {},
     "Meta-test batch norm: transductive (query batch statistics; Meta-SGD has no inductive mode)."),
    # An algorithm that says nothing about batch norm gets no line.
    ("metalab.baseline", "metalab.conv4", {}, None),
])
def test_batch_norm_summary_comes_from_the_algorithm_and_backbone_specs(services, algorithm, backbone, params,
                                                                       expected):
    config = {"dataset": "metalab.omniglot", "algorithm": algorithm, "backbone": backbone, "algorithm_params": params}
    assert services.batch_norm_summary(config) == expected


def test_batch_norm_summary_without_specs_or_with_a_failing_mode(builtin_registry):
    import dataclasses

    maml = builtin_registry.algorithm("metalab.maml")
    conv4 = builtin_registry.backbone("metalab.conv4")
    assert reports.batch_norm_summary({"algorithm_params": {}}) is None
    # A backbone that does not declare batch norm gets the algorithm's mode; parameters the plugin no longer takes
    # (an old run) or a mode that raises give no line rather than a broken report.
    undeclared = dataclasses.replace(conv4, has_batch_norm=None)
    assert reports.batch_norm_summary({"algorithm_params": {}}, maml, undeclared) == (
        "Meta-test batch norm: transductive (query batch statistics).")
    assert reports.batch_norm_summary({"algorithm_params": {"gone": 1}}, maml, conv4) is None

    def broken(params):
        raise RuntimeError("no")

    assert reports.batch_norm_summary({}, dataclasses.replace(maml, batch_norm_mode=broken), conv4) is None
    with pytest.raises(ValueError, match=r"has_batch_norm must be True, False or None\. Received: has_batch_norm=1"):
        dataclasses.replace(conv4, has_batch_norm=1).validate()
    with pytest.raises(ValueError, match=r"batch_norm_mode must be None or a function params -> str\. "
                                         r"Received: batch_norm_mode='transductive'"):
        dataclasses.replace(maml, batch_norm_mode="transductive").validate()


def test_report_html_says_which_batch_norm_mode_was_used():
    report = _report()
    assert "class='batch-norm'" not in reports.report_html(report)
    report["batch_norm"] = "Meta-test batch norm: inductive (per-step running statistics); per-step batch norm (MAML++)."
    assert ("<p class='batch-norm'>Meta-test batch norm: inductive (per-step running statistics); per-step batch "
            "norm (MAML++).</p>") in reports.report_html(report)


def test_the_service_report_carries_the_batch_norm_line_and_the_published_rows(services):
    run_id = services.store.create_run({**OMNIGLOT_MAML, "seed": 1})
    services.store.update_run(run_id, status="completed")
    report = services.run_report(run_id)
    assert report["batch_norm"] == "Meta-test batch norm: transductive (query batch statistics)."
    assert report["published"] == services.published_results(OMNIGLOT_MAML)
    assert any(row["same_algorithm"] and row["method"] == "MAML" for row in report["published"])
    html_text = reports.report_html(report)
    assert "Published results (same protocol)" in html_text and "<td>98.7 accuracy (%)</td>" in html_text


def test_the_headline_is_the_canonical_protocols_score_never_the_newest():
    """A later 200-episode evaluation is listed beside the 600-episode one and never takes its place."""
    from metalab.core.reports import scores
    from metalab.core.engine.fixed_tasks import EVAL_SEED

    assert scores.CANONICAL_SEED == EVAL_SEED
    config = {"dataset": "metalab.omniglot", "algorithm": "metalab.protonet", "ways": 5, "shots": 1}
    later = {"split": "test", "episodes": 200, "seed": 2017, "accuracy": 0.5, "ci95": 0.05, "loss": 1.0,
             "created": "2026-12-03T10:00:00+00:00"}
    canonical = {"split": "test", "episodes": 600, "seed": 2017, "accuracy": 0.9, "ci95": 0.01, "loss": 0.3,
                 "created": "2026-12-02T10:00:00+00:00"}
    report = {"run": {"id": "r", "config": config}, "metrics": {}, "evaluations": [later, canonical]}
    assert scores.headline(report["evaluations"], config) is canonical
    rows = scores.score_rows(report["evaluations"], config)
    assert [(r["protocol"], r["headline"]) for r in rows] == [("test · 200 episodes · seed 2017", False),
                                                              ("test · 600 episodes · seed 2017", True)]
    bars = dict(reports.report_figures(report))["Meta-test score"]
    assert {label: value for trace in bars.data for label, value in zip(trace.x, trace.y)}["this run"] == \
        pytest.approx(90.0)
    text = reports.report_html(report)
    assert "accuracy (%): <b>90</b> ± 1 (95% CI, 600 fixed episodes)" in text
    assert "<td>test · 200 episodes · seed 2017</td><td>50 accuracy (%)</td>" in text
    # Without a canonical score there is no headline, whatever else was stored.
    assert scores.headline([later], config) is None
    assert "Meta-test score" not in dict(reports.report_figures({**report, "evaluations": [later]}))

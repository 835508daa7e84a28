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
EVALUATION = {"split": "test", "episodes": 600, "loss": 0.4, "accuracy": 0.9, "ci95": 0.01,
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
    assert list(val.x) == [15, 30] and list(val.y) == [0.4, 0.6]
    band = next(t for t in fig.data if t.name == "val accuracy 95% CI")
    assert max(band.y) == pytest.approx(0.64) and min(band.y) == pytest.approx(0.35)


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
    assert any("✗ true 1 / pred 0" in t for t in titles)
    assert any("✓ true 0 / pred 0" in t for t in titles)


def test_embedding_figure_colours_by_class():
    fig = reports.embedding_figure({"points": [[0, 0], [1, 1], [2, 2]], "labels": [0, 1, 1],
                                    "correct": [True, False, True], "method": "PCA"})
    assert _names(fig) == ["class 0", "class 1"]
    assert list(fig.data[1].marker.symbol) == ["x", "circle"]


def test_published_results_match_only_the_papers_protocol():
    config = {"dataset": "metalab.omniglot", "algorithm": "metalab.maml", "ways": 5, "shots": 1,
              "dataset_params": {"split": "vinyals", "rotations": True, "image_size": 28},
              "algorithm_params": {"first_order": False}}
    rows = reports.published_results(config)
    by_method = {r["method"]: r for r in rows}
    assert by_method["MAML"]["accuracy"] == 98.7 and by_method["MAML"]["same_algorithm"]
    assert not by_method["first-order MAML"]["same_algorithm"]
    assert "Snell" in by_method["Prototypical Networks"]["citation"]
    assert reports.published_results({**config, "shots": 3}) == []
    assert reports.published_results({**config, "dataset_params": {"split": "minimal"}}) == []
    assert reports.published_results({**config, "dataset": "metalab.digits"}) == []


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
           "config": {"dataset": "metalab.sinusoid", "seed": 7, "algorithm_params": {"inner_lr": 0.01}},
           "versions": {"keras": "3.15.1"}, "created": "2026-01-01T00:00:00+00:00"}
    regression_eval = {"split": "test", "episodes": 50, "loss": 0.3, "mse": 0.3, "ci95": 0.02, "curve": [2.0, 0.5, 0.3],
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
        "run": {"id": "r", "config": {"dataset": "metalab.omniglot", "algorithm": "metalab.baseline"}},
        "metrics": {},
        "evaluations": [
            {"split": "test", "episodes": 10, "accuracy": 0.8, "ci95": 0.05, "loss": 0.5},
            {"split": "cross:metalab.digits", "episodes": 10, "accuracy": 0.6, "ci95": 0.04, "loss": 0.9},
        ],
    }
    assert [e["split"] for e in reports.cross_domain_evaluations(report)] == ["cross:metalab.digits"]
    figures = dict(reports.report_figures(report))
    labels = [str(label) for trace in figures["Meta-test score"].data for label in (trace.x if trace.x is not None else [])]
    assert any("cross-domain: metalab.digits" in label for label in labels), labels
    assert "cross-domain (metalab.digits)" in reports.report_html(report)


def test_a_benchmark_evaluation_stands_beside_the_published_figures():
    from metalab.core.reports import figures as reports

    report = {
        "run": {"id": "r", "config": {"dataset": "metalab.omniglot", "algorithm": "metalab.protonet"}},
        "metrics": {},
        "evaluations": [
            {"split": "benchmark:lake20", "episodes": 20, "accuracy": 0.86, "ci95": 0.04, "loss": 0.5},
            {"split": "test", "episodes": 10, "accuracy": 0.9, "ci95": 0.05, "loss": 0.4},
        ],
    }
    figures = dict(reports.report_figures(report))
    bars = figures["Benchmark: lake20"]
    values = {label: value for trace in bars.data for label, value in zip(trace.x, trace.y)}
    assert values["this run"] == pytest.approx(86.0)
    assert values["people"] == pytest.approx(95.5)
    assert "Lake, Salakhutdinov and Tenenbaum 2015" in reports.report_html(report)


@pytest.mark.parametrize("params, expected", [
    ({"inner_lr": 0.4}, None),
    ({"transductive": True}, "Meta-test batch norm: transductive (query batch statistics)."),
    ({"transductive": False}, "Meta-test batch norm: inductive (no query's prediction depends on the other queries)."),
    ({"transductive": False, "per_step_bn": True},
     "Meta-test batch norm: inductive (per-step running statistics); per-step batch norm (MAML++)."),
    ({"per_step_bn": True}, "Meta-test batch norm: transductive (query batch statistics); per-step batch norm (MAML++)."),
])
def test_batch_norm_summary_says_which_mode_the_run_used(params, expected):
    assert reports.batch_norm_summary({"algorithm_params": params}) == expected


def test_report_html_says_which_batch_norm_mode_was_used():
    report = _report()
    report["run"]["config"] = {**report["run"]["config"],
                               "algorithm_params": {"transductive": False, "per_step_bn": True}}
    assert "inductive (per-step running statistics); per-step batch norm (MAML++)" in reports.report_html(report)

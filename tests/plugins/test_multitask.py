"""Multi-task learning: one trunk, a head per task, weighted task losses, a consistency term, per-task curves."""

import numpy as np
import pydantic
import pytest

from metalab.core.authoring import testing
from metalab.core.contract.specs import TaskBatch, TaskSpec
from metalab.core.store import RunStore
from metalab.plugins.multitask import SPEC, MultiTaskParams


def _task(num_train_classes=4, dim=6):
    from metalab.plugins.backbones import MLP, MLPParams

    return TaskSpec(kind="classification", input_shape=(dim,), output_dim=3, ways=3, shots=5, queries=5,
                    total_steps=10, num_train_classes=num_train_classes,
                    make_backbone=lambda: MLP.factory(MLPParams(hidden=[8]), (dim,)))


def _batch(labels, dim=6, seed=0):
    labels = np.asarray(labels, dtype=np.int32)[None]
    x = np.random.default_rng(seed).normal(size=(1, labels.shape[1], dim)).astype(np.float32)
    half = labels.shape[1] // 2
    return TaskBatch(x[:, :half], labels[:, :half], x[:, half:], labels[:, half:])


def test_registration_and_parameter_checks():
    assert SPEC.id == "metalab.multitask" and SPEC.task_kinds == ("classification",)
    assert MultiTaskParams().weights() == [0.5, 0.5]
    assert MultiTaskParams(num_tasks=2, task_weights=[1, 3]).weights() == [0.25, 0.75]
    with pytest.raises(pydantic.ValidationError, match="one weight per task"):
        MultiTaskParams(num_tasks=3, task_weights=[1.0, 1.0])
    with pytest.raises(pydantic.ValidationError, match="all be zero"):
        MultiTaskParams(num_tasks=2, task_weights=[0.0, 0.0])
    with pytest.raises(pydantic.ValidationError):
        MultiTaskParams(task_weights="equal")


def test_classes_are_dealt_into_tasks():
    from metalab.plugins.multitask.algorithm import task_groups

    assert task_groups(5, 2) == [[0, 2, 4], [1, 3]]
    assert task_groups(4, 1) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="num_tasks <= 2"):
        task_groups(5, 3)


def test_each_example_is_scored_by_its_own_tasks_head():
    from metalab.plugins.multitask.algorithm import MultiTask

    algo = MultiTask(MultiTaskParams(num_tasks=2), _task(num_train_classes=5))
    # Global classes 0, 2, 4 are task 0's classes 0, 1, 2; classes 1, 3 are task 1's classes 0, 1.
    y = np.array([0, 2, 4, 1, 3, 3], dtype=np.int32)
    head0 = np.full((6, 3), -5.0, dtype=np.float32)
    head0[[0, 1, 2], [0, 1, 2]] = 5.0  # right on every task-0 example
    head1 = np.full((6, 2), -5.0, dtype=np.float32)
    head1[[3, 4, 5], [1, 0, 0]] = 5.0  # wrong on every task-1 example
    losses, accuracies, accuracy = algo.task_losses([head0, head1], y)
    assert float(accuracies[0]) == 1.0 and float(accuracies[1]) == 0.0
    assert float(losses[0]) < 0.01 and float(losses[1]) > 5.0
    assert float(accuracy) == pytest.approx(0.5)
    # A task without examples in the batch adds nothing.
    losses, accuracies, _ = algo.task_losses([head0[:3], head1[:3]], y[:3])
    assert float(losses[1]) == 0.0 and float(accuracies[1]) == 0.0


def test_the_objective_is_the_weighted_task_average_plus_the_consistency_term():
    from metalab.plugins.multitask.algorithm import MultiTask

    labels = [0, 1, 2, 3, 0, 1, 2, 3]
    algo = MultiTask(MultiTaskParams(task_weights=[1.0, 0.0], consistency_weight=0.0), _task())
    _, m = algo.meta_gradients(_batch(labels))
    assert float(m["consistency_loss"]) == 0.0
    assert float(m["loss"]) == pytest.approx(float(m["task0_loss"]), rel=1e-6)
    algo = MultiTask(MultiTaskParams(task_weights=[1.0, 3.0], consistency_weight=2.0, noise_std=0.5), _task())
    grads, m = algo.meta_gradients(_batch(labels))
    average = 0.25 * float(m["task0_loss"]) + 0.75 * float(m["task1_loss"])
    assert float(m["average_loss"]) == pytest.approx(average, rel=1e-5)
    assert float(m["consistency_loss"]) > 0
    assert float(m["loss"]) == pytest.approx(average + 2.0 * float(m["consistency_loss"]), rel=1e-5)
    assert len(grads) == len(algo.trainable_variables) == 2 + 2 * 2  # trunk (one dense) and two heads


def test_learns_every_task_and_reports_per_task_curves(builtin_registry, tmp_path):
    from metalab.core.services import Services
    from metalab.core.settings import load_settings

    result = testing.check_learns("metalab.multitask", tmp_path, registry=builtin_registry, steps=60)
    store = RunStore(tmp_path / "runs.sqlite")
    metrics = {name: [v for _, v in points] for name, points in store.metrics(result.run_id).items()}
    for k in range(2):
        assert metrics[f"train/task{k}_loss"][-1] < 0.5 * metrics[f"train/task{k}_loss"][0]
        assert metrics[f"train/task{k}_accuracy"][-1] > 0.9  # chance: 0.5 (two classes per task)
    services = Services(settings=load_settings(home=tmp_path, disable_plugins=""), registry=builtin_registry)
    (panel,) = [p for p in services.report_panels(result.run_id) if p["title"] == "Multi-task: per-task curves"]
    assert panel["error"] is None
    names = [trace["name"] for trace in panel["figure"]["data"]]
    assert names.count("task 0") == 2 and names.count("task 1") == 2 and "consistency" in names
    assert "| 0 | 0, 2 | 0.5 |" in panel["markdown"]


def test_the_consistency_term_pulls_the_perturbed_features_together(builtin_registry, tmp_path):
    finals = {}
    for weight in (0.01, 10.0):
        config = testing.tiny_config(builtin_registry, "metalab.multitask", "classification", steps=40,
                                     algorithm_params={"consistency_weight": weight, "noise_std": 0.3})
        run = testing.run_tiny(builtin_registry, config.model_copy(update={"test_episodes": 5, "val_episodes": 5}),
                               tmp_path / str(weight), evaluate_before=False)
        store = RunStore(tmp_path / str(weight) / "runs.sqlite")
        finals[weight] = store.metrics(run.run_id, ["train/consistency_loss"])["train/consistency_loss"][-1][1]
    assert finals[10.0] < 0.5 * finals[0.01], finals


def test_the_panel_draws_the_metrics_it_is_handed_and_says_so_when_there_are_none():
    from metalab.plugins.multitask import metalab_report_panels

    data = {"num_tasks": 2, "task_classes": [[0, 2], [1, 3]], "task_weights": [0.5, 0.5], "consistency_weight": 1.0,
            "noise_std": 0.1, "head_params": [66, 66], "trunk_params": 100}
    (panel,) = metalab_report_panels(report_data={"metalab.multitask": data}, metrics={"train/loss": [(1, 0.5)]})
    assert panel.figure is None and "No per-task metrics" in panel.markdown
    metrics = {"train/task0_loss": [(1, 0.9), (2, 0.4)], "train/task1_accuracy": [(1, 0.5), (2, 0.8)],
               "train/consistency_loss": [(1, 0.1)], "val/accuracy": [(2, 0.7)]}
    (panel,) = metalab_report_panels(report_data={}, metrics=metrics)
    traces = {trace["name"]: trace for trace in panel.figure["data"]}
    assert set(traces) == {"task 0", "task 1", "consistency"}
    assert [t["y"] for t in panel.figure["data"] if t["name"] == "task 0"] == [[0.9, 0.4], []]
    assert panel.markdown is None


def test_the_panel_names_each_modalitys_perturbation_for_a_mixed_run():
    from metalab.plugins.multitask import metalab_report_panels

    data = {"num_tasks": 2, "task_classes": [[0, 2], [1, 3]], "task_weights": [0.5, 0.5], "consistency_weight": 1.0,
            "noise_std": 0.1, "head_params": [66, 66], "trunk_params": 100, "task_modalities": ["image", "text"],
            "token_dropout": 0.15}
    (panel,) = metalab_report_panels(report_data={"metalab.multitask": data}, metrics={"train/loss": [(1, 0.5)]})
    assert "Gaussian noise of std 0.1" in panel.markdown
    assert "lost each word with probability 0.15" in panel.markdown and "0 image, 1 text" in panel.markdown
    data = {k: v for k, v in data.items() if k not in ("task_modalities", "token_dropout")}
    (panel,) = metalab_report_panels(report_data={"metalab.multitask": data}, metrics={"train/loss": [(1, 0.5)]})
    assert "word" not in panel.markdown

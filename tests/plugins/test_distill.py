"""Knowledge distillation (Hinton et al. 2015): a student learns from a finished teacher run through soft targets."""

import json
import logging

import numpy as np
import pytest

from metalab.core.authoring import testing
from metalab.core.contract.specs import ReportPanel, TaskBatch, TaskSpec
from metalab.core.store import RunStore
from metalab.plugins.distill import SPEC, DistillParams, metalab_report_panels


def _task(num_train_classes=4, input_shape=(6,), ways=3, load_run=None):
    from metalab.plugins.backbones import MLP, MLPParams

    return TaskSpec(kind="classification", input_shape=input_shape, output_dim=ways, ways=ways, shots=5, queries=5,
                    total_steps=10, num_train_classes=num_train_classes,
                    make_backbone=lambda: MLP.factory(MLPParams(hidden=[8]), input_shape), load_run=load_run)


def _loader(registry):
    """The engine's ``TaskSpec.load_run`` (what a run's task carries), reading METALAB_HOME when called."""
    from metalab.core.engine.session import run_loader

    return run_loader(registry)


def _batch(num_train_classes=4, n=8, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1, n, dim)).astype(np.float32)
    y = rng.integers(0, num_train_classes, size=(1, n)).astype(np.int32)
    return TaskBatch(x[:, : n // 2], y[:, : n // 2], x[:, n // 2:], y[:, n // 2:])


def _train(registry, home, algorithm, steps, params, hidden):
    config = testing.tiny_config(registry, algorithm, "classification", steps=steps, algorithm_params=params)
    config = config.model_copy(update={"backbone_params": {"hidden": hidden}, "val_episodes": 5, "test_episodes": 20})
    return testing.run_tiny(registry, config, home, evaluate_before=False)


@pytest.fixture(scope="module")
def teacher_home(tmp_path_factory):
    """A run store holding one finished teacher: the supervised Baseline with a wide MLP on digits."""
    from metalab.core.contract.manager import make_plugin_manager
    from metalab.core.settings import load_settings

    registry = make_plugin_manager(distributions={"metalab"}, settings=load_settings(disable_plugins=""), strict=False)
    home = tmp_path_factory.mktemp("teacher_home")
    result = _train(registry, home, "metalab.baseline", 60, {"finetune_steps": 10}, [64, 64])
    return home, result.run_id


def test_registration_defaults_follow_the_paper():
    assert SPEC.id == "metalab.distill" and SPEC.task_kinds == ("classification",)
    assert "Hinton" in SPEC.paper
    params = DistillParams()
    assert params.teacher_run is None and params.temperature == 4.0 and params.alpha == 0.9
    with pytest.raises(ValueError):
        DistillParams(alpha=1.5)


def test_soft_loss_is_t_squared_times_the_kl_divergence():
    from metalab.plugins.distill.algorithm import _soft_loss

    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)

    def softmax(z):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    p, q = softmax(teacher / 3.0), softmax(student / 3.0)
    expected = 9.0 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1))
    assert float(_soft_loss(student, teacher, 3.0)) == pytest.approx(expected, rel=1e-5)
    assert float(_soft_loss(teacher, teacher, 3.0)) == pytest.approx(0.0, abs=1e-6)


def test_without_a_teacher_it_trains_on_hard_labels_and_says_so(caplog):
    from metalab.plugins.distill.algorithm import Distill

    with caplog.at_level(logging.WARNING, logger="metalab.plugins.distill.algorithm"):
        algo = Distill(DistillParams(alpha=0.9), _task())
    assert "plain supervised classifier" in caplog.text and "alpha=0.9 is ignored" in caplog.text
    grads, metrics = algo.meta_gradients(_batch())
    assert set(metrics) == {"loss", "accuracy", "hard_loss"}
    assert float(metrics["loss"]) == pytest.approx(float(metrics["hard_loss"]))
    assert len(grads) == len(algo.trainable_variables)


def test_a_missing_or_unfinished_teacher_is_named(tmp_path, monkeypatch, builtin_registry):
    from metalab.plugins.distill.algorithm import Distill

    monkeypatch.setenv("METALAB_HOME", str(tmp_path))
    task = _task(load_run=_loader(builtin_registry))
    with pytest.raises(FileNotFoundError, match="teacher_run 'nosuchrun'.*no run store") as caught:
        Distill(DistillParams(teacher_run="nosuchrun"), task)
    assert str(tmp_path) not in str(caught.value)  # the message never shows a server path
    assert not (tmp_path / "runs.sqlite").exists()  # and looking made no store
    store = RunStore(tmp_path / "runs.sqlite")
    with pytest.raises(ValueError, match="teacher_run 'nosuchrun'.*no run 'nosuchrun'"):
        Distill(DistillParams(teacher_run="nosuchrun"), task)
    config = testing.tiny_config(builtin_registry, "metalab.baseline", "classification", steps=5)
    run_id = store.create_run(config.model_dump())
    with pytest.raises(ValueError, match=f"teacher_run '{run_id}'.*is 'queued'; only a completed run"):
        Distill(DistillParams(teacher_run=run_id), task)
    # A task built by hand, without the engine's loader, is told so rather than reaching for the store.
    with pytest.raises(ValueError, match=f"teacher_run '{run_id}': this task cannot load another run"):
        Distill(DistillParams(teacher_run=run_id), _task())


def test_a_teacher_of_other_training_classes_is_refused(teacher_home, monkeypatch, builtin_registry):
    from metalab.plugins.distill.algorithm import Distill

    home, run_id = teacher_home
    monkeypatch.setenv("METALAB_HOME", str(home))
    task = _task(num_train_classes=5, input_shape=(8, 8, 1), load_run=_loader(builtin_registry))
    with pytest.raises(ValueError, match=f"teacher_run '{run_id}'.*4 training classes.*5 training classes"):
        Distill(DistillParams(teacher_run=run_id), task)


def test_the_student_learns_from_the_teacher_alone(teacher_home, monkeypatch, builtin_registry):
    # alpha=1: the hard labels carry no weight, so whatever the student learns of the classes came through the
    # teacher's soft targets.
    home, teacher_id = teacher_home
    monkeypatch.setenv("METALAB_HOME", str(home))
    student = _train(builtin_registry, home, "metalab.distill", 60,
                     {"teacher_run": teacher_id[:15], "alpha": 1.0, "lr": 3e-3}, [16])
    store = RunStore(home / "runs.sqlite")
    metrics = {name: [v for _, v in points] for name, points in store.metrics(student.run_id).items()}
    np.testing.assert_allclose(metrics["train/loss"], metrics["train/soft_loss"], rtol=1e-6)
    assert metrics["train/soft_loss"][-1] < 0.5 * metrics["train/soft_loss"][0]
    # Chance on the 4 training classes is 0.25; the student's first steps sit near it.
    assert metrics["train/accuracy"][0] < 0.5 and metrics["train/accuracy"][-1] > 0.85
    assert metrics["train/agreement"][-1] > 0.85
    assert student.after["accuracy"] > 1 / 3 + 0.15

    data = json.loads((store.run_dir(student.run_id) / "report_data.json").read_text())["metalab.distill"]
    assert data["teacher_run"] == teacher_id and data["mode"] == "head"
    assert data["teacher"]["params"] > 5 * data["student"]["params"]
    assert data["teacher"]["images_per_s"] > 0 and data["student"]["images_per_s"] > 0
    assert 0 <= data["student"]["accuracy"] <= 1 and 0 <= data["teacher"]["accuracy"] <= 1
    assert data["teacher"]["recorded"]["episodes"] == 20
    panels = metalab_report_panels(report_data={"metalab.distill": data})
    assert len(panels) == 1 and isinstance(panels[0], ReportPanel)
    panels[0].validate()
    assert len(panels[0].figure["data"]) == 3 and teacher_id in panels[0].figure["layout"]["title"]["text"]


def test_the_panel_of_a_run_without_teacher_says_nothing_was_distilled():
    data = {"teacher_run": None, "mode": None, "temperature": 4.0, "alpha": 0.9, "teacher": None,
            "student": {"params": 120, "images_per_s": 1000.0}}
    (panel,) = metalab_report_panels(report_data={"metalab.distill": data})
    assert panel.figure is None and "nothing was distilled" in panel.markdown


def test_an_episodic_teacher_is_distilled_through_class_prototypes(tmp_path, monkeypatch, builtin_registry):
    monkeypatch.setenv("METALAB_HOME", str(tmp_path))
    teacher = _train(builtin_registry, tmp_path, "metalab.protonet", 30, {}, [64, 64])
    student = _train(builtin_registry, tmp_path, "metalab.distill", 40,
                     {"teacher_run": teacher.run_id, "alpha": 1.0, "lr": 3e-3}, [16])
    store = RunStore(tmp_path / "runs.sqlite")
    metrics = {name: [v for _, v in points] for name, points in store.metrics(student.run_id).items()}
    assert metrics["train/teacher_accuracy"][-1] > 0.85
    assert metrics["train/agreement"][-1] > 0.7 and metrics["train/accuracy"][-1] > 0.7
    data = json.loads((store.run_dir(student.run_id) / "report_data.json").read_text())["metalab.distill"]
    assert data["mode"] == "prototypes"

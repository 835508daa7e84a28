"""The supervised MLP reference: a plain classifier on the training classes, scored few-shot by nearest centroid."""

import json

import numpy as np
import pytest

from metalab.core.authoring import testing
from metalab.core.engine.config import resolve_config
from metalab.core.contract.specs import TaskSpec
from metalab.core.engine.report_data import compute_report_data
from metalab.core.engine.session import build_session
from metalab.plugins.mlp_classifier import SPEC, MLPClassifierParams


def _task(num_train_classes=4, ways=3, shape=(8, 8, 1)):
    return TaskSpec(kind="classification", input_shape=shape, output_dim=ways, ways=ways, shots=2, queries=2,
                    total_steps=10, make_backbone=lambda: None, num_train_classes=num_train_classes)


def test_learns_on_digits_and_fits_the_training_classes(builtin_registry, tmp_path):
    result = testing.check_learns("metalab.mlp_classifier", tmp_path, registry=builtin_registry, steps=40)
    assert result.last_loss < 0.5 * result.first_loss
    assert "curve" not in result.after  # no adaptation steps: nothing to plot


def test_a_plain_mlp_that_scales_inputs_once():
    import keras

    from metalab.plugins.mlp_classifier.algorithm import MLPClassifier

    algo = MLPClassifier(MLPClassifierParams(hidden=[10, 6]), _task(num_train_classes=5))
    kinds = [type(layer).__name__ for layer in algo.trunk.layers]
    assert kinds == ["Flatten", "Dense", "Dense"]  # no Rescaling: the dataset's to_float already scaled
    assert algo.model.output_shape == (None, 5) and algo.model.layers[-1].name == "head"
    assert not any(isinstance(layer, keras.layers.Rescaling) for layer in algo.model._flatten_layers())
    assert algo.batch_kind == "supervised" and algo.batch_size == 64


def test_nearest_centroid_picks_the_closest_class_mean():
    from metalab.plugins.mlp_classifier.algorithm import MLPClassifier

    algo = MLPClassifier(MLPClassifierParams(hidden=[4]), _task(ways=2))
    support = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1], dtype=np.int32)
    queries = np.array([[1.0, 1.0], [9.0, 1.0], [4.0, 1.0]], dtype=np.float32)
    logits = np.asarray(algo.nearest_centroid(support, labels, queries))
    np.testing.assert_allclose(logits[0], [-1.0, -81.0])
    assert list(logits.argmax(axis=1)) == [0, 1, 0]


def test_refuses_what_it_cannot_do():
    from metalab.plugins.mlp_classifier.algorithm import MLPClassifier

    with pytest.raises(ValueError, match="num_train_classes >= 2"):
        MLPClassifier(MLPClassifierParams(), _task(num_train_classes=0))
    # The spec's factory refuses another task kind before the implementation runs.
    with pytest.raises(ValueError, match=r"supports classification tasks.*Received: task.kind='regression'"):
        SPEC.factory(MLPClassifierParams(), TaskSpec("regression", (1,), 1, 1, 5, 5, 10, lambda: None))
    assert SPEC.task_kinds == ("classification",)


def test_report_shows_its_penultimate_features(builtin_registry):
    config = resolve_config(builtin_registry, {"dataset": "metalab.digits", "algorithm": "metalab.mlp_classifier",
                                               "algorithm_params": {"hidden": [12]}})
    data = compute_report_data(build_session(builtin_registry, config), builtin_registry)
    assert data["episode"]["ways"] == 3 and len(data["embedding"]["points"][0]) == 2


def _digits_session(registry, seed=0, **algorithm_params):
    config = resolve_config(registry, {"dataset": "metalab.digits", "algorithm": "metalab.mlp_classifier",
                                       "seed": seed, "algorithm_params": {"hidden": [12], **algorithm_params}})
    return build_session(registry, config)


def test_held_out_training_images_never_appear_in_training_batches(builtin_registry):
    from metalab.core.engine.session import make_training_sampler
    from metalab.core.engine.sampling import SupervisedSampler

    session = _digits_session(builtin_registry)
    split = session.dataset.splits["train"]
    labels = np.asarray(split.labels)
    sampler = make_training_sampler(session)
    held = sampler.excluded_rows
    # A seeded tenth of every training class, the same rows for the same seed, others for another seed.
    for label in np.unique(labels):
        in_class = int(np.sum(labels == label))
        assert int(np.sum(labels[held] == label)) == round(0.1 * in_class)
    np.testing.assert_array_equal(make_training_sampler(_digits_session(builtin_registry)).excluded_rows, held)
    assert not np.array_equal(make_training_sampler(_digits_session(builtin_registry, seed=1)).excluded_rows, held)
    # The algorithm got exactly those images to score itself on.
    images, held_labels, _ = session.algorithm._holdout
    np.testing.assert_array_equal(images, split.images[held])
    np.testing.assert_array_equal(held_labels, labels[held])
    # Three epochs of the stream: no held-out row, every other row once per epoch.
    kept = len(labels) - len(held)
    rows = sampler.sample_rows(3 * kept)
    assert not np.isin(rows, held).any()
    for epoch in rows.reshape(3, kept):
        np.testing.assert_array_equal(np.sort(epoch), np.setdiff1d(np.arange(len(labels)), held))
    # And the batches are those rows' images.
    state = sampler.get_state()
    rows = sampler.sample_rows(sampler.batch_size)
    sampler.set_state(state)
    batch = sampler.sample_batch(1)
    x = np.concatenate([batch.support_x[0], batch.query_x[0]])
    np.testing.assert_array_equal(x, session.dataset.to_float(split.images[rows]))
    # With no hold-out the stream is the plain sampler's, and there is no supervised accuracy to report.
    plain = _digits_session(builtin_registry, holdout_fraction=0.0)
    whole = make_training_sampler(plain)
    assert len(whole.excluded_rows) == 0 and plain.algorithm.report_data() is None
    reference = SupervisedSampler(plain.dataset, "train", whole.batch_size, seed=0)
    np.testing.assert_array_equal(whole.sample_rows(500), reference.sample_rows(500))


def test_report_panel_gives_supervised_accuracy_well_above_chance(builtin_registry, tmp_path):
    config = testing.tiny_config(builtin_registry, "metalab.mlp_classifier", "classification", steps=60)
    result = testing.run_tiny(builtin_registry, config, tmp_path, evaluate_before=False)
    data, panel = _report_data_and_panel(builtin_registry, result.run_id, tmp_path)
    holdout = data["metalab.mlp_classifier"]["holdout"]
    assert holdout["classes"] == 4 and holdout["held_out_classes"] == 4 and 60 <= holdout["images"] <= 80
    assert holdout["accuracy"] > holdout["chance"] + 0.4, holdout
    assert f"{100 * holdout['accuracy']:.1f}%" in panel.markdown
    assert f"| 4 | {holdout['images']} | 25.0% |" in panel.markdown
    from metalab.plugins import mlp_classifier

    # Without its results (a run stopped before the end) the hook draws nothing rather than an empty table.
    assert mlp_classifier.metalab_report_panels(report_data={**data, "metalab.mlp_classifier": {}}) == []


def _report_data_and_panel(registry, run_id, home):
    """The run's stored report data and the supervised-accuracy panel the plugin's hook draws from it."""
    from metalab.core.store import RunStore

    data = json.loads((RunStore(home / "runs.sqlite").run_dir(run_id) / "report_data.json").read_text())
    found = [panel for panels in registry.pm.hook.metalab_report_panels(
        run={"id": run_id, "algorithm": "metalab.mlp_classifier"}, report_data=data, artifacts_dir=str(home),
        metrics={})
        for panel in panels]
    (panel,) = [p for p in found if p.title == "Supervised accuracy (no meta-learning)"]
    panel.validate()
    return data, panel


def _supervised_digits_config(registry, steps, **algorithm_params):
    return resolve_config(registry, {
        "dataset": "metalab.digits", "algorithm": "metalab.mlp_classifier", "steps": steps, "seed": 0,
        "val_every": steps, "val_episodes": 4, "test_episodes": 8, "dataset_params": {"mode": "supervised"},
        "algorithm_params": {"hidden": [128], **algorithm_params},
    })


def test_learns_the_supervised_digits_test_set_and_reports_it(builtin_registry, tmp_path):
    config = _supervised_digits_config(builtin_registry, steps=100)
    result = testing.run_tiny(builtin_registry, config, tmp_path, evaluate_before=False)
    data, panel = _report_data_and_panel(builtin_registry, result.run_id, tmp_path)
    test = data["metalab.mlp_classifier"]["test"]
    # All ten digits, the seeded quarter of the images kept out of training; chance is 10%.
    assert (test["classes"], test["test_classes"], test["images"]) == (10, 10, 450)
    assert test["accuracy"] > 0.8, test
    assert test["correct"] == round(test["accuracy"] * 450) and min(test["per_class"]) > 0.5
    assert "holdout" not in data["metalab.mlp_classifier"]
    assert f"**Test accuracy {100 * test['accuracy']:.2f}%**" in panel.markdown
    assert f"| test set | {100 * test['accuracy']:.1f}% ({test['correct']} of 450) | 10 | 450 | 10.0% |" in panel.markdown
    assert "held-out training images" not in panel.markdown


def test_on_a_supervised_dataset_the_runner_hands_over_the_test_split_and_holds_nothing_out(builtin_registry):
    from metalab.core.engine.session import make_training_sampler

    session = build_session(builtin_registry, _supervised_digits_config(builtin_registry, steps=1))
    sampler = make_training_sampler(session)
    assert len(sampler.excluded_rows) == 0 and session.algorithm._holdout is None
    images, labels, to_float = session.algorithm._test
    test = session.dataset.splits["test"]
    np.testing.assert_array_equal(images, test.images)
    np.testing.assert_array_equal(labels, test.labels)
    assert to_float == session.dataset.to_float
    assert session.task.num_train_classes == 10 and session.algorithm.model.output_shape == (None, 10)


def test_a_supervised_dataset_whose_test_classes_differ_is_refused():
    from types import SimpleNamespace

    from metalab.core.contract.specs import ClassificationDataset, ClassSplit
    from metalab.core.engine.session import Session, make_training_sampler

    def split(names):
        return ClassSplit(images=np.zeros((4, 1, 1, 1), np.uint8), labels=np.array([0, 1, 0, 1]), class_names=names)

    dataset = ClassificationDataset(splits={"train": split(["a", "b"]), "val": split(["a", "b"]),
                                            "test": split(["b", "a"])}, input_shape=(1, 1, 1), supervised=True)
    received = []
    algorithm = SimpleNamespace(batch_kind="supervised", batch_size=2, set_supervised_test=received.append)
    session = Session(config=SimpleNamespace(algorithm="x.y", dataset="x.toy", seed=0), dataset=dataset,
                      algorithm=algorithm, task=SimpleNamespace(ways=2))
    with pytest.raises(ValueError, match="test split must hold the training classes in the same order"):
        make_training_sampler(session)
    assert received == []


def test_report_data_holds_whichever_accuracies_exist():
    from metalab.plugins.mlp_classifier.algorithm import MLPClassifier
    from metalab.plugins.mlp_classifier.panels import supervised_accuracy_panel

    algo = MLPClassifier(MLPClassifierParams(hidden=[4]), _task(num_train_classes=3, shape=(2,)))
    assert algo.report_data() is None
    algo.set_supervised_test(np.eye(3, 2, dtype=np.float32), np.array([0, 1, 2]), lambda x: x)
    data = algo.report_data()
    assert set(data) == {"test"} and data["test"]["images"] == 3 and len(data["test"]["per_class"]) == 3
    logits = np.asarray(algo.model(np.eye(3, 2, dtype=np.float32)))
    assert data["test"]["correct"] == int(np.sum(logits.argmax(-1) == [0, 1, 2]))
    with pytest.raises(ValueError, match="'test' or 'holdout'"):
        supervised_accuracy_panel({})

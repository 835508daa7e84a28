"""The supervised MLP reference: a plain classifier on the training classes, scored few-shot by nearest centroid."""

import numpy as np
import pytest

from metalab.core import testing
from metalab.core.config import resolve_config
from metalab.core.plugin_api import TaskSpec
from metalab.core.report_data import compute_report_data
from metalab.core.runner import build_session
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
    with pytest.raises(ValueError, match="classification"):
        MLPClassifier(MLPClassifierParams(), TaskSpec("regression", (1,), 1, 1, 5, 5, 10, lambda: None))
    assert SPEC.task_kinds == ("classification",)


def test_report_shows_its_penultimate_features(builtin_registry):
    config = resolve_config(builtin_registry, {"dataset": "metalab.digits", "algorithm": "metalab.mlp_classifier",
                                               "algorithm_params": {"hidden": [12]}})
    data = compute_report_data(build_session(builtin_registry, config), builtin_registry)
    assert data["episode"]["ways"] == 3 and len(data["embedding"]["points"][0]) == 2

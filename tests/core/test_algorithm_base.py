"""The algorithm base class: variables in the order parts are tracked, the Adam set-up, metrics, supervised batches."""

from __future__ import annotations

import ast
from pathlib import Path

import keras
import numpy as np
import pytest
from pydantic import Field

from metalab.api import Params, TaskBatch, TaskSpec
from metalab.api.algorithms import MetaAlgorithm

REPO = Path(__file__).resolve().parents[2]


def _task(kind: str = "classification") -> TaskSpec:
    return TaskSpec(kind, (4,), 3, 3, 2, 2, 100, lambda: None)


class RateParams(Params):
    outer_lr: float = Field(0.01, gt=0, le=1)
    lr_decay_every: int = Field(0, ge=0)
    meta_batch_size: int = Field(6, ge=1)


class SupervisedParams(Params):
    lr: float = Field(0.002, gt=0, le=1)
    batch_size: int = Field(8, ge=2)


class NoRateParams(Params):
    steps: int = Field(3, ge=1)


def _dense(units: int, name: str) -> keras.Model:
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, name=name)], name=name)


def test_variables_follow_the_order_parts_were_tracked_then_the_kept_ones():
    algorithm = MetaAlgorithm(RateParams(), _task())
    first, second = _dense(2, "first"), _dense(3, "second")
    rates = [keras.Variable(np.ones(2, np.float32), name="rates")]
    counter = keras.Variable(0, dtype="int64", trainable=False, name="counter")
    algorithm.track(first, rates, second)
    algorithm.keep(counter)
    trainable = [v.path for v in algorithm.trainable_variables]
    assert trainable == [v.path for v in first.trainable_variables] + ["rates"] + [
        v.path for v in second.trainable_variables]
    assert [v.path for v in algorithm.variables] == trainable + ["counter"]
    values = algorithm.params()
    assert len(values) == len(trainable) and np.array_equal(np.asarray(values[2]), np.ones(2))


def test_meta_batch_size_and_batch_size_come_from_the_params():
    assert MetaAlgorithm(RateParams(), _task()).meta_batch_size == 6
    assert MetaAlgorithm(NoRateParams(), _task()).meta_batch_size == 1

    class Supervised(MetaAlgorithm):
        batch_kind = "supervised"

    algorithm = Supervised(SupervisedParams(), _task())
    assert (algorithm.meta_batch_size, algorithm.batch_size) == (1, 8)
    assert not hasattr(MetaAlgorithm(RateParams(), _task()), "batch_size")


def test_adam_at_outer_lr_halved_every_lr_decay_every_updates():
    constant = MetaAlgorithm(RateParams(), _task()).make_optimizer()
    assert isinstance(constant, keras.optimizers.Adam)
    assert float(constant.learning_rate) == pytest.approx(0.01)
    decayed = MetaAlgorithm(RateParams(lr_decay_every=10), _task()).make_optimizer()
    schedule = decayed._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.ExponentialDecay)
    assert [float(schedule(step)) for step in (0, 9, 10, 25)] == pytest.approx([0.01, 0.01, 0.005, 0.0025])


def test_lr_is_the_fallback_and_a_missing_rate_is_a_clear_error():
    assert MetaAlgorithm(SupervisedParams(), _task()).learning_rate() == 0.002
    with pytest.raises(ValueError, match=r"no 'outer_lr' or 'lr'.*Received: learning_rate_param=None"):
        MetaAlgorithm(NoRateParams(), _task()).make_optimizer()

    class Named(MetaAlgorithm):
        learning_rate_param = "lr"

    assert Named(SupervisedParams(), _task()).learning_rate() == 0.002


def test_scores_report_accuracy_on_classification_only():
    classification = MetaAlgorithm(RateParams(), _task("classification"))
    regression = MetaAlgorithm(RateParams(), _task("regression"))
    assert classification.scores(1.5, 0.25, curve=[0.1]) == {"loss": 1.5, "accuracy": 0.25, "curve": [0.1]}
    assert regression.scores(1.5, 1.5, predictions="p") == {"loss": 1.5, "predictions": "p"}


def test_flat_inputs_and_labels_join_both_halves_of_every_mini_batch():
    algorithm = MetaAlgorithm(SupervisedParams(), _task())
    sx = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    qx = -np.arange(2 * 2 * 4, dtype=np.float32).reshape(2, 2, 4)
    sy, qy = np.array([[0, 1, 2], [3, 4, 5]]), np.array([[6, 7], [8, 9]])
    batch = TaskBatch(sx, sy, qx, qy)
    x = np.asarray(algorithm.flat_inputs(batch, "float32"))
    y = np.asarray(algorithm.flat_labels(batch))
    assert x.shape == (10, 4) and y.dtype == np.int32
    np.testing.assert_array_equal(x[:3], sx[0])
    np.testing.assert_array_equal(x[3:5], qx[0])
    assert y.tolist() == [0, 1, 2, 6, 7, 3, 4, 5, 8, 9]


def test_every_builtin_algorithm_derives_from_the_base_class(builtin_registry):
    for spec_id, spec in builtin_registry.algorithms.items():
        implementation = spec.factory.resolve()
        assert issubclass(implementation, MetaAlgorithm), spec_id
        # The base class holds these; a port that kept its own copy has not removed the repetition.
        own = vars(implementation)
        assert not {"trainable_variables", "variables"} & set(own), spec_id


def test_no_builtin_algorithm_checks_the_task_kind_itself():
    offenders = []
    for path in sorted((REPO / "plugins").glob("*/algorithm.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            # A refusal tests for a kind the algorithm does not take (an algorithm may still branch on ==).
            refusal = isinstance(node, ast.Compare) and any(isinstance(op, (ast.NotEq, ast.NotIn)) for op in node.ops)
            if refusal and ast.unparse(node.left) == "task.kind":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []

"""Modular meta-learning: the structure search, gradients to the chosen modules only, usage counts and learning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metalab.core.engine import functional
from metalab.core.authoring import testing
from metalab.core.contract.specs import TaskBatch, TaskSpec
from metalab.core.store import RunStore
from metalab.plugins import modular


def _algorithm(kind: str = "regression", **overrides):
    import keras

    from metalab.plugins.backbones import MLPParams
    from metalab.plugins.backbones.models import mlp
    from metalab.plugins.modular.algorithm import ModularMetaLearner

    keras.utils.set_random_seed(0)
    shape = (1,) if kind == "regression" else (6,)
    task = TaskSpec(kind=kind, input_shape=shape, output_dim=1 if kind == "regression" else 3,
                    ways=1 if kind == "regression" else 3, shots=4, queries=4, total_steps=10,
                    make_backbone=lambda: mlp(MLPParams(hidden=[8]), shape))
    return ModularMetaLearner(modular.ModularParams(**{"module_width": 8, "num_modules": 3, **overrides}), task)


def _regression_batch(tasks: int = 2, seed: int = 0) -> TaskBatch:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5, 5, size=(tasks, 8, 1)).astype(np.float32)
    y = (rng.uniform(0.5, 3, size=(tasks, 1, 1)) * np.sin(x + rng.uniform(0, 3, size=(tasks, 1, 1)))).astype(np.float32)
    return TaskBatch(x[:, :4], y[:, :4], x[:, 4:], y[:, 4:])


def _all_support_losses(algorithm, batch):
    import keras

    backbone, kernels, biases, head = algorithm._split(algorithm.params())
    x = np.asarray(batch.support_x)
    flat = algorithm.fmodel(backbone, keras.ops.convert_to_tensor(x.reshape(-1, *x.shape[2:])), training=False)
    features = keras.ops.reshape(flat, (x.shape[0], x.shape[1], -1))
    structures = np.broadcast_to(algorithm.all_structures, (batch.num_tasks, *algorithm.all_structures.shape))
    losses = algorithm.support_losses(head, algorithm.compose(kernels, biases, features, structures), batch.support_y)
    return np.asarray(losses), (kernels, biases, head, features)


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_exhaustive_search_picks_the_structure_with_the_lowest_support_loss(kind):
    algorithm = _algorithm(kind)
    if kind == "regression":
        batch = _regression_batch(3)
    else:
        rng = np.random.default_rng(1)
        labels = np.tile(np.repeat(np.arange(3), 4), (3, 1)).astype(np.int32)
        batch = TaskBatch(rng.normal(size=(3, 12, 6)).astype(np.float32), labels,
                          rng.normal(size=(3, 12, 6)).astype(np.float32), labels)
    losses, (kernels, biases, head, features) = _all_support_losses(algorithm, batch)
    assert losses.shape == (3, 9) and np.ptp(losses, axis=1).min() > 0  # the structures really differ
    chosen = np.asarray(algorithm.search(kernels, biases, head, features, batch.support_y))
    np.testing.assert_array_equal(chosen, algorithm.all_structures[losses.argmin(axis=1)])
    greedy = _algorithm(kind, search="greedy")
    found = np.asarray(greedy.search(kernels, biases, head, features, batch.support_y))
    index = found @ np.array([3, 1])
    # Coordinate descent from the all-zero structure never ends worse than where it started.
    assert np.all(losses[np.arange(3), index] <= losses[:, 0] + 1e-6)


def test_only_the_chosen_modules_learn_from_a_task():
    algorithm = _algorithm()
    batch = _regression_batch(1)
    grads, metrics = algorithm.meta_gradients(batch)
    structure = np.asarray(algorithm.train_slot_counts).argmax(axis=1)
    n = algorithm._n_backbone
    for s in range(algorithm.num_slots):
        kernel_grad = np.asarray(grads[n + s])
        norms = np.abs(kernel_grad).reshape(algorithm.num_modules, -1).sum(axis=1)
        assert norms[structure[s]] > 0
        assert np.all(np.delete(norms, structure[s]) == 0)
    assert np.isfinite(float(metrics["loss"]))


def test_usage_is_counted_and_reported():
    algorithm = _algorithm(kind="regression")
    step = functional.compile(lambda *a: algorithm.meta_gradients(TaskBatch(*a))[1])
    for seed in range(3):
        step(*_regression_batch(4, seed).as_tuple())
    out = algorithm.evaluate(_regression_batch(5, 9))
    assert np.asarray(out["structures"]).shape == (5, 2)
    data = algorithm.report_data()
    assert data["train"]["tasks"] == 12 and np.asarray(data["train"]["slot_counts"]).sum(axis=1).tolist() == [12, 12]
    assert sum(row["count"] for row in data["train"]["structures"]) == 12
    assert data["evaluation"]["tasks"] == 5
    json.dumps(data)
    panel = modular.metalab_report_panels(report_data={"metalab.modular": data})[0]
    panel.validate()
    assert [trace["type"] for trace in panel.figure["data"]] == ["heatmap", "heatmap"]


def test_an_exhaustive_search_too_large_is_refused():
    with pytest.raises(ValueError, match="greedy"):
        _algorithm(num_modules=16, num_slots=3)


def test_recombined_modules_fit_new_sinusoids(builtin_registry, tmp_path):
    result = testing.check_learns("metalab.modular", tmp_path, registry=builtin_registry, kind="regression")
    # Measured: MSE 4.8 untrained, 0.6 after 600 steps; predicting zero scores about 5.
    assert result.after["mse"] < 0.4 * result.before["mse"], (result.before, result.after)
    store = RunStore(tmp_path / "runs.sqlite")
    data = json.loads((store.run_dir(result.run_id) / "report_data.json").read_text())["metalab.modular"]
    # New tasks are solved by different recombinations of the library, not by one fixed network.
    assert data["evaluation"]["distinct_structures"] >= 2
    assert data["train"]["tasks"] == testing.LEARN_STEPS["regression"] * 4

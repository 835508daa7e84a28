"""Rotation pre-training (Gidaris et al. 2018): the pretext task is learned and few-shot scoring works on its features."""

import numpy as np
import pytest

from metalab.core.authoring import testing
from metalab.core.contract.specs import TaskBatch, TaskSpec
from metalab.plugins.rotation import SPEC, RotationParams, metalab_report_panels


def _task(shape=(8, 8, 1), ways=3):
    from metalab.plugins.backbones import MLP, MLPParams

    return TaskSpec(kind="classification", input_shape=shape, output_dim=ways, ways=ways, shots=2, queries=2,
                    total_steps=10, make_backbone=lambda: MLP.factory(MLPParams(hidden=[16]), shape),
                    num_train_classes=4)


def test_registration_follows_the_paper():
    assert SPEC.id == "metalab.rotation" and SPEC.task_kinds == ("classification",)
    assert "Gidaris" in SPEC.paper
    params = RotationParams()
    assert (params.batch_size, params.optimizer, params.lr, params.weight_decay) == (128, "sgd", 0.1, 5e-4)
    assert params.probe == "prototype"


def test_rotations_are_the_four_quarter_turns_with_their_labels():
    from metalab.plugins.rotation.algorithm import rotations

    x = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 1)
    images, labels = rotations(x)
    images = np.asarray(images)
    assert images.shape == (8, 3, 3, 1)
    np.testing.assert_array_equal(np.asarray(labels), [0, 0, 1, 1, 2, 2, 3, 3])
    for k in range(4):
        np.testing.assert_array_equal(images[2 * k:2 * k + 2], np.rot90(x, k=k, axes=(1, 2)))


def test_refuses_inputs_that_cannot_be_rotated():
    from metalab.plugins.rotation.algorithm import RotationPretraining

    with pytest.raises(ValueError, match="square images"):
        RotationPretraining(RotationParams(), _task(shape=(8, 6, 1)))
    with pytest.raises(ValueError, match="square images"):
        RotationPretraining(RotationParams(), _task(shape=(64,)))


@pytest.mark.parametrize("probe", ["prototype", "linear"])
def test_learns_the_pretext_task_and_scores_few_shot(probe, builtin_registry, tmp_path):
    result = testing.check_learns("metalab.rotation", tmp_path, registry=builtin_registry, steps=40,
                                  algorithm_params={"probe": probe})
    # Rotation prediction starts at chance (4 classes, loss ln 4) and is learned on the training images.
    assert result.first_loss > 1.0 and result.last_loss < 0.6
    from metalab.core.store import RunStore

    store = RunStore(tmp_path / "runs.sqlite")
    accuracy = [v for _, v in store.metrics(result.run_id, ["train/accuracy"])["train/accuracy"]]
    assert accuracy[-1] > 0.8
    import json

    data = json.loads((store.run_dir(result.run_id) / "report_data.json").read_text())["metalab.rotation"]
    assert data["steps"] == 40 and data["probe"] == probe
    assert min(data["train_per_angle"]) > 0.6 and len(data["heldout_per_angle"]) == 4
    panels = metalab_report_panels({"metalab.rotation": data})
    assert len(panels) == 1
    panels[0].validate()
    assert "held-out" in panels[0].markdown


def test_evaluation_leaves_the_backbone_untouched_and_scores_separable_features():
    from metalab.plugins.rotation.algorithm import RotationPretraining

    algo = RotationPretraining(RotationParams(probe="linear", probe_steps=50, probe_lr=0.1), _task())
    before = [np.array(v.numpy()) for v in algo.variables]
    rng = np.random.default_rng(0)
    # Classes that differ by a large constant offset are separable by any random ReLU features' centroids.
    offsets = np.array([0.0, 3.0, 6.0], np.float32)
    labels = np.tile(np.repeat(np.arange(3), 2), (2, 1)).astype(np.int32)
    sx = (offsets[labels][..., None, None, None] + rng.normal(0, 0.05, (2, 6, 8, 8, 1))).astype(np.float32)
    qx = (offsets[labels][..., None, None, None] + rng.normal(0, 0.05, (2, 6, 8, 8, 1))).astype(np.float32)
    out = algo.evaluate(TaskBatch(sx, labels, qx, labels))
    for a, b in zip(before, algo.variables):
        np.testing.assert_array_equal(a, b.numpy())
    assert np.asarray(out["accuracy"]).shape == (2,) and np.asarray(out["predictions"]).shape == (2, 6, 3)
    assert float(np.mean(out["accuracy"])) > 0.9


def test_no_panel_without_its_report_data():
    # Runs of other algorithms never reach the hook (plugin API 1.4); a rotation run that stored nothing draws none.
    assert metalab_report_panels({"metalab.maml": {"angles": [0]}}) == []

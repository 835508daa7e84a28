"""The fine-tuning Baseline / Baseline++ (Chen et al. 2019): pre-training learns, the new head fits each episode."""

import numpy as np
import pytest

from metalab.core.authoring import testing
from metalab.core.contract.specs import TaskBatch, TaskSpec
from metalab.plugins.baseline import SPEC, BaselineParams


def _task(num_train_classes=4, ways=3, dim=6):
    from metalab.plugins.backbones import MLP, MLPParams

    return TaskSpec(kind="classification", input_shape=(dim,), output_dim=ways, ways=ways, shots=5, queries=5,
                    total_steps=10, make_backbone=lambda: MLP.factory(MLPParams(hidden=[8]), (dim,)),
                    num_train_classes=num_train_classes)


def test_registration_is_light_and_classification_only():
    assert SPEC.id == "metalab.baseline" and SPEC.task_kinds == ("classification",)
    assert "Closer Look" in SPEC.paper
    assert BaselineParams().head == "linear" and BaselineParams().finetune_steps == 100


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_both_heads_learn_on_digits(head, builtin_registry, tmp_path):
    result = testing.check_learns("metalab.baseline", tmp_path, registry=builtin_registry, steps=40,
                                  algorithm_params={"head": head, "finetune_steps": 30})
    curve = result.after["curve"]
    assert len(curve) == 31
    # The fresh head starts at chance and fine-tuning on the support set is what lifts it.
    assert curve[0] == pytest.approx(1 / 3, abs=0.05) and curve[-1] > curve[0] + 0.2


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_the_new_head_separates_separable_features(optimizer, head):
    from metalab.plugins.baseline.algorithm import Baseline

    algo = Baseline(BaselineParams(head=head, finetune_optimizer=optimizer, finetune_steps=60, finetune_lr=0.1), _task())
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, size=(3, 8)).astype(np.float32)
    sy, qy = np.repeat(np.arange(3), 5), np.repeat(np.arange(3), 5)
    sf = centres[sy] + rng.normal(0, 0.3, size=(15, 8)).astype(np.float32)
    qf = centres[qy] + rng.normal(0, 0.3, size=(15, 8)).astype(np.float32)
    loss, accuracy, curve, logits = algo.finetune(sf, sy.astype(np.int32), qf, qy.astype(np.int32))
    assert float(accuracy) == 1.0 and np.asarray(curve).shape == (61,) and np.asarray(logits).shape == (15, 3)
    assert float(loss) < 0.7


def test_evaluation_leaves_the_backbone_untouched_and_is_reproducible():
    from metalab.plugins.baseline.algorithm import Baseline

    algo = Baseline(BaselineParams(finetune_steps=5), _task())
    before = [np.array(v.numpy()) for v in algo.variables]
    rng = np.random.default_rng(1)
    batch = TaskBatch(rng.normal(size=(2, 15, 6)).astype(np.float32), np.tile(np.repeat(np.arange(3), 5), (2, 1)),
                      rng.normal(size=(2, 15, 6)).astype(np.float32), np.tile(np.repeat(np.arange(3), 5), (2, 1)))
    first, second = algo.evaluate(batch), algo.evaluate(batch)
    for a, b in zip(before, algo.variables):
        np.testing.assert_array_equal(a, b.numpy())
    np.testing.assert_array_equal(np.asarray(first["predictions"]), np.asarray(second["predictions"]))
    assert np.asarray(first["curve"]).shape == (2, 6)


def test_cosine_head_scores_by_angle_only():
    from metalab.plugins.baseline.algorithm import cosine_logits

    x = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    w = np.array([[3.0, 0.0], [0.0, 0.5]], dtype=np.float32)
    np.testing.assert_allclose(np.asarray(cosine_logits(x, w, 10.0)), [[10.0, 0.0], [0.0, 10.0]], atol=1e-5)
    np.testing.assert_allclose(np.asarray(cosine_logits(5 * x, w, 10.0)), np.asarray(cosine_logits(x, w, 10.0)), atol=1e-5)


def test_needs_the_number_of_training_classes():
    from metalab.plugins.baseline.algorithm import Baseline

    with pytest.raises(ValueError, match="num_train_classes >= 2"):
        Baseline(BaselineParams(), _task(num_train_classes=0))
    algo = Baseline(BaselineParams(head="cosine"), _task(num_train_classes=7))
    assert algo.model.output_shape[-1] == 7 and algo.batch_kind == "supervised"

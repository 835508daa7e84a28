"""ANIL: registration, head-only inner loop, exact meta-gradients, evaluation, learning and its report panel."""

import functools
import subprocess
import sys

import keras
import numpy as np
import pydantic
import pytest

from metalab.core.engine import functional
from metalab.core.authoring import testing
from metalab.core.contract.specs import Algorithm, ReportPanel, TaskBatch, TaskSpec
from metalab.plugins import anil
from metalab.plugins.anil import SPEC, ANILParams
from metalab.plugins.backbones import MLP, MLPParams
from tests.support.finite_differences import directional_errors


# Shared tiny tasks and the runner's compiled steps (metalab.core.authoring.testing).
blob_batch = functools.partial(testing.blob_batch, shots=2, dim=8)
evaluate = testing.evaluate_compiled


def blob_task(dim=8, hidden=(16,)):
    return TaskSpec("classification", (dim,), 3, 3, 2, 5, 100,
                    lambda: MLP.factory(MLPParams(hidden=list(hidden)), (dim,)))


def make(**params):
    keras.utils.set_random_seed(0)
    return SPEC.factory(ANILParams(**params), blob_task())

def test_spec_is_valid_and_cites_the_paper():
    assert anil.metalab_register_algorithms() == [SPEC]
    SPEC.validate()
    assert SPEC.id == "metalab.anil" and "Raghu" in SPEC.paper
    p = ANILParams()
    assert (p.inner_lr, p.inner_steps, p.eval_inner_steps, p.first_order, p.zero_head) == (0.4, 1, 3, False, True)
    with pytest.raises(pydantic.ValidationError):
        ANILParams(inner_lr=0)


def test_registration_module_does_not_import_tensorflow():
    code = (
        "import sys, metalab.plugins.anil as m; m.metalab_register_algorithms(); "
        "m.metalab_report_panels(report_data={}); "
        "bad = [n for n in ('tensorflow', 'keras') if n in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_follows_the_protocol_and_starts_from_a_zero_head():
    algorithm = make(meta_batch_size=5)
    assert isinstance(algorithm, Algorithm) and algorithm.meta_batch_size == 5
    assert not np.any(algorithm.head.kernel.numpy()) and not np.any(algorithm.head.bias.numpy())
    assert np.any(make(zero_head=False).head.kernel.numpy())
    with pytest.raises(ValueError, match="task.kind"):
        SPEC.factory(ANILParams(), TaskSpec("ranking", (2,), 1, 1, 1, 1, 1, lambda: None))


def test_inner_loop_adapts_the_head_and_leaves_the_backbone_unchanged():
    algorithm = make(zero_head=False)
    batch = blob_batch(np.random.default_rng(0), 1)
    theta = [keras.ops.convert_to_tensor(v) for v in algorithm.trainable_variables]
    fast = algorithm.adapt(theta, batch.support_x[0], batch.support_y[0], steps=3)
    head = {id(algorithm.head.kernel), id(algorithm.head.bias)}
    for variable, before, after in zip(algorithm.trainable_variables, theta, fast):
        if id(variable) in head:
            assert np.abs(functional.to_numpy(after) - functional.to_numpy(before)).max() > 1e-4
        else:
            np.testing.assert_array_equal(functional.to_numpy(after), functional.to_numpy(before))


def test_second_order_meta_gradient_matches_finite_differences_and_reaches_the_backbone(float64):
    algorithm = make(inner_lr=0.5, inner_steps=2, zero_head=False)
    batch = blob_batch(np.random.default_rng(1), 2)
    grads, metrics = algorithm.meta_gradients(batch)
    theta = [functional.to_numpy(v) for v in algorithm.trainable_variables]
    grads = [functional.to_numpy(g) for g in grads]
    # The backbone learns through the outer loop: its meta-gradient is not zero.
    assert all(np.abs(grads[i]).max() > 1e-6 for i in algorithm._backbone_indices)

    def meta_loss(weights):
        for variable, value in zip(algorithm.trainable_variables, weights):
            variable.assign(value)
        return float(functional.to_numpy(algorithm.meta_gradients(batch)[1]["loss"]))

    assert max(directional_errors(meta_loss, theta, grads)) < 1e-8
    assert set(metrics) == {"loss", "accuracy"}


def test_backbone_runs_once_per_set_whatever_the_inner_steps():
    # The inner loop only moves the head, so the features of each support and query set are computed once.
    algorithm = make(inner_steps=3, zero_head=False)
    calls = []
    features = algorithm.features
    algorithm.features = lambda weights, x: calls.append(x.shape[0]) or features(weights, x)
    algorithm.meta_gradients(blob_batch(np.random.default_rng(0), 4))
    assert calls == [2 * 3, 5 * 3] * 4  # per task: its support set (2 shots x 3 ways), then its query set


def test_first_order_drops_the_second_derivatives(float64):
    batch = blob_batch(np.random.default_rng(1), 2)
    second, _ = make(inner_steps=2, zero_head=False).meta_gradients(batch)
    first, _ = make(inner_steps=2, zero_head=False, first_order=True).meta_gradients(batch)
    assert max(float(np.abs(functional.to_numpy(a) - functional.to_numpy(b)).max()) for a, b in zip(first, second)) > 1e-4


def test_evaluate_matches_per_task_adaptation_and_keeps_the_weights():
    algorithm = make(eval_inner_steps=4, zero_head=False)
    batch = blob_batch(np.random.default_rng(0), 3)
    before = [v.numpy().copy() for v in algorithm.variables]
    out = evaluate(algorithm, batch)
    assert out["loss"].shape == (3,) and out["curve"].shape == (3, 5) and out["predictions"].shape == (3, 15, 3)
    np.testing.assert_allclose(out["curve"][:, -1], out["accuracy"])
    # The batched heads adapt exactly as adapting each task on its own does.
    theta = [keras.ops.convert_to_tensor(v) for v in algorithm.trainable_variables]
    fast = algorithm.adapt(theta, batch.support_x[1], batch.support_y[1], steps=4, first_order=True)
    logits = functional.to_numpy(algorithm.fbackbone.model.stateless_call(
        algorithm.split(fast)[0], [], batch.query_x[1], training=True)[0])
    kernel, bias = (functional.to_numpy(w) for w in algorithm.split(fast)[1])
    np.testing.assert_allclose(out["predictions"][1], logits @ kernel + bias, rtol=1e-4, atol=1e-5)
    for v, b in zip(algorithm.variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


def test_learns_few_shot_classification_of_new_classes():
    algorithm = make(meta_batch_size=4, outer_lr=1e-2)
    rng = np.random.default_rng(0)
    optimizer = algorithm.make_optimizer()
    optimizer.build(algorithm.trainable_variables)

    @functional.compile
    def step(sx, sy, qx, qy):
        grads, metrics = algorithm.meta_gradients(TaskBatch(sx, sy, qx, qy))
        optimizer.apply(grads, algorithm.trainable_variables)
        return metrics

    test = blob_batch(np.random.default_rng(123), 40)
    before = evaluate(algorithm, test)["accuracy"].mean()
    for _ in range(150):
        step(*blob_batch(rng, 4).as_tuple())
    after = evaluate(algorithm, test)["accuracy"].mean()
    assert after > before + 0.1 and after > 1 / 3 + 0.25, (before, after)


def test_report_data_and_panel_show_which_layers_adapt():
    algorithm = make()
    data = algorithm.report_data()
    adapting = [layer["name"] for layer in data["layers"] if layer["adapts"]]
    assert adapting == [algorithm.head.kernel.path, algorithm.head.bias.path]
    assert sum(layer["params"] for layer in data["layers"]) == sum(
        int(np.prod(v.shape)) for v in algorithm.trainable_variables)
    panels = anil.metalab_report_panels(report_data={"metalab.anil": data})
    assert len(panels) == 1 and isinstance(panels[0], ReportPanel)
    panels[0].validate()
    assert "| yes |" in panels[0].markdown and "| no |" in panels[0].markdown
    assert {t["name"] for t in panels[0].figure["data"]} == {"outer loop only (backbone)", "inner and outer loop (head)"}

"""Meta-SGD: registration, learned per-parameter rates, exact meta-gradients, learning and its report panel."""

import subprocess
import sys

import keras
import numpy as np
import pydantic
import pytest

from metalab.core.engine import functional
from metalab.core.authoring import testing
from metalab.core.contract.specs import Algorithm, ReportPanel, TaskBatch, TaskSpec
from metalab.plugins import metasgd
from metalab.plugins.backbones import MLP, MLPParams
from metalab.plugins.metasgd import SPEC, MetaSGDParams
from tests.support.finite_differences import directional_errors


# Shared tiny tasks and the runner's compiled steps (metalab.core.authoring.testing).
sinusoid_batch = testing.sinusoid_batch
evaluate = testing.evaluate_compiled


def regression_task(hidden=(20, 20)):
    return TaskSpec("regression", (1,), 1, 1, 10, 10, 100, lambda: MLP.factory(MLPParams(hidden=list(hidden)), (1,)))


def make(**params):
    keras.utils.set_random_seed(0)
    return SPEC.factory(MetaSGDParams(**params), regression_task())

def test_spec_is_valid_and_cites_the_paper():
    assert metasgd.metalab_register_algorithms() == [SPEC]
    SPEC.validate()
    assert SPEC.id == "metalab.metasgd" and "Li" in SPEC.paper
    p = MetaSGDParams()
    assert (p.inner_lr_init, p.inner_steps, p.eval_inner_steps, p.first_order) == (0.1, 1, 1, False)
    with pytest.raises(pydantic.ValidationError):
        MetaSGDParams(inner_lr_init=0)


def test_registration_module_does_not_import_tensorflow():
    code = (
        "import sys, metalab.plugins.metasgd as m; m.metalab_register_algorithms(); "
        "m.metalab_report_panels(report_data={}); "
        "bad = [n for n in ('tensorflow', 'keras') if n in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_rate_per_parameter_initialised_to_inner_lr_init():
    algorithm = make(inner_lr_init=0.03, meta_batch_size=3)
    assert isinstance(algorithm, Algorithm) and algorithm.meta_batch_size == 3
    weights, alphas = algorithm.weights, algorithm.alphas
    assert algorithm.trainable_variables == weights + alphas
    assert [a.shape for a in alphas] == [w.shape for w in weights]
    assert all(np.all(a.numpy() == np.float32(0.03)) for a in alphas)
    assert all(any(a is v for v in algorithm.variables) for a in alphas)  # checkpointed
    with pytest.raises(ValueError, match="task.kind"):
        SPEC.factory(MetaSGDParams(), TaskSpec("ranking", (2,), 1, 1, 1, 1, 1, lambda: None))


def test_inner_step_is_theta_minus_alpha_times_gradient():
    algorithm = make()
    rng = np.random.default_rng(0)
    for alpha in algorithm.alphas:
        alpha.assign(rng.uniform(-0.1, 0.2, alpha.shape).astype("float32"))
    batch = sinusoid_batch(rng, 1)
    theta, alphas = algorithm.split(algorithm.params())
    fast = algorithm.inner_step(theta, alphas, batch.support_x[0], batch.support_y[0], first_order=True)
    _, grads = functional.value_and_grad(
        lambda w: algorithm.task_loss(w, batch.support_x[0], batch.support_y[0])[0], theta)
    for f, w, a, g in zip(fast, theta, alphas, grads):
        np.testing.assert_allclose(functional.to_numpy(f), functional.to_numpy(w - a * g), rtol=1e-6)


def test_meta_gradients_of_weights_and_rates_match_finite_differences(float64):
    algorithm = make(inner_lr_init=0.02)
    batch = sinusoid_batch(np.random.default_rng(1), 2)
    grads, metrics = algorithm.meta_gradients(batch)
    assert set(metrics) == {"loss"} and len(grads) == 2 * len(algorithm.weights)
    theta = [functional.to_numpy(v) for v in algorithm.trainable_variables]
    grads = [functional.to_numpy(g) for g in grads]
    assert all(np.abs(g).max() > 0 for g in grads[len(algorithm.weights):])  # the rates get a meta-gradient

    def meta_loss(values):
        for variable, value in zip(algorithm.trainable_variables, values):
            variable.assign(value)
        return float(functional.to_numpy(algorithm.meta_gradients(batch)[1]["loss"]))

    assert max(directional_errors(meta_loss, theta, grads)) < 1e-8


def test_learns_sinusoids_and_the_rates_change():
    algorithm = make(inner_lr_init=0.01, meta_batch_size=5, outer_lr=1e-2, eval_inner_steps=1)
    rng = np.random.default_rng(0)
    optimizer = algorithm.make_optimizer()
    optimizer.build(algorithm.trainable_variables)

    @functional.compile
    def step(sx, sy, qx, qy):
        grads, metrics = algorithm.meta_gradients(TaskBatch(sx, sy, qx, qy))
        optimizer.apply(grads, algorithm.trainable_variables)
        return metrics

    test = sinusoid_batch(np.random.default_rng(123), 40)
    before = evaluate(algorithm, test)["loss"].mean()
    for _ in range(200):
        step(*sinusoid_batch(rng, 5).as_tuple())
    out = evaluate(algorithm, test)
    assert out["curve"].shape == (40, 2)
    assert out["loss"].mean() < 0.6 * before, (before, out["loss"].mean())
    assert out["curve"][:, 1].mean() < out["curve"][:, 0].mean()  # the learned step helps
    moved = [np.abs(a.numpy() - 0.01).max() for a in algorithm.alphas]
    assert min(moved) > 1e-3, moved


def test_report_data_histograms_every_rate_and_the_panel_draws_them():
    algorithm = make(inner_lr_init=0.05)
    rng = np.random.default_rng(0)
    for alpha in algorithm.alphas:
        alpha.assign(rng.normal(0.05, 0.02, alpha.shape).astype("float32"))
    data = algorithm.report_data()
    assert data["init"] == 0.05 and len(data["layers"]) == len(algorithm.alphas)
    for layer, alpha in zip(data["layers"], algorithm.alphas):
        values = alpha.numpy().reshape(-1)
        assert sum(layer["counts"]) == layer["count"] == values.size
        assert len(layer["edges"]) == len(layer["counts"]) + 1
        assert layer["min"] == pytest.approx(values.min()) and layer["max"] == pytest.approx(values.max())
        assert layer["negative"] == pytest.approx(np.mean(values < 0))
    panels = metasgd.metalab_report_panels(report_data={"metalab.metasgd": data})
    assert len(panels) == 1 and isinstance(panels[0], ReportPanel)
    panels[0].validate()
    bars = [t for t in panels[0].figure["data"] if t["type"] == "bar"]
    assert [t["name"] for t in bars] == [w.path for w in algorithm.weights]
    assert all(sum(t["y"]) == layer["count"] for t, layer in zip(bars, data["layers"]))
    assert all(f"`{w.path}`" in panels[0].markdown for w in algorithm.weights)


def test_untrained_rates_make_a_valid_histogram():
    data = make().report_data()
    assert all(sum(layer["counts"]) == layer["count"] for layer in data["layers"])

"""Reptile: registration, the outer update and its schedule, the inner optimizers, and learning on tiny tasks."""

import functools
import subprocess
import sys

import keras
import numpy as np
import pydantic
import pytest

from metalab.core.engine import functional
from metalab.core.authoring import testing
from metalab.core.contract.specs import Algorithm, TaskSpec
from metalab.plugins import reptile
from metalab.plugins.backbones import MLP, MLPParams
from metalab.plugins.reptile import SPEC, ReptileParams


# Shared tiny tasks and the runner's compiled steps (metalab.core.authoring.testing).
sinusoid_batch = testing.sinusoid_batch
blob_batch = functools.partial(testing.blob_batch, shots=5)
train, evaluate = testing.train_steps, testing.evaluate_compiled


# -- tiny task specs ------------------------------------------------------------------------------------


def regression_task(total_steps=1000):
    return TaskSpec("regression", (1,), 1, 1, 10, 10, total_steps, lambda: MLP.factory(MLPParams(), (1,)))


def blob_task(total_steps=1000):
    return TaskSpec("classification", (16,), 3, 3, 5, 5, total_steps,
                    lambda: MLP.factory(MLPParams(hidden=[32, 32]), (16,)))

def _values(tensors):
    return [functional.to_numpy(t) for t in tensors]


# -- registration ----------------------------------------------------------------------------------------


def test_spec_is_valid_and_defaults_follow_the_paper():
    assert reptile.metalab_register_algorithms() == [SPEC]
    SPEC.validate()
    assert SPEC.id == "metalab.reptile"
    assert "Nichol" in SPEC.paper
    p = ReptileParams()
    assert (p.inner_optimizer, p.inner_lr, p.inner_steps, p.eval_inner_steps, p.meta_batch_size, p.outer_stepsize) == (
        "adam", 1e-3, 5, 50, 5, 1.0)
    assert reptile.METALAB_PLUGIN_API == "1.5"  # functional.mean came with 1.5


@pytest.mark.parametrize("bad", [{"inner_lr": -1}, {"inner_optimizer": "rmsprop"}, {"outer_stepsize": 0},
                                 {"inner_steps": 0}])
def test_invalid_params_are_refused(bad):
    with pytest.raises(pydantic.ValidationError):
        ReptileParams(**bad)


def test_registration_module_does_not_import_tensorflow():
    code = (
        "import sys, metalab.plugins.reptile as m; m.metalab_register_algorithms(); "
        "bad = [n for n in ('tensorflow', 'keras') if n in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_follows_the_protocol():
    algorithm = SPEC.factory(ReptileParams(), blob_task())
    assert isinstance(algorithm, Algorithm)
    assert algorithm.meta_batch_size == 5
    with pytest.raises(ValueError, match="task.kind"):
        SPEC.factory(ReptileParams(), TaskSpec("ranking", (2,), 1, 1, 1, 1, 1, lambda: None))


# -- the outer update ------------------------------------------------------------------------------------


def test_outer_step_moves_theta_towards_the_mean_adapted_weights():
    keras.utils.set_random_seed(0)
    algorithm = SPEC.factory(ReptileParams(inner_optimizer="sgd", inner_lr=0.05, meta_batch_size=3, outer_stepsize=0.5),
                             regression_task(total_steps=10))
    batch = sinusoid_batch(np.random.default_rng(0), 3)
    theta = _values(algorithm.trainable_variables)
    phis = [_values(algorithm.adapt(algorithm.fmodel.params(), batch.support_x[t], batch.support_y[t], 5))
            for t in range(3)]
    mean_phi = [np.mean(ws, axis=0) for ws in zip(*phis)]
    assert max(float(np.abs(m - t).max()) for m, t in zip(mean_phi, theta)) > 1e-3  # the tasks moved the weights

    optimizer = algorithm.make_optimizer()
    optimizer.build(algorithm.trainable_variables)
    grads, metrics = algorithm.meta_gradients(batch)
    optimizer.apply(grads, algorithm.trainable_variables)
    for new, t, m in zip(_values(algorithm.trainable_variables), theta, mean_phi):
        np.testing.assert_allclose(new, t + 0.5 * (m - t), rtol=1e-4, atol=1e-6)  # epsilon(step 0) = 0.5
    assert set(metrics) == {"loss"}


def test_unrolled_and_looped_meta_batches_give_the_same_update(monkeypatch):
    # Small meta-batches are unrolled (tasks x steps <= the limit), larger ones loop: one update either way.
    from metalab.plugins.reptile import algorithm as module

    keras.utils.set_random_seed(0)
    algorithm = SPEC.factory(ReptileParams(meta_batch_size=3, inner_steps=4), blob_task())
    batch = blob_batch(np.random.default_rng(0), 3)
    unrolled, unrolled_metrics = algorithm.meta_gradients(batch)
    monkeypatch.setattr(module, "_UNROLL_LIMIT", 0)
    looped, looped_metrics = algorithm.meta_gradients(batch)
    assert max(float(np.abs(g).max()) for g in _values(unrolled)) > 1e-4  # the tasks moved the weights
    for u, lo in zip(_values(unrolled), _values(looped)):
        np.testing.assert_allclose(u, lo, rtol=1e-4, atol=1e-7)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(functional.to_numpy(unrolled_metrics[key]), functional.to_numpy(looped_metrics[key]),
                                   rtol=1e-5)


def test_outer_step_size_is_annealed_linearly_to_zero():
    algorithm = SPEC.factory(ReptileParams(outer_stepsize=0.8), regression_task(total_steps=100))
    optimizer = algorithm.make_optimizer()
    assert isinstance(optimizer, keras.optimizers.SGD)
    rates = []
    for step in (0, 50, 100, 150):
        optimizer.iterations.assign(step)
        rates.append(float(optimizer.learning_rate))
    np.testing.assert_allclose(rates, [0.8, 0.4, 0.0, 0.0], atol=1e-6)


# -- the inner loop --------------------------------------------------------------------------------------


def test_inner_adam_matches_keras_adam_with_beta1_zero():
    keras.utils.set_random_seed(0)
    algorithm = SPEC.factory(ReptileParams(inner_optimizer="adam", inner_lr=0.01), regression_task())
    batch = sinusoid_batch(np.random.default_rng(0), 1)
    x, y = batch.support_x[0], batch.support_y[0]
    adapted = _values(algorithm.adapt(algorithm.fmodel.params(), x, y, 3))

    reference = keras.optimizers.Adam(learning_rate=0.01, beta_1=0.0, beta_2=0.999, epsilon=1e-8)
    reference.build(algorithm.trainable_variables)
    for _ in range(3):
        _, grads = functional.value_and_grad(lambda w: algorithm.task_loss(w, x, y)[0], algorithm.fmodel.params())
        reference.apply(grads, algorithm.trainable_variables)
    for a, r in zip(adapted, _values(algorithm.trainable_variables)):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-6)


def test_inner_sgd_step_is_plain_gradient_descent():
    algorithm = SPEC.factory(ReptileParams(inner_optimizer="sgd", inner_lr=0.1), regression_task())
    batch = sinusoid_batch(np.random.default_rng(0), 1)
    x, y = batch.support_x[0], batch.support_y[0]
    theta = algorithm.fmodel.params()
    _, grads = functional.value_and_grad(lambda w: algorithm.task_loss(w, x, y)[0], theta)
    for a, t, g in zip(_values(algorithm.adapt(theta, x, y, 1)), _values(theta), _values(grads)):
        np.testing.assert_allclose(a, t - 0.1 * g, rtol=1e-5, atol=1e-7)


def test_evaluate_returns_per_task_scores_and_a_curve():
    algorithm = SPEC.factory(ReptileParams(eval_inner_steps=6, inner_lr=0.01), blob_task())
    batch = blob_batch(np.random.default_rng(0), 4)
    out = evaluate(algorithm, batch)
    assert out["loss"].shape == (4,) and out["accuracy"].shape == (4,)
    assert out["curve"].shape == (4, 7) and out["predictions"].shape == (4, 15, 3)
    np.testing.assert_allclose(out["curve"][:, -1], out["accuracy"])
    np.testing.assert_allclose(out["accuracy"], (out["predictions"].argmax(-1) == batch.query_y).mean(-1), rtol=1e-6)


# -- learning --------------------------------------------------------------------------------------------


def test_learns_sinusoid_regression():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    algorithm = SPEC.factory(ReptileParams(inner_optimizer="sgd", inner_lr=0.02, eval_inner_steps=5),
                             regression_task(total_steps=500))
    test = sinusoid_batch(np.random.default_rng(123), 50)
    before = evaluate(algorithm, test)["curve"].mean(0)
    history = train(algorithm, lambda: sinusoid_batch(rng, 5), 500)
    after = evaluate(algorithm, test)["curve"].mean(0)
    assert np.mean([m["loss"] for m in history[-50:]]) < np.mean([m["loss"] for m in history[:50]])
    assert after[-1] < 0.5 * before[-1]  # query MSE after 5 steps; measured 0.31-0.35x on seeds 0-2


def test_learns_few_shot_classification_of_new_classes():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    algorithm = SPEC.factory(ReptileParams(inner_lr=0.03, meta_batch_size=4, eval_inner_steps=10),
                             blob_task(total_steps=800))
    test = blob_batch(np.random.default_rng(123), 50)
    before = evaluate(algorithm, test)["accuracy"].mean()
    train(algorithm, lambda: blob_batch(rng, 4), 800)
    after = evaluate(algorithm, test)["accuracy"].mean()
    assert after > 1 / 3 + 0.25  # measured: 0.66-0.71 on seeds 0-2
    assert after > before + 0.08  # measured: 0.50-0.54 before

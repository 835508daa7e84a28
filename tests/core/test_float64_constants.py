"""Float64 runs compute in float64 throughout: Python constants (batch-norm epsilon and momentum, inner learning
rates, Adam's beta2, initial Meta-SGD rates) reach the computation as float64, never rounded through float32.

TensorFlow's ``cast`` of a Python float goes through a float32 tensor first (``ops.cast(0.4, "float64")`` is
0.4000000059604645); ``ops.convert_to_tensor(0.4, dtype=...)`` is exact. Each test below fails on that round trip.
"""

import keras
import numpy as np
import pytest
from keras import ops

from metalab.core.contract.specs import TaskSpec
from metalab.core.engine import functional
from metalab.core.engine.layers import FoldingSequential, MetaBatchNorm
from metalab.plugins.anil import SPEC as ANIL, ANILParams
from metalab.plugins.backbones import MLP, MLPParams
from metalab.plugins.maml import SPEC as MAML, MAMLParams
from metalab.plugins.metasgd import SPEC as METASGD, MetaSGDParams
from metalab.plugins.reptile import SPEC as REPTILE, ReptileParams


def _float32_round_trip(value: float) -> float:
    return float(np.float64(np.float32(value)))


def test_a_float32_round_trip_would_show():
    # The constants the tests below use are not float32 numbers, so a round trip through float32 changes them.
    for value in (1e-3, 0.4, 0.99, 0.999, 0.01):
        assert _float32_round_trip(value) != value


def test_batch_norm_epsilon_is_exactly_the_python_float(float64):
    layer = MetaBatchNorm(epsilon=1e-3)
    x = np.ones((1, 2))
    layer.build(x.shape)
    layer.moving_variance.assign(np.zeros(2))
    # Inference with zero running moments, unit scale and no offset: y = (1 - 0) * rsqrt(0 + epsilon) exactly.
    y = layer(x, training=False)
    assert keras.backend.standardize_dtype(y.dtype) == "float64"
    exact = functional.to_numpy(ops.rsqrt(ops.convert_to_tensor(np.float64(1e-3))))
    np.testing.assert_array_equal(functional.to_numpy(y), np.full((1, 2), exact))
    assert 1.0 / float(functional.to_numpy(y)[0, 0]) ** 2 == pytest.approx(1e-3, rel=1e-14)


def test_batch_norm_running_moments_move_by_the_exact_momentum(float64):
    layer = MetaBatchNorm(momentum=0.99)
    x = np.array([[1.0], [3.0]])  # batch mean 2, variance 1
    layer(x, training=True)
    np.testing.assert_array_equal(functional.to_numpy(layer.moving_mean), [0.0 * 0.99 + 2.0 * (1 - 0.99)])
    np.testing.assert_array_equal(functional.to_numpy(layer.moving_variance), [1.0 * 0.99 + 1.0 * (1 - 0.99)])


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the fold is TensorFlow's training path")
def test_folded_batch_norm_uses_the_exact_epsilon(float64):
    # Tiny convolution outputs: their variance (~1e-7) is far below epsilon, so the output moves by half of any
    # relative error of epsilon (2.4e-8 for a float32 epsilon), far above the fold's round-off.
    keras.utils.set_random_seed(0)
    conv = keras.layers.Conv2D(18, 3, padding="same", use_bias=False, name="conv")
    model = FoldingSequential([keras.Input((6, 6, 1)), conv, MetaBatchNorm(name="bn"), keras.layers.MaxPooling2D(2)])
    assert model.folded_layers() == ["bn"]
    conv.kernel.assign(np.random.default_rng(1).normal(scale=1e-4, size=(3, 3, 1, 18)))
    x = np.random.default_rng(2).normal(size=(4, 6, 6, 1))
    z = functional.to_numpy(conv(x))
    normalised = (z - z.mean(axis=(0, 1, 2))) / np.sqrt(z.var(axis=(0, 1, 2)) + 1e-3)
    expected = normalised.reshape(4, 3, 2, 3, 2, 18).max(axis=(2, 4))
    np.testing.assert_allclose(functional.to_numpy(model(x, training=True)), expected, rtol=1e-12, atol=1e-15)


def _mlp_task(output_dim: int = 1, kind: str = "regression") -> TaskSpec:
    return TaskSpec(kind, (3,), output_dim, output_dim if kind == "classification" else 1, 4, 4, 10,
                    lambda: MLP.factory(MLPParams(hidden=[8]), (3,)))


def _regression_data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 3)), rng.normal(size=(6, 1))


def _support_gradient(algorithm, weights, x, y):
    return functional.value_and_grad(lambda w: algorithm.task_loss(w, x, y)[0], weights)[1]


@pytest.mark.parametrize("first_order", [True, False], ids=["first-order", "second-order"])
def test_maml_inner_step_uses_the_exact_inner_lr(float64, first_order):
    keras.utils.set_random_seed(0)
    algorithm = MAML.factory(MAMLParams(inner_lr=0.4), _mlp_task())
    x, y = _regression_data()
    theta = algorithm.fmodel.params()
    assert all(keras.backend.standardize_dtype(t.dtype) == "float64" for t in theta)
    fast = algorithm.inner_step(theta, x, y, first_order=first_order)
    grads = _support_gradient(algorithm, theta, x, y)
    for f, w, g in zip(fast, theta, grads):
        expected = functional.to_numpy(w) - 0.4 * functional.to_numpy(g)  # NumPy: 0.4 as float64
        np.testing.assert_array_equal(functional.to_numpy(f), expected)


def test_anil_head_step_uses_the_exact_inner_lr(float64):
    keras.utils.set_random_seed(0)
    algorithm = ANIL.factory(ANILParams(inner_lr=0.4, zero_head=False), _mlp_task(3, "classification"))
    rng = np.random.default_rng(0)
    features = ops.convert_to_tensor(rng.normal(size=(2, 6, 8)))
    y = ops.convert_to_tensor(np.tile([0, 1, 2] * 2, (2, 1)).astype("int32"))
    head = algorithm.tile_head(algorithm.split(algorithm.params())[1], 2)
    stepped = algorithm.head_step(head, features, y, first_order=True)
    from metalab.core.engine.episodic import batched_loss_and_metric

    _, grads = functional.value_and_grad(
        lambda h: ops.sum(batched_loss_and_metric("classification", algorithm.head_outputs(h, features), y)[0]), head)
    for s, w, g in zip(stepped, head, grads):
        np.testing.assert_array_equal(functional.to_numpy(s), functional.to_numpy(w) - 0.4 * functional.to_numpy(g))


def test_reptile_inner_steps_use_the_exact_constants(float64):
    x, y = _regression_data()
    keras.utils.set_random_seed(0)
    sgd = REPTILE.factory(ReptileParams(inner_optimizer="sgd", inner_lr=0.4), _mlp_task())
    theta = sgd.fmodel.params()
    new, _ = sgd.inner_step(theta, sgd.init_inner_state(theta), x, y)
    for n, w, g in zip(new, theta, _support_gradient(sgd, theta, x, y)):
        np.testing.assert_array_equal(functional.to_numpy(n), functional.to_numpy(w) - 0.4 * functional.to_numpy(g))

    # Adam (beta1 = 0): the first step is lr * sqrt(1 - beta2) * g / (sqrt((1 - beta2) g^2) + 1e-8), beta2 = 0.999.
    adam = REPTILE.factory(ReptileParams(inner_optimizer="adam", inner_lr=0.4), _mlp_task())
    theta = adam.fmodel.params()
    new, _ = adam.inner_step(theta, adam.init_inner_state(theta), x, y)
    for n, w, g in zip(new, theta, _support_gradient(adam, theta, x, y)):
        w, g = functional.to_numpy(w), functional.to_numpy(g)
        expected = w - 0.4 * np.sqrt(1 - 0.999) * g / (np.sqrt((1 - 0.999) * g**2) + 1e-8)
        # Equal up to the last bits of sqrt and division (a float32 beta2 moves the step by 6e-6 relative).
        np.testing.assert_allclose(functional.to_numpy(n), expected, rtol=1e-14, atol=1e-14)


def test_metasgd_rates_start_at_exactly_inner_lr_init(float64):
    algorithm = METASGD.factory(MetaSGDParams(inner_lr_init=0.01), _mlp_task())
    for alpha in algorithm.alphas:
        assert keras.backend.standardize_dtype(alpha.dtype) == "float64"
        np.testing.assert_array_equal(functional.to_numpy(alpha), np.full(alpha.shape, 0.01))


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_constants_follow_the_compute_dtype_in_other_precisions(policy):
    # Unchanged outside float64: the same values a cast gave.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        algorithm = MAML.factory(MAMLParams(inner_lr=0.4), _mlp_task())
        x, y = _regression_data()
        theta = algorithm.fmodel.params()
        fast = algorithm.inner_step(theta, x, y, first_order=True)
        grads = _support_gradient(algorithm, theta, x, y)
        for f, w, g in zip(fast, theta, grads):
            assert f.dtype == w.dtype
            np.testing.assert_array_equal(functional.to_numpy(f),
                                          functional.to_numpy(w - ops.cast(0.4, w.dtype) * g))
        layer = MetaBatchNorm()
        layer.build((2, 2))
        layer.moving_variance.assign(np.zeros(2))
        out = layer(ops.cast(np.ones((2, 2)), keras.config.dtype_policy().compute_dtype), training=False)
        expected = ops.rsqrt(ops.cast(1e-3, "float32"))  # half-precision inputs normalise in float32
        np.testing.assert_array_equal(functional.to_numpy(out),
                                      np.full((2, 2), functional.to_numpy(ops.cast(expected, out.dtype))))
    finally:
        keras.config.set_dtype_policy(previous)

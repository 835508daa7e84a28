"""MetaBatchNorm: batch norm with exact second derivatives, checked against finite differences in float64."""

import keras
import numpy as np
import pytest
from keras import ops

from metalab.core.engine import functional
from metalab.core.engine.layers import MetaBatchNorm
from tests.support.finite_differences import directional_errors


def _conv_net(norm_layer) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(3, 3, padding="same", name="conv"),
            norm_layer(),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="head"),
        ]
    )


def _maml_meta_loss(fmodel, first_order=False, inner_lr=0.4):
    rng = np.random.default_rng(0)
    sx, qx = rng.normal(size=(6, 6, 6, 1)), rng.normal(size=(9, 6, 6, 1))
    sy, qy = np.array([0, 1, 2] * 2), np.array([0, 1, 2] * 3)

    def loss(params, x, y):
        return ops.mean(ops.sparse_categorical_crossentropy(y, fmodel(params, x), from_logits=True))

    def meta_loss(theta):
        _, grads = functional.value_and_grad(loss, theta, sx, sy)
        if first_order:
            grads = functional.stop_gradient(grads)
        return loss([t - inner_lr * g for t, g in zip(theta, grads)], qx, qy)

    return meta_loss


def _directional_errors(f, theta, grads):
    """Relative errors of ``grads`` against finite differences of ``f`` (tests/support/finite_differences.py)."""
    theta = [functional.to_numpy(t) for t in theta]
    return directional_errors(lambda x: float(functional.to_numpy(f(x))), theta,
                              [functional.to_numpy(g) for g in grads])


def _meta_gradient(norm_layer, first_order=False):
    keras.utils.set_random_seed(0)
    model = _conv_net(norm_layer)
    fmodel = functional.FunctionalModel(model)
    meta_loss = _maml_meta_loss(fmodel, first_order=first_order)
    theta = fmodel.params()
    _, grads = functional.value_and_grad(meta_loss, theta)
    names = [v.path.split("/", 1)[1] for v in fmodel.trainable_variables]  # drop the model's name
    return meta_loss, theta, grads, names


def test_normalises_with_batch_moments_in_training_and_running_moments_in_inference():
    layer = MetaBatchNorm(momentum=0.5, epsilon=1e-5)
    x = np.random.default_rng(0).normal(loc=3.0, scale=2.0, size=(16, 4, 4, 2)).astype("float32")
    y = functional.to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1.0, atol=1e-3)
    # Running moments moved halfway from (0, 1) towards the batch's.
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.5 * x.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), 0.5 + 0.5 * x.var(axis=(0, 1, 2)), rtol=1e-5)

    y_inf = functional.to_numpy(layer(x, training=False))
    expected = (x - layer.moving_mean.numpy()) / np.sqrt(layer.moving_variance.numpy() + 1e-5)
    np.testing.assert_allclose(y_inf, expected, rtol=1e-4, atol=1e-5)


def test_follows_the_input_dtype():
    layer = MetaBatchNorm(dtype="float32")
    x = np.random.default_rng(0).normal(size=(4, 3))
    assert keras.backend.standardize_dtype(layer(x.astype("float64"), training=True).dtype) == "float64"
    assert keras.backend.standardize_dtype(layer(x.astype("float32"), training=True).dtype) == "float32"
    half = layer(ops.cast(x, "float16"), training=True)
    assert keras.backend.standardize_dtype(half.dtype) == "float16"


def test_gamma_beta_trainable_running_moments_not():
    layer = MetaBatchNorm()
    layer.build((None, 5))
    assert [v.name for v in layer.trainable_variables] == ["gamma", "beta"]
    assert [v.name for v in layer.non_trainable_variables] == ["moving_mean", "moving_variance"]
    assert not MetaBatchNorm(center=False, scale=False).trainable_variables


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="momentum"):
        MetaBatchNorm(momentum=1.0)
    with pytest.raises(ValueError, match="epsilon"):
        MetaBatchNorm(epsilon=0.0)


def test_serialises_by_registered_name_and_round_trips_a_saved_model(tmp_path):
    layer = MetaBatchNorm(momentum=0.7, epsilon=1e-4, axis=1)
    config = keras.saving.serialize_keras_object(layer)
    assert config["registered_name"] == "metalab>MetaBatchNorm"
    restored = keras.saving.deserialize_keras_object(config)
    assert (restored.momentum, restored.epsilon, restored.axis) == (0.7, 1e-4, 1)

    model = _conv_net(MetaBatchNorm)
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 1)).astype("float32")
    model(x, training=True)  # move the running moments away from their initial values
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(
        functional.to_numpy(loaded(x, training=False)), functional.to_numpy(model(x, training=False)), rtol=1e-5
    )


def test_maml_meta_gradient_matches_finite_differences(float64):
    meta_loss, theta, grads, _ = _meta_gradient(MetaBatchNorm)
    assert all(keras.backend.standardize_dtype(t.dtype) == "float64" for t in theta)
    assert max(_directional_errors(meta_loss, theta, grads)) < 1e-8


def test_conv_bias_feeding_batch_norm_gets_no_meta_gradient(float64):
    # Batch norm removes any per-channel shift, so the loss cannot depend on the conv bias, to any order.
    _, _, grads, names = _meta_gradient(MetaBatchNorm)
    bias = functional.to_numpy(grads[names.index("conv/bias")])
    assert np.abs(bias).max() < 1e-10


def test_first_order_meta_gradient_differs_from_second_order(float64):
    _, _, second, _ = _meta_gradient(MetaBatchNorm)
    _, _, first, _ = _meta_gradient(MetaBatchNorm, first_order=True)
    diff = max(float(np.abs(functional.to_numpy(a) - functional.to_numpy(b)).max()) for a, b in zip(first, second))
    assert diff > 1e-3


def test_stock_keras_batch_norm_gets_second_derivatives_wrong(float64):
    # Why MetaBatchNorm exists: tf.nn.moments stops the gradient through the mean inside the variance.
    meta_loss, theta, grads, names = _meta_gradient(keras.layers.BatchNormalization)
    # The check MetaBatchNorm passes to 1e-8 fails here by orders of magnitude (measured 5e-5).
    assert max(_directional_errors(meta_loss, theta, grads)) > 1e-6
    assert np.abs(functional.to_numpy(grads[names.index("conv/bias")])).max() > 1e-6


def test_fused_float32_second_order_meta_gradient_matches_the_explicit_form():
    # In float32 the layer takes TensorFlow's fused kernel; its second derivatives must equal the explicit
    # mean((x - mean(x))**2) form that the float64 finite-difference tests verify.
    def meta_gradient(fused):
        _, theta, grads, names = _meta_gradient(lambda: MetaBatchNorm(fused=fused))
        return [functional.to_numpy(g) for g in grads], names

    fused, names = meta_gradient(True)
    explicit, _ = meta_gradient(False)
    for name, a, b in zip(names, fused, explicit):
        if "conv/bias" in name:
            continue  # both are round-off around an exact zero
        scale = max(float(np.abs(b).max()), 1e-6)
        assert float(np.abs(a - b).max()) / scale < 1e-4, name


# -- per-step batch norm (MAML++) --------------------------------------------------------------------------


def _per_step_layer(steps=3, channels=2, fused=True):
    from metalab.core.engine.layers import per_step_batch_norm

    with per_step_batch_norm(steps):
        layer = MetaBatchNorm(momentum=0.5, fused=fused)
    layer.build((None, 4, 4, channels))
    rng = np.random.default_rng(0)
    layer.gamma.assign(rng.uniform(0.5, 2.0, (steps, channels)).astype("float32"))
    layer.beta.assign(rng.normal(size=(steps, channels)).astype("float32"))
    return layer


@pytest.mark.parametrize("fused", [True, False])
def test_per_step_layer_uses_the_set_of_the_current_step_and_clamps_beyond_the_last(fused):
    from metalab.core.engine.layers import batch_norm_step

    layer = _per_step_layer(fused=fused)
    assert layer.gamma.shape == (3, 2) and layer.moving_mean.shape == (3, 2)
    x = np.random.default_rng(1).normal(size=(5, 4, 4, 2)).astype("float32")
    normalised = (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-3)
    gamma, beta = np.asarray(layer.gamma), np.asarray(layer.beta)
    for step, row in [(0, 0), (1, 1), (2, 2), (7, 2)]:
        with batch_norm_step(step):
            out = np.asarray(layer(x, training=True))
        np.testing.assert_allclose(out, normalised * gamma[row] + beta[row], rtol=1e-4, atol=1e-4)
    # No step given: the first set.
    np.testing.assert_allclose(np.asarray(layer(x, training=True)), normalised * gamma[0] + beta[0], atol=1e-4)


def test_per_step_layer_moves_only_the_current_steps_running_moments_and_infers_with_them():
    import tensorflow as tf

    from metalab.core.engine.layers import batch_norm_step

    layer = _per_step_layer()
    x = (3.0 + np.random.default_rng(2).normal(size=(8, 4, 4, 2))).astype("float32")

    @tf.function
    def train_at(step):
        with batch_norm_step(step):  # a tensor step, as inside a compiled loop
            return layer(x, training=True)

    train_at(tf.constant(1))
    mean = np.asarray(layer.moving_mean)
    np.testing.assert_allclose(mean[1], 0.5 * x.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_array_equal(mean[[0, 2]], 0.0)
    np.testing.assert_array_equal(np.asarray(layer.moving_variance)[[0, 2]], 1.0)
    with batch_norm_step(1):
        inferred = np.asarray(layer(x, training=False))
    expected = ((x - mean[1]) / np.sqrt(np.asarray(layer.moving_variance)[1] + 1e-3)
                * np.asarray(layer.gamma)[1] + np.asarray(layer.beta)[1])
    np.testing.assert_allclose(inferred, expected, rtol=1e-4, atol=1e-4)


def test_per_step_weights_get_dense_gradients_only_in_their_own_row():
    from metalab.core.engine.layers import batch_norm_step

    layer = _per_step_layer()
    x = np.random.default_rng(3).normal(size=(5, 4, 4, 2)).astype("float32")
    fmodel = functional.FunctionalModel(keras.Sequential([keras.Input((4, 4, 2)), layer]))

    def loss(weights):
        with batch_norm_step(2):
            return ops.sum(ops.square(fmodel(weights, x)))

    _, grads = functional.value_and_grad(loss, fmodel.params())
    for grad in grads:
        grad = functional.to_numpy(grad)  # a dense array, not IndexedSlices
        assert grad.shape == (3, 2)
        assert np.abs(grad[:2]).max() == 0 and np.abs(grad[2]).max() > 0


def test_per_step_setting_is_scoped_serialised_and_validated():
    from metalab.core.engine.layers import batch_norm_steps, per_step_batch_norm

    with per_step_batch_norm(4):
        inside = MetaBatchNorm()
        explicit = MetaBatchNorm(steps=1)
    assert (inside.steps, explicit.steps, MetaBatchNorm().steps) == (4, 1, 1)
    assert MetaBatchNorm.from_config(inside.get_config()).steps == 4
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.Sequential([keras.Input((4, 4, 1)), inside])])
    assert batch_norm_steps(model) == 4
    assert batch_norm_steps(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])) == 0
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            MetaBatchNorm(steps=bad)
        with pytest.raises(ValueError, match="steps"):
            with per_step_batch_norm(bad):
                pass


# -- the folded first block (FoldingSequential) ---------------------------------------------------------------


def _block_net(cls, filters=20, input_shape=(6, 6, 1), conv_kwargs=None, norm_kwargs=None):
    """Two conv blocks and a head; with 20 filters the first block (3x3x1 patches) folds, the second (3x3x20) not."""
    keras.utils.set_random_seed(0)
    conv_kwargs = {"padding": "same", **(conv_kwargs or {})}
    layers = [keras.Input(input_shape)]
    for i in range(2):
        layers += [
            keras.layers.Conv2D(filters, 3, name=f"conv{i}", **conv_kwargs),
            MetaBatchNorm(name=f"bn{i}", momentum=0.5, **(norm_kwargs or {})),
            keras.layers.MaxPooling2D(2, name=f"pool{i}"),
            keras.layers.ReLU(name=f"relu{i}"),
        ]
    layers += [keras.layers.Flatten(), keras.layers.Dense(3, name="head")]
    return cls(layers)


def _folded_and_plain(**kwargs):
    from metalab.core.engine.layers import FoldingSequential

    folded, plain = _block_net(FoldingSequential, **kwargs), _block_net(keras.Sequential, **kwargs)
    plain.set_weights(folded.get_weights())
    return folded, plain


def test_folding_sequential_folds_the_first_block_only_and_runs_no_batch_norm_kernel_for_it():
    import tensorflow as tf

    folded, plain = _folded_and_plain()
    assert folded.folded_layers() == ["bn0"]

    def kernels(model, training):
        fn = tf.function(lambda x: model(x, training=training))
        graph = fn.get_concrete_function(tf.TensorSpec((4, 6, 6, 1), "float32")).graph
        return sum(op.type.startswith("FusedBatchNorm") for op in graph.get_operations())

    assert (kernels(folded, True), kernels(plain, True)) == (1, 2)


def _full_resolution_arithmetic(model, training):
    """Element-wise arithmetic ops of a call on [4, 6, 6, 1] inputs whose output is a first block's conv output."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=training))
    graph = fn.get_concrete_function(tf.TensorSpec((4, 6, 6, 1), "float32")).graph
    return [op.type for op in graph.get_operations() if op.type in ("Mul", "Sub", "AddV2", "Add", "RealDiv")
            and op.outputs and op.outputs[0].shape.as_list() == [4, 6, 6, 20]]


def _randomise_norms(folded, plain, seed):
    """Moved running moments and scales of both signs in every batch norm of ``folded``, copied to ``plain``."""
    rng = np.random.default_rng(seed)
    ranges = {"moving_mean": (-0.5, 0.5), "moving_variance": (0.2, 2.0), "gamma": (-1.5, 1.5), "beta": (-0.5, 0.5)}
    for layer in folded.layers:
        if isinstance(layer, MetaBatchNorm):
            for name, (low, high) in ranges.items():
                variable = getattr(layer, name)
                if variable is not None:
                    variable.assign(rng.uniform(low, high, variable.shape).astype("float32"))
    plain.set_weights(folded.get_weights())
    return rng


def test_folded_inference_call_normalises_nothing_at_full_resolution_and_matches_the_layers():
    folded, plain = _folded_and_plain()
    rng = _randomise_norms(folded, plain, 1)
    assert _full_resolution_arithmetic(plain, False)  # the batch norm's (x - mean) * ... at 6x6
    assert _full_resolution_arithmetic(folded, False) == []
    assert _full_resolution_arithmetic(folded, None) == []
    x = rng.normal(loc=0.5, size=(8, 6, 6, 1)).astype("float32")
    for training in (False, None):
        out_f, out_p = folded(x, training=training), plain(x, training=training)
        np.testing.assert_allclose(functional.to_numpy(out_f), functional.to_numpy(out_p), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"conv_kwargs": {"strides": 2}, "input_shape": (12, 12, 1)},
        {"conv_kwargs": {"padding": "same", "dilation_rate": 2}},
        {"conv_kwargs": {"padding": "valid"}, "input_shape": (10, 10, 1)},
        {"conv_kwargs": {"use_bias": True}},
        {"norm_kwargs": {"steps": 3}},  # per-step sets: the current step's moments
        {"norm_kwargs": {"center": False, "scale": False}},
    ],
)
def test_inference_fold_equals_the_layers_for_strides_padding_biases_and_per_step_sets(kwargs):
    from metalab.core.engine.layers import batch_norm_step

    folded, plain = _folded_and_plain(**kwargs)
    rng = _randomise_norms(folded, plain, 2)
    x = rng.normal(loc=0.3, size=(8, *folded.inputs[0].shape[1:])).astype("float32")
    with batch_norm_step(1):
        out_f, out_p = folded(x, training=False), plain(x, training=False)
    np.testing.assert_allclose(functional.to_numpy(out_f), functional.to_numpy(out_p), rtol=1e-5, atol=1e-5)


def test_inference_fold_is_skipped_for_an_activated_convolution_and_the_call_is_unchanged():
    folded, plain = _folded_and_plain(conv_kwargs={"activation": "relu"})
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 1)).astype("float32")
    np.testing.assert_array_equal(functional.to_numpy(folded(x, training=False)),
                                  functional.to_numpy(plain(x, training=False)))


def test_folded_float32_training_call_and_running_moments_match_the_layers_one_by_one():
    folded, plain = _folded_and_plain()
    x = np.random.default_rng(0).normal(loc=0.5, size=(8, 6, 6, 1)).astype("float32")
    out_f, out_p = functional.to_numpy(folded(x, training=True)), functional.to_numpy(plain(x, training=True))
    np.testing.assert_allclose(out_f, out_p, rtol=1e-4, atol=1e-5)
    for a, b in zip(folded.non_trainable_variables, plain.non_trainable_variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(  # and inference with the moved moments
        functional.to_numpy(folded(x, training=False)), functional.to_numpy(plain(x, training=False)), rtol=1e-4,
        atol=1e-5,
    )


def test_folded_second_order_meta_gradient_equals_the_unfolded_one_and_finite_differences(float64):
    results = []
    models = _folded_and_plain()
    assert models[0].folded_layers() == ["bn0"]
    for model in models:
        assert all(keras.backend.standardize_dtype(v.dtype) == "float64" for v in model.trainable_variables)
        fmodel = functional.FunctionalModel(model)
        meta_loss = _maml_meta_loss(fmodel)
        theta = fmodel.params()
        value, grads = functional.value_and_grad(meta_loss, theta)
        results.append((meta_loss, theta, float(functional.to_numpy(value)), [functional.to_numpy(g) for g in grads]))
    (meta_loss, theta, value, grads), (_, _, plain_value, plain_grads) = results
    assert abs(value - plain_value) < 1e-10 * abs(plain_value)
    names = [v.path.split("/", 1)[1] for v in model.trainable_variables]
    for name, a, b in zip(names, grads, plain_grads):
        if name == "conv0/bias":
            assert np.abs(a).max() < 1e-12  # an exact zero when folded (round-off when not)
            continue
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12, err_msg=name)
    assert max(_directional_errors(meta_loss, theta, grads)) < 1e-8


@pytest.mark.parametrize(
    "kwargs",
    [
        {"filters": 16},  # 9-element patches need at least 18 filters
        {"input_shape": (6, 6, 3), "filters": 32},  # 27-element patches: more than half of 32 filters
        {"conv_kwargs": {"strides": 2}, "input_shape": (12, 12, 1)},
        {"conv_kwargs": {"activation": "relu"}},
        {"conv_kwargs": {"padding": "same", "dilation_rate": 2}},
        {"norm_kwargs": {"fused": False}},  # the plain form was asked for
    ],
)
def test_fold_is_skipped_where_it_does_not_apply_and_the_call_is_unchanged(kwargs):
    folded, plain = _folded_and_plain(**kwargs)
    assert folded.folded_layers() == []
    shape = (8, *folded.inputs[0].shape[1:])
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    out = functional.to_numpy(folded(x, training=True))
    np.testing.assert_array_equal(out, functional.to_numpy(plain(x, training=True)))


def test_folding_sequential_round_trips_a_saved_model(tmp_path):
    from metalab.core.engine.layers import FoldingSequential

    folded, _ = _folded_and_plain()
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 1)).astype("float32")
    folded(x, training=True)
    folded.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, FoldingSequential) and loaded.folded_layers() == ["bn0"]
    np.testing.assert_allclose(
        functional.to_numpy(loaded(x, training=False)), functional.to_numpy(folded(x, training=False)), rtol=1e-5
    )

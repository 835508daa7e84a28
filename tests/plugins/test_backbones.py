"""The built-in backbones: Conv-4 and the MLP."""

import subprocess
import sys

import keras
import numpy as np
import pydantic
import pytest

from metalab.core.engine.layers import MetaBatchNorm
from metalab.plugins import backbones
from metalab.plugins.backbones import CONV4, MLP, Conv4Params, MLPParams


def test_registration_lists_valid_specs_with_paper_defaults():
    specs = backbones.metalab_register_backbones()
    assert [s.id for s in specs] == ["metalab.conv4", "metalab.mlp"]
    for spec in specs:
        spec.validate()
        assert spec.paper
    assert Conv4Params().filters == 64 and Conv4Params().blocks == 4
    assert MLPParams().hidden == [40, 40]
    assert CONV4.input_kinds == ("image",)
    assert backbones.METALAB_PLUGIN_API == "1.4"  # factory strings and feature_maps came with 1.4


@pytest.mark.parametrize(
    "params, kwargs",
    [(Conv4Params, {"filters": 0}), (Conv4Params, {"blocks": 0}), (MLPParams, {"hidden": []}),
     (MLPParams, {"hidden": [40, 0]}), (Conv4Params, {"width": 3})],
)
def test_invalid_params_are_refused(params, kwargs):
    with pytest.raises(pydantic.ValidationError):
        params(**kwargs)


def test_registration_module_does_not_import_tensorflow():
    code = (
        "import sys, metalab.plugins.backbones as b; b.metalab_register_backbones(); "
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_conv4_on_28x28_gives_64_features_through_meta_batch_norm():
    model = CONV4.factory(Conv4Params(), (28, 28, 1))
    assert model.built
    assert model.output_shape == (None, 64)  # 28 -> 14 -> 7 -> 3 -> 1
    layer_types = [type(layer) for layer in model.layers]
    assert layer_types.count(keras.layers.Conv2D) == 4
    assert layer_types.count(MetaBatchNorm) == 4
    assert keras.layers.BatchNormalization not in layer_types
    out = model(np.zeros((2, 28, 28, 1), "float32"), training=True)
    assert tuple(out.shape) == (2, 64)


def test_conv4_blocks_and_filters_shape_the_output():
    model = CONV4.factory(Conv4Params(filters=8, blocks=2), (12, 12, 3))
    assert model.output_shape == (None, 8 * 3 * 3)


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 12, 1)])
def test_conv4_refuses_inputs_too_small_for_its_poolings(shape):
    with pytest.raises(ValueError, match=r"at least 16x16.*Received: input_shape"):
        CONV4.factory(Conv4Params(), shape)


def test_conv4_refuses_non_image_inputs():
    with pytest.raises(ValueError, match="height, width, channels"):
        CONV4.factory(Conv4Params(), (64,))


@pytest.mark.parametrize("shape, size", [((1,), 1), ((4, 4), 16), ((8, 8, 1), 64)])
def test_mlp_flattens_any_input(shape, size):
    model = MLP.factory(MLPParams(), shape)
    assert model.output_shape == (None, 40)
    assert model.layers[1].kernel.shape == (size, 40)  # the first Dense after Flatten
    out = model(np.ones((3, *shape), "float32"))
    assert tuple(out.shape) == (3, 40)


def test_each_call_makes_a_new_model():
    a = MLP.factory(MLPParams(hidden=[5]), (2,))
    b = MLP.factory(MLPParams(hidden=[5]), (2,))
    assert a is not b
    assert not np.allclose(a.layers[1].kernel.numpy(), b.layers[1].kernel.numpy())


def _textbook_conv4(model, blocks):
    """The same weights in the papers' block order (conv, BN, ReLU, max-pool), as a function of a batch."""
    import tensorflow as tf

    def forward(x):
        for i in range(blocks):
            conv, bn = model.get_layer(f"conv{i}"), model.get_layer(f"bn{i}")
            x = conv(x)
            x = bn(x, training=True)
            x = tf.nn.max_pool2d(tf.nn.relu(x), 2, 2, "VALID")
        return tf.reshape(x, [tf.shape(x)[0], -1])

    return forward


def test_conv4_pools_before_its_relu_and_computes_the_papers_function_and_gradients():
    import tensorflow as tf

    model = CONV4.factory(Conv4Params(filters=6, blocks=2), (8, 8, 2))
    names = [layer.name for layer in model.layers]
    assert names.index("pool0") + 1 == names.index("relu0")  # the faster order
    x = tf.constant(np.random.default_rng(0).normal(size=(5, 8, 8, 2)), "float32")
    textbook = _textbook_conv4(model, 2)
    with tf.GradientTape(persistent=True) as tape:
        ours, theirs = model(x, training=True), textbook(x)
        probe = tf.constant(np.random.default_rng(1).normal(size=ours.shape), "float32")
        a, b = tf.reduce_sum(ours * probe), tf.reduce_sum(theirs * probe)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-6)
    for ga, gb in zip(tape.gradient(a, model.trainable_variables), tape.gradient(b, model.trainable_variables)):
        np.testing.assert_allclose(ga.numpy(), gb.numpy(), rtol=1e-5, atol=1e-6)


def test_conv4_without_conv_bias_computes_the_same_function():
    assert not Conv4Params().conv_bias  # off by default: the same function, less work
    keras.utils.set_random_seed(0)
    with_bias = CONV4.factory(Conv4Params(filters=4, blocks=2, conv_bias=True), (8, 8, 1))
    keras.utils.set_random_seed(0)
    without = CONV4.factory(Conv4Params(filters=4, blocks=2, conv_bias=False), (8, 8, 1))
    assert len(with_bias.trainable_variables) - len(without.trainable_variables) == 2
    assert not any(v.path.endswith("conv0/bias") for v in without.trainable_variables)
    for layer in ("conv0", "conv1"):
        without.get_layer(layer).kernel.assign(with_bias.get_layer(layer).kernel)
        # Batch norm in training mode removes any per-channel shift, so a bias changes nothing.
        with_bias.get_layer(layer).bias.assign(np.linspace(-3, 3, 4).astype("float32"))
    x = np.random.default_rng(0).normal(size=(6, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(with_bias(x, training=True).numpy(), without(x, training=True).numpy(), atol=1e-4)


def test_conv4_gives_its_last_feature_map_when_asked():
    assert CONV4.feature_maps is True and MLP.feature_maps is False
    maps = CONV4.factory(Conv4Params(filters=8, blocks=2), (12, 12, 3), feature_maps=True)
    flat = CONV4.factory(Conv4Params(filters=8, blocks=2), (12, 12, 3))
    assert maps.output_shape == (None, 3, 3, 8) and flat.output_shape == (None, 72)
    out = maps(np.zeros((2, 12, 12, 3), "float32"), training=True)
    assert tuple(out.shape) == (2, 3, 3, 8)
    # The same layers and weights as the flat embedding, without the Flatten.
    assert [w.shape for w in maps.weights] == [w.shape for w in flat.weights]
    assert "flatten" not in [layer.name for layer in maps.layers]


def test_a_task_builds_feature_maps_through_make_backbone(builtin_registry):
    from metalab.core.contract.manager import backbone_maker

    spec = builtin_registry.backbone("metalab.conv4")
    make_backbone = backbone_maker(spec, Conv4Params(filters=4), (28, 28, 1), registry=builtin_registry)
    assert make_backbone(feature_maps=True).output_shape == (None, 1, 1, 4)  # 28 -> 14 -> 7 -> 3 -> 1
    assert make_backbone().output_shape == (None, 4)

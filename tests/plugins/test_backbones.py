"""The built-in backbones: Conv-4 and the MLP."""

import subprocess
import sys

import keras
import numpy as np
import pydantic
import pytest

from metalab.core.layers import MetaBatchNorm
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
    assert backbones.METALAB_PLUGIN_API == "1.0"


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

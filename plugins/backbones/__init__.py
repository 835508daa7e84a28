"""The built-in backbones: the Conv-4 image embedding and a small MLP (registration only, no TensorFlow import)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from metalab.api import BackboneSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.4"


class Conv4Params(Params):
    """Parameters of the Conv-4 backbone (Vinyals et al. 2016; Finn et al. 2017)."""

    filters: int = Field(64, ge=1, le=1024, description="Filters of every 3x3 convolution (64 in the papers).")
    blocks: int = Field(4, ge=1, le=8, description="Conv-BN-ReLU-maxpool blocks; each halves height and width.")
    bn_momentum: float = Field(
        0.9, ge=0.0, lt=1.0, description="Weight of the old value in the batch norm's running moments."
    )
    conv_bias: bool = Field(
        False, title="Convolution bias",
        description=(
            "Give each convolution a bias. Batch norm right after it cancels any per-channel shift, so the network "
            "computes the same function without one (the bias's gradient is exactly zero) and trains faster. Runs "
            "made before this option existed had biases: their checkpoints load with conv_bias=true."
        ),
    )


class MLPParams(Params):
    """Parameters of the MLP backbone (Finn et al. 2017, sinusoid regression)."""

    hidden: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        [40, 40], title="Hidden layer sizes", min_length=1, max_length=16,
        description="Sizes of the ReLU hidden layers.",
    )


CONV4 = BackboneSpec(
    id="metalab.conv4",
    title="Conv-4",
    description=(
        "Four blocks of 3x3 convolution (64 filters), batch norm, ReLU and 2x2 max-pooling, then flatten: the "
        "standard few-shot image embedding. 28x28 inputs give 64 features. Batch norm is MetaBatchNorm, exact to "
        "second order for MAML. Also gives its last feature map (h x w x filters) to spatial heads."
    ),
    params=Conv4Params,
    factory="metalab.plugins.backbones.models:conv4",
    paper=(
        "Vinyals et al. 2016, Matching Networks for One Shot Learning (NeurIPS); Finn et al. 2017, "
        "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks (ICML)"
    ),
    input_kinds=("image",),
    has_batch_norm=True,
    feature_maps=True,
)

MLP = BackboneSpec(
    id="metalab.mlp",
    title="MLP",
    description="Flattens any input, then ReLU hidden layers (40, 40 by default, as for MAML's sinusoid regression).",
    params=MLPParams,
    factory="metalab.plugins.backbones.models:mlp",
    paper="Finn et al. 2017, Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks (ICML)",
    input_kinds=("image", "vector"),
    has_batch_norm=False,
)


@hookimpl
def metalab_register_backbones() -> list[BackboneSpec]:
    return [CONV4, MLP]

"""Keras models of the built-in backbones (imported lazily by the backbone factories)."""

from __future__ import annotations

from typing import Any

import keras

from metalab.api.layers import FoldingSequential, MetaBatchNorm


def conv4(params: Any, input_shape: tuple[int, ...], *, feature_maps: bool = False) -> keras.Model:
    """Builds the Conv-4 embedding: ``blocks`` x [Conv2D 3x3 same, MetaBatchNorm, ReLU, MaxPool 2], Flatten.

    Each block pools before its ReLU: ``relu(maxpool(x)) == maxpool(relu(x))`` for every ``x`` (ReLU is monotone,
    so it commutes with a max), and the ReLU and its gradient then touch a quarter of the values. The model is a
    ``FoldingSequential``: in training calls the first block's batch norm folds into its convolution (few input
    channels), which skips the batch norm's passes over the network's largest tensor.

    Args:
        params: A ``Conv4Params`` (``filters``, ``blocks``, ``bn_momentum``, ``conv_bias``).
        input_shape: ``(height, width, channels)``.
        feature_maps: Leave out the Flatten: the model returns the last block's feature map ``[N, h, w, filters]``
            (``h = H // 2**blocks``), for relation modules and other spatial heads.

    Returns:
        A built ``keras.Sequential`` mapping ``[N, H, W, C]`` to ``[N, filters * h * w]`` (or ``[N, h, w,
        filters]`` with ``feature_maps``).

    Raises:
        ValueError: If ``input_shape`` is not ``(H, W, C)`` or is too small for ``blocks`` poolings.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise ValueError(
            f"metalab.conv4 needs image inputs of shape (height, width, channels). Received: input_shape={input_shape}"
        )
    height, width, _ = shape
    smallest = 2**params.blocks
    if min(height, width) < smallest:
        raise ValueError(
            f"metalab.conv4 with {params.blocks} blocks halves height and width {params.blocks} times, so it needs "
            f"inputs of at least {smallest}x{smallest}; use fewer blocks or larger images. "
            f"Received: input_shape={input_shape}"
        )
    layers: list[Any] = [keras.Input(shape)]
    for i in range(params.blocks):
        layers += [
            keras.layers.Conv2D(params.filters, 3, padding="same", use_bias=params.conv_bias, name=f"conv{i}"),
            MetaBatchNorm(momentum=params.bn_momentum, name=f"bn{i}"),
            keras.layers.MaxPooling2D(2, name=f"pool{i}"),
            keras.layers.ReLU(name=f"relu{i}"),
        ]
    if not feature_maps:
        layers.append(keras.layers.Flatten(name="flatten"))
    return FoldingSequential(layers, name="conv4")


def mlp(params: Any, input_shape: tuple[int, ...]) -> keras.Model:
    """Builds the MLP: Flatten, then one ReLU Dense layer per entry of ``params.hidden``.

    Args:
        params: An ``MLPParams`` (``hidden``).
        input_shape: Shape of one input (any rank).

    Returns:
        A built ``keras.Sequential`` mapping ``[N, *input_shape]`` to ``[N, hidden[-1]]``.
    """
    layers: list[Any] = [keras.Input(tuple(int(s) for s in input_shape)), keras.layers.Flatten(name="flatten")]
    for i, units in enumerate(params.hidden):
        layers.append(keras.layers.Dense(units, activation="relu", name=f"dense{i}"))
    return keras.Sequential(layers, name="mlp")

"""The backbone of packed image-and-text rows (``metalab.mixed_encoder``): a separate encoder per modality feeding
one shared dense trunk (imported by its factory only).

An image row's pixels go through a small convolutional encoder, a text row's token ids through an embedding
averaged over the real tokens (a deep averaging network, Iyyer et al. 2015); a gate keeps, for each row, the
encoder of its own modality (``(1 - flag) * image + flag * text``), so an encoder's weights get gradients only
from the rows of its modality, and the shared trunk gets them from both.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from metalab.plugins.text.models import MaskedMeanPool, TokenIds

from .mixed import MixedLayout

__all__ = ["Columns", "ModalityGate", "mixed_encoder"]


class Columns(keras.layers.Layer):
    """Columns ``start:stop`` of ``[N, width]`` rows."""

    def __init__(self, start: int, stop: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, x: Any) -> Any:
        return x[:, self.start:self.stop]

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (input_shape[0], self.stop - self.start)

    def get_config(self) -> dict:
        return {**super().get_config(), "start": self.start, "stop": self.stop}


class ModalityGate(keras.layers.Layer):
    """``(1 - flag) * image + flag * text``: each row keeps the features of its own modality's encoder."""

    def call(self, flag: Any, image: Any, text: Any) -> Any:
        flag = ops.cast(flag, image.dtype)
        return (1 - flag) * image + flag * text


def mixed_encoder(params: Any, input_shape: tuple[int, ...]) -> keras.Model:
    """Builds the mixed-modality backbone.

    Args:
        params: A ``MixedEncoderParams``.
        input_shape: ``(1 + P + L,)``: packed rows (:class:`~.mixed.MixedLayout`).

    Returns:
        A built functional ``keras.Model`` mapping ``[N, width]`` rows to ``[N, trunk[-1]]`` shared features; its
        attribute ``modality_layout`` (a :class:`~.mixed.MixedLayout`) tells an algorithm where each part of a row
        lies (multi-task learning perturbs each modality in its own way).

    Raises:
        ValueError: If the inputs are not packed rows with room for the image and a token.
    """
    size = int(params.image_size)
    layout = MixedLayout.for_input(input_shape, (size, size, 1), "metalab.mixed_encoder")
    inputs = keras.Input((layout.width,))
    flag = Columns(0, 1, name="modality_flag")(inputs)

    pixels = Columns(*layout.pixel_slice, name="pixels")(inputs)
    h = keras.layers.Reshape(layout.image_shape, name="image")(pixels)
    h = keras.layers.Conv2D(params.image_filters, 3, padding="same", activation="relu", name="image_conv")(h)
    h = keras.layers.MaxPooling2D(2, name="image_pool")(h)
    h = keras.layers.Flatten(name="image_flat")(h)
    image = keras.layers.Dense(params.encoder_width, activation="relu", name="image_encoder")(h)

    tokens = Columns(*layout.token_slice, name="tokens")(inputs)
    ids = TokenIds(params.vocab_size, name="token_ids")(tokens)
    e = keras.layers.Embedding(params.vocab_size, params.embedding_dim, name="text_embedding")(ids)
    e = MaskedMeanPool(name="text_mean")(e, ids)
    text = keras.layers.Dense(params.encoder_width, activation="relu", name="text_encoder")(e)

    x = ModalityGate(name="gate")(flag, image, text)
    for i, width in enumerate(params.trunk):
        x = keras.layers.Dense(width, activation="relu", name=f"trunk{i}")(x)
    model = keras.Model(inputs, x, name="mixed_encoder")
    model.modality_layout = layout
    return model


def encoder_layers(model: keras.Model) -> dict[str, list[str]]:
    """The names of the layers of each part: ``{"image": [...], "text": [...], "trunk": [...]}``."""
    names = [layer.name for layer in model.layers if layer.weights]
    return {"image": [n for n in names if n.startswith("image_")],
            "text": [n for n in names if n.startswith("text_")],
            "trunk": [n for n in names if n.startswith("trunk")]}

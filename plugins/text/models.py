"""Keras models of the text backbones (imported by their factories only): a Kim (2014) CNN and a small
Transformer encoder, both mapping rows of token ids to flat embeddings.

Inputs arrive as ``float32`` ids (the episode sampler's ``to_float`` with scale 1); :class:`TokenIds` casts them
back to integers. Layer normalisation is written out (:class:`ExactLayerNorm`) because Keras's own computes its
variance through ``moments``, whose TensorFlow kernel stops the gradient of the mean inside the variance: exact
first derivatives, wrong second ones, which second-order MAML differentiates.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from metalab.api import functional

__all__ = ["TokenIds", "PositionEmbedding", "ExactLayerNorm", "AttentionMask", "MaskedMeanPool", "text_cnn",
           "text_transformer"]


class TokenIds(keras.layers.Layer):
    """Float token ids to ``int32`` in ``0..vocab_size-1``: ``0`` (padding) stays 0, larger ids fold onto
    ``1..vocab_size-1`` (a dataset tokenised to a larger vocabulary shares rows instead of failing)."""

    def __init__(self, vocab_size: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)

    def call(self, x: Any) -> Any:
        ids = ops.cast(ops.round(x), "int32")
        folded = 1 + ops.mod(ids - 1, self.vocab_size - 1)
        return ops.where(ids > 0, folded, ops.zeros_like(ids))

    def compute_output_spec(self, x: Any) -> Any:
        return keras.KerasTensor(x.shape, dtype="int32")

    def get_config(self) -> dict:
        return {**super().get_config(), "vocab_size": self.vocab_size}


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector per position to ``[N, length, width]`` token embeddings."""

    def build(self, input_shape: Any) -> None:
        self.positions = self.add_weight(shape=tuple(input_shape[1:]), name="positions",
                                         initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, x: Any) -> Any:
        return x + ops.cast(self.positions, x.dtype)


class ExactLayerNorm(keras.layers.Layer):
    """Layer normalisation over the last axis with exact derivatives of every order (see the module docstring)."""

    def __init__(self, epsilon: float = 1e-5, **kwargs: Any):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape: Any) -> None:
        width = (int(input_shape[-1]),)
        self.gamma = self.add_weight(shape=width, name="gamma", initializer="ones")
        self.beta = self.add_weight(shape=width, name="beta", initializer="zeros")

    def call(self, x: Any) -> Any:
        centred = x - functional.mean(x, axis=-1, keepdims=True)
        variance = functional.mean(ops.square(centred), axis=-1, keepdims=True)
        scaled = centred / ops.sqrt(variance + ops.convert_to_tensor(self.epsilon, dtype=x.dtype))
        return scaled * ops.cast(self.gamma, x.dtype) + ops.cast(self.beta, x.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


class AttentionMask(keras.layers.Layer):
    """``[N, 1, length]`` booleans from ``[N, length]`` ids: every query attends to the real tokens only."""

    def call(self, ids: Any) -> Any:
        return ops.expand_dims(ops.not_equal(ids, 0), 1)

    def compute_output_spec(self, ids: Any) -> Any:
        return keras.KerasTensor((ids.shape[0], 1, ids.shape[1]), dtype="bool")


class MaskedMeanPool(keras.layers.Layer):
    """The mean of ``[N, length, width]`` over the positions whose token id is not padding (zeros when none)."""

    def call(self, x: Any, ids: Any) -> Any:
        mask = ops.cast(ops.expand_dims(ops.not_equal(ids, 0), -1), x.dtype)
        count = ops.maximum(ops.sum(mask, axis=1), ops.convert_to_tensor(1.0, dtype=x.dtype))
        return ops.sum(x * mask, axis=1) / count


def _length(input_shape: tuple[int, ...], owner: str) -> int:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 1:
        raise ValueError(f"{owner} needs rows of token ids, input_shape (length,), from a text dataset such as "
                         f"metalab.text_intents. Received: input_shape={input_shape}")
    return shape[0]


def text_cnn(params: Any, input_shape: tuple[int, ...]) -> keras.Model:
    """Builds Kim's (2014) sentence CNN: embedding, one ReLU Conv1D per kernel size, global max pool, concatenated.

    Args:
        params: A ``TextCNNParams`` (``vocab_size``, ``embedding_dim``, ``filters``, ``kernel_sizes``).
        input_shape: ``(length,)``, token ids per example.

    Returns:
        A built functional ``keras.Model`` mapping ``[N, length]`` ids to ``[N, filters * len(kernel_sizes)]``.

    Raises:
        ValueError: If the inputs are not rows of ids or are shorter than the widest kernel.
    """
    length = _length(input_shape, "metalab.text_cnn")
    if length < max(params.kernel_sizes):
        raise ValueError(f"metalab.text_cnn's widest kernel ({max(params.kernel_sizes)}) needs at least that many "
                         f"tokens per example; lower kernel_sizes or raise the dataset's max_tokens. "
                         f"Received: input_shape={input_shape}, kernel_sizes={list(params.kernel_sizes)}")
    inputs = keras.Input((length,))
    ids = TokenIds(params.vocab_size, name="token_ids")(inputs)
    x = keras.layers.Embedding(params.vocab_size, params.embedding_dim, name="embedding")(ids)
    pooled = []
    for k in params.kernel_sizes:
        h = keras.layers.Conv1D(params.filters, k, activation="relu", name=f"conv{k}")(x)
        pooled.append(keras.layers.GlobalMaxPooling1D(name=f"pool{k}")(h))
    out = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="concat")(pooled)
    return keras.Model(inputs, out, name="text_cnn")


def text_transformer(params: Any, input_shape: tuple[int, ...]) -> keras.Model:
    """Builds a small pre-norm Transformer encoder: token and position embeddings, ``layers`` blocks of
    self-attention (padding masked) and a ReLU feed-forward, each residual, then the mean over real tokens.

    Args:
        params: A ``TextTransformerParams`` (``vocab_size``, ``width``, ``heads``, ``layers``, ``ff_width``).
        input_shape: ``(length,)``, token ids per example.

    Returns:
        A built functional ``keras.Model`` mapping ``[N, length]`` ids to ``[N, width]``.
    """
    length = _length(input_shape, "metalab.text_transformer")
    if params.width % params.heads:
        raise ValueError(f"metalab.text_transformer's width must divide into its heads. "
                         f"Received: width={params.width}, heads={params.heads}")
    inputs = keras.Input((length,))
    ids = TokenIds(params.vocab_size, name="token_ids")(inputs)
    x = keras.layers.Embedding(params.vocab_size, params.width, name="embedding")(ids)
    x = PositionEmbedding(name="positions")(x)
    keep = AttentionMask(name="attention_mask")(ids)
    for i in range(params.layers):
        h = ExactLayerNorm(name=f"norm{i}a")(x)
        h = keras.layers.MultiHeadAttention(params.heads, params.width // params.heads, name=f"attention{i}")(
            h, h, attention_mask=keep)
        x = keras.layers.Add(name=f"residual{i}a")([x, h])
        h = ExactLayerNorm(name=f"norm{i}b")(x)
        h = keras.layers.Dense(params.ff_width, activation="relu", name=f"ff{i}a")(h)
        h = keras.layers.Dense(params.width, name=f"ff{i}b")(h)
        x = keras.layers.Add(name=f"residual{i}b")([x, h])
    x = ExactLayerNorm(name="norm_out")(x)
    out = MaskedMeanPool(name="mean_pool")(x, ids)
    return keras.Model(inputs, out, name="text_transformer")

"""Keras layers that meta-learning needs and Keras does not provide: a batch norm with exact second derivatives."""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["MetaBatchNorm"]


@keras.saving.register_keras_serializable(package="metalab")
class MetaBatchNorm(keras.layers.Layer):
    """Batch normalisation whose batch moments are differentiable to any order.

    Keras's ``BatchNormalization`` on the TensorFlow backend takes its moments from ``tf.nn.moments``, which
    stops the gradient through the mean inside the variance: first derivatives are right, second derivatives
    (MAML's meta-gradient through the inner step) are not. This layer computes
    ``variance = mean((x - mean(x)) ** 2)`` with no stop-gradient, and computes in the input's dtype (float64
    inputs stay float64, which gradient checks need; Keras's layer caps its computation at float32). Half
    precision inputs are normalised in float32 and cast back.

    With ``training=True`` it normalises with the statistics of the batch (transductive, as the MAML reference
    implementation does at meta-test time too) and moves the running moments towards them; with
    ``training=False`` it uses the running moments.

    Args:
        axis: The feature axis (channels); moments are taken over all others.
        momentum: Weight of the old value in the running moments' update.
        epsilon: Added to the variance before the square root.
        center: Learn an offset ``beta``.
        scale: Learn a scale ``gamma``.
        fused: In training mode on TensorFlow, normalise float32 NHWC inputs with the fused batch-norm kernel
            (same values and exact derivatives of every order, faster). Other inputs use the plain form.
        **kwargs: Base ``Layer`` arguments (``name``, ``dtype``).
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        fused: bool = True,
        **kwargs,
    ):
        # The layer follows its input's dtype, so Keras must not cast inputs to the layer's compute dtype.
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"MetaBatchNorm momentum must be in [0, 1). Received: momentum={momentum}")
        if epsilon <= 0:
            raise ValueError(f"MetaBatchNorm epsilon must be positive. Received: epsilon={epsilon}")
        self.axis = int(axis)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.fused = bool(fused)

    def build(self, input_shape):
        rank = len(input_shape)
        axis = self.axis % rank if rank else None
        if axis is None or input_shape[axis] is None:
            raise ValueError(
                f"MetaBatchNorm needs a known size on its feature axis {self.axis}. Received: input_shape={input_shape}"
            )
        self._feature_axis = axis
        self._reduction_axes = [i for i in range(rank) if i != axis]
        # Broadcast shape of the per-feature vectors against the input (batch axis included).
        self._broadcast_shape = [1] * rank
        self._broadcast_shape[axis] = input_shape[axis]
        size = (input_shape[axis],)
        self.gamma = self.add_weight(shape=size, initializer="ones", name="gamma") if self.scale else None
        self.beta = self.add_weight(shape=size, initializer="zeros", name="beta") if self.center else None
        self.moving_mean = self.add_weight(shape=size, initializer="zeros", name="moving_mean", trainable=False)
        self.moving_variance = self.add_weight(
            shape=size, initializer="ones", name="moving_variance", trainable=False
        )

    def call(self, inputs, training=None):
        input_dtype = keras.backend.standardize_dtype(inputs.dtype)
        dtype = input_dtype if input_dtype in ("float32", "float64") else "float32"
        x = ops.cast(inputs, dtype)
        if training and self._fusable(x):
            return ops.cast(self._fused_call(x), input_dtype)
        if training:
            mean = ops.mean(x, axis=self._reduction_axes, keepdims=True)
            # No stop-gradient on `mean` here: that is the whole point of this layer.
            variance = ops.mean(ops.square(x - mean), axis=self._reduction_axes, keepdims=True)
            self._update_moving(mean, variance)
        else:
            mean = ops.reshape(ops.cast(self.moving_mean, dtype), self._broadcast_shape)
            variance = ops.reshape(ops.cast(self.moving_variance, dtype), self._broadcast_shape)
        y = (x - mean) * ops.rsqrt(variance + ops.cast(self.epsilon, dtype))
        if self.gamma is not None:
            y = y * ops.reshape(ops.cast(self.gamma, dtype), self._broadcast_shape)
        if self.beta is not None:
            y = y + ops.reshape(ops.cast(self.beta, dtype), self._broadcast_shape)
        return ops.cast(y, input_dtype)

    def _fusable(self, x) -> bool:
        return (
            self.fused
            and keras.backend.backend() == "tensorflow"
            and keras.backend.standardize_dtype(x.dtype) == "float32"
            and len(x.shape) == 4
            and self._feature_axis == 3
        )

    def _fused_call(self, x):
        # TensorFlow's fused kernel; its registered gradient of the gradient is exact (checked against PyTorch's
        # double backward and the unfused form: benchmarks/check_gradients.py), and it is 1.7x faster per
        # ProtoNet episode here.
        import tensorflow as tf

        channels = x.shape[-1]
        gamma = self.gamma if self.gamma is not None else tf.ones((channels,), x.dtype)
        beta = self.beta if self.beta is not None else tf.zeros((channels,), x.dtype)
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, tf.cast(gamma, x.dtype), tf.cast(beta, x.dtype), epsilon=self.epsilon, data_format="NHWC",
            is_training=True,
        )
        # The fused op returns the unbiased batch variance; the running moments keep the biased one, as above.
        n = tf.cast(tf.size(x) // channels, variance.dtype)
        self._update_moving(mean, variance * ((n - 1) / n))
        return y

    def _update_moving(self, mean, variance):
        # Running moments are bookkeeping for inference, never a path for gradients.
        vdtype = self.moving_mean.dtype
        batch_mean = ops.cast(ops.stop_gradient(ops.reshape(mean, (-1,))), vdtype)
        batch_var = ops.cast(ops.stop_gradient(ops.reshape(variance, (-1,))), vdtype)
        m = ops.cast(self.momentum, vdtype)
        self.moving_mean.assign(self.moving_mean * m + batch_mean * (1 - m))
        self.moving_variance.assign(self.moving_variance * m + batch_var * (1 - m))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.pop("autocast", None)
        config.update(
            {
                "axis": self.axis,
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "fused": self.fused,
            }
        )
        return config

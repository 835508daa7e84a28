"""Keras layers that meta-learning needs and Keras does not provide: a batch norm with exact second derivatives,
and a ``keras.Sequential`` that folds a first conv block's batch norm into its convolution in training steps."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

import keras
from keras import ops

__all__ = [
    "FoldingSequential",
    "MetaBatchNorm",
    "batch_norm_step",
    "batch_norm_steps",
    "fold_conv_batch_norm_pool",
    "per_step_batch_norm",
]

# Two settings that reach the batch-norm layers of any backbone without passing through its code: how many
# per-step parameter sets new layers get (read when a layer is constructed), and which inner-loop step a call
# belongs to (read when a call is traced). Thread-local, so concurrent model builds do not see each other's.
_context = threading.local()


@contextlib.contextmanager
def per_step_batch_norm(steps: int) -> Iterator[None]:
    """Makes the ``MetaBatchNorm`` layers constructed inside keep ``steps`` sets of parameters and statistics.

    MAML++'s per-step batch norm (Antoniou, Edwards and Storkey 2019, "How to train your MAML", BNWB and BNRS):
    each inner-loop step has its own ``gamma``, ``beta`` and running moments, selected with :func:`batch_norm_step`.
    Any backbone built from ``MetaBatchNorm`` gains the option without code of its own.

    Args:
        steps: Parameter sets per layer (at least 1; 1 is an ordinary batch norm).

    Raises:
        ValueError: If ``steps`` is not a positive integer.

    Example:
        with per_step_batch_norm(inner_steps + 1):
            model = build_model(task, "maml")
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"per_step_batch_norm needs a positive number of steps. Received: steps={steps!r}")
    with _setting("steps", steps):
        yield


@contextlib.contextmanager
def batch_norm_step(step: Any) -> Iterator[None]:
    """Selects which per-step set the ``MetaBatchNorm`` calls traced inside use (no effect on one-set layers).

    Args:
        step: The inner-loop step, a Python int or a scalar int tensor (e.g. a loop counter); steps beyond a
            layer's last set use the last set.
    """
    with _setting("step", step):
        yield


@contextlib.contextmanager
def _setting(name: str, value: Any) -> Iterator[None]:
    previous = getattr(_context, name, None)
    setattr(_context, name, value)
    try:
        yield
    finally:
        setattr(_context, name, previous)


def batch_norm_steps(model: Any) -> int:
    """Returns the largest number of per-step sets among ``model``'s ``MetaBatchNorm`` layers (0 if it has none)."""
    counts = [layer.steps for layer in _walk(model) if isinstance(layer, MetaBatchNorm)]
    return max(counts, default=0)


def _walk(layer: Any) -> Iterator[Any]:
    yield layer
    for child in getattr(layer, "layers", None) or ():
        yield from _walk(child)


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
            (same values and exact derivatives of every order, faster). Other inputs, and every input on the JAX
            backend (whose autodiff of the plain form is exact to every order), use the plain form.
        steps: Per-step parameter sets (MAML++): ``gamma``, ``beta`` and the running moments get a leading axis of
            this size and a call uses the set of the current :func:`batch_norm_step`. ``None`` takes the enclosing
            :func:`per_step_batch_norm`, else 1 (an ordinary batch norm, with weights of shape ``[channels]``).
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
        steps: int | None = None,
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
        if steps is None:
            steps = getattr(_context, "steps", None) or 1
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"MetaBatchNorm steps must be a positive integer. Received: steps={steps!r}")
        self.steps = steps

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
        size = (input_shape[axis],) if self.steps == 1 else (self.steps, input_shape[axis])
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
        select = self._step_selector()
        gamma = None if self.gamma is None else select(self.gamma)
        beta = None if self.beta is None else select(self.beta)
        if training and self._fusable(x):
            return ops.cast(self._fused_call(x, gamma, beta), input_dtype)
        if training:
            mean = self._mean(x)
            # No stop-gradient on `mean` here: that is the whole point of this layer.
            variance = self._mean(ops.square(x - mean))
            self._update_moving(mean, variance)
        else:
            mean = ops.reshape(ops.cast(select(self.moving_mean), dtype), self._broadcast_shape)
            variance = ops.reshape(ops.cast(select(self.moving_variance), dtype), self._broadcast_shape)
        # convert_to_tensor, not cast: TensorFlow's cast takes a Python float through float32 first, which would
        # make a float64 epsilon 1.0000000475e-3.
        y = (x - mean) * ops.rsqrt(variance + ops.convert_to_tensor(self.epsilon, dtype=dtype))
        if gamma is not None:
            y = y * ops.reshape(ops.cast(gamma, dtype), self._broadcast_shape)
        if beta is not None:
            y = y + ops.reshape(ops.cast(beta, dtype), self._broadcast_shape)
        return ops.cast(y, input_dtype)

    def _mean(self, x):
        """The mean over the reduction axes (kept), in ``x``'s dtype."""
        if keras.backend.backend() == "tensorflow":
            return ops.mean(x, axis=self._reduction_axes, keepdims=True)
        # Keras's JAX backend takes means in at most float32 (it caps type promotion at 32 bits), which would
        # make float64 gradient checks fail; a sum keeps the input's dtype.
        sizes = [x.shape[axis] for axis in self._reduction_axes]
        if None in sizes:  # symbolic shapes only; a traced JAX array always has a static shape
            return ops.mean(x, axis=self._reduction_axes, keepdims=True)
        count = 1
        for size in sizes:
            count *= size
        return ops.sum(x, axis=self._reduction_axes, keepdims=True) / ops.cast(count, x.dtype)

    def _step_mask(self, dtype: str) -> Any:
        """``[steps, 1]`` one-hot of the current inner step (clamped to the last set)."""
        step = getattr(_context, "step", None)
        step = 0 if step is None else step
        index = ops.minimum(ops.maximum(ops.cast(step, "int32"), 0), self.steps - 1)
        return ops.expand_dims(ops.one_hot(index, self.steps, dtype=dtype), -1)

    def _step_selector(self) -> Any:
        """Returns ``select(weight) -> [channels]``: the identity for one set, else the current step's row.

        A one-hot product rather than a gather: its gradient is dense, so inner-loop updates of the per-step
        weights stay plain tensors, and the step may be a loop counter tensor.
        """
        if self.steps == 1:
            return lambda weight: weight
        return lambda weight: ops.sum(self._step_mask(weight.dtype) * weight, axis=0)

    def _fusable(self, x) -> bool:
        return (
            self.fused
            and keras.backend.backend() == "tensorflow"
            and keras.backend.standardize_dtype(x.dtype) == "float32"
            and len(x.shape) == 4
            and self._feature_axis == 3
        )

    def _fused_call(self, x, gamma, beta):
        # TensorFlow's fused kernel; its registered gradient of the gradient is exact (checked against PyTorch's
        # double backward and the unfused form: benchmarks/check_gradients.py), and it is 1.7x faster per
        # ProtoNet episode here.
        import tensorflow as tf

        channels = x.shape[-1]
        gamma = gamma if gamma is not None else tf.ones((channels,), x.dtype)
        beta = beta if beta is not None else tf.zeros((channels,), x.dtype)
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
        m = ops.convert_to_tensor(self.momentum, dtype=vdtype)
        if self.steps == 1:
            self.moving_mean.assign(self.moving_mean * m + batch_mean * (1 - m))
            self.moving_variance.assign(self.moving_variance * m + batch_var * (1 - m))
            return
        # Only the current step's row moves: old + (1 - m) * (batch - old) there, unchanged elsewhere.
        rate = self._step_mask(vdtype) * (1 - m)
        self.moving_mean.assign(self.moving_mean + rate * (batch_mean - self.moving_mean))
        self.moving_variance.assign(self.moving_variance + rate * (batch_var - self.moving_variance))

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
                "steps": self.steps,
            }
        )
        return config


#: Largest convolution patch (kernel height x width x input channels) whose batch-norm statistics
#: :func:`fold_conv_batch_norm_pool` takes from the patches' covariance; also at most half the filters.
FOLD_MAX_PATCH = 32


def _block_foldable(conv: Any, norm: Any, pool: Any, dtype: str) -> bool:
    """Whether ``conv, norm, pool`` is a channels-last Conv2D (no activation, one group), MetaBatchNorm and
    MaxPooling2D block on TensorFlow whose convolution computes in ``dtype`` (float32 or float64)."""
    if type(conv) is not keras.layers.Conv2D or type(norm) is not MetaBatchNorm:
        return False
    if type(pool) is not keras.layers.MaxPooling2D or not (conv.built and norm.built):
        return False
    if keras.backend.backend() != "tensorflow" or norm._feature_axis != 3 or conv.groups != 1:
        return False
    if conv.data_format != "channels_last" or pool.data_format != "channels_last":
        return False
    if getattr(conv.activation, "__name__", None) != "linear" or getattr(conv, "quantization_mode", None):
        return False
    return dtype in ("float32", "float64") and keras.backend.standardize_dtype(conv.compute_dtype) == dtype


def _fold_applies(conv: Any, norm: Any, pool: Any, dtype: str) -> bool:
    """Whether ``pool(norm(conv(x)))`` with inputs of ``dtype`` can be folded in training mode (TensorFlow only)."""
    if not _block_foldable(conv, norm, pool, dtype) or not norm.fused:
        return False
    if tuple(conv.strides) != (1, 1) or tuple(conv.dilation_rate) != (1, 1):
        return False
    height, width, channels, filters = conv.kernel.shape
    patch = int(height) * int(width) * int(channels)
    return patch <= FOLD_MAX_PATCH and 2 * patch <= int(filters)


def fold_conv_batch_norm_pool(conv: Any, norm: Any, pool: Any, x: Any) -> Any | None:
    """``pool(norm(conv(x), training=True))`` with the batch norm folded into the convolution; None where it can't.

    A batch norm of a convolution's output is a per-channel affine map ``a * conv(x, W) + b``, and its batch
    moments are those of the convolution's patches: with ``P`` the ``[positions, k]`` matrix of input patches
    (``k`` = kernel height x width x input channels), mean ``mu`` and covariance ``S``, filter ``f`` has mean
    ``mu . W_f`` and variance ``W_f' S W_f``. A first layer has few input channels (``k`` = 9 for grey images), so
    these come from a ``[k, k]`` matrix instead of a pass over the ``[N, H, W, filters]`` output; the normalised
    output is then ``conv(x, W * a) + b``, and since ``max(z + b) = max(z) + b`` the shift is added after the
    max-pool. What is left at full resolution is one convolution and the max-pool, and their gradients: no batch
    norm forward or backward pass over the largest tensor of the network (ProtoNet's conv-4 step: 37.5 -> 34.5
    ms, benchmarks/SPEED.md). Values, gradients of every order and the running-moment update are those of the
    unfolded layers up to round-off (tests compare both; ``benchmarks/check_gradients.py`` against PyTorch).

    Applies on TensorFlow to a ``Conv2D`` (stride and dilation 1, no activation, float32 or float64) followed by a
    fused ``MetaBatchNorm`` on the channels and a ``MaxPooling2D``, when the patch size is at most
    ``FOLD_MAX_PATCH`` and half the filters; returns None otherwise (then call the layers one by one).

    Args:
        conv: The ``keras.layers.Conv2D``.
        norm: The ``MetaBatchNorm`` after it (its running moments move as in a training call).
        pool: The ``keras.layers.MaxPooling2D`` after that.
        x: The convolution's input, ``[N, H, W, C]``.

    Returns:
        The max-pooled normalised output, or None.
    """
    dtype = keras.backend.standardize_dtype(x.dtype)
    if not _fold_applies(conv, norm, pool, dtype):
        return None
    import tensorflow as tf

    kernel = tf.convert_to_tensor(conv.kernel)
    height, width, channels, filters = (int(s) for s in kernel.shape)
    patch = height * width * channels
    padding = conv.padding.upper()
    # The patches by a convolution with one-hot filters, in the order of the kernel's rows once reshaped.
    picker = tf.reshape(tf.eye(patch, dtype=dtype), (height, width, channels, patch))
    patches = tf.reshape(tf.nn.conv2d(x, picker, 1, padding), (-1, patch))
    count = tf.cast(tf.shape(patches)[0], dtype)
    mu = tf.reduce_mean(patches, axis=0)
    centred = patches - mu
    covariance = tf.matmul(centred, centred, transpose_a=True) / count
    weights = tf.reshape(kernel, (patch, filters))
    mean = tf.linalg.matvec(weights, mu, transpose_a=True)
    if conv.use_bias:
        mean = mean + tf.convert_to_tensor(conv.bias)
    # W' S W >= 0 exactly; the clamp only guards round-off.
    variance = tf.maximum(tf.reduce_sum(weights * tf.matmul(covariance, weights), axis=0), 0)
    scale, shift = _scale_and_shift(conv, norm, mean, variance, dtype)
    norm._update_moving(mean, variance)
    return pool(tf.nn.conv2d(x, kernel * scale, 1, padding)) + shift


def _scale_and_shift(conv: Any, norm: Any, mean: Any, variance: Any, dtype: str) -> tuple[Any, Any]:
    """``(a, b)`` such that ``norm`` of ``conv``'s output, of moments ``mean`` and ``variance`` (per filter), is
    ``a * z + b`` with ``z`` the convolution without its bias."""
    import tensorflow as tf

    filters = int(conv.kernel.shape[-1])
    select = norm._step_selector()
    gamma = tf.ones((filters,), dtype) if norm.gamma is None else tf.cast(select(norm.gamma), dtype)
    beta = tf.zeros((filters,), dtype) if norm.beta is None else tf.cast(select(norm.beta), dtype)
    scale = gamma * tf.math.rsqrt(variance + tf.constant(norm.epsilon, dtype))  # not tf.cast: see MetaBatchNorm
    # With a bias, conv(x, W) + c has mean mu.W + c: c cancels (its gradient is 0, as through the batch norm).
    shift = beta - scale * mean
    if conv.use_bias:
        shift = shift + scale * tf.convert_to_tensor(conv.bias)
    return scale, shift


def fold_inference_block(conv: Any, norm: Any, pool: Any, x: Any) -> Any | None:
    """``pool(norm(conv(x), training=False))`` as one convolution and a max-pool; None where it can't.

    With its running moments a batch norm is the per-channel affine map ``a * z + b`` (``a = gamma /
    sqrt(moving_variance + epsilon)``, ``b = beta - a * moving_mean``), so ``norm(conv(x, W)) = conv(x, W * a) +
    b``; and ``max(z + b) = max(z) + b``, so the shift is added after the max-pool, on a quarter of the values.
    Whatever the signs of ``a``: the scale is inside the convolution. What is left is the convolution and the
    max-pool, with no batch norm pass over the block's largest tensor (ProtoNet meta-testing 600 episodes under an
    AVX2 cap: 76.2 -> 85.1 episodes/s, benchmarks/RESULTS.md). Values are the layers' own up to round-off (tests
    compare both).

    Applies on TensorFlow to every block that :func:`_block_foldable` accepts, any stride, dilation or padding.

    Takes and returns what :func:`fold_conv_batch_norm_pool` does; ``norm``'s running moments (the current step's
    set) are read, not moved.
    """
    dtype = keras.backend.standardize_dtype(x.dtype)
    if not _block_foldable(conv, norm, pool, dtype):
        return None
    import tensorflow as tf

    select = norm._step_selector()
    mean = tf.cast(select(norm.moving_mean), dtype)
    variance = tf.cast(select(norm.moving_variance), dtype)
    scale, shift = _scale_and_shift(conv, norm, mean, variance, dtype)
    kernel = tf.convert_to_tensor(conv.kernel) * scale
    y = tf.nn.conv2d(x, kernel, strides=tuple(conv.strides), padding=conv.padding.upper(),
                     dilations=tuple(conv.dilation_rate))
    return pool(y) + shift


@keras.saving.register_keras_serializable(package="metalab")
class FoldingSequential(keras.Sequential):
    """A ``keras.Sequential`` that folds each foldable Conv2D-MetaBatchNorm-MaxPooling2D run on TensorFlow.

    Same layers, weights, checkpoints and results as ``keras.Sequential``. In a training call each run of the three
    layers that :func:`fold_conv_batch_norm_pool` accepts (in practice the first block of a conv net on images
    with few channels) is computed folded; in an inference call (``training`` False or None: running moments)
    every run that :func:`fold_inference_block` accepts is. Every other layer is called as usual. The JAX backend
    and masked calls are ``keras.Sequential``'s own.
    """

    def call(self, inputs, training=None, mask=None, **kwargs):
        if mask is not None or kwargs or keras.backend.backend() != "tensorflow":
            return super().call(inputs, training=training, mask=mask, **kwargs)
        fold = fold_conv_batch_norm_pool if training is True else fold_inference_block
        layers = self.layers
        x = inputs
        i = 0
        while i < len(layers):
            folded = fold(*layers[i:i + 3], x) if i + 3 <= len(layers) else None
            if folded is not None:
                x, i = folded, i + 3
                continue
            layer = layers[i]
            x = layer(x, training=training) if layer._call_has_training_arg else layer(x)
            i += 1
        return x

    def folded_layers(self, dtype: str | None = None) -> list[str]:
        """Names of the ``MetaBatchNorm`` layers a training call folds (inputs of ``dtype``; default: the
        convolution's compute dtype, which is what the model's own layers pass on)."""
        layers = self.layers
        return [
            layers[i + 1].name
            for i in range(len(layers) - 2)
            if _fold_applies(*layers[i:i + 3], dtype or keras.backend.standardize_dtype(layers[i].compute_dtype))
        ]

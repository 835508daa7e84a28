"""The one place metalab differentiates: calls of Keras models with explicit weights, and (nested) gradients.

Algorithms use ``keras.ops`` for their maths and this module for everything that needs a gradient, so that
the backend's autodiff (TensorFlow's ``GradientTape`` today) stays behind one seam. ``value_and_grad`` may be
called inside a function that is itself differentiated by ``value_and_grad``: the inner gradient is then
recorded, and the outer gradient is exact to second order (what MAML needs).
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

__all__ = ["FunctionalModel", "value_and_grad", "stop_gradient", "compile", "to_numpy"]


class FunctionalModel:
    """Calls a built Keras model with explicit weights, through ``model.stateless_call``.

    Fast weights (a list of tensors aligned with ``model.trainable_variables``) are passed at each call, so an
    inner loop needs no model copies and its weights stay differentiable functions of the meta-parameters.

    Args:
        model: A built ``keras.Model`` (or layer).

    Raises:
        ValueError: If ``model`` is not built.

    Example:
        fmodel = FunctionalModel(model)
        theta = fmodel.params()
        fast = [w - 0.1 * g for w, g in zip(theta, grads)]
        logits = fmodel(fast, x)
    """

    def __init__(self, model: Any):
        if not getattr(model, "built", False):
            raise ValueError(
                "FunctionalModel needs a built model (call it on data or build it with keras.Input first). "
                f"Received: model={getattr(model, 'name', model)!r} with built=False"
            )
        self.model = model

    @property
    def trainable_variables(self) -> list[Any]:
        return list(self.model.trainable_variables)

    @property
    def non_trainable_variables(self) -> list[Any]:
        return list(self.model.non_trainable_variables)

    def params(self) -> list[Any]:
        """Returns the current values of the trainable variables as tensors (read now, not references)."""
        return [keras.ops.convert_to_tensor(v) for v in self.trainable_variables]

    def state(self) -> list[Any]:
        """Returns the current values of the non-trainable variables (e.g. batch-norm running moments)."""
        return [keras.ops.convert_to_tensor(v) for v in self.non_trainable_variables]

    def set_state(self, state: list[Any]) -> None:
        """Assigns ``state`` (as returned by :meth:`call_with_state`) to the non-trainable variables.

        Args:
            state: Tensors aligned with :attr:`non_trainable_variables`.

        Raises:
            ValueError: If the number of tensors differs from the number of non-trainable variables.
        """
        variables = self.non_trainable_variables
        if len(state) != len(variables):
            raise ValueError(
                f"set_state expects one tensor per non-trainable variable ({len(variables)}). "
                f"Received: len(state)={len(state)}"
            )
        for variable, value in zip(variables, state):
            variable.assign(value)

    def __call__(self, params: list[Any], x: Any, *, training: bool = True, state: list[Any] | None = None) -> Any:
        """Returns the model's outputs for inputs ``x`` under weights ``params``.

        Args:
            params: Tensors aligned with :attr:`trainable_variables`.
            x: A batch of inputs.
            training: Passed to the model's layers (batch norm uses batch statistics when true).
            state: Values for the non-trainable variables; defaults to their current values. Updates the call
                makes to them (running moments) are dropped; use :meth:`call_with_state` to keep them.

        Returns:
            The model's outputs.
        """
        outputs, _ = self.call_with_state(params, x, training=training, state=state)
        return outputs

    def call_with_state(
        self, params: list[Any], x: Any, *, training: bool = True, state: list[Any] | None = None
    ) -> tuple[Any, list[Any]]:
        """Like :meth:`__call__`, and also returns the updated non-trainable values.

        Returns:
            ``(outputs, new_state)``; ``new_state`` is aligned with :attr:`non_trainable_variables`. Nothing is
            assigned: pass it to :meth:`set_state` to keep it.
        """
        if state is None:
            state = self.state()
        return self.model.stateless_call(list(params), list(state), x, training=training)


def value_and_grad(fn: Callable[..., Any], params: Any, *args: Any, has_aux: bool = False) -> Any:
    """Evaluates ``fn(params, *args)`` and its gradient with respect to ``params``.

    Differentiable itself: called inside a function that an enclosing ``value_and_grad`` differentiates, the
    returned gradients are functions of the outer parameters, so the outer gradient includes the exact second
    order terms. Stop them with :func:`stop_gradient` for first-order approximations.

    Args:
        fn: Returns a scalar (or ``(scalar, aux)`` when ``has_aux``).
        params: A tensor or a nested structure (list, tuple, dict) of tensors or variables.
        *args: Further arguments passed to ``fn`` and not differentiated.
        has_aux: Whether ``fn`` returns ``(value, aux)``.

    Returns:
        ``(value, grads)``, or ``((value, aux), grads)`` when ``has_aux``; ``grads`` has the structure of
        ``params``, with zeros where the value does not depend on a parameter.

    Raises:
        ValueError: If ``fn`` does not return a scalar.
    """
    params = tf.nest.map_structure(tf.convert_to_tensor, params)
    with tf.GradientTape() as tape:
        tape.watch(tf.nest.flatten(params))
        out = fn(params, *args)
        value, aux = out if has_aux else (out, None)
    shape = tf.TensorShape(getattr(value, "shape", ()))
    if shape.rank not in (0, None):
        raise ValueError(f"value_and_grad needs fn to return a scalar. Received: value with shape={tuple(shape)}")
    grads = tape.gradient(value, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return ((value, aux), grads) if has_aux else (value, grads)


def stop_gradient(tensors: Any) -> Any:
    """Returns ``tensors`` (any nested structure) with gradients stopped through every leaf."""
    return tf.nest.map_structure(keras.ops.stop_gradient, tensors)


def compile(fn: Callable[..., Any], *, jit_compile: bool = False) -> Callable[..., Any]:
    """Compiles ``fn`` into a graph (``tf.function``) traced once per input signature.

    Args:
        fn: A function of tensors, e.g. an algorithm's bound ``meta_gradients``.
        jit_compile: Also compile with XLA (slower to compile; on CPU rarely faster, see PITFALLS).

    Returns:
        The compiled callable.
    """
    return tf.function(fn, reduce_retracing=True, jit_compile=jit_compile)


def to_numpy(x: Any) -> Any:
    """Converts a tensor, variable or nested structure of them to NumPy arrays (bfloat16 and float16 as float32)."""

    def convert(t: Any) -> np.ndarray:
        if keras.backend.standardize_dtype(getattr(t, "dtype", "float32")) in ("bfloat16", "float16"):
            t = keras.ops.cast(t, "float32")  # NumPy has no bfloat16
        return np.asarray(keras.ops.convert_to_numpy(t))

    return tf.nest.map_structure(convert, x)

"""The one place metalab differentiates: calls of Keras models with explicit weights, and (nested) gradients.

Algorithms use ``keras.ops`` for their maths and this module for everything that needs a gradient or a compiled
step, so that the backend's autodiff stays behind one seam: TensorFlow's ``GradientTape`` and ``tf.function`` on
Keras's TensorFlow backend (the default), ``jax.value_and_grad`` and ``jax.jit`` on its JAX backend (chosen the
Keras way: ``KERAS_BACKEND=jax`` in the environment before Keras is imported). ``value_and_grad`` may be called
inside a function that is itself differentiated by ``value_and_grad``: the inner gradient is then recorded, and
the outer gradient is exact to second order (what MAML needs).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np

__all__ = ["FunctionalModel", "value_and_grad", "loss_scaling", "stop_gradient", "map_tasks", "mean_task_gradients",
           "mean", "compile", "to_numpy"]

# The loss scale that value_and_grad applies while tracing (see loss_scaling); per thread, like a tape.
_scaling = threading.local()


@contextlib.contextmanager
def loss_scaling(scale: Any) -> Iterator[None]:
    """Inside, every :func:`value_and_grad` differentiates ``scale * fn`` and divides the gradients by ``scale``.

    For float16 compute (``precision=mixed_float16``): gradients flowing back through float16 activations are
    ``scale`` times larger, so small ones do not underflow to zero, while the gradients returned (inner-loop ones
    included) are the true ones. Overflow shows up as non-finite gradients, which the runner's loss-scale
    optimizer detects (it then skips the step and halves the scale). Values and aux outputs are not scaled.

    Args:
        scale: A positive scalar (a tensor or a variable read as a tensor), e.g. the loss-scale optimizer's
            ``dynamic_scale``; ``None`` turns scaling off inside.
    """
    previous = getattr(_scaling, "scale", None)
    _scaling.scale = scale
    try:
        yield
    finally:
        _scaling.scale = previous


def _on_jax() -> bool:
    return keras.backend.backend() == "jax"


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
        return [read_now(v) for v in self.trainable_variables]

    def state(self) -> list[Any]:
        """Returns the current values of the non-trainable variables (e.g. batch-norm running moments), read now."""
        return [read_now(v) for v in self.non_trainable_variables]

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


def read_now(variable: Any) -> Any:
    """A variable's current value as a tensor, read here and now.

    On TensorFlow ``keras.ops.convert_to_tensor`` hands back the ``tf.Variable`` itself, which each later use reads
    again: in a compiled step that writes the variable, those reads could see either value. ``params()`` of
    :class:`FunctionalModel` and of ``MetaAlgorithm`` read this way. A GAN step read its weights by reference, and reruns of the same seed drifted apart in 1 process of 6 (4 of 6 with one inter-op
    thread, with oneDNN's kernels or Eigen's; ``benchmarks/rerun_drift.py``); read here, 0 of 6 and 0 of 8.
    """
    return keras.ops.copy(variable)


def _check_scalar(value: Any) -> None:
    shape = getattr(value, "shape", ())
    try:
        dims = tuple(shape)
    except (TypeError, ValueError):  # a TensorFlow shape of unknown rank: accepted, as before
        return
    if dims:
        raise ValueError(f"value_and_grad needs fn to return a scalar. Received: value with shape={dims}")


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
    scale = getattr(_scaling, "scale", None)
    if scale is None:
        return _value_and_grad(fn, params, *args, has_aux=has_aux)
    (_, (value, aux)), grads = _value_and_grad(
        lambda p, *a: _scaled(fn(p, *a), scale, has_aux), params, *args, has_aux=True)
    grads = keras.tree.map_structure(lambda g: g / keras.ops.cast(scale, g.dtype), grads)
    return ((value, aux), grads) if has_aux else (value, grads)


def _scaled(out: Any, scale: Any, has_aux: bool) -> tuple[Any, tuple[Any, Any]]:
    """``(scale * value, (value, aux))`` of an ``fn`` output: the scaled value is differentiated, the rest kept."""
    value, aux = out if has_aux else (out, None)
    return value * keras.ops.cast(scale, value.dtype), (value, aux)


def _value_and_grad(fn: Callable[..., Any], params: Any, *args: Any, has_aux: bool = False) -> Any:
    """:func:`value_and_grad` without loss scaling: the backend's autodiff itself."""
    if _on_jax():
        import jax

        params = keras.tree.map_structure(keras.ops.convert_to_tensor, params)

        def split(p: Any) -> tuple[Any, Any]:
            out = fn(p, *args)
            value, aux = out if has_aux else (out, None)
            _check_scalar(value)
            return value, aux

        # jax.value_and_grad nests (the inner gradient is traced by the outer one: exact second order) and
        # gives zeros for parameters the value does not depend on, as the tape below is told to.
        (value, aux), grads = jax.value_and_grad(split, has_aux=True)(params)
        return ((value, aux), grads) if has_aux else (value, grads)

    import tensorflow as tf

    # tf.convert_to_tensor reads a variable into a tensor (keras.ops would hand back the tf.Variable itself).
    params = tf.nest.map_structure(tf.convert_to_tensor, params)
    with tf.GradientTape() as tape:
        tape.watch(tf.nest.flatten(params))
        out = fn(params, *args)
        value, aux = out if has_aux else (out, None)
    _check_scalar(value)
    grads = tape.gradient(value, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    # An embedding's gradient comes as IndexedSlices, which `0.4 * g` or `w - g` in an algorithm cannot take:
    # dense, as on JAX (the tables here are small; a dense gradient is what a meta-update needs anyway).
    grads = tf.nest.map_structure(
        lambda g: tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g, grads,
        expand_composites=False)
    return ((value, aux), grads) if has_aux else (value, grads)


def stop_gradient(tensors: Any) -> Any:
    """Returns ``tensors`` (any nested structure) with gradients stopped through every leaf."""
    return keras.tree.map_structure(keras.ops.stop_gradient, tensors)


def map_tasks(fn: Callable[..., Any], *tensors: Any, vectorize: bool | str = False) -> Any:
    """Applies ``fn`` to each task's slice of ``tensors`` (their leading axis) and stacks the results.

    ``fn(*slices)`` returns a tensor or a nested structure of tensors; the result has the same structure with a
    leading task axis. By default the tasks run one after another (in a compiled step: one unrolled graph with a
    copy of ``fn`` per task, which TensorFlow's executor may run side by side). With ``vectorize`` on the JAX
    backend, ``jax.vmap`` turns ``fn`` into one batched program over all tasks (per-task weights become batched
    tensors, convolutions grouped ones): fewer, larger kernels, which suits GPUs (second-order MAML on an H100:
    6x faster than unrolled), while XLA's grouped convolutions on CPUs are slow (50x slower there). ``fn`` may call
    :func:`value_and_grad` (nested gradients stay exact to second order) and close over outer tensors, which are
    then shared by all tasks.

    Args:
        fn: A function of one task's slices.
        *tensors: Tensors (or NumPy arrays) with the same leading dimension, the number of tasks.
        vectorize: ``True``: batch the tasks with ``jax.vmap`` (JAX backend only); ``"auto"``: do so on JAX when
            the computation runs on a GPU or TPU (JAX's default device, e.g. a run's ``device``), else loop.

    Raises:
        ValueError: If ``vectorize`` is set on another backend than JAX, no tensors are given, or their leading
            dimensions differ.
    """
    count = _task_count("map_tasks", tensors)
    if vectorize == "auto":
        vectorize = _on_jax() and _jax_platform() != "cpu"
    if vectorize:
        if not _on_jax():
            raise ValueError(
                "map_tasks(vectorize=True) needs the JAX backend (KERAS_BACKEND=jax). "
                f"Received: backend={keras.backend.backend()!r}"
            )
        import jax

        return jax.vmap(fn)(*tensors)
    outputs = [fn(*(t[i] for t in tensors)) for i in range(count)]
    return keras.tree.map_structure(lambda *xs: keras.ops.stack(xs), *outputs)


def mean(x: Any, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Any:
    """``keras.ops.mean``, computed in ``x``'s own dtype on every backend (losses of float64 runs stay float64).

    Keras's JAX backend takes the mean of a float64 tensor in float32 (it caps type promotion at 32 bits) and
    casts the result back: float32 round-off in a float64 run's losses and gradients (2e-8 in a ProtoNet
    meta-gradient). There a float64 mean is a sum divided by the count; every other case is ``keras.ops.mean``
    itself, so float32 and mixed-precision runs compute as before.

    Args:
        x: A tensor.
        axis: An axis or axes to reduce; ``None`` reduces all.
        keepdims: Keep the reduced axes with size 1.
    """
    x = keras.ops.convert_to_tensor(x)
    if not _on_jax() or keras.backend.standardize_dtype(x.dtype) != "float64":
        return keras.ops.mean(x, axis=axis, keepdims=keepdims)
    axes = range(len(x.shape)) if axis is None else (axis,) if isinstance(axis, int) else axis
    return keras.ops.sum(x, axis=axis, keepdims=keepdims) / math.prod(x.shape[a] for a in axes)


def _task_count(caller: str, tensors: Sequence[Any]) -> int:
    """The common leading (task) dimension of ``tensors``; a clear error if there are none or they differ."""
    if not tensors:
        raise ValueError(f"{caller} needs at least one tensor to map over. Received: no tensors")
    counts = [int(t.shape[0]) for t in tensors]
    if len(set(counts)) != 1:
        raise ValueError(f"{caller} needs tensors with the same leading (task) dimension. Received: {counts}")
    return counts[0]


def mean_task_gradients(fn: Callable[..., Any], params: Any, *tensors: Any, vectorize: bool | str = False,
                        window: int | str | None = None) -> tuple[tuple[Any, Any], Any]:
    """The mean over tasks of ``fn(params, *task_slices)`` and of its gradient with respect to ``params``.

    ``fn(params, *slices)`` returns ``(value, aux)`` for one task (a scalar and a structure of scalars); the
    result is ``((mean value, mean aux), mean gradients)``, the gradient of the mean value, exact to second order
    when ``fn`` takes gradients itself (MAML's inner loop). On JAX this is :func:`value_and_grad` of the mean over
    :func:`map_tasks` (``vectorize`` as there): XLA schedules the whole program. On TensorFlow each task's
    gradient is taken on its own and summed as the tasks finish, and with ``window`` a task starts only when the
    task ``window`` places before it is over (control dependencies on its inputs: that task's value, aux outputs
    and the running sum after it): at most ``window`` tasks hold their activations at once, however large the
    meta-batch. Without a window TensorFlow's executor
    may start every task's first ops early and keep their tensors while it works through a few (a peak up to 2x
    higher at meta-batch 16-32, changing from step to step; see ``benchmarks/MEMORY.md``).

    Args:
        fn: ``fn(params, *slices) -> (value, aux)`` for one task.
        params: The parameters (a structure of tensors or variables) to differentiate.
        *tensors: Tensors with the same leading (task) dimension.
        vectorize: As :func:`map_tasks` (JAX only).
        window: Tasks in flight at once on TensorFlow; ``"auto"``: TensorFlow's inter-op threads (the cores
            unless set, e.g. by the training worker); ``None``: as many as the executor starts.

    Raises:
        ValueError: If ``window`` is not a positive integer, or as :func:`map_tasks`.
    """
    if window is not None and window != "auto" and (isinstance(window, bool) or not isinstance(window, int)
                                                     or window < 1):
        raise ValueError("mean_task_gradients needs window to be a positive integer, 'auto' or None. "
                         f"Received: window={window!r}")
    if _on_jax():
        def mean_loss(p: Any) -> tuple[Any, Any]:
            values, aux = map_tasks(lambda *task: fn(p, *task), *tensors, vectorize=vectorize)
            return mean(values), keras.tree.map_structure(mean, aux)

        return value_and_grad(mean_loss, params, has_aux=True)
    if vectorize is True:
        raise ValueError("mean_task_gradients(vectorize=True) needs the JAX backend (KERAS_BACKEND=jax). "
                         f"Received: backend={keras.backend.backend()!r}")
    count = _task_count("mean_task_gradients", tensors)
    import tensorflow as tf

    if window == "auto":
        window = tf.config.threading.get_inter_op_parallelism_threads() or os.cpu_count() or 1
    values, auxes, total, done = [], [], None, []
    for i in range(count):
        with tf.name_scope(f"task{i}"):  # names each task's ops (profiles, memory traces)
            slices = [t[i] for t in tensors]
            if window is not None and i >= window:
                with tf.control_dependencies(tf.nest.flatten(done[i - window])):
                    slices = [tf.identity(s) for s in slices]
            (value, aux), grads = value_and_grad(lambda p: fn(p, *slices), params, has_aux=True)
        values.append(value)
        auxes.append(aux)
        total = grads if total is None else tf.nest.map_structure(tf.add, total, grads)
        # A later task waits on this one's value, aux and the running sum, so the task is over (its gradient
        # added in, its outputs computed, its activations freed) before the later one starts.
        done.append((total, value, aux))
    mean_grads = tf.nest.map_structure(lambda g: g / tf.cast(count, g.dtype), total)
    aux = keras.tree.map_structure(lambda *xs: keras.ops.mean(keras.ops.stack(xs)), *auxes)
    return (keras.ops.mean(keras.ops.stack(values)), aux), mean_grads


def _jax_platform() -> str:
    """The platform ("cpu", "gpu", "tpu") JAX computes on now: its default device (``jax.default_device``)."""
    import jax

    device = jax.config.jax_default_device
    if device is None:
        return jax.default_backend()
    return device if isinstance(device, str) else device.platform


def compile(
    fn: Callable[..., Any], *, jit_compile: bool = False, variables: Sequence[Any] | None = None
) -> Callable[..., Any]:
    """Compiles ``fn``: a graph traced once per input signature, which reads and assigns Keras variables.

    On TensorFlow this is ``tf.function`` (``variables`` is not needed: graphs read and assign variables
    themselves). On JAX it is ``jax.jit`` of a pure function: the current values of ``variables`` go in, ``fn``
    runs inside a ``keras.StatelessScope`` that maps each variable to its value, and the values ``fn`` assigned
    come out and are assigned outside the compiled function. Variables that ``fn`` reads or assigns but
    ``variables`` does not list are found while tracing and added, at the cost of tracing once more (a compiled
    function must never hold a variable's value as a constant, or it would not see later updates). It retraces
    per input shapes and dtypes and per structure of the arguments (e.g. an optional ``extras`` dict).

    Args:
        fn: A function of tensors, e.g. an algorithm's bound ``meta_gradients``.
        jit_compile: On TensorFlow, also compile with XLA (slower to compile; on CPU rarely faster, see PITFALLS).
            JAX always compiles with XLA.
        variables: The Keras variables ``fn`` reads and may assign (an algorithm's ``variables`` and its
            optimizer's). Optimizers must be built before the first call (``optimizer.build(trainable_variables)``):
            variables cannot be created inside a compiled function.

    Returns:
        The compiled callable.
    """
    if _on_jax():
        return _JaxCompiled(fn, variables or ())
    import tensorflow as tf

    return tf.function(fn, reduce_retracing=True, jit_compile=jit_compile)


class _TrackingScope(keras.StatelessScope):
    """A stateless scope that notes every variable read or assigned inside it, and which were assigned."""

    def __init__(self, state_mapping: list[tuple[Any, Any]]):
        super().__init__(state_mapping=state_mapping)
        self.seen: dict[int, Any] = {}
        self.assigned: set[int] = set()

    def get_current_value(self, variable: Any) -> Any:
        self.seen.setdefault(id(variable), variable)
        return super().get_current_value(variable)

    def add_update(self, update: Any) -> None:
        variable, _ = update
        self.seen.setdefault(id(variable), variable)
        self.assigned.add(id(variable))
        super().add_update(update)


class _JaxCompiled:
    """``fn`` under ``jax.jit`` with the Keras variables it touches threaded through as inputs and outputs."""

    def __init__(self, fn: Callable[..., Any], variables: Sequence[Any]):
        self.fn = fn
        self.variables: list[Any] = []
        self._ids: set[int] = set()
        self._add(variables)
        # One jitted function per argument structure and per value of the non-array arguments (tf.function
        # also retraces per Python value); jax.jit itself retraces per shape and dtype.
        self._jitted: dict[Any, Callable[..., Any]] = {}

    def _add(self, variables: Sequence[Any]) -> None:
        for variable in variables:
            if id(variable) not in self._ids:
                self._ids.add(id(variable))
                self.variables.append(variable)

    def _make(self, treedef: Any, static: tuple[Any, ...], is_array: tuple[bool, ...]) -> Callable[..., Any]:
        import jax

        variables = list(self.variables)

        def pure(values: list[Any], dynamic: list[Any]) -> tuple[Any, dict[int, Any], list[Any]]:
            fixed, moving = iter(static), iter(dynamic)
            leaves = [next(moving) if a else next(fixed) for a in is_array]
            args, kwargs = jax.tree_util.tree_unflatten(treedef, leaves)
            with _TrackingScope(list(zip(variables, values))) as scope:
                out = self.fn(*args, **kwargs)
            assigned = {i: scope.get_current_value(v) for i, v in enumerate(variables) if id(v) in scope.assigned}
            # Found while tracing (a Python side effect, kept on the side): variables the list lacked.
            unknown[:] = [v for key, v in scope.seen.items() if key not in self._ids]
            return out, assigned

        unknown: list[Any] = []
        jitted = jax.jit(pure)
        run = lambda values, dynamic: (*jitted(values, dynamic), unknown)  # noqa: E731
        run.jitted = jitted
        return run

    def memory_analysis(self, *args: Any, **kwargs: Any) -> dict[str, int]:
        """XLA's buffer assignment for one call with these arguments (after a first call, which traced it).

        Returns the bytes of the arguments (variables and inputs), the outputs, the outputs aliased to arguments,
        the temporaries, and ``peak_bytes``: what one call holds at most, ``arguments + outputs - aliased +
        temporaries`` (XLA allocates the temporaries as one block). Compiles again if JAX's cache does not hold
        the executable.
        """
        key, dynamic = self._split(args, kwargs)
        if key not in self._jitted:
            raise ValueError("memory_analysis needs a call with arguments of the same structure first (it traces).")
        stats = self._jitted[key].jitted.lower([v.value for v in self.variables], dynamic).compile().memory_analysis()
        sizes = {name: int(getattr(stats, f"{name}_size_in_bytes"))
                 for name in ("argument", "output", "alias", "temp", "generated_code")}
        sizes["peak_bytes"] = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]
        return sizes

    @staticmethod
    def _split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, Any, tuple[bool, ...]], list[Any]]:
        """``((treedef, static, is_array), dynamic)``: the arguments' structure and Python values (the key of
        one jitted function), and their arrays (its inputs)."""
        import jax

        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
        is_array = tuple(isinstance(leaf, (np.ndarray, np.generic, jax.Array)) or keras.ops.is_tensor(leaf)
                         for leaf in leaves)
        static = tuple(leaf for leaf, a in zip(leaves, is_array) if not a)
        key = (treedef, static, is_array)
        try:
            hash(key)
        except TypeError:
            raise TypeError(
                "compile: arguments must be arrays, tensors, nested lists/tuples/dicts of them, or hashable Python "
                f"values. Received: non-array arguments {[type(s).__name__ for s in static]}"
            ) from None
        return key, [leaf for leaf, a in zip(leaves, is_array) if a]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key, dynamic = self._split(args, kwargs)
        for _ in range(3):
            if key not in self._jitted:
                self._jitted[key] = self._make(*key)
            values = [v.value for v in self.variables]
            out, assigned, unknown = self._jitted[key](values, dynamic)
            if not unknown:
                break
            # The trace read some variables as constants: list them and trace again (the outputs are dropped,
            # nothing was assigned).
            self._add(unknown)
            self._jitted.clear()
        else:  # pragma: no cover - a variable list that keeps growing is a bug in fn
            raise RuntimeError(f"compile: the variables of {self.fn!r} kept changing between traces.")
        for index, value in assigned.items():
            self.variables[index].assign(value)
        return out


def to_numpy(x: Any) -> Any:
    """Converts a tensor, variable or nested structure of them to NumPy arrays (bfloat16 and float16 as float32)."""

    def convert(t: Any) -> np.ndarray:
        if keras.backend.standardize_dtype(getattr(t, "dtype", "float32")) in ("bfloat16", "float16"):
            t = keras.ops.cast(t, "float32")  # NumPy has no bfloat16
        return np.asarray(keras.ops.convert_to_numpy(t))

    return keras.tree.map_structure(convert, x)

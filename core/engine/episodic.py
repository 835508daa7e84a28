"""Building blocks shared by episodic algorithm plugins: a backbone-plus-head model, per-task losses, batches.

Part of the public plugin API (third-party algorithms may use it); it imports Keras, so import it lazily from
an implementation module, never from a plugin's registration module.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from metalab.core.engine import functional
from metalab.core.engine.layers import batch_norm_step
from metalab.core.contract.specs import TaskBatch, TaskSpec

__all__ = [
    "build_model",
    "loss_and_metric",
    "batched_loss_and_metric",
    "batch_tensors",
    "prototype_logits",
    "nearest_centroid_evaluate",
    "evaluate_adaptation",
    "looped_task_gradients",
]


def build_model(task: TaskSpec, name: str) -> keras.Model:
    """Returns the run's backbone followed by a linear head with ``task.output_dim`` outputs, built.

    Under a mixed-precision policy the head computes in float32, so logits and losses keep full precision.
    """
    backbone = task.make_backbone()
    mixed = keras.config.dtype_policy().compute_dtype in ("bfloat16", "float16")
    head = keras.layers.Dense(task.output_dim, name="head", dtype="float32" if mixed else None)
    return keras.Sequential([keras.Input(tuple(task.input_shape)), backbone, head], name=name)


def loss_and_metric(kind: str, outputs: Any, y: Any) -> tuple[Any, Any]:
    """Returns ``(loss, metric)`` of one task: cross-entropy and accuracy, or mean squared error twice."""
    if kind == "classification":
        labels = ops.cast(y, "int32")
        loss = functional.mean(ops.sparse_categorical_crossentropy(labels, outputs, from_logits=True))
        hits = ops.equal(ops.cast(ops.argmax(outputs, axis=-1), "int32"), labels)
        return loss, functional.mean(ops.cast(hits, outputs.dtype))
    loss = functional.mean(ops.square(outputs - ops.cast(y, outputs.dtype)))
    return loss, loss



def batched_loss_and_metric(kind: str, outputs: Any, y: Any) -> tuple[Any, Any]:
    """Returns ``(loss [T], metric [T])`` of ``T`` tasks at once, each as :func:`loss_and_metric` scores one.

    Args:
        kind: ``"classification"`` or ``"regression"``.
        outputs: ``[T, n, output_dim]`` logits or predictions.
        y: ``[T, n]`` int labels, or ``[T, n, output_dim]`` regression targets.

    Returns:
        Per-task mean cross-entropy and accuracy, or per-task mean squared error twice.
    """
    if kind == "classification":
        labels = ops.cast(y, "int32")
        loss = functional.mean(ops.sparse_categorical_crossentropy(labels, outputs, from_logits=True), axis=-1)
        hits = ops.equal(ops.cast(ops.argmax(outputs, axis=-1), "int32"), labels)
        return loss, functional.mean(ops.cast(hits, outputs.dtype), axis=-1)
    loss = functional.mean(ops.square(outputs - ops.cast(y, outputs.dtype)), axis=tuple(range(1, len(outputs.shape))))
    return loss, loss

def batch_tensors(batch: TaskBatch, kind: str, dtype: str) -> tuple[Any, Any, Any, Any, int]:
    """Converts a batch to tensors (inputs in ``dtype``, int32 labels) and returns them with the task count.

    Raises:
        ValueError: If the number of tasks is not known when tracing (the task loop is unrolled).
    """
    label_dtype = "int32" if kind == "classification" else dtype
    sx = ops.convert_to_tensor(batch.support_x, dtype=dtype)
    qx = ops.convert_to_tensor(batch.query_x, dtype=dtype)
    sy = ops.convert_to_tensor(batch.support_y, dtype=label_dtype)
    qy = ops.convert_to_tensor(batch.query_y, dtype=label_dtype)
    num_tasks = sx.shape[0]
    if num_tasks is None:
        raise ValueError(
            "The number of tasks in a batch must be static (the task loop is unrolled when compiled). "
            f"Received: support_x with shape={tuple(sx.shape)}"
        )
    return sx, sy, qx, qy, int(num_tasks)


def prototype_logits(support_features: Any, support_y: Any, query_features: Any, ways: int,
                     distance: str = "euclidean") -> Any:
    """Returns ``[queries, ways]`` logits: minus the distance from each query to each class mean (its prototype).

    The nearest-centroid classifier of Prototypical Networks (Snell et al. 2017, eq. 1 and 2), used by ProtoNet
    and to score frozen features few-shot.

    Args:
        support_features: ``[n_support, d]`` features of the support set (or ``[T, n_support, d]``: ``T``
            episodes at once, each scored against its own prototypes).
        support_y: ``[n_support]`` (or ``[T, n_support]``) int labels in ``0..ways-1``.
        query_features: ``[n_query, d]`` (or ``[T, n_query, d]``) features of the query set.
        ways: Number of classes of the episode.
        distance: ``"euclidean"`` (squared, the paper's) or ``"cosine"`` (the logits are ``cos - 1``).

    Returns:
        ``[n_query, ways]`` logits, or ``[T, n_query, ways]``.

    Raises:
        ValueError: If ``distance`` is neither.
    """
    if distance not in ("euclidean", "cosine"):
        raise ValueError(f"distance must be 'euclidean' or 'cosine'. Received: distance={distance!r}")
    onehot = ops.one_hot(ops.cast(support_y, "int32"), ways, dtype=support_features.dtype)
    counts = ops.maximum(ops.sum(onehot, axis=-2), ops.cast(1, support_features.dtype))
    prototypes = ops.matmul(ops.swapaxes(onehot, -1, -2), support_features) / ops.expand_dims(counts, -1)
    if distance == "cosine":
        queries = ops.normalize(query_features, axis=-1)
        return ops.matmul(queries, ops.swapaxes(ops.normalize(prototypes, axis=-1), -1, -2)) - 1.0
    diff = ops.expand_dims(query_features, -2) - ops.expand_dims(prototypes, -3)
    return -ops.sum(ops.square(diff), axis=-1)


def nearest_centroid_evaluate(fmodel: Any, batch: TaskBatch, ways: int) -> dict[str, Any]:
    """Scores each episode of ``batch`` by nearest class centroid on frozen features (no adaptation).

    Features are computed in inference mode (batch norm on its running moments) with the current weights.

    Args:
        fmodel: A :class:`metalab.core.engine.functional.FunctionalModel` of the feature extractor.
        batch: Classification episodes.
        ways: Classes per episode.

    Returns:
        ``loss`` ``[T]`` (query cross-entropy of the distance logits), ``accuracy`` ``[T]`` and ``predictions``
        (query logits ``[T, queries, ways]``).
    """
    sx, sy, qx, qy, _ = batch_tensors(batch, "classification", fmodel.model.compute_dtype)
    weights = [ops.stop_gradient(w) for w in fmodel.params()]
    state = fmodel.state()

    def one_task(arrays):
        tsx, tsy, tqx, tqy = arrays
        n_support = tsx.shape[0]
        features = fmodel(weights, ops.concatenate([tsx, tqx], axis=0), training=False, state=state)
        logits = prototype_logits(features[:n_support], tsy, features[n_support:], ways)
        loss, accuracy = loss_and_metric("classification", logits, tqy)
        return loss, accuracy, logits

    losses, accuracies, predictions = ops.map(one_task, (sx, sy, qx, qy))
    return {"loss": losses, "accuracy": accuracies, "predictions": predictions}


def evaluate_adaptation(
    fmodel: Any,
    kind: str,
    batch: TaskBatch,
    start: Any,
    inner_step: Any,
    steps: int,
    weights_of: Any = None,
    transductive: bool = True,
    running_statistics: bool = False,
) -> dict[str, Any]:
    """Adapts to each task's support set with ``steps`` inner steps and scores its query set after each.

    The shared evaluation of gradient-based algorithms (MAML, Reptile, Meta-SGD, ...). Tasks are mapped and steps
    looped, not unrolled, so the compiled graph holds one task's adaptation whatever the batch size.

    Args:
        fmodel: The :class:`~metalab.core.engine.functional.FunctionalModel` to score.
        kind: ``"classification"`` or ``"regression"``.
        batch: The tasks.
        start: The inner loop's initial state (the meta-parameters, or a tuple holding them).
        inner_step: ``inner_step(state, support_x, support_y) -> state``, one step of the algorithm's inner loop.
        steps: Inner steps.
        weights_of: ``weights_of(state) -> weights`` when the state holds more than the weights.
        transductive: Score the query set in one batch, so batch norm uses the statistics of all queries (the MAML
            reference code; Reptile's "transduction"). When false, each query is scored in a batch of the support
            set plus itself only, so no query's prediction depends on the others (Nichol et al. 2018, section 5).
        running_statistics: With ``transductive=False``, normalise the queries with the batch-norm running
            statistics instead of the support set's (inductive as well). Each step's forward passes run under
            :func:`metalab.core.engine.layers.batch_norm_step`, so per-step batch norm (MAML++) uses that step's
            parameters and, here, that step's running statistics.

    Returns:
        ``loss`` ``[T]``, ``accuracy`` ``[T]`` (classification), ``curve`` ``[T, steps + 1]`` (query accuracy or
        MSE after 0..steps steps) and ``predictions`` ``[T, queries, outputs]``.
    """
    if transductive and running_statistics:
        raise ValueError(
            "Transductive evaluation normalises the queries with their own batch statistics, so it cannot also use "
            f"the running statistics. Received: transductive={transductive}, running_statistics={running_statistics}"
        )
    weights_of = weights_of or (lambda state: state)
    dtype = fmodel.model.compute_dtype
    sx, sy, qx, qy, _ = batch_tensors(batch, kind, dtype)

    def one_task(arrays: Any) -> tuple[Any, Any, Any, Any]:
        tsx, tsy, tqx, tqy = arrays

        def score(weights: Any, x: Any, y: Any) -> tuple[Any, Any, Any]:
            if transductive:
                outputs = fmodel(weights, x, training=True)
            elif running_statistics:
                outputs = fmodel(weights, x, training=False)
            else:
                # One forward pass per query, batched with the support set: the support set fixes the statistics.
                outputs = ops.map(
                    lambda q: fmodel(weights, ops.concatenate([tsx, q[None]], axis=0), training=True)[-1], x
                )
            return (*loss_and_metric(kind, outputs, y), outputs)

        def step(i: Any, carry: Any) -> Any:
            state, curve = carry
            with batch_norm_step(i):
                metric = ops.cast(score(weights_of(state), tqx, tqy)[1], curve.dtype)
                curve = curve + metric * ops.one_hot(i, steps + 1, dtype=curve.dtype)
                return inner_step(state, tsx, tsy), curve

        # Scores stay in full precision under a mixed policy (the head computes in float32).
        curve = ops.zeros((steps + 1,), dtype="float32" if dtype in ("bfloat16", "float16") else dtype)
        state, curve = ops.fori_loop(0, steps, step, (start, curve))
        with batch_norm_step(steps):
            loss, metric, outputs = score(weights_of(state), tqx, tqy)
        curve = curve + ops.cast(metric, curve.dtype) * ops.one_hot(steps, steps + 1, dtype=curve.dtype)
        return loss, metric, curve, outputs

    losses, metrics, curves, predictions = ops.map(one_task, (sx, sy, qx, qy))
    result = {"loss": losses, "curve": curves, "predictions": predictions}
    if kind == "classification":
        result["accuracy"] = metrics
    return result


def looped_task_gradients(fn: Any, params: Any, *tensors: Any, window: int | str | None = "auto",
                          aux_like: Any = 0.0) -> tuple[tuple[Any, Any], Any]:
    """:func:`~metalab.core.engine.functional.mean_task_gradients` with one traced copy of ``fn`` for all tasks.

    On TensorFlow the tasks run in a ``tf.while_loop`` whose body takes one task's value and gradient (nested
    gradients inside stay exact to second order) and adds them to running sums, so the compiled graph holds one
    task's program whatever the meta-batch size: tracing and graph optimisation take the time of one task, not of
    ``T`` unrolled copies (second-order MAML, meta-batch 32: about a minute unrolled on a 2-core CPU).
    ``window`` is the loop's ``parallel_iterations``: tasks in flight at once, so the step's memory is that of
    ``window`` tasks, as with the unrolled step's window. On JAX this is ``mean_task_gradients`` itself (XLA
    compiles the whole step quickly there).

    Args:
        fn: ``fn(params, *slices) -> (value, aux)`` for one task; ``value`` a scalar, ``aux`` scalars shaped as
            ``aux_like``.
        params: The parameters (a structure of tensors or variables) to differentiate.
        *tensors: Tensors with the same, static, leading (task) dimension.
        window: Tasks in flight at once; ``"auto"``: TensorFlow's inter-op threads (else the cores); ``None``: 10,
            ``tf.while_loop``'s default.
        aux_like: The structure of ``fn``'s aux output (a scalar, or a tuple/list/dict of scalars).

    Returns:
        ``((mean value, mean aux), mean gradients)``; the sums are kept in the dtype of ``params``' first leaf.

    Raises:
        ValueError: If ``window`` is not a positive integer, ``"auto"`` or ``None``, or the tensors' leading
            dimensions differ or are unknown.
    """
    if window is not None and window != "auto" and (isinstance(window, bool) or not isinstance(window, int)
                                                     or window < 1):
        raise ValueError("looped_task_gradients needs window to be a positive integer, 'auto' or None. "
                         f"Received: window={window!r}")
    if keras.backend.backend() != "tensorflow":
        return functional.mean_task_gradients(fn, params, *tensors, window=window)
    import os

    import tensorflow as tf

    tensors = tuple(tf.convert_to_tensor(t) for t in tensors)
    counts = {t.shape[0] for t in tensors}
    if len(counts) != 1 or None in counts:
        raise ValueError("looped_task_gradients needs tensors with the same, static, leading (task) dimension. "
                         f"Received: {[t.shape[0] for t in tensors]}")
    count = counts.pop()
    if window == "auto":
        window = tf.config.threading.get_inter_op_parallelism_threads() or os.cpu_count() or 1
    params = tf.nest.map_structure(tf.convert_to_tensor, params)
    dtype = tf.nest.flatten(params)[0].dtype
    zero = tf.zeros((), dtype)

    def body(i: Any, grad_sum: Any, value_sum: Any, aux_sum: Any) -> tuple[Any, Any, Any, Any]:
        slices = [t[i] for t in tensors]
        (value, aux), grads = functional.value_and_grad(lambda p: fn(p, *slices), params, has_aux=True)
        grad_sum = tf.nest.map_structure(lambda s, g: s + tf.cast(g, s.dtype), grad_sum, grads)
        aux_sum = tf.nest.map_structure(lambda s, a: s + tf.cast(a, dtype), aux_sum, aux)
        return i + 1, grad_sum, value_sum + tf.cast(value, dtype), aux_sum

    start = (tf.constant(0), tf.nest.map_structure(tf.zeros_like, params), zero,
             tf.nest.map_structure(lambda _: zero, aux_like))
    _, grad_sum, value_sum, aux_sum = tf.while_loop(
        lambda i, *_: i < count, body, start, parallel_iterations=window or 10, maximum_iterations=count)
    n = tf.cast(count, dtype)
    mean_grads = tf.nest.map_structure(lambda g: g / tf.cast(count, g.dtype), grad_sum)
    return (value_sum / n, tf.nest.map_structure(lambda a: a / n, aux_sum)), mean_grads

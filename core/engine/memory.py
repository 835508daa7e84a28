"""An analytic estimate of a meta-training step's peak memory, from the model's layer shapes (no step is run).

Second-order MAML keeps, for every task whose backward pass is pending, the activations of the query forward
pass and of each inner step's support forward *and backward* passes (the inner gradients are differentiated
again). Which tensors a layer's gradient needs is known per kind of layer (TensorFlow's registered gradients):
a convolution or dense layer keeps its input, a ReLU its output, a max-pool both, batch norm its input; to second
order, the gradients arriving at convolutions, dense layers and batch norms are kept as well (their gradients are
bilinear in them), while those at ReLUs and max-pools are not. A batch norm folded into its convolution
(``layers.FoldingSequential``) keeps nothing and passes gradients on as they are. :func:`activation_profile` reads
the layer shapes of a built Keras model; :func:`estimate_step_memory` is plain arithmetic on that profile, so the
dashboard's worker and the tests can call it without a training step.

How many tasks hold their activations at once depends on how the runtime schedules the unrolled task loop.
On TensorFlow, MAML and Meta-SGD take each task's gradient on its own (``functional.mean_task_gradients``) and
start a task only when the one ``window`` places before it has been added to the running sum of gradients
(``task_window``; by default the inter-op threads, one per core in the training worker). So at the peak
``min(meta_batch, window)`` tasks are *in flight*, each holding its kept activations and the gradients in flight of
its own backward pass, and a finished task holds nothing: the peak no longer grows with the meta-batch beyond its
inputs. Measured (``benchmarks/MEMORY.md``): within 25% at meta-batch 1-32 and 1-5 inner steps, steadily from
step to step.

Without a window (``task_window`` at least the meta-batch) TensorFlow's dataflow executor is free to start every
task's first passes early and park them, which lifted the peak up to 2x at meta-batch 16-32 and changed from step
to step; that schedule is not modelled, and ``all_tasks_bytes`` (every task alive at once) is the bound used for
it. It is also the figure where the schedule is XLA's (Keras's JAX backend: vectorized tasks are all alive at
once) or otherwise unknown (``concurrency=None``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "LayerProfile",
    "RUNTIME_BASELINE_BYTES",
    "activation_profile",
    "estimate_for_session",
    "estimate_step_memory",
    "method_of",
]

#: Resident memory of a worker process after importing TensorFlow and Keras and building a small model on CPU
#: (measured here: about 700 MB, see ``../shared/PITFALLS.md``); used when the caller knows no better figure.
RUNTIME_BASELINE_BYTES = 700 * 2**20

# Keras layer classes by what their TensorFlow gradient keeps (names, so this module needs no Keras import).
_WEIGHTED = {"Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Dense",
             "EinsumDense"}
_NORMS = {"MetaBatchNorm", "BatchNormalization", "LayerNormalization", "GroupNormalization"}
_KEEPS_OUTPUT = {"ReLU"}
_MAX_POOLS = {"MaxPooling1D", "MaxPooling2D", "MaxPooling3D"}
# A batch norm that ``FoldingSequential`` folds into the convolution before it (``layers.fold_conv_batch_norm_pool``):
# the convolution's output is already normalised up to a per-channel shift added after the max-pool, so the norm
# adds no tensor of its own and keeps nothing.
_FOLDED_NORM = "MetaBatchNorm (folded)"
# Layers whose output is a view of their input (no new buffer).
_VIEWS = {"Flatten", "Reshape", "Identity", "InputLayer", _FOLDED_NORM}
# Layers whose gradient needs no saved tensor (views, or gradients that only need shapes).
_FREE = {_FOLDED_NORM, "Flatten", "Reshape", "InputLayer", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
         "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D", "Identity", "Permute"}


@dataclass(frozen=True)
class LayerProfile:
    """One leaf layer of a model, in elements per example.

    Attributes:
        name: The layer's name.
        kind: Its Keras class name.
        input_elements: Elements of its input per example.
        output_elements: Elements of its output per example.
        keeps_input: Its gradient needs its input (kept from the forward pass until the backward pass).
        keeps_output: Its gradient needs its output.
        keeps_output_grad: To second order, the gradient arriving at its output is kept too.
        modelled: False for a layer kind the table does not know (then input, output and gradient count, an
            upper bound).
    """

    name: str
    kind: str
    input_elements: int
    output_elements: int
    keeps_input: bool
    keeps_output: bool
    keeps_output_grad: bool
    modelled: bool = True


def _layer_rule(kind: str, activation: str | None) -> tuple[bool, bool, bool, bool]:
    """``(keeps_input, keeps_output, keeps_output_grad, modelled)`` for a layer kind."""
    if kind in _WEIGHTED:
        # A fused activation other than "linear" needs its output (ReLU's gradient reads the output).
        return True, activation not in (None, "linear"), True, True
    if kind in _NORMS:
        return True, False, True, True
    if kind in _KEEPS_OUTPUT:
        return False, True, False, True
    if kind in _MAX_POOLS:
        return True, True, False, True
    if kind in _FREE:
        return False, False, False, True
    if kind == "Dropout":
        # The mask, one element per output element.
        return False, True, False, True
    return True, True, True, False


def _leaves(layer: Any, input_shape: tuple) -> tuple[list[tuple[Any, tuple, tuple, bool]], tuple]:
    """The leaf layers of ``layer`` in call order with their input and output shapes (batch axis ``None``) and
    whether a training call folds them (a batch norm inside a ``FoldingSequential``)."""
    sublayers = getattr(layer, "layers", None)
    if sublayers is not None and type(layer).__name__ in ("Sequential", "FoldingSequential"):
        folded = set(layer.folded_layers()) if hasattr(layer, "folded_layers") else set()
        out: list[tuple[Any, tuple, tuple, bool]] = []
        shape = input_shape
        for sub in sublayers:
            found, shape = _leaves(sub, shape)
            out += [(leaf, i, o, f or (leaf is sub and sub.name in folded)) for leaf, i, o, f in found]
        return out, shape
    output_shape = tuple(layer.compute_output_shape(input_shape))
    return [(layer, input_shape, output_shape, False)], output_shape


def activation_profile(model: Any, input_shape: tuple[int, ...] | None = None) -> list[LayerProfile]:
    """The leaf layers of a Keras model with their per-example sizes and what their gradients keep.

    Nested ``keras.Sequential`` models are walked into; any other layer (a functional sub-model included) counts as
    one layer of its class. A batch norm that a ``FoldingSequential`` folds into its convolution has the kind
    ``"MetaBatchNorm (folded)"`` and keeps nothing.

    Args:
        model: A built Keras model or layer.
        input_shape: One example's shape; default the model's input shape without the batch axis.

    Returns:
        One :class:`LayerProfile` per leaf layer, in call order.

    Raises:
        ValueError: If the input shape is unknown or has an unknown size.
    """
    if input_shape is None:
        inputs = getattr(model, "inputs", None)
        if not inputs:
            raise ValueError("activation_profile needs the input shape of a model that has no Input. "
                             f"Received: input_shape=None for model={getattr(model, 'name', model)!r}")
        input_shape = tuple(inputs[0].shape[1:])
    shape = tuple(input_shape)
    if any(s is None for s in shape):
        raise ValueError(f"activation_profile needs a fully known example shape. Received: input_shape={shape}")
    leaves, _ = _leaves(model, (None, *shape))
    profile = []
    for layer, in_shape, out_shape, folded in leaves:
        kind = _FOLDED_NORM if folded else type(layer).__name__
        activation = getattr(layer, "activation", None)
        activation = getattr(activation, "__name__", None) if activation is not None else None
        keeps_in, keeps_out, keeps_grad, modelled = _layer_rule(kind, activation)
        profile.append(LayerProfile(
            name=layer.name, kind=kind, input_elements=math.prod(int(s) for s in in_shape[1:]),
            output_elements=math.prod(int(s) for s in out_shape[1:]), keeps_input=keeps_in, keeps_output=keeps_out,
            keeps_output_grad=keeps_grad, modelled=modelled,
        ))
    return profile


def _forward_kept(profile: list[LayerProfile]) -> int:
    """Elements per example the forward pass keeps for the backward pass (each tensor counted once)."""
    # Tensor i is the output of layer i (the model's input, tensor -1, is counted with the batch). A view layer's
    # output shares its input's buffer, so it stands for the same tensor.
    source = []
    needed: dict[int, int] = {}
    for i, layer in enumerate(profile):
        producer = source[i - 1] if i else -1
        if layer.keeps_input and producer >= 0:
            needed[producer] = profile[producer].output_elements
        source.append(producer if layer.kind in _VIEWS else i)
        if layer.keeps_output:
            needed[source[i]] = profile[source[i]].output_elements if source[i] >= 0 else 0
    return sum(needed.values())


def _backward_walk_peak(profile: list[LayerProfile]) -> int:
    """Elements per example held at the fullest point of a first-order backward pass, walking from the last layer.

    At layer ``i`` the pass still holds the kept tensors that layer ``i`` or an earlier one needs (the later
    layers' are freed) plus the gradient arriving at the layer's output and the one it sends to its input (none
    from the first layer: the data needs no gradient; none from a view, which passes its gradient on as is).
    """
    # As in _forward_kept: tensor i is layer i's output, a view stands for its input's tensor.
    source: list[int] = []
    first_user: dict[int, int] = {}
    for i, layer in enumerate(profile):
        producer = source[i - 1] if i else -1
        if layer.keeps_input and producer >= 0:
            first_user.setdefault(producer, i)
        source.append(producer if layer.kind in _VIEWS else i)
        if layer.keeps_output and source[i] >= 0:
            first_user.setdefault(source[i], i)
    peak = 0
    for i, grads in enumerate(_layer_gradients(profile)):
        held = sum(profile[t].output_elements for t, user in first_user.items() if user <= i)
        peak = max(peak, held + grads)
    return peak


def _layer_gradients(profile: list[LayerProfile]) -> list[int]:
    """Elements per example of the gradients each layer's backward step holds: the one arriving at its output and
    the one it sends to its input (none from the first layer that is not a view: the data needs no gradient; none
    at a view, which passes its gradient on as it is)."""
    first = next((i for i, layer in enumerate(profile) if layer.kind not in _VIEWS), None)
    return [
        0 if layer.kind in _VIEWS else layer.output_elements + (layer.input_elements if i != first else 0)
        for i, layer in enumerate(profile)
    ]


def _backward_kept(profile: list[LayerProfile]) -> int:
    """Elements per example of the inner backward pass that a second-order backward pass needs again."""
    return sum(layer.output_elements for layer in profile if layer.keeps_output_grad)


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"estimate_step_memory needs {name} to be an integer >= {minimum}. "
                         f"Received: {name}={value!r}")
    return value


def estimate_step_memory(
    profile: list[LayerProfile],
    *,
    method: str,
    parameters: int,
    support_size: int,
    query_size: int,
    meta_batch: int,
    inner_steps: int = 1,
    first_order: bool = False,
    input_elements: int | None = None,
    optimizer_slots: int = 2,
    concurrency: int | None = None,
    dtype_bytes: int = 4,
    baseline_bytes: int = RUNTIME_BASELINE_BYTES,
) -> dict[str, Any]:
    """Estimates the peak memory of one meta-training step from the model's layer profile.

    ``step_bytes = weights + optimizer slots + meta-gradient and update + batch + per-task activations x tasks
    in flight + gradients in flight``. A task's activations are its query forward pass plus, per inner step, the
    support forward pass, the support backward pass and the fast weights (second order), or the larger of its
    query and support forward passes with one set of fast weights (first order). With ``concurrency`` (MAML's
    task window on TensorFlow), ``tasks_alive = min(meta_batch, concurrency)`` tasks are in flight, each with its
    own backward pass's gradients in flight; a finished task's gradient is already in the running sum. Without it
    every task is alive and one backward pass runs at a time (``step_bytes == all_tasks_bytes``). ``total_bytes``
    adds ``baseline_bytes`` (the runtime before the step).

    Args:
        profile: The model's :func:`activation_profile`.
        method: ``"maml"`` (MAML, Meta-SGD), ``"anil"`` or ``"protonet"``.
        parameters: Trainable parameters (meta-parameters, e.g. Meta-SGD's step sizes included).
        support_size: Support examples per task (ways x shots).
        query_size: Query examples per task (ways x queries).
        meta_batch: Tasks per step.
        inner_steps: Inner gradient steps per task during meta-training (``maml`` and ``anil``).
        first_order: The inner gradients are constants (first-order MAML/ANIL): each support pass is freed as
            soon as its inner step is taken.
        input_elements: Elements of one example (for the batch's size); default the first layer's input.
        optimizer_slots: Tensors the outer optimizer keeps per parameter (2 for Adam).
        concurrency: Tasks in flight at once (MAML's ``task_window`` on TensorFlow: by default the inter-op
            threads); ``None`` assumes every task of the meta-batch is alive at once. Only MAML's unrolled task
            loop is scheduled this way.
        dtype_bytes: Bytes per element (4 for float32).
        baseline_bytes: Memory in use before the step (the runtime, the compiled step); part of ``total_bytes``.

    Returns:
        ``modelled`` (True), ``method``, ``second_order``, ``parameters``, ``parameter_bytes``,
        ``optimizer_bytes``, ``gradient_bytes`` (the meta-gradient and the update), ``batch_bytes``,
        ``transient_bytes`` (the gradients in flight of the tasks' backward passes), ``support_pass_bytes`` and ``query_pass_bytes`` (one task's kept activations per pass),
        ``per_task_activation_bytes``, ``inner_steps``, ``meta_batch``, ``tasks_alive`` (tasks in flight),
        ``activation_bytes`` (per task x tasks alive), ``all_tasks_bytes`` (the step if every task were alive at
        once), ``step_bytes``, ``baseline_bytes``,
        ``total_bytes`` and ``unmodelled_layers`` (layer kinds counted by the conservative default).

    Raises:
        ValueError: On an unknown method, an empty profile, or a count below its minimum.
    """
    if method not in ("maml", "anil", "protonet"):
        raise ValueError("estimate_step_memory models the methods 'maml', 'anil' and 'protonet'. "
                         f"Received: method={method!r}")
    if not profile:
        raise ValueError("estimate_step_memory needs the layer profile of a model with at least one layer. "
                         "Received: profile=[]")
    parameters = _check_count("parameters", parameters, 1)
    support_size = _check_count("support_size", support_size, 1)
    query_size = _check_count("query_size", query_size, 1)
    meta_batch = _check_count("meta_batch", meta_batch, 1)
    inner_steps = _check_count("inner_steps", inner_steps, 1 if method in ("maml", "anil") else 0)
    optimizer_slots = _check_count("optimizer_slots", optimizer_slots, 0)
    dtype_bytes = _check_count("dtype_bytes", dtype_bytes, 1)
    if concurrency is not None:
        concurrency = _check_count("concurrency", concurrency, 1)
    if input_elements is None:
        input_elements = profile[0].input_elements

    forward = _forward_kept(profile) * dtype_bytes
    backward = _backward_kept(profile) * dtype_bytes
    parameter_bytes = parameters * dtype_bytes
    second_order = method != "protonet" and not first_order
    if method == "maml":
        support_pass = support_size * (forward + (backward if second_order else 0))
        query_pass = query_size * forward
        if second_order:
            # Every inner step's passes and its fast weights and their gradient (two parameter-sized tensors)
            # are kept for the outer backward pass.
            per_task = query_pass + inner_steps * (support_pass + 2 * parameter_bytes)
        else:
            # The inner gradients are constants, so each support pass is freed once its step is taken, before
            # the query pass starts: the larger of the two is kept, with one set of fast weights and gradient.
            per_task = max(query_pass, support_pass) + 2 * parameter_bytes
    elif method == "anil":
        # The backbone runs once per set; the head's inner steps cost only head-sized tensors.
        support_pass = support_size * forward
        query_pass = query_size * forward
        per_task = query_pass + support_pass
    else:
        support_pass = support_size * forward
        query_pass = query_size * forward
        per_task = support_pass + query_pass
        inner_steps = 0

    # What a task's backward pass holds on top of what the task keeps, for its larger set (query or support).
    largest_set = max(query_size, support_size)
    if method == "maml" and not second_order:
        # To first order the pass frees each layer's kept tensors once it has gone by, so it adds only what its
        # fullest layer holds beyond the forward pass (about 1 MB for conv-4 and 25 queries).
        task_transient = largest_set * max(0, _backward_walk_peak(profile) * dtype_bytes - forward)
    else:
        # To second order the support passes and their second-order gradients stay, and the measured peak of a
        # task is its kept tensors plus the gradients of the layer where they are largest: the one arriving and
        # the one sent on.
        task_transient = largest_set * max(_layer_gradients(profile), default=0) * dtype_bytes
    # ANIL and ProtoNet run all tasks through the backbone as one batch, so all are alive at once; so are MAML's
    # when the schedule is unknown (the bound, with one backward pass running at a time).
    scheduled = method == "maml" and concurrency is not None
    tasks_alive = min(meta_batch, concurrency) if scheduled else meta_batch
    transient_bytes = (tasks_alive if scheduled else 1) * task_transient
    batch_bytes = meta_batch * (support_size + query_size) * input_elements * dtype_bytes
    optimizer_bytes = optimizer_slots * parameter_bytes
    # The summed meta-gradient (the running sum) and the optimizer's update: one parameter-sized tensor each.
    gradient_bytes = 2 * parameter_bytes
    resident = parameter_bytes + optimizer_bytes + gradient_bytes + batch_bytes
    step_bytes = resident + transient_bytes + per_task * tasks_alive
    # Every task alive, with the backward passes that run at once (one where the schedule is unknown).
    all_tasks_bytes = max(step_bytes, resident + transient_bytes + per_task * meta_batch)
    baseline_bytes = _check_count("baseline_bytes", int(baseline_bytes), 0)
    return {
        "modelled": True,
        "method": method,
        "second_order": second_order,
        "parameters": parameters,
        "parameter_bytes": parameter_bytes,
        "optimizer_bytes": optimizer_bytes,
        "gradient_bytes": gradient_bytes,
        "batch_bytes": batch_bytes,
        "transient_bytes": transient_bytes,
        "support_pass_bytes": support_pass,
        "query_pass_bytes": query_pass,
        "per_task_activation_bytes": per_task,
        "inner_steps": inner_steps,
        "meta_batch": meta_batch,
        "tasks_alive": tasks_alive,
        "activation_bytes": per_task * tasks_alive,
        "all_tasks_bytes": all_tasks_bytes,
        "step_bytes": step_bytes,
        "baseline_bytes": baseline_bytes,
        "total_bytes": baseline_bytes + step_bytes,
        "unmodelled_layers": sorted({layer.kind for layer in profile if not layer.modelled}),
    }


def method_of(registry: Any, algorithm_id: str) -> str | None:
    """The estimate's method for an algorithm id: its spec's ``memory_model`` (``None``: not modelled, or not
    loaded). Which algorithm follows which model is the algorithm plugin's to say (``AlgorithmSpec.memory_model``,
    one of ``metalab.core.contract.specs.MEMORY_MODELS``), so a third-party algorithm is estimated the same way."""
    spec = registry.algorithms.get(algorithm_id)
    return getattr(spec, "memory_model", None)


def estimate_for_session(session: Any, *, registry: Any, concurrency: int | None = None,
                         baseline_bytes: int = RUNTIME_BASELINE_BYTES) -> dict[str, Any]:
    """The step-memory estimate of a built run session (``session.build_session``), or why there is none.

    Args:
        session: A session with ``config``, ``task`` and ``algorithm`` (whose ``model`` gives the layer shapes).
        registry: The plugin registry: the algorithm's spec says which model it follows (``memory_model``).
        concurrency: The inter-op threads of the process that will run the step (MAML's default task window on
            TensorFlow); ``None``: unknown, all tasks at once. An algorithm's own ``task_window`` takes
            precedence; on Keras's JAX backend (XLA schedules the step) and with no window below the meta-batch,
            every task counts.
        baseline_bytes: Memory in use before the step.

    Returns:
        :func:`estimate_step_memory`'s breakdown, or ``{"modelled": False, "reason": ...}`` for an algorithm or
        model the estimate does not cover.
    """
    config, task, algorithm = session.config, session.task, session.algorithm
    method = method_of(registry, config.algorithm)
    if method is None:
        modelled = sorted(i for i, spec in registry.algorithms.items() if getattr(spec, "memory_model", None))
        return {"modelled": False, "reason": f"The memory estimate does not model {config.algorithm} (its spec "
                                              f"names no memory_model; modelled: {', '.join(modelled) or 'none'})."}
    model = getattr(algorithm, "model", None)
    if model is None:
        return {"modelled": False, "reason": f"{config.algorithm} exposes no Keras model to read layer shapes from."}
    try:
        profile = activation_profile(model, tuple(task.input_shape))
    except (ValueError, NotImplementedError, TypeError, AttributeError) as exc:
        return {"modelled": False, "reason": f"Could not read the model's layer shapes: {exc}"}
    # The validated parameters (defaults filled in), else the config's raw ones.
    validated = getattr(algorithm, "config", None)
    params = validated.model_dump() if hasattr(validated, "model_dump") else dict(config.algorithm_params)
    ways = int(task.ways)
    from metalab.core.engine.devices import keras_backend

    meta_batch = int(getattr(algorithm, "meta_batch_size", 1))
    # MAML's task window (TensorFlow): its own task_window, else the inter-op threads. A window as wide as the
    # meta-batch is none: more tasks than threads are then the executor's to schedule (the bound).
    window = int(params.get("task_window") or 0) or concurrency
    if method != "maml" or keras_backend() == "jax" or window is None:
        window = None
    elif window >= meta_batch:
        window = meta_batch if concurrency is not None and meta_batch <= concurrency else None
    parameters = int(sum(math.prod(int(s) for s in v.shape) for v in algorithm.trainable_variables))
    estimate = estimate_step_memory(
        profile, method=method, parameters=parameters, support_size=ways * int(task.shots),
        query_size=ways * int(task.queries), meta_batch=meta_batch,
        inner_steps=int(params.get("inner_steps", 1)), first_order=bool(params.get("first_order", False)),
        input_elements=math.prod(int(s) for s in task.input_shape), concurrency=window,
        baseline_bytes=baseline_bytes,
    )
    estimate["layers"] = [asdict(layer) for layer in profile]
    return estimate

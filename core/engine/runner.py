"""The one training loop: every algorithm plugin is meta-trained, checkpointed, resumed and evaluated here.

Algorithms only say how to compute meta-gradients and how to adapt to a task; this module owns compilation,
logging to the run store, validation, checkpoints (weights, optimizer state, sampler RNG state), cancellation,
device placement and the meta-test protocol.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from metalab.core.engine.checkpoints import (  # noqa: F401 - re-exported: plugins and benchmarks import them from here
    CheckpointError,
    CheckpointMismatchError,
    checkpoint_files,
    checkpoint_path,
    load_checkpoint,
    record_warning,
    restore_checkpoint,
    save_checkpoint,
)
from metalab.core.engine.config import RunConfig
from metalab.core.contract.specs import TaskBatch, TaskSpec
from metalab.core.settings import Settings, load_settings
from metalab.core.store import RunNotFoundError, RunStore

#: Seed of the fixed evaluation episodes: the same for every run and algorithm, so scores are comparable.
EVAL_SEED = 2017
#: Episodes per compiled evaluation call.
EVAL_CHUNK = 16

ProgressFn = Callable[[int, int, dict[str, float]], None]


class RunCancelled(Exception):
    """Raised inside the loop when a cancel was requested; the runner checkpoints and records 'cancelled'."""


def installed_versions(distributions: tuple[str, ...]) -> dict[str, str]:
    """The installed version of each named distribution; those not installed are left out."""
    from importlib import metadata

    versions = {}
    for dist in distributions:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def keras_backend() -> str:
    """The Keras backend this process trains with: ``"tensorflow"`` (the default) or ``"jax"`` (imports Keras)."""
    import keras

    return keras.backend.backend()


def library_versions() -> dict[str, str]:
    """Versions recorded with every run (for reports and reproducibility), with the Keras backend that trained it."""
    backend = keras_backend()
    libraries = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin") if backend == "jax" else (
        "tensorflow", "tensorflow-cpu")
    return {"python": platform.python_version(), "platform": platform.platform(), "backend": backend,
            **installed_versions(("metalab", *libraries, "keras", "numpy"))}


@dataclass
class Session:
    """Everything built for one run: the dataset, the algorithm and the task shape."""

    config: RunConfig
    dataset: Any
    algorithm: Any
    task: TaskSpec


def build_session(registry: Any, config: RunConfig, settings: Settings | None = None) -> Session:
    """Instantiates the run's dataset, backbone and algorithm (imports Keras)."""
    from metalab.core.contract.manager import check_factory_result

    # The plugins first: a missing one (its plugin failed to load) fails before Keras is imported.
    dataset_spec = registry.dataset(config.dataset)
    algorithm_spec = registry.algorithm(config.algorithm)
    backbone_spec = registry.backbone(config.backbone)
    import keras

    settings = settings or load_settings()
    keras.utils.set_random_seed(config.seed)
    dataset = check_factory_result(
        dataset_spec, dataset_spec.factory(dataset_spec.params(**config.dataset_params), settings.data_context()),
        registry=registry)
    input_shape = tuple(dataset.input_shape)
    backbone_params = backbone_spec.params(**config.backbone_params)
    regression = dataset_spec.kind == "regression"
    train_split = None if regression else dataset.splits.get("train")
    task = TaskSpec(
        kind=dataset_spec.kind,
        input_shape=input_shape,
        output_dim=int(dataset.output_dim) if regression else int(config.ways),
        ways=1 if regression else int(config.ways),
        shots=int(config.shots),
        queries=int(config.queries),
        total_steps=int(config.steps),
        make_backbone=lambda: check_factory_result(backbone_spec, backbone_spec.factory(backbone_params, input_shape),
                                                   registry=registry),
        num_train_classes=0 if train_split is None else int(train_split.num_classes),
    )
    set_matmul_precision(config.precision)
    with dtype_policy(config.precision):
        algorithm = check_factory_result(
            algorithm_spec, algorithm_spec.factory(algorithm_spec.params(**config.algorithm_params), task),
            registry=registry)
    return Session(config=config, dataset=dataset, algorithm=algorithm, task=task)


def set_matmul_precision(precision: str) -> None:
    """Sets how this process computes float32 matrix products and convolutions, for ``RunConfig.precision``.

    ``"float32"`` computes them in full float32 everywhere. TensorFlow and JAX would otherwise use TensorFloat-32
    (a 10-bit mantissa) on GPUs that have it (A100, H100): on an H100 that moved the second-order MAML
    meta-gradient by 7% (benchmarks/RESULTS.md). ``"tf32"`` asks for TensorFloat-32, which is faster there. The
    mixed precisions keep the backend's default. CPUs compute float32 either way. It applies to computations
    traced (compiled) after the call, in the whole process: a training worker runs one run.
    """
    tf32 = precision == "tf32"
    exact = precision == "float32"
    if keras_backend() == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision",
                          "tensorfloat32" if tf32 else "highest" if exact else None)
    else:
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(not exact)


@contextlib.contextmanager
def dtype_policy(name: str):
    """Builds the layers made inside under Keras dtype policy ``name`` (e.g. ``"mixed_bfloat16"``), then restores.

    Layers keep the policy they were built with, so only model construction needs it; ``"float32"`` leaves the
    current policy alone (tests that run in float64 set their own).
    """
    import keras

    if name in ("", "float32", "tf32"):  # tf32 is float32 with faster GPU matrix units (set_matmul_precision)
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def device_id(device: str) -> str:
    """A ``RunConfig.device`` value other than "auto" as ``KIND:INDEX`` (``"gpu"`` -> ``"GPU:0"``)."""
    name = device.upper().lstrip("/").removeprefix("DEVICE:")
    return name if ":" in name else name + ":0"


def jax_devices() -> dict[str, Any]:
    """JAX's devices by ``KIND:INDEX`` (``"CPU:0"``, ``"GPU:0"``, ...), numbered per kind as TensorFlow does."""
    import jax

    devices: dict[str, Any] = {}
    for kind in ("cpu", "gpu", "tpu"):
        try:
            found = jax.devices(kind)
        except RuntimeError:  # no such platform here
            continue
        devices.update({f"{kind.upper()}:{i}": d for i, d in enumerate(found)})
    return devices


@contextlib.contextmanager
def device_scope(device: str):
    """Places the run on ``device``: "auto" (the backend's default placement), "cpu", "gpu", "GPU:1", ...

    On the JAX backend the device becomes JAX's default device, so variables made and steps compiled inside
    live and run there.
    """
    if device in ("", "auto"):
        yield
        return
    name = device_id(device)
    if keras_backend() == "jax":
        import jax

        devices = jax_devices()
        if name not in devices:
            raise ValueError(
                f"device: not available here (available: {', '.join(devices)}). Received: device={device!r}"
            )
        with jax.default_device(devices[name]):
            yield
        return
    import tensorflow as tf

    available = [d.name.removeprefix("/device:") for d in tf.config.list_logical_devices()]
    if name not in available:
        raise ValueError(f"device: not available here (available: {', '.join(available)}). Received: device={device!r}")
    with tf.device("/device:" + name):
        yield


def thread_counts(settings: Settings, meta_batch_size: int, cpus: int | None = None) -> tuple[int, int]:
    """Returns ``(intra_op, inter_op)`` threads for a training worker; 0 leaves TensorFlow's default.

    A compiled step that unrolls several independent tasks (MAML, Reptile, ... with a meta-batch of 2 or more)
    runs fastest with one thread per op and one op per core at once: the tasks' ops then run side by side
    instead of every small convolution being split across cores (second-order MAML, meta-batch 32, 2 cores:
    1.7 vs 1.35 it/s, benchmarks/SPEED.md). A single episode (ProtoNet) is one chain of ops and keeps the
    default, which splits each op. ``settings.intra_op_threads``/``inter_op_threads`` override either count.

    Args:
        settings: metalab settings (``intra_op_threads``, ``inter_op_threads``; 0 means choose here).
        meta_batch_size: Tasks per compiled step.
        cpus: Cores to plan for (default: ``os.cpu_count()``).
    """
    cpus = cpus or os.cpu_count() or 1
    intra, inter = (1, cpus) if meta_batch_size >= 2 and cpus >= 2 else (0, 0)
    return (settings.intra_op_threads or intra, settings.inter_op_threads or inter)


def configure_threads(intra_op: int, inter_op: int) -> bool:
    """Sets TensorFlow's thread pools (0 keeps a default); returns False if they could not be set.

    On the JAX backend nothing is set and the result is False: XLA's CPU thread pool has no runtime setting
    (only ``XLA_FLAGS`` read when JAX starts), and a compiled JAX step is one XLA program that schedules its own
    work, so the TensorFlow tuning above does not carry over.
    """
    if keras_backend() == "jax":
        return False
    import tensorflow as tf

    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        # The pools are fixed once the runtime has started (e.g. a second run in one process); keep them.
        return False
    return True


# -- checkpoints ----------------------------------------------------------------------------------------
# They live in .checkpoints (atomic writes, the last two files, manifests, verified loads); re-exported here
# because plugins, benchmarks and tests import them from the runner.

# -- training batches and cross-domain data -------------------------------------------------------------


def make_training_sampler(session: Session) -> Any:
    """The sampler of the run's training stream: episodes, or mini-batches for a ``"supervised"`` algorithm.

    A supervised algorithm may hold out part of the training split: with an attribute
    ``supervised_holdout_fraction`` above 0, :func:`~metalab.core.engine.sampling.holdout_rows` (seeded by the run's
    seed) picks those rows, the sampler never draws them, and an optional method
    ``algorithm.set_supervised_holdout(images, labels, to_float)`` receives them (images as the dataset stores
    them, labels the split's class indices, ``to_float`` the dataset's scaling) to score itself on them.

    On a dataset with ``supervised=True`` (every split holds every class) nothing is held out: the dataset's
    ``val`` split is that share already. An optional method ``algorithm.set_supervised_test(images, labels,
    to_float)`` receives the ``test`` split instead (e.g. MNIST's official test images), to report plain test
    accuracy.

    Raises:
        ValueError: If the algorithm's ``batch_kind`` is unknown, or a supervised algorithm meets a regression
            dataset or has no valid ``batch_size``, or a ``supervised`` dataset's test classes differ from its
            training classes.
    """
    from metalab.core.engine.sampling import SupervisedSampler, holdout_rows, make_sampler

    config, algorithm = session.config, session.algorithm
    batch_kind = getattr(algorithm, "batch_kind", "episodic")
    if batch_kind == "episodic":
        return make_sampler(session.dataset, "train", session.task.ways, config.shots, config.queries, config.seed)
    if batch_kind == "supervised":
        exclude = None
        fraction = float(getattr(algorithm, "supervised_holdout_fraction", 0.0) or 0.0)
        if getattr(session.dataset, "supervised", False):
            _hand_supervised_test(session)
        elif fraction > 0:
            split = session.dataset.splits["train"]
            exclude = holdout_rows(split.labels, fraction, config.seed, "train")
            receive = getattr(algorithm, "set_supervised_holdout", None)
            if callable(receive):
                receive(split.images[exclude], np.asarray(split.labels)[exclude].astype(np.int32),
                        session.dataset.to_float)
        return SupervisedSampler(session.dataset, "train", getattr(algorithm, "batch_size", None), config.seed,
                                 exclude=exclude)
    raise ValueError(
        f"Algorithm {config.algorithm!r}: batch_kind must be 'episodic' or 'supervised'. Received: batch_kind={batch_kind!r}"
    )


def _hand_supervised_test(session: Session) -> None:
    """Gives a supervised algorithm the test split of a ``supervised`` dataset, if it takes one."""
    receive = getattr(session.algorithm, "set_supervised_test", None)
    if not callable(receive):
        return
    train, test = session.dataset.splits["train"], session.dataset.splits["test"]
    if list(test.class_names) != list(train.class_names):
        raise ValueError(
            f"Dataset {session.config.dataset!r} says supervised=True, so its test split must hold the training "
            f"classes in the same order. Received: train classes={list(train.class_names)[:10]}, "
            f"test classes={list(test.class_names)[:10]}"
        )
    receive(test.images, np.asarray(test.labels).astype(np.int32), session.dataset.to_float)


def cross_domain_session(session: Session, registry: Any, settings: Settings | None = None) -> Session | None:
    """The run's session with its dataset swapped for ``config.test_dataset`` (``None`` when the run has none).

    Images of another height and width are resized (bilinear) to the run's input shape, so a model trained on
    28x28 Omniglot meets 8x8 digits as 28x28 images (only the ``test`` split is kept then); any other difference
    of shape is refused.

    Raises:
        ConfigError: If the test dataset's inputs cannot be brought to the run's input shape.
    """
    from metalab.core.engine.config import ConfigError
    from metalab.core.engine.sampling import resize_images

    config = session.config
    if not config.test_dataset:
        return None
    settings = settings or load_settings()
    spec = registry.dataset(config.test_dataset)
    from metalab.core.contract.manager import check_factory_result

    dataset = check_factory_result(spec, spec.factory(spec.params(**config.test_dataset_params),
                                                      settings.data_context()), registry=registry)
    want, have = tuple(session.task.input_shape), tuple(dataset.input_shape)
    if have != want:
        if len(want) != 3 or len(have) != 3 or want[2] != have[2]:
            raise ConfigError(
                f"test_dataset {config.test_dataset!r} has inputs of shape {have}, but the run trains on "
                f"{config.dataset!r} with inputs of shape {want}; only images that differ in height and width "
                f"can be resized. Received: test_dataset={config.test_dataset!r}"
            )
        dataset = resize_images(dataset, want[:2], splits=("test",))
    cross_config = config.model_copy(update={"dataset": config.test_dataset,
                                             "dataset_params": dict(config.test_dataset_params)})
    return Session(config=cross_config, dataset=dataset, algorithm=session.algorithm, task=session.task)


def cross_domain_episodes(cross: Session, episodes: int) -> Any:
    """The fixed test episodes of the cross-domain dataset (its ``test`` split, the run's episode shape).

    Returns:
        A :class:`~metalab.core.engine.sampling.FixedEpisodes` (indices only; ``.batch()`` builds the arrays).

    Raises:
        ConfigError: If that split cannot serve the run's episodes (too few classes or samples per class).
    """
    from metalab.core.engine.config import ConfigError
    from metalab.core.engine.sampling import fixed_episodes

    cfg = cross.config
    key = json.dumps([cfg.dataset, cfg.dataset_params], sort_keys=True)
    try:
        return fixed_episodes(cross.dataset, "test", cross.task.ways, cfg.shots, cfg.queries, episodes, seed=EVAL_SEED,
                              key=key)
    except ValueError as exc:
        raise ConfigError(f"test_dataset {cfg.dataset!r}: {exc}") from None


# -- evaluation -----------------------------------------------------------------------------------------


def fixed_batch(session: Session, split: str, episodes: int, seed: int = EVAL_SEED) -> TaskBatch:
    """The fixed, cached tasks every algorithm is scored on for this dataset, split and episode shape."""
    from metalab.core.engine.sampling import fixed_tasks

    cfg = session.config
    key = json.dumps([cfg.dataset, cfg.dataset_params], sort_keys=True)
    return fixed_tasks(session.dataset, split, session.task.ways, cfg.shots, cfg.queries, episodes, seed=seed, key=key)


def fixed_episode_set(session: Session, split: str, episodes: int, seed: int = EVAL_SEED) -> Any:
    """Like :func:`fixed_batch`, but materialises the episodes one chunk at a time (600 20-way 5-shot episodes
    would otherwise take ~750 MB at once)."""
    from metalab.core.engine.sampling import fixed_episodes

    cfg = session.config
    key = json.dumps([cfg.dataset, cfg.dataset_params], sort_keys=True)
    return fixed_episodes(session.dataset, split, session.task.ways, cfg.shots, cfg.queries, episodes, seed=seed,
                          key=key)


def make_optimizer(algorithm: Any, precision: str = "float32") -> Any:
    """The algorithm's meta-optimizer, wrapped in dynamic loss scaling for ``precision="mixed_float16"``.

    float16's narrow exponent range lets small gradients underflow; Keras's ``LossScaleOptimizer`` keeps a scale
    (2**15 to start, doubled after 2000 finite steps, halved and the step skipped on a non-finite one) that
    :func:`compile_train_step` multiplies into every loss it differentiates. bfloat16 has float32's exponent
    range and needs none.
    """
    import keras

    optimizer = algorithm.make_optimizer()
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def compile_train_step(algorithm: Any, optimizer: Any, *, jit_compile: bool = False) -> Callable[[TaskBatch], dict[str, Any]]:
    """One compiled meta-training step (meta-gradients, then the optimizer's update) taking a :class:`TaskBatch`.

    Each call of this function makes a new graph; the runner and the probe both step through it. With
    ``jit_compile`` the step is also compiled by XLA (the run config's ``jit_compile``). With a
    ``LossScaleOptimizer`` (:func:`make_optimizer` for float16) every gradient the algorithm takes, inner-loop ones
    included, is computed on the scaled loss and returned unscaled (:func:`functional.loss_scaling`); the
    meta-gradients are scaled again for the optimizer, which checks them for overflow and unscales them.
    """
    import keras

    from metalab.core.engine import functional

    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    # The loss-scale optimizer's stateful apply assigns inside lax.cond branches, which a compiled JAX step cannot
    # hold; its stateless apply returns the new values, assigned here (the step's StatelessScope records them).
    stateless = scaled and keras_backend() == "jax"

    def apply(grads: list[Any]) -> None:
        if not stateless:
            optimizer.apply(grads, algorithm.trainable_variables)
            return
        weights, slots = optimizer.stateless_apply([keras.ops.copy(v) for v in optimizer.variables], grads,
                                                   [keras.ops.copy(v) for v in algorithm.trainable_variables])
        for variable, value in zip([*algorithm.trainable_variables, *optimizer.variables], [*weights, *slots]):
            variable.assign(value)

    def train_step(sx: Any, sy: Any, qx: Any, qy: Any, extras: dict[str, Any] | None = None) -> dict[str, Any]:
        batch = TaskBatch(sx, sy, qx, qy, extras)
        if not scaled:
            grads, metrics = algorithm.meta_gradients(batch)
        else:
            # A copy, read now: on TensorFlow convert_to_tensor would hand back the variable, read after the update.
            scale = keras.ops.copy(optimizer.dynamic_scale)
            with functional.loss_scaling(scale):
                grads, metrics = algorithm.meta_gradients(batch)
            grads = [g * keras.ops.cast(scale, g.dtype) for g in grads]
            metrics = {**metrics, "loss_scale": scale}
        apply(grads)
        return metrics

    if not optimizer.built:
        # Its variables must exist before tracing: a compiled JAX step takes them as inputs.
        optimizer.build(algorithm.trainable_variables)
    compiled = functional.compile(train_step, jit_compile=jit_compile,
                                  variables=[*algorithm.variables, *optimizer.variables])

    def step(batch: TaskBatch) -> dict[str, Any]:
        # Graphs take tensors, not objects: pass the arrays, and the extras only when the batch has them.
        return compiled(*batch.as_tuple(), batch.extras) if batch.extras else compiled(*batch.as_tuple())

    def memory_plan(batch: TaskBatch) -> dict[str, int] | None:
        """XLA's buffer assignment of the step for this batch's shapes (JAX, after a first step), else ``None``.

        ``peak_bytes`` is what one step holds at most: its arguments (variables, batch), outputs and temporaries.
        """
        analysis = getattr(compiled, "memory_analysis", None)
        if analysis is None:
            return None
        return analysis(*batch.as_tuple(), batch.extras) if batch.extras else analysis(*batch.as_tuple())

    step.memory_plan = memory_plan
    return step


def compile_evaluate(algorithm: Any) -> Callable:
    """``algorithm.evaluate`` compiled over the four task arrays (compiled graphs take tensors, not objects)."""
    from metalab.core.engine import functional

    # One graph per task count: a shared graph would generalise the task axis to None, and algorithms that
    # unroll their task loop need it static.
    graphs: dict[int, Callable] = {}

    def evaluate(sx: Any, sy: Any, qx: Any, qy: Any, extras: dict[str, Any] | None = None) -> dict[str, Any]:
        n = int(sx.shape[0])
        if n not in graphs:
            graphs[n] = functional.compile(lambda sx, sy, qx, qy, extras=None: algorithm.evaluate(
                TaskBatch(sx, sy, qx, qy, extras)), variables=algorithm.variables)
        return graphs[n](sx, sy, qx, qy, extras=extras)

    return evaluate


def evaluate_batch(session: Session, batch: Any, evaluate_fn: Callable | None = None) -> dict[str, Any]:
    """Scores ``session.algorithm`` on every task of ``batch`` and returns means with 95% confidence intervals.

    ``batch`` is a :class:`TaskBatch` or a lazily materialised episode set (:func:`fixed_episode_set`).

    Returns:
        ``accuracy`` (0–1) or ``mse``, ``ci95``, ``loss``, ``episodes`` and, for gradient-based algorithms,
        ``curve`` (mean score after 0..steps inner steps) with ``curve_ci95``.
    """
    from metalab.core.engine import functional

    evaluate_fn = evaluate_fn or compile_evaluate(session.algorithm)
    if isinstance(batch, TaskBatch):
        n = batch.num_tasks

        def take(start: int, stop: int) -> TaskBatch:
            extras = {k: v[start:stop] for k, v in batch.extras.items()} if batch.extras else None
            return TaskBatch(*(a[start:stop] for a in batch.as_tuple()), extras=extras)
    else:
        n = batch.n

        def take(start: int, stop: int) -> TaskBatch:
            return batch.batch(start, stop)

    def pad(a: Any, size: int) -> np.ndarray:
        a = np.asarray(a)
        return np.concatenate([a, np.repeat(a[-1:], chunk_size - size, axis=0)]) if size < chunk_size else a

    chunk_size = min(EVAL_CHUNK, n)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, chunk_size):
        chunk = take(start, min(start + chunk_size, n))
        size = chunk.num_tasks
        # Pad the last chunk to the full size: one fixed shape means one compiled graph with a static task axis.
        arrays = [pad(a, size) for a in chunk.as_tuple()]
        extras = {k: pad(v, size) for k, v in chunk.extras.items()} if chunk.extras else None
        out = evaluate_fn(*arrays, extras) if extras else evaluate_fn(*arrays)
        for key in ("loss", "accuracy", "curve"):
            if key in out:
                parts.setdefault(key, []).append(functional.to_numpy(out[key])[:size])
    values = {k: np.concatenate(v, axis=0) for k, v in parts.items()}

    def ci95(x: np.ndarray) -> float:
        return float(1.96 * x.std(axis=0, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")

    result: dict[str, Any] = {"episodes": int(n), "loss": float(values["loss"].mean())}
    if session.task.kind == "classification":
        result["accuracy"] = float(values["accuracy"].mean())
        result["ci95"] = ci95(values["accuracy"])
    else:
        # Regression is scored by the query MSE after adaptation (its loss).
        result["mse"] = result["loss"]
        result["ci95"] = ci95(values["loss"])
    if "curve" in values:
        curve = values["curve"]
        result["curve"] = [float(v) for v in curve.mean(axis=0)]
        result["curve_ci95"] = [float(1.96 * c.std(ddof=1) / math.sqrt(len(c))) if len(c) > 1 else float("nan")
                                for c in curve.T]
    return result


# -- the loop -------------------------------------------------------------------------------------------


class _CancelWatch:
    """Polls the store for a cancel request (at most twice a second) and turns SIGTERM/SIGINT into one."""

    def __init__(self, store: RunStore, run_id: str, max_seconds: float = 0):
        self.store, self.run_id = store, run_id
        # The wall-time cap of this worker session (0: none): past it the run stops like a cancel, resumable.
        self.max_seconds = float(max_seconds or 0)
        self._deadline = time.monotonic() + self.max_seconds if self.max_seconds else None
        self._last = 0.0
        self._signalled = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_CancelWatch":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signalled = True

    def check(self) -> None:
        now = time.monotonic()
        if self._signalled:
            raise RunCancelled("signal")
        if self._deadline is not None and now >= self._deadline:
            raise RunCancelled("wall_time")
        if now - self._last >= 0.5:
            self._last = now
            if self.store.cancel_requested(self.run_id):
                raise RunCancelled("requested")


def train_run(
    store: RunStore,
    run_id: str,
    registry: Any,
    *,
    settings: Settings | None = None,
    progress: ProgressFn | None = None,
) -> str:
    """Meta-trains the run ``run_id`` from its stored config (resuming from its checkpoint if there is one).

    Every outcome is recorded in the store: ``completed``, ``cancelled`` (checkpoint kept; resumable),
    ``interrupted`` (over the wall-time cap; resumable) or ``failed`` with the traceback. Returns the final status;
    never raises for a failure inside training. Returns ``"deleted"`` when the run was deleted while it trained:
    nothing is left to record to, so the worker ends quietly.
    """
    run = store.get_run(run_id)  # an unknown id still raises
    try:
        return _train_run(store, run.id, registry, settings=settings, progress=progress)
    except RunNotFoundError:
        # Deleted under its worker (runs delete --force, the dashboard): every write to it now says so, and a
        # checkpoint saved on the way out may have made its folder again.
        import shutil

        shutil.rmtree(store.run_dir(run.id), ignore_errors=True)
        return "deleted"


def _train_run(store: RunStore, run_id: str, registry: Any, *, settings: Settings | None = None,
               progress: ProgressFn | None = None) -> str:
    from metalab.core.engine import functional

    settings = settings or load_settings()
    run = store.get_run(run_id)
    config = RunConfig(**run.config)
    store.update_run(
        run_id, status="running", pid=os.getpid(), host=os.uname().nodename, started=time.time(),
        finished=None, error=None, traceback=None, cancel_requested=0, versions=library_versions(),
    )
    step = 0
    session = optimizer = sampler = None
    try:
        with device_scope(config.device), _CancelWatch(store, run_id, settings.max_run_seconds) as watch:
            session = build_session(registry, config, settings)
            store.update_run(run_id, device=_device_name(config.device))
            algorithm = session.algorithm
            sampler = make_training_sampler(session)
            # Loaded (and its episodes checked) before training, so a bad test dataset fails the run at once.
            cross = cross_domain_session(session, registry, settings)
            cross_episodes = cross_domain_episodes(cross, config.test_episodes) if cross and config.eval_at_end else None
            optimizer = make_optimizer(algorithm, config.precision)
            optimizer.build(algorithm.trainable_variables)
            # The newest usable checkpoint (the previous one if the newest is bad, with a recorded warning);
            # the step recorded and the metrics kept are those of the checkpoint actually restored.
            restored = restore_checkpoint(store.run_dir(run_id), algorithm, optimizer, sampler,
                                          total_steps=config.steps, config=run.config, quarantine=True)
            if restored is not None:
                step = restored.step
                record_warning(store, run_id, restored, "resume")
                store.truncate_metrics(run_id, step)
            store.update_run(run_id, step=step)

            step_fn = compile_train_step(algorithm, optimizer, jit_compile=config.jit_compile)
            eval_fn = compile_evaluate(algorithm)
            val_batch = fixed_episode_set(session, "val", config.val_episodes)
            window: dict[str, list[float]] = {}
            t_window = time.perf_counter()
            steps_in_window = 0
            while step < config.steps:
                watch.check()
                batch = sampler.sample_batch(algorithm.meta_batch_size)
                metrics = step_fn(batch)
                step += 1
                steps_in_window += 1
                for name, value in metrics.items():
                    number = float(functional.to_numpy(value))
                    if not math.isfinite(number):
                        raise FloatingPointError(
                            f"Training diverged: {name} became {number} at step {step}; lower the learning rates "
                            f"(e.g. inner_lr, outer_lr). Received: {name}={number}"
                        )
                    window.setdefault(name, []).append(number)
                logged: dict[str, float] = {}
                if step % config.log_every == 0 or step == config.steps:
                    elapsed = time.perf_counter() - t_window
                    logged = {f"train/{k}": float(np.mean(v)) for k, v in window.items()}
                    logged["train/steps_per_s"] = steps_in_window / max(elapsed, 1e-9)
                    window, steps_in_window, t_window = {}, 0, time.perf_counter()
                if step % config.val_every == 0 or step == config.steps:
                    val = evaluate_batch(session, val_batch, eval_fn)
                    logged.update({f"val/{k}": v for k, v in val.items() if isinstance(v, float)})
                if logged:
                    store.log_metrics(run_id, step, logged)
                    store.update_run(run_id, step=step)
                if step % config.checkpoint_every == 0 and step < config.steps:
                    save_checkpoint(store, run_id, step, algorithm, optimizer, sampler, config=run.config)
                if progress:
                    progress(step, config.steps, logged)
            save_checkpoint(store, run_id, step, algorithm, optimizer, sampler, config=run.config)
            if cross_episodes is not None:
                # Recorded before the in-domain score, so "test" stays the newest evaluation.
                result = evaluate_batch(cross, cross_episodes, eval_fn)
                store.add_evaluation(run_id, f"cross:{config.test_dataset}", result["episodes"], result)
                store.log_metrics(run_id, step, {f"cross/{k}": v for k, v in result.items() if isinstance(v, float)})
            if config.eval_at_end:
                result = evaluate_batch(session, fixed_episode_set(session, "test", config.test_episodes), eval_fn)
                store.add_evaluation(run_id, "test", result["episodes"], result)
                store.log_metrics(run_id, step, {f"test/{k}": v for k, v in result.items() if isinstance(v, float)})
            # Figures that need the model (the dashboard has no TensorFlow); best effort, never fails the run.
            from metalab.core.reports.data import write_report_data

            write_report_data(store, run_id, session, registry)
        store.update_run(run_id, status="completed", finished=time.time(), step=step)
        return "completed"
    except RunCancelled as stop:
        if session is not None and optimizer is not None and sampler is not None:
            try:
                save_checkpoint(store, run_id, step, session.algorithm, optimizer, sampler, config=run.config)
            except FloatingPointError as exc:  # diverged weights are never kept; the previous checkpoint stays
                store.update_run(run_id, status="failed", finished=time.time(), step=step,
                                 error=f"{type(exc).__name__}: {exc}", traceback=None)
                return "failed"
        if stop.args and stop.args[0] == "wall_time":
            store.update_run(
                run_id, status="interrupted", finished=time.time(), step=step,
                error=f"Stopped at the wall-time cap of {settings.max_run_seconds} s per run here "
                      f"(METALAB_MAX_RUN_SECONDS) after step {step}; its owner can resume it from the checkpoint.",
            )
            return "interrupted"
        store.update_run(run_id, status="cancelled", finished=time.time(), step=step)
        return "cancelled"
    except RunNotFoundError:
        raise  # deleted: train_run ends quietly
    except (Exception, SystemExit, GeneratorExit) as exc:  # noqa: BLE001 - every failure is recorded, never lost
        # A checkpoint the run cannot use is the user's file problem, fully named in the message: no traceback.
        trace = None if isinstance(exc, CheckpointError) else traceback.format_exc()
        store.update_run(
            run_id, status="failed", finished=time.time(), step=step,
            error=f"{type(exc).__name__}: {exc}", traceback=trace,
        )
        return "failed"


def default_device_id() -> str:
    """The device a run with ``device="auto"`` lands on, as ``KIND:INDEX``: the backend's first GPU, else the CPU."""
    if keras_backend() == "jax":
        import jax

        # JAX's default device is its first accelerator, else the CPU; numbered per kind as jax_devices does.
        default = jax.devices()[0]
        index = [d.id for d in jax.devices(default.platform)].index(default.id)
        return f"{default.platform.upper()}:{index}"
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name.removeprefix("/device:") if gpus else "CPU:0"


def _device_name(device: str) -> str:
    """What the run store records as a run's device: ``device`` as configured, or where "auto" placed it."""
    return device if device not in ("", "auto") else "/device:" + default_device_id()


def evaluate_run(
    store: RunStore,
    run_id: str,
    registry: Any,
    *,
    episodes: int | None = None,
    split: str = "test",
    settings: Settings | None = None,
    record: bool = True,
) -> dict[str, Any]:
    """Scores a run's latest checkpoint on the fixed meta-test episodes (mean, 95% CI, adaptation curve).

    ``split`` is ``"train"``, ``"val"``, ``"test"``, ``"cross:<dataset id>"`` (the run's ``test_dataset``) or
    ``"benchmark:<name>"``: one of the dataset's named task sets (``ClassificationDataset.benchmarks``, e.g.
    Omniglot's ``lake20``), scored with the episode shape that set has.
    """
    if split.startswith("benchmark:"):
        return _evaluate_benchmark(store, run_id, registry, split.partition(":")[2], settings=settings, record=record)
    run = store.get_run(run_id)
    config = RunConfig(**run.config)
    _require_checkpoint(store, run)
    with device_scope(config.device):
        session = build_session(registry, config, settings)
        _restore_for_scoring(store, run, session.algorithm)
        n = episodes or config.test_episodes
        if split.startswith("cross:"):
            if not config.test_dataset or split != f"cross:{config.test_dataset}":
                raise ValueError(
                    f"Run {run.id} names the cross-domain test dataset {config.test_dataset!r}; the split must be "
                    f"'cross:<that id>'. Received: split={split!r}"
                )
            cross = cross_domain_session(session, registry, settings)
            result = evaluate_batch(cross, cross_domain_episodes(cross, n))
        else:
            result = evaluate_batch(session, fixed_episode_set(session, split, n))
    if record:
        store.add_evaluation(run.id, split, n, result)
    return result


def _require_checkpoint(store: RunStore, run: Any) -> None:
    if not any(path.exists() for path in checkpoint_files(store.run_dir(run.id))):
        raise FileNotFoundError(
            f"Run {run.id} has no checkpoint yet (status {run.status}); train or resume it first. Received: run={run.id!r}"
        )


def _restore_for_scoring(store: RunStore, run: Any, algorithm: Any) -> int:
    """Loads the run's newest usable checkpoint into ``algorithm`` (weights only; NaN/inf refused); its step."""
    restored = restore_checkpoint(store.run_dir(run.id), algorithm, total_steps=int(run.config.get("steps", 0)) or None,
                                  config=run.config)
    if restored is None:  # removed since _require_checkpoint looked
        _require_checkpoint(store, run)
        raise FileNotFoundError(f"Run {run.id}: its checkpoint disappeared while loading. Received: run={run.id!r}")
    record_warning(store, run.id, restored, "evaluate")
    return restored.step


def _evaluate_benchmark(store: RunStore, run_id: str, registry: Any, name: str, *, settings: Settings | None,
                        record: bool) -> dict[str, Any]:
    run = store.get_run(run_id)
    config = RunConfig(**run.config)
    _require_checkpoint(store, run)
    with device_scope(config.device):
        session = build_session(registry, config, settings)
        available = getattr(session.dataset, "benchmarks", {}) or {}
        if name not in available:
            raise ValueError(
                f"Dataset {config.dataset} has no benchmark task set {name!r} (available: "
                f"{', '.join(sorted(available)) or 'none'}). Received: benchmark={name!r}"
            )
        tasks = available[name]()
        ways = int(np.max(tasks.support_y)) + 1
        shots = int(tasks.support_y.shape[1]) // ways
        queries = max(int(tasks.query_y.shape[1]) // ways, 1)
        if (ways, shots, queries) != (session.task.ways, config.shots, config.queries):
            # The set has its own episode shape: rebuild the algorithm for it and load the trained weights.
            shaped = config.model_copy(update={"ways": ways, "shots": shots, "queries": queries})
            session = build_session(registry, shaped, settings)
        try:
            _restore_for_scoring(store, run, session.algorithm)
        except CheckpointMismatchError as exc:
            raise ValueError(
                f"Run {run.id} ({config.algorithm}, trained {config.ways}-way) cannot be scored on {name!r}, which is "
                f"{ways}-way {shots}-shot: its weights depend on the number of ways. {exc}"
            ) from None
        result = evaluate_batch(session, tasks)
    result["benchmark"] = name
    if record:
        store.add_evaluation(run.id, f"benchmark:{name}", result["episodes"], result)
    return result


def run_worker_main(argv: list[str] | None = None) -> int:
    """Entry point of a training worker process: ``python -m metalab.core.engine.runner STORE RUN_ID``."""
    from metalab.core.contract.manager import make_plugin_manager

    argv = list(sys.argv[1:] if argv is None else argv)
    store_path, run_id = argv[0], argv[1]
    settings = load_settings()
    from metalab.core.data.info import configure_pixel_cap

    configure_pixel_cap(settings.max_image_pixels)
    store = RunStore(store_path)
    try:
        registry = make_plugin_manager(settings=settings, strict=False)
    except Exception as exc:  # noqa: BLE001 - a run must never stay queued because plugins could not load
        store.update_run(run_id, status="failed", finished=time.time(),
                         error=f"The plugins could not be loaded: {type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc())
        return 1
    try:
        config = RunConfig(**store.get_run(run_id).config)
        params = registry.algorithm(config.algorithm).params(**config.algorithm_params)
        meta_batch = int(getattr(params, "meta_batch_size", 1))
    except Exception:  # noqa: BLE001 - a bad config is recorded as the run's failure by train_run
        meta_batch = 1
    # The worker is a fresh process: its thread pools can still be chosen before TensorFlow starts.
    configure_threads(*thread_counts(settings, meta_batch))
    try:
        status = train_run(store, run_id, registry, settings=settings)
    except RunNotFoundError:
        return 0  # deleted before its worker started
    return 0 if status in ("completed", "cancelled", "interrupted", "deleted") else 1


if __name__ == "__main__":
    raise SystemExit(run_worker_main())

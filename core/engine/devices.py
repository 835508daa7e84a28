"""Where and how a run computes: device ids and scopes, thread pools, matrix precision, dtype policies, versions.

Everything here reads or sets process-wide state of the Keras backend (TensorFlow, or JAX under
``KERAS_BACKEND=jax``); the training worker, the probe and the prediction job call it before they build a model.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from typing import Any

from metalab.core.settings import Settings


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
    """Versions recorded with every run (for reports and reproducibility), with the Keras backend that trained it
    and, on TensorFlow, whether its CPU kernels were oneDNN's (``tensorflow_onednn``: ``on``, ``off`` or
    ``unknown``)."""
    backend = keras_backend()
    libraries = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin") if backend == "jax" else (
        "tensorflow", "tensorflow-cpu")
    versions = {"python": platform.python_version(), "platform": platform.platform(), "backend": backend,
                **installed_versions(("metalab", *libraries, "keras", "numpy"))}
    if backend == "tensorflow":
        onednn = onednn_enabled()
        versions["tensorflow_onednn"] = "unknown" if onednn is None else "on" if onednn else "off"
    return versions


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


def device_name(device: str) -> str:
    """What the run store records as a run's device: ``device`` as configured, or where "auto" placed it."""
    return device if device not in ("", "auto") else "/device:" + default_device_id()


#: TensorFlow's switch for its oneDNN kernels (convolutions, pooling, batch norm and matmuls on x86 CPUs).
ONEDNN_SWITCH = "TF_ENABLE_ONEDNN_OPTS"


def cpu_kernel_environment(environ: dict[str, str] | None = None, machine: str | None = None,
                           system: str | None = None) -> dict[str, str]:
    """The variables that make TensorFlow compute with oneDNN on every x86-64 Linux CPU; ``{}`` where none is due.

    TensorFlow's Linux wheels turn their oneDNN kernels on only for CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or
    AMX; on any other x86 CPU (AVX2-only AMD EPYC, older Xeons) they fall back to Eigen's kernels. On ProtoNet's
    step those are 1.8x slower than oneDNN's AVX2 kernels, which PyTorch uses on every x86 CPU, so the same code
    was 1.6x the reference on one host and 0.77x on another (benchmarks/RESULTS.md, "Why AVX2 hosts were slow").
    metalab asks for oneDNN wherever it runs on x86-64 Linux: a run's kernels then depend on the CPU's vector
    width only, never on whether it has neural-network instructions. A ``TF_ENABLE_ONEDNN_OPTS`` the user set is
    kept (``0`` gives Eigen's kernels).

    Args:
        environ: The environment to look at (default: this process's).
        machine: ``platform.machine()`` (default: this host's).
        system: ``platform.system()`` (default: this host's).
    """
    environ = os.environ if environ is None else environ
    machine = (machine if machine is not None else platform.machine()).lower()
    system = system if system is not None else platform.system()
    if ONEDNN_SWITCH in environ or system != "Linux" or machine not in ("x86_64", "amd64"):
        return {}
    return {ONEDNN_SWITCH: "1"}


def configure_cpu_kernels() -> bool:
    """Applies :func:`cpu_kernel_environment` to this process (and those it starts); False if it came too late.

    TensorFlow reads the switch once, when it loads: call this before anything imports ``tensorflow`` or
    ``keras``. Every process that trains or predicts does (the worker's jobs, the prediction server, ``metalab
    train``, sweep trials); the dashboard never loads TensorFlow.

    Returns:
        True if TensorFlow has not loaded yet (what is set now takes effect), False if it already has.
    """
    for name, value in cpu_kernel_environment().items():
        os.environ.setdefault(name, value)
    return "tensorflow" not in sys.modules


def onednn_enabled() -> bool | None:
    """Whether this process's TensorFlow computes with oneDNN (imports TensorFlow); None on the JAX backend, or
    where this TensorFlow does not say (the answer comes from one of its internal modules)."""
    if keras_backend() == "jax":
        return None
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


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

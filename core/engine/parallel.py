"""One run across devices: each meta-batch's tasks split across the local devices, the meta-gradients averaged.

``RunConfig.devices`` (``--set devices=all|N``) chooses the devices: the machine's GPUs (or TPUs) when it has
any, else its CPU devices (one unless split, see :func:`configure_cpu_devices`). Every device computes the
algorithm's ``meta_gradients`` on ``T / N`` consecutive tasks of the meta-batch; each result is a mean over its
tasks, so the mean over devices is the one-device mean over all ``T`` tasks (``T`` must divide evenly). The
optimizer then applies that mean once. On TensorFlow this is a ``tf.distribute.MirroredStrategy`` in the
compiled custom step: variables built under its scope are mirrored on every device, and each replica hands Keras's
optimizer its gradients divided by ``N``; the optimizer all-reduces them as a sum (it must be applied in replica
context: its update goes through ``merge_call``) and updates the mirrored weights once. On JAX it is a
``jax.shard_map`` over a one-axis mesh of the devices inside the ``jax.jit`` step (parameters replicated, the task
axis split, gradients averaged with ``lax.pmean``), then the optimizer's update; ``keras.distribution``'s
``DataParallel`` lays out ``fit``'s variables and inputs, but a custom compiled step still has to say where the
tasks split and where the mean is taken, which ``shard_map`` says explicitly.

Variables an algorithm assigns inside its step (batch-norm running statistics, counters) are assigned once,
after the devices are done, from the values each device computed from the same starting value, combined by the
variable's Keras ``aggregation``: ``"sum"`` adds every device's change (counters), ``"only_first_replica"``
takes the first device's value, and ``"none"`` (the default) or ``"mean"`` their mean (running statistics: each
device's moving average over its own tasks, averaged). Only trainable weights follow the one-device step
exactly; a running statistic threaded task after task through ``T`` tasks on one device is threaded through
``T / N`` on each, then averaged. Integer state (a random generator's seed) takes the first device's value, so
the devices draw from the same generator state in a step.

Across hosts (several processes, :func:`join_hosts`): every process trains the same config, samples the same
meta-batch (same seed) and feeds only its own replicas' tasks; on TensorFlow a
``tf.distribute.MultiWorkerMirroredStrategy`` (ring all-reduce between the processes) takes MirroredStrategy's
place in the same compiled step, and ``devices`` then counts each process's devices (its GPUs, or its one CPU).
Assigned variables are gathered from every process's replicas before they are combined, so every process keeps the
same values. JAX is refused across hosts (see :func:`join_hosts`).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from metalab.core.contract.specs import TaskBatch

__all__ = ["DataParallel", "Hosts", "configure_cpu_devices", "device_count", "join_hosts", "joined_hosts",
           "local_devices", "make_data_parallel", "parse_hosts"]


def _backend() -> str:
    import keras

    return keras.backend.backend()


def configure_cpu_devices(count: int) -> bool:
    """Splits the CPU into ``count`` logical devices, before the backend starts; returns False if too late.

    For trying ``devices=N`` (and testing it) on a machine without GPUs: the devices share the same cores, so
    a run is no faster. TensorFlow: logical CPU devices; JAX: ``jax_num_cpu_devices``. ``count`` of 0 or 1
    changes nothing.
    """
    if count <= 1:
        return True
    if _backend() == "jax":
        import jax

        try:
            jax.config.update("jax_num_cpu_devices", int(count))
        except RuntimeError:  # the CPU backend has started
            return False
        return True
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * int(count))
    except RuntimeError:  # the runtime has started: its devices are fixed
        return False
    return True


def local_devices(device: str = "auto") -> list[str]:
    """The devices a data-parallel run may use, as ``KIND:INDEX``: accelerators if any, else CPU devices.

    Args:
        device: The run's ``device``: ``"auto"`` (GPUs/TPUs when present, else CPUs), or a kind or device name
            (``"cpu"``, ``"GPU:0"``) whose kind is used.
    """
    from metalab.core.engine.devices import device_id, jax_devices

    if _backend() == "jax":
        names = list(jax_devices())
    else:
        import tensorflow as tf

        names = [d.name.removeprefix("/device:") for d in tf.config.list_logical_devices()]
    by_kind: dict[str, list[str]] = {}
    for name in names:
        by_kind.setdefault(name.split(":")[0], []).append(name)
    if device not in ("", "auto"):
        return by_kind.get(device_id(device).split(":")[0], [])
    return by_kind.get("GPU") or by_kind.get("TPU") or by_kind.get("CPU", [])


@dataclass(frozen=True)
class Hosts:
    """The processes of one run across hosts: every process's ``host:port`` (the chief first) and this one's index."""

    addresses: tuple[str, ...]
    index: int

    @property
    def chief(self) -> bool:
        """Whether this process is the chief (index 0), the one that records the run."""
        return self.index == 0


_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def parse_hosts(hosts: str, host_index: int | str) -> Hosts | None:
    """The :class:`Hosts` of the ``hosts`` and ``host_index`` settings; ``None`` when ``hosts`` is empty.

    Args:
        hosts: ``METALAB_HOSTS`` (``metalab train --hosts``): every process's ``host:port``, comma-separated, the
            chief first; the same list on every process. An IPv6 address goes in brackets (``[::1]:2222``).
        host_index: ``METALAB_HOST_INDEX`` (``--host-index``): this process's place in ``hosts``; 0 is the chief.

    Raises:
        ConfigError: A malformed or repeated address, fewer than two, or an index outside the list. Messages end
            ``Received: hosts=...`` or ``Received: host_index=...``.
    """
    from metalab.core.engine.config import ConfigError

    text = (hosts or "").strip()
    if not text:
        return None
    addresses = tuple(part.strip() for part in text.split(","))
    for address in addresses:
        match = _ADDRESS.match(address)
        if not match or not 1 <= int(match.group(2)) <= 65535:
            raise ConfigError(
                f"hosts: expected every process's host:port, comma-separated, the chief first (e.g. "
                f"10.0.0.1:2222,10.0.0.2:2222); {address!r} is not a host name or address with a port from 1 to "
                f"65535. Received: hosts={hosts!r}")
    if len(set(addresses)) != len(addresses):
        raise ConfigError(f"hosts: every process needs its own host:port; an address is repeated. "
                          f"Received: hosts={hosts!r}")
    if len(addresses) < 2:
        raise ConfigError(f"hosts: a run across hosts needs at least two processes (one process needs no hosts "
                          f"setting). Received: hosts={hosts!r}")
    index = host_index
    if isinstance(index, str) and index.strip().isdigit():
        index = int(index.strip())
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(addresses):
        raise ConfigError(
            f"host_index: expected this process's place in hosts, from 0 (the chief) to {len(addresses) - 1}. "
            f"Received: host_index={host_index!r}")
    return Hosts(addresses, index)


#: The run across hosts this process joined (:func:`join_hosts`): at most one per process, since TensorFlow sets up
#: its collectives between processes only when it starts.
_JOINED: dict[str, Any] = {}


def join_hosts(hosts: Hosts, devices: int | str = 1, *, device: str = "auto") -> None:
    """Makes this process one of ``hosts`` for the run it trains next: call once, before the backend starts.

    On TensorFlow it builds the ``MultiWorkerMirroredStrategy`` of the processes (each process starts a gRPC server
    on its own ``host:port``; collectives between processes are a ring all-reduce) on this process's share of
    ``devices``: all its GPUs for ``"all"``, N of them for N; a process without GPUs trains on its one CPU device
    (``devices`` 1 or ``"all"``). It returns once every process has joined.

    Raises:
        ConfigError: The backend is JAX (not supported across hosts: the Keras variables of a JAX process are
            arrays of that process alone, and metalab's compiled step does not lay them out across processes);
            more devices than this machine has; or TensorFlow had already started (the run must be the first thing
            this process runs).
    """
    from metalab.core.engine.config import ConfigError

    if _JOINED:
        if _JOINED["hosts"] != hosts:
            raise ConfigError(f"hosts: this process has joined {','.join(_JOINED['hosts'].addresses)} already; "
                              f"start a new process for another run. Received: hosts={','.join(hosts.addresses)!r}")
        return
    if _backend() == "jax":
        raise ConfigError(
            "hosts: a run across hosts trains on the TensorFlow backend only (on JAX the weights of a process are "
            "arrays of that process alone, which metalab's compiled step does not lay out across processes); use "
            "KERAS_BACKEND=tensorflow, or devices on one host. Received: hosts="
            f"{','.join(hosts.addresses)!r}, KERAS_BACKEND='jax'")
    import tensorflow as tf

    gpus = [] if device.lower().startswith("cpu") else tf.config.list_physical_devices("GPU")
    kind = "GPU" if gpus else "CPU"
    available = [f"{kind}:{i}" for i in range(len(gpus) or 1)]
    count = device_count(devices, available)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": list(hosts.addresses)}), task_type="worker", task_id=hosts.index,
        num_accelerators={"GPU": count if gpus else 0}, rpc_layer="grpc")
    # NCCL between GPUs where TensorFlow finds it; ring (gRPC) otherwise.
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO if gpus else
        tf.distribute.experimental.CommunicationImplementation.RING)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                             communication_options=options)
    except RuntimeError as exc:  # "Collective ops must be configured at program startup"
        raise ConfigError(
            f"hosts: TensorFlow had started in this process before it could join the other hosts ({exc}); start "
            f"the run in a fresh process. Received: hosts={','.join(hosts.addresses)!r}") from None
    _JOINED.update(hosts=hosts, strategy=strategy, devices=available[:count], setting=devices)


def joined_hosts() -> Hosts | None:
    """The :class:`Hosts` this process joined with :func:`join_hosts`, or ``None``."""
    return _JOINED.get("hosts")


def device_count(devices: int | str, available: Sequence[str], *, meta_batch_size: int | None = None,
                 batch_kind: str = "episodic", hosts: int = 1) -> int:
    """How many devices ``RunConfig.devices`` asks for here, checked against ``available`` and the meta-batch.

    With ``hosts`` processes, each on ``available`` devices, the meta-batch is split across all of their devices.

    Raises:
        ConfigError: More devices than ``available``, a meta-batch they cannot split evenly, or an algorithm whose
            batches are not meta-batches of tasks. Messages end ``Received: devices=...``.
    """
    from metalab.core.engine.config import ConfigError

    count = len(available) if devices == "all" else int(devices)
    if count > len(available) or count < 1:
        listed = ", ".join(available) or "none"
        raise ConfigError(
            f"devices: {count} devices asked for, but this machine has {len(available)} of the kind the run uses "
            f"({listed}); ask for at most {len(available)}, or 'all'. Received: devices={devices!r}")
    if count * hosts == 1:
        return 1
    if batch_kind != "episodic":
        raise ConfigError(
            f"devices: only meta-batches of tasks are split across devices, and this algorithm trains on "
            f"{batch_kind} mini-batches; use devices=1{' on one host' if hosts > 1 else ''}. "
            f"Received: devices={devices!r}")
    total = count * hosts
    if meta_batch_size is not None and meta_batch_size % total:
        where = f"{total} devices" + (f" ({count} on each of {hosts} hosts)" if hosts > 1 else "")
        raise ConfigError(
            f"devices: the meta-batch's {meta_batch_size} tasks must split evenly across the {where} "
            f"(each computes the mean meta-gradient of as many tasks); make meta_batch_size a multiple of {total}. "
            f"Received: devices={devices!r}, meta_batch_size={meta_batch_size}")
    return count


def make_data_parallel(devices: int | str, *, device: str = "auto") -> "DataParallel | None":
    """The :class:`DataParallel` of a run's ``devices`` setting, or ``None`` when it asks for one device.

    Args:
        devices: ``RunConfig.devices``: a number of devices, or ``"all"``.
        device: ``RunConfig.device``, whose kind (when not ``"auto"``) chooses the devices.

    In a process that joined a run across hosts (:func:`join_hosts`) it is always the data parallel of those hosts.

    Raises:
        ConfigError: More devices asked for than there are (:func:`device_count`).
    """
    if _JOINED:
        return DataParallel(_JOINED["devices"], setting=_JOINED["setting"], strategy=_JOINED["strategy"],
                            hosts=_JOINED["hosts"])
    available = local_devices(device)
    count = device_count(devices, available)
    return DataParallel(available[:count], setting=devices) if count > 1 else None


def _is_float(value: Any) -> bool:
    import keras

    dtype = getattr(value, "dtype", None)
    return dtype is not None and keras.backend.is_float_dtype(keras.backend.standardize_dtype(dtype))


class DataParallel:
    """Meta-training steps whose tasks are split across ``devices`` (``KIND:INDEX`` names), gradients averaged.

    Build the algorithm and its optimizer inside :meth:`scope` (TensorFlow mirrors their variables on every
    device), then compile a step with :meth:`compile`.
    """

    axis = "tasks"

    def __init__(self, devices: Sequence[str], *, setting: int | str | None = None, strategy: Any = None,
                 hosts: Hosts | None = None):
        self.devices = list(devices)
        self.setting = len(self.devices) if setting is None else setting
        self.hosts = hosts
        # Replicas in all: this process's devices on every host (each process has as many).
        self.count = len(self.devices) * (len(hosts.addresses) if hosts else 1)
        # The global index of this process's first replica.
        self.first = hosts.index * len(self.devices) if hosts else 0
        if strategy is not None:  # a MultiWorkerMirroredStrategy (join_hosts)
            self.strategy = strategy
        elif _backend() == "jax":
            import jax
            import numpy as np

            from metalab.core.engine.devices import jax_devices

            found = jax_devices()
            self.mesh = jax.sharding.Mesh(np.array([found[name] for name in self.devices]), (self.axis,))
            self.strategy = None
        else:
            import tensorflow as tf

            # Between CPU devices TensorFlow's collective all-reduce may launch the replicas' reductions in
            # different orders (seen here: "Shape mismatch in the collective instance"); one device sums them.
            cpus = all(name.startswith("CPU") for name in self.devices)
            self.strategy = tf.distribute.MirroredStrategy(
                ["/device:" + name for name in self.devices],
                cross_device_ops=tf.distribute.ReductionToOneDevice() if cpus else None)

    def check(self, algorithm: Any) -> None:
        """Refuses an algorithm whose meta-batches these devices cannot split evenly (:func:`device_count`)."""
        device_count(self.setting, self.devices, meta_batch_size=int(getattr(algorithm, "meta_batch_size", 1)),
                     batch_kind=getattr(algorithm, "batch_kind", "episodic"),
                     hosts=len(self.hosts.addresses) if self.hosts else 1)

    @property
    def placement(self) -> str:
        """Where the run trains, for its record: ``/device:GPU:0,...``, or per host ``host:port/device:CPU:0,...``."""
        hosts = self.hosts.addresses if self.hosts else ("",)
        return ",".join(f"{host}/device:{name}" for host in hosts for name in self.devices)

    def agree(self, values: Sequence[float]) -> list[list[float]]:
        """Every process's ``values`` (floats), in host order, after exchanging them across hosts (a barrier).

        Every process of a run across hosts must call it at the same point; on one host it returns ``[values]``.
        """
        if self.hosts is None:
            return [list(values)]
        import tensorflow as tf

        strategy, local = self.strategy, len(self.devices)
        mine = tf.constant([list(values)], tf.float64)

        @tf.function
        def gather() -> Any:
            return strategy.run(lambda: tf.distribute.get_replica_context().all_gather(mine, axis=0))

        with strategy.scope():
            rows = strategy.experimental_local_results(gather())[0].numpy().tolist()
        return rows[::local]

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Variables made inside are placed for the step: mirrored on every device (TensorFlow); as usual (JAX)."""
        if self.strategy is None:
            yield
            return
        with self.strategy.scope():
            yield

    def compile(self, gradients: Callable[[TaskBatch], tuple[list[Any], dict[str, Any]]],
                apply: Callable[[list[Any]], None], variables: Sequence[Any], *,
                jit_compile: bool = False, reduce_before_apply: bool = False) -> Callable[..., dict[str, Any]]:
        """One compiled step: ``gradients`` on every device's share of the tasks, their mean handed to ``apply``.

        Args:
            gradients: ``gradients(batch) -> (grads, metrics)``, means over the batch's tasks (e.g. an
                algorithm's ``meta_gradients``).
            apply: ``apply(grads)``, run once per step on the mean gradients (the optimizer's update).
            variables: Every Keras variable the step reads or assigns (the algorithm's and the optimizer's).
            jit_compile: TensorFlow: also compile each device's own computation with XLA.
            reduce_before_apply: TensorFlow: hand ``apply`` gradients already averaged across the devices (on every
                device), for an optimizer that inspects them before it reduces them (``LossScaleOptimizer``).

        Returns:
            ``step(support_x, support_y, query_x, query_y, extras=None) -> metrics``, taking whole meta-batches.
        """
        variables = _unique(variables)
        if self.strategy is None:
            return self._compile_jax(gradients, apply, variables)
        return self._compile_tf(gradients, apply, variables, jit_compile, reduce_before_apply)

    def _check_split(self, arrays: Sequence[Any]) -> int:
        tasks = int(arrays[0].shape[0])
        if tasks % self.count:
            raise ValueError(
                f"devices: a meta-batch of {tasks} tasks cannot be split evenly across {self.count} devices. "
                f"Received: devices={self.count}, tasks={tasks}")
        return tasks // self.count

    # -- TensorFlow: MirroredStrategy ---------------------------------------------------------------------

    def _compile_tf(self, gradients: Callable[..., Any], apply: Callable[..., Any], variables: list[Any],
                    jit_compile: bool, reduce_before_apply: bool) -> Callable[..., dict[str, Any]]:
        import tensorflow as tf

        from metalab.core.engine.functional import _TrackingScope

        strategy = self.strategy

        def local_step(arrays: tuple[Any, ...], extras: Any) -> tuple[Any, Any, dict[int, Any]]:
            # In each replica a variable reads as its local copy; assignments are kept aside (a stateless scope
            # with nothing mapped), to be combined across replicas below, not applied to one replica's copy.
            with _TrackingScope([]) as scope:
                grads, metrics = gradients(TaskBatch(*arrays, extras))
            assigned = {i: scope.get_current_value(v) for i, v in enumerate(variables) if id(v) in scope.assigned}
            return grads, metrics, assigned

        if jit_compile:
            # XLA compiles each replica's own computation; the reductions across devices stay outside it.
            local_step = tf.function(local_step, jit_compile=True)

        def replica_step(arrays: tuple[Any, ...], extras: Any) -> tuple[Any, dict[int, Any]]:
            grads, metrics, assigned = local_step(arrays, extras)
            # Keras's optimizer applies in replica context and sums the replicas' gradients first (an all-reduce,
            # then one update of the mirrored weights): a sum of means over T / N tasks, each divided by N, is
            # the mean over all T tasks.
            if reduce_before_apply:
                # Keras's loss-scale optimizer decides to apply or skip a step from the first replica's gradients
                # alone, so every replica must hold the mean before it looks (one more all-reduce).
                context = tf.distribute.get_replica_context()
                present = [g for g in grads if g is not None]
                reduced = iter(context.all_reduce(tf.distribute.ReduceOp.MEAN, present) if present else [])
                grads = [None if g is None else next(reduced) for g in grads]
            apply([None if g is None else g / tf.cast(self.count, g.dtype) for g in grads])
            if self.hosts is not None and assigned:
                # Every process combines every replica's value (not only its own replicas'), so all keep the same.
                context = tf.distribute.get_replica_context()
                assigned = {i: context.all_gather(value[None], axis=0) for i, value in assigned.items()}
            return metrics, assigned

        def step(arrays: tuple[Any, ...], extras: Any) -> dict[str, Any]:
            with strategy.scope():
                metrics, assigned = strategy.run(replica_step, args=(arrays, extras))
                local = strategy.experimental_local_results
                mean = lambda x: strategy.reduce(tf.distribute.ReduceOp.MEAN, x, axis=None)  # noqa: E731
                metrics = {k: mean(v) if _is_float(local(v)[0]) else local(v)[0] for k, v in metrics.items()}
                for index, value in assigned.items():
                    variable = variables[index]
                    values = list(local(value)) if self.hosts is None else tf.unstack(local(value)[0])
                    variable.assign(_combine(variable, tf.identity(variable.value), values))
            return metrics

        compiled = tf.function(step, reduce_retracing=True)

        def run(sx: Any, sy: Any, qx: Any, qy: Any, extras: dict[str, Any] | None = None) -> dict[str, Any]:
            arrays = (sx, sy, qx, qy)
            share = self._check_split(arrays)

            def share_of(context: Any) -> tuple[Any, Any]:
                # Replica i's consecutive tasks, placed on its device; across hosts, i counts every process's
                # replicas and this process feeds only its own.
                i = context.replica_id_in_sync_group
                with tf.device("/device:" + self.devices[i - self.first]):
                    cut = lambda a: tf.convert_to_tensor(a[i * share:(i + 1) * share])  # noqa: E731
                    return tuple(cut(a) for a in arrays), (None if extras is None else
                                                           {k: cut(v) for k, v in extras.items()})

            arrays, extras = strategy.experimental_distribute_values_from_function(share_of)
            return compiled(arrays, extras)

        return run

    # -- JAX: shard_map over a one-axis mesh --------------------------------------------------------------

    def _compile_jax(self, gradients: Callable[..., Any], apply: Callable[..., Any],
                     variables: list[Any]) -> Callable[..., dict[str, Any]]:
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        from metalab.core.engine import functional
        from metalab.core.engine.functional import _TrackingScope

        mesh, axis = self.mesh, self.axis

        def per_device(values: list[Any], arrays: tuple[Any, ...], extras: Any) -> tuple[Any, Any, dict[int, Any]]:
            with _TrackingScope(list(zip(variables, values))) as scope:
                grads, metrics = gradients(TaskBatch(*arrays, extras))
            gathered = lambda x: jax.lax.all_gather(x, axis)  # noqa: E731
            mean = lambda x: jax.lax.pmean(x, axis) if _is_float(x) else gathered(x)[0]  # noqa: E731
            assigned = {i: gathered(scope.get_current_value(v)) for i, v in enumerate(variables)
                        if id(v) in scope.assigned}
            return ([None if g is None else mean(g) for g in grads], {k: mean(v) for k, v in metrics.items()},
                    assigned)

        def step(sx: Any, sy: Any, qx: Any, qy: Any, extras: Any = None) -> dict[str, Any]:
            # Inside functional.compile's jax.jit: each variable reads as its traced value, passed in replicated.
            values = [v.value for v in variables]
            split = PartitionSpec(axis)
            sharded = jax.shard_map(
                per_device, mesh=mesh, in_specs=(PartitionSpec(), split, split), out_specs=PartitionSpec(),
                check_vma=False)
            grads, metrics, assigned = sharded(values, (sx, sy, qx, qy), extras)
            for index, value in assigned.items():
                variables[index].assign(_combine(variables[index], values[index], list(value)))
            apply(grads)
            return metrics

        compiled = functional.compile(step, variables=variables)
        sharding = NamedSharding(mesh, PartitionSpec(axis))

        def run(sx: Any, sy: Any, qx: Any, qy: Any, extras: dict[str, Any] | None = None) -> dict[str, Any]:
            self._check_split((sx, sy, qx, qy))
            # Each device receives its own tasks only.
            arrays, extras = jax.device_put(((sx, sy, qx, qy), extras), sharding)
            return compiled(*arrays, extras) if extras else compiled(*arrays)

        run.memory_analysis = getattr(compiled, "memory_analysis", None)
        return run


def _combine(variable: Any, start: Any, values: list[Any]) -> Any:
    """One value for ``variable`` from the values the devices assigned, by its aggregation (module docstring)."""
    from keras import ops

    aggregation = getattr(variable, "aggregation", "none")
    if aggregation == "sum":
        return start + sum(v - start for v in values)
    if aggregation == "only_first_replica" or not _is_float(values[0]):
        return values[0]
    return sum(values) / ops.cast(len(values), values[0].dtype)


def _unique(variables: Sequence[Any]) -> list[Any]:
    seen, found = set(), []
    for variable in variables:
        if id(variable) not in seen:
            seen.add(id(variable))
            found.append(variable)
    return found

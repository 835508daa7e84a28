"""The one training loop: every algorithm plugin is meta-trained, checkpointed and resumed here.

Algorithms only say how to compute meta-gradients and how to adapt to a task; this module owns the compiled
train step, logging to the run store, validation, checkpoints (weights, optimizer state, sampler RNG state),
cancellation, the record of every outcome and of the phases the run goes through (loading, compiling, training,
validating, meta-testing, report). Devices live in :mod:`.devices`, sessions in :mod:`.session`, the
meta-test protocol in :mod:`.evaluation`; the worker process that runs this loop is :mod:`metalab.core.worker`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import threading
import time
import traceback
from typing import Any, Callable

import numpy as np

from metalab.core.contract.specs import TaskBatch
from metalab.core.engine.checkpoints import CheckpointError, record_warning, restore_checkpoint, save_checkpoint
from metalab.core.engine.config import ConfigError, RunConfig, divergence_hint
from metalab.core.engine.devices import device_name, device_scope, keras_backend, library_versions
from metalab.core.engine.evaluation import compile_evaluate, cross_domain_episodes, evaluate_batch, fixed_episode_set
from metalab.core.engine.fixed_tasks import EVAL_SEED
from metalab.core.engine.parallel import DataParallel, joined_hosts, make_data_parallel
from metalab.core.engine.session import build_session, cross_domain_session, make_training_sampler
from metalab.core.settings import Settings, load_settings
from metalab.core.store import RunNotFoundError, RunStore

ProgressFn = Callable[[int, int, dict[str, float]], None]


class RunCancelled(Exception):
    """Raised inside the loop when a cancel was requested; the runner checkpoints and records 'cancelled'."""


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


def compile_train_step(algorithm: Any, optimizer: Any, *, jit_compile: bool = False,
                       parallel: Any = None) -> Callable[[TaskBatch], dict[str, Any]]:
    """One compiled meta-training step (meta-gradients, then the optimizer's update) taking a :class:`TaskBatch`.

    Each call of this function makes a new graph; the runner and the probe both step through it. With
    ``jit_compile`` the step is also compiled by XLA (the run config's ``jit_compile``). With a
    ``LossScaleOptimizer`` (:func:`make_optimizer` for float16) every gradient the algorithm takes, inner-loop ones
    included, is computed on the scaled loss and returned unscaled (:func:`functional.loss_scaling`); the
    meta-gradients are scaled again for the optimizer, which checks them for overflow and unscales them.
    With ``parallel`` (a :class:`~metalab.core.engine.parallel.DataParallel`, the run config's ``devices``) the
    meta-batch's tasks are split across its devices and the optimizer applies the mean of their meta-gradients.
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

    def gradients(batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        if not scaled:
            return algorithm.meta_gradients(batch)
        # A copy, read now: on TensorFlow convert_to_tensor would hand back the variable, read after the update.
        scale = keras.ops.copy(optimizer.dynamic_scale)
        with functional.loss_scaling(scale):
            grads, metrics = algorithm.meta_gradients(batch)
        return [g * keras.ops.cast(scale, g.dtype) for g in grads], {**metrics, "loss_scale": scale}

    def train_step(sx: Any, sy: Any, qx: Any, qy: Any, extras: dict[str, Any] | None = None) -> dict[str, Any]:
        grads, metrics = gradients(TaskBatch(sx, sy, qx, qy, extras))
        apply(grads)
        return metrics

    if not optimizer.built:
        # Its variables must exist before tracing: a compiled JAX step takes them as inputs.
        optimizer.build(algorithm.trainable_variables)
    variables = [*algorithm.variables, *optimizer.variables]
    if parallel is not None:
        compiled = parallel.compile(gradients, apply, variables, jit_compile=jit_compile, reduce_before_apply=scaled)
    else:
        compiled = functional.compile(train_step, jit_compile=jit_compile, variables=variables)

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


def _check_finite(result: dict[str, Any], what: str, step: int, config: Any) -> None:
    """Raises :class:`FloatingPointError` naming the first score of ``result`` that is not a finite number.

    Adapting at evaluation time can diverge while training's loss stays finite (e.g. a large inner learning rate
    with more test-time inner steps than training's); the run then fails with what diverged and what to lower,
    instead of a NaN reaching the store.
    """
    for name, value in result.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise FloatingPointError(
                f"{what} diverged: its {name} became {value} at step {step} (adapting to the evaluation episodes "
                f"with eval_inner_steps); {divergence_hint(config)}. Received: {name}={value}")


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


class _Phases:
    """Records the run's phases in the store as the loop goes through them (see ``RunStore.start_phase``).

    Progress within a phase (episodes done) is written at most every :attr:`every` seconds, and always at its end,
    so a 600-episode meta-test costs a few dozen small writes, not one per chunk.
    """

    every = 0.5

    def __init__(self, store: RunStore, run_id: str):
        self.store, self.run_id = store, run_id
        self.name: str | None = None
        self._last = 0.0

    def enter(self, name: str, *, total: int | None = None, detail: str = "") -> None:
        self.store.start_phase(self.run_id, name, total=total, detail=detail)
        self.name, self._last = name, time.monotonic()

    def progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self._last >= self.every:
            self._last = now
            self.store.phase_progress(self.run_id, done, total)

    def end(self) -> None:
        self.store.end_phases(self.run_id)
        self.name = None


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
    phases = _Phases(store, run_id)
    try:
        phases.enter("loading")
        # devices=N (or a run across hosts): the tasks of each meta-batch split across the devices.
        parallel = make_data_parallel(config.devices, device=config.device) \
            if config.devices != 1 or joined_hosts() else None
        # One device: everything placed on it. Several: the variables are made in the strategy's scope (mirrored);
        # what this process alone does later (validation, checkpoints, the meta-test, the report) runs outside it,
        # since across hosts every variable made in that scope is a broadcast all the processes must join.
        placement = device_scope(config.device) if parallel is None else contextlib.nullcontext()
        building = contextlib.nullcontext if parallel is None else parallel.scope
        with placement, _CancelWatch(store, run_id, settings.max_run_seconds) as watch:
            with building():
                session = build_session(registry, config, settings)
                store.update_run(run_id, device=device_name(config.device) if parallel is None
                                 else parallel.placement)
                algorithm = session.algorithm
                if parallel is not None:
                    parallel.check(algorithm)
                sampler = make_training_sampler(session)
                optimizer = make_optimizer(algorithm, config.precision)
                optimizer.build(algorithm.trainable_variables)
            # Loaded (and its episodes checked) before training, so a bad test dataset fails the run at once.
            cross = cross_domain_session(session, registry, settings)
            cross_episodes = cross_domain_episodes(cross, config.test_episodes) if cross and config.eval_at_end else None
            # The newest usable checkpoint (the previous one if the newest is bad, with a recorded warning);
            # the step recorded and the metrics kept are those of the checkpoint actually restored.
            restored = restore_checkpoint(store.run_dir(run_id), algorithm, optimizer, sampler,
                                          total_steps=config.steps, config=run.config, quarantine=True)
            if restored is not None:
                step = restored.step
                record_warning(store, run_id, restored, "resume")
                store.truncate_metrics(run_id, step)
            store.update_run(run_id, step=step)
            if parallel is not None and parallel.hosts is not None:
                _agree_across_hosts(parallel, config, step)

            step_fn = compile_train_step(algorithm, optimizer, jit_compile=config.jit_compile, parallel=parallel)
            eval_fn = compile_evaluate(algorithm)
            updates_per_batch = max(1, int(getattr(algorithm, "updates_per_batch", 1) or 1))
            val_batch = fixed_episode_set(session, "val", config.val_episodes)
            window: dict[str, list[float]] = {}
            t_window = time.perf_counter()
            steps_in_window = 0
            if step < config.steps:
                # The first step traces (and with XLA compiles) the graph: its own phase, so training's speed and
                # time are those of the steps that follow.
                phases.enter("compiling", detail="first step trace")
            while step < config.steps:
                watch.check()
                batch = sampler.sample_batch(algorithm.meta_batch_size)
                for _ in range(updates_per_batch):  # PPO-style epochs on one gathered batch (environments)
                    metrics = step_fn(batch)
                step += 1
                steps_in_window += 1
                for name, value in metrics.items():
                    number = float(functional.to_numpy(value))
                    if not math.isfinite(number):
                        raise FloatingPointError(
                            f"Training diverged: {name} became {number} at step {step}; {divergence_hint(config)}. "
                            f"Received: {name}={number}"
                        )
                    window.setdefault(name, []).append(number)
                if phases.name == "compiling":
                    phases.enter("training")
                logged: dict[str, float] = {}
                if step % config.log_every == 0 or step == config.steps:
                    elapsed = time.perf_counter() - t_window
                    logged = {f"train/{k}": float(np.mean(v)) for k, v in window.items()}
                    logged["train/steps_per_s"] = steps_in_window / max(elapsed, 1e-9)
                    window, steps_in_window, t_window = {}, 0, time.perf_counter()
                if step % config.val_every == 0 or step == config.steps:
                    phases.enter("validating", total=val_batch.n, detail=f"step {step}")
                    val = evaluate_batch(session, val_batch, eval_fn, progress=phases.progress)
                    _check_finite(val, "Validation", step, config)
                    logged.update({f"val/{k}": v for k, v in val.items() if isinstance(v, float)})
                    phases.enter("training")
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
                phases.enter("meta-testing", total=cross_episodes.n, detail=f"cross-domain on {config.test_dataset}")
                result = evaluate_batch(cross, cross_episodes, eval_fn, progress=phases.progress)
                _check_finite(result, "The cross-domain meta-test", step, config)
                store.add_evaluation(run_id, f"cross:{config.test_dataset}", result["episodes"], result,
                                     seed=EVAL_SEED)
                store.log_metrics(run_id, step, {f"cross/{k}": v for k, v in result.items() if isinstance(v, float)})
            if config.eval_at_end:
                test_episodes = fixed_episode_set(session, "test", config.test_episodes)
                phases.enter("meta-testing", total=test_episodes.n, detail="test")
                result = evaluate_batch(session, test_episodes, eval_fn, progress=phases.progress)
                _check_finite(result, "The meta-test", step, config)
                store.add_evaluation(run_id, "test", result["episodes"], result, seed=EVAL_SEED)
                store.log_metrics(run_id, step, {f"test/{k}": v for k, v in result.items() if isinstance(v, float)})
            # Figures that need the model (the dashboard has no TensorFlow); best effort, never fails the run.
            from metalab.core.engine.report_data import write_report_data

            phases.enter("report")
            write_report_data(store, run_id, session, registry)
            if parallel is not None and parallel.hosts is not None:
                parallel.agree([float(step)])  # the other processes wait for the chief's end before they exit
        phases.end()
        store.update_run(run_id, status="completed", finished=time.time(), step=step)
        return "completed"
    except RunCancelled as stop:
        phases.end()
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
        # A checkpoint the run cannot use is the user's file problem, and a setting this machine cannot serve (more
        # devices than it has) the user's choice, each fully named in the message: no traceback.
        trace = None if isinstance(exc, (CheckpointError, ConfigError)) else traceback.format_exc()
        phases.end()
        store.update_run(
            run_id, status="failed", finished=time.time(), step=step,
            error=f"{type(exc).__name__}: {exc}", traceback=trace,
        )
        return "failed"


def _config_fingerprint(config: RunConfig) -> float:
    """48 bits of the config's hash, as a float (exact): what the processes of a run across hosts compare."""
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True, default=str)
    return float(int(hashlib.sha256(text.encode()).hexdigest()[:12], 16))


def _agree_across_hosts(parallel: DataParallel, config: RunConfig, step: int) -> None:
    """Checks that every process of a run across hosts trains the same config from the same step, before the first.

    Raises:
        ConfigError: They differ (on every process, so none waits for the others).
    """
    rows = parallel.agree([_config_fingerprint(config), float(step)])
    hosts = parallel.hosts.addresses
    if any(row[0] != rows[0][0] for row in rows):
        differ = ", ".join(hosts[i] for i, row in enumerate(rows) if row[0] != rows[0][0])
        raise ConfigError(
            f"hosts: every process of a run across hosts must train the same config (dataset, algorithm, --set "
            f"values, steps, seed), and {differ} has another one than the chief {hosts[0]}. "
            f"Received: hosts={','.join(hosts)!r}")
    if any(row[1] != rows[0][1] for row in rows):
        raise ConfigError(
            f"hosts: a run across hosts starts from step 0 on every process; the chief resumes from its checkpoint "
            f"at step {int(rows[0][1])}, which the other processes do not have (resuming across hosts is not "
            f"supported: start a new run). Received: hosts={','.join(hosts)!r}")


def follow_run(config: RunConfig, registry: Any, *, settings: Settings | None = None,
               progress: ProgressFn | None = None) -> int:
    """Trains as one of the other processes of a run across hosts: the chief's steps, nothing recorded here.

    The process must have joined the hosts (:func:`~metalab.core.engine.parallel.join_hosts`) as index 1 or more.
    It builds the same session and optimizer as the chief, samples the same meta-batches (the same seed) and feeds
    its own devices' share of each to the shared step; the chief (index 0) alone writes the run store, metrics,
    checkpoints, evaluations and report. Returns the number of steps trained, once the chief has ended its run.

    Raises:
        ConfigError: This process has not joined hosts as a non-chief, or its config is not the chief's.
    """
    from metalab.core.engine import functional

    settings = settings or load_settings()
    hosts = joined_hosts()
    if hosts is None or hosts.chief:
        raise ConfigError(f"host_index: only the processes after the chief (host_index 1 or more) follow a run; "
                          f"the chief records it. Received: host_index={None if hosts is None else hosts.index}")
    parallel = make_data_parallel(config.devices, device=config.device)
    # The same variables, made in the same order, as the chief's _train_run: each is broadcast from the chief.
    with parallel.scope():
        session = build_session(registry, config, settings)
        algorithm = session.algorithm
        parallel.check(algorithm)
        sampler = make_training_sampler(session)
        optimizer = make_optimizer(algorithm, config.precision)
        optimizer.build(algorithm.trainable_variables)
    _agree_across_hosts(parallel, config, 0)
    step_fn = compile_train_step(algorithm, optimizer, jit_compile=config.jit_compile, parallel=parallel)
    for step in range(1, config.steps + 1):
        metrics = step_fn(sampler.sample_batch(algorithm.meta_batch_size))
        if progress:
            progress(step, config.steps, {f"train/{k}": float(functional.to_numpy(v)) for k, v in metrics.items()})
    parallel.agree([float(config.steps)])  # the chief's end of the run: its meta-test, report
    return config.steps

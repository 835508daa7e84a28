"""The conformance suite: checks any algorithm plugin, built-in or third-party, on tiny tasks on the CPU.

Use it from a plugin's own tests (no metalab test suite needed)::

    from metalab.core.authoring import testing

    def test_my_algorithm_conforms(tmp_path):
        testing.check_algorithm("myplugin.myalgo", tmp_path)

or parametrise over every installed algorithm with :func:`algorithm_ids`. Each check trains a tiny model for
a few dozen steps through the real runner on the tiny tasks the dataset plugins declare (``DatasetSpec.tiny_task``;
metalab's built-ins give embedded 8x8 digits with an MLP for classification and sinusoids for regression; see
:func:`tiny_tasks`), so a whole algorithm takes 20 s to a minute on two cores, most of it graph tracing. The plugin must be installed (its entry point is how it is found);
pass ``registry=make_plugin_manager(distributions={"metalab", "<your distribution>"}, strict=False)`` to keep
other installed plugins out. docs/plugins.md ("Testing a plugin") is the guide.

What is checked:
    * it learns: training loss falls, and meta-test accuracy beats chance by ``margin`` (classification), the
      meta-test MSE falls well below the untrained model's (regression), or (environments) the average return
      after adaptation beats both the untrained model's after the same adaptation and the trained model's before
      adapting, on a fixed seed;
    * checkpoint/resume: a fresh session restored from a run's halfway checkpoint takes the next step exactly as
      the run that wrote it did (weights and optimizer state), and the resumed run completes;
    * determinism: the same seed gives the same numbers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metalab.core.engine.config import RunConfig, resolve_config
from metalab.core.store import RunStore

def tiny_tasks(registry: Any) -> dict[str, dict[str, Any]]:
    """The tiny task of each dataset kind: run-config fields (``dataset`` and its ``tiny_task``).

    A dataset plugin marks a dataset as one with ``DatasetSpec.tiny_task``; per kind the first such dataset in
    plugin load order is taken (metalab's built-ins load first), so what a check runs on does not depend on which
    other plugins are installed.

    Args:
        registry: The plugin registry.

    Returns:
        ``{kind: {"dataset": id, **tiny_task}}`` for the kinds that have one (deep copies: edit them freely).
    """
    order = {record.name: index for index, record in enumerate(registry.plugins)}
    marked = sorted((order.get(registry.plugin_of(spec_id, "dataset").name, len(order)), spec_id)
                    for spec_id, spec in registry.datasets.items() if spec.tiny_task is not None)
    found: dict[str, dict[str, Any]] = {}
    for _, spec_id in marked:
        spec = registry.datasets[spec_id]
        found.setdefault(spec.kind, {"dataset": spec_id, **copy.deepcopy(spec.tiny_task)})
    return found


#: Meta-training steps of :func:`check_learns` per task kind (regression needs more to beat its baselines).
LEARN_STEPS = {"classification": 60, "regression": 600, "environment": 60}


@dataclass
class ConformanceResult:
    """What one tiny run produced.

    Attributes:
        run_id: The run's id in the throw-away run store.
        status: The run's final status (``"completed"``).
        first_loss: The first logged training loss (mean of the first ``log_every`` steps).
        last_loss: The last logged training loss.
        before: Meta-test scores of the untrained model (empty when not evaluated), as ``evaluate_batch`` returns.
        after: Meta-test scores after training, as stored with the run.
        weights: The checkpointed ``variables``, in order.
    """

    run_id: str
    status: str
    first_loss: float
    last_loss: float
    before: dict[str, Any]
    after: dict[str, Any]
    weights: list[np.ndarray]
    zero_mse: float = float("nan")


def _registry(registry: Any | None) -> Any:
    if registry is not None:
        return registry
    from metalab.core.contract.manager import make_plugin_manager

    return make_plugin_manager(strict=False)


def tiny_config(registry: Any, algorithm_id: str, kind: str, *, steps: int = 60, seed: int = 0,
                algorithm_params: dict[str, Any] | None = None, task: dict[str, Any] | None = None) -> RunConfig:
    """Returns a validated config for a tiny run of ``algorithm_id`` on the embedded dataset of ``kind``.

    ``meta_batch_size`` (when the algorithm has it) is capped at 4 and ``eval_inner_steps`` at 10 unless given in
    ``algorithm_params``; validation uses 10 fixed episodes and the final evaluation 40.

    Args:
        registry: The plugin registry holding the algorithm and metalab's built-ins.
        algorithm_id: The algorithm to run.
        kind: ``"classification"`` or ``"regression"`` (a kind :func:`tiny_tasks` has a task for).
        steps: Meta-training steps.
        seed: The run's seed.
        algorithm_params: Algorithm parameters overriding the defaults.
        task: Run-config fields overriding those of the tiny task (e.g. a ``backbone`` with batch norm and its
            ``backbone_params``, for an option that needs one).

    Returns:
        A :class:`~metalab.core.engine.config.RunConfig`.

    Raises:
        metalab.core.engine.config.ConfigError: If a parameter is invalid.
        UnknownPluginError: If the algorithm or the tiny task's dataset or backbone is not loaded.
        ValueError: If no loaded dataset declares a tiny task of ``kind``.
    """
    spec = registry.algorithm(algorithm_id)
    tasks = tiny_tasks(registry)
    if kind not in tasks:
        raise ValueError(
            f"No loaded dataset declares a tiny task of kind {kind!r} (DatasetSpec.tiny_task); kinds with one: "
            f"{', '.join(sorted(tasks)) or 'none'}. Received: kind={kind!r}"
        )
    tiny = {**tasks[kind], **(task or {})}
    params = dict(algorithm_params or {})
    fields = spec.params.model_fields
    if "meta_batch_size" in fields and "meta_batch_size" not in params:
        params["meta_batch_size"] = min(int(fields["meta_batch_size"].default), 4)
    for name in ("eval_inner_steps",):
        if name in fields and name not in params:
            params[name] = min(int(fields[name].default), 10)
    raw = {
        **tiny, "algorithm": algorithm_id, "algorithm_params": params, "steps": steps, "seed": seed,
        "val_every": steps, "val_episodes": 10, "test_episodes": 40, "checkpoint_every": steps, "log_every": 5,
    }
    return resolve_config(registry, raw)


def run_tiny(registry: Any, config: RunConfig, home: Path, *, interrupt_at: int | None = None,
             evaluate_before: bool = True) -> ConformanceResult:
    """Trains ``config`` in a fresh run store under ``home``; optionally interrupts at a step and resumes.

    Works for any config, so a dataset plugin can train a built-in algorithm on its data with it.

    Args:
        registry: The plugin registry.
        config: A validated run config (e.g. from :func:`tiny_config` or ``resolve_config``).
        home: A folder for the run store and checkpoints (``tmp_path`` in tests).
        interrupt_at: Cancel the run at this step, then resume it from its checkpoint.
        evaluate_before: Also score the untrained model on the fixed test episodes.

    Returns:
        The :class:`ConformanceResult`.

    Raises:
        AssertionError: If the run does not complete (the message holds its error and traceback), or the
            interrupted run was not cancelled.
    """
    from metalab.core.engine.evaluation import evaluate_batch, fixed_batch, fixed_episode_set
    from metalab.core.engine.runner import RunCancelled, train_run
    from metalab.core.engine.session import build_session

    store = RunStore(Path(home) / "runs.sqlite")
    run_id = store.create_run(config.model_dump())
    before: dict[str, Any] = {}
    zero_mse = float("nan")
    if evaluate_before:
        session = build_session(registry, config)
        test_tasks = (fixed_episode_set if session.task.kind == "environment" else fixed_batch)(
            session, "test", config.test_episodes)
        before = evaluate_batch(session, test_tasks)
        if session.task.kind == "regression":
            zero_mse = float(np.mean(np.square(np.asarray(test_tasks.query_y, dtype=np.float64))))

    def stop(step: int, total: int, metrics: dict[str, float]) -> None:
        if interrupt_at is not None and step == interrupt_at:
            raise RunCancelled("conformance interruption")

    status = train_run(store, run_id, registry, progress=stop)
    if interrupt_at is not None:
        if status != "cancelled":
            raise AssertionError(f"expected the interrupted run to be cancelled, got {status!r}: {store.get_run(run_id).error}")
        status = train_run(store, run_id, registry)
    run = store.get_run(run_id)
    if status != "completed":
        raise AssertionError(f"run {run_id} ended {status!r}: {run.error}\n{run.traceback}")
    if config.dataset and registry.dataset(config.dataset).kind == "environment":
        # A surrogate's value says nothing of progress (0 at every step with normalised advantages): the "loss"
        # of an environment run is its negated return after adaptation.
        losses = [-v for _, v in store.metrics(run_id, ["train/return_after"]).get("train/return_after", [])]
    else:
        losses = [v for _, v in store.metrics(run_id, ["train/loss"])["train/loss"]]
    after = store.evaluations(run_id)[0]

    from metalab.core.engine.checkpoints import checkpoint_path

    with np.load(checkpoint_path(store, run_id)) as data:
        weights = [data[k] for k in sorted(data.files, key=_var_order) if k.startswith("var_")]
    return ConformanceResult(run_id, status, losses[0], losses[-1], before, after, weights, zero_mse)


def _var_order(name: str) -> tuple[str, int]:
    prefix, _, index = name.partition("_")
    return (prefix, int(index) if index.isdigit() else -1)


def supported_kinds(registry: Any, algorithm_id: str) -> list[str]:
    """Returns the algorithm's ``task_kinds`` that have a tiny task, in the spec's order."""
    tasks = tiny_tasks(registry)
    return [k for k in registry.algorithm(algorithm_id).task_kinds if k in tasks]


def check_learns(algorithm_id: str, home: Path, *, registry: Any | None = None, kind: str | None = None,
                 steps: int | None = None, margin: float = 0.15,
                 algorithm_params: dict[str, Any] | None = None,
                 task: dict[str, Any] | None = None) -> ConformanceResult:
    """Asserts the algorithm learns a tiny task: loss falls and the meta-test score clearly beats the baseline.

    Classification: the meta-test accuracy must exceed chance (``1/ways``) by ``margin``. Regression: the
    meta-test MSE must be finite and end below 0.7 times the untrained model's and below the MSE of
    predicting zero (so a diverging model cannot pass by diverging less). Environments: the average return after
    adaptation must exceed the untrained model's after the same adaptation, and the trained model's own return
    before adapting, each by ``margin`` of that return's magnitude; "loss" is the negated return after adaptation.

    Args:
        algorithm_id: The algorithm to check.
        home: A folder for the run store (``tmp_path``).
        registry: The plugin registry; by default a fresh ``make_plugin_manager(strict=False)``.
        kind: The task kind; by default the first of :func:`supported_kinds`.
        steps: Meta-training steps; by default ``LEARN_STEPS`` for the task kind (60 classification, 600 regression).
        margin: Required accuracy above chance.
        algorithm_params: Algorithm parameters overriding the defaults.
        task: Run-config fields overriding the tiny task's (see :func:`tiny_config`).

    Returns:
        The run's :class:`ConformanceResult`.

    Raises:
        AssertionError: Naming the algorithm and the numbers, when it did not learn or the run failed.
    """
    registry = _registry(registry)
    kind = kind or supported_kinds(registry, algorithm_id)[0]
    config = tiny_config(registry, algorithm_id, kind, steps=steps or LEARN_STEPS[kind],
                         algorithm_params=algorithm_params, task=task)
    result = run_tiny(registry, config, Path(home))
    assert np.isfinite(result.last_loss) and result.last_loss < result.first_loss, (
        f"{algorithm_id}: training loss did not fall ({result.first_loss:.4f} -> {result.last_loss:.4f})"
    )
    if kind == "classification":
        chance = 1.0 / config.ways
        assert result.after["accuracy"] > chance + margin, (
            f"{algorithm_id}: meta-test accuracy {result.after['accuracy']:.3f} is not above chance {chance:.3f} "
            f"+ margin {margin}"
        )
    elif kind == "environment":
        after, untrained, unadapted = result.after["return"], result.before["return"], result.after["return_before"]
        assert after > untrained + margin * abs(untrained), (
            f"{algorithm_id}: meta-test return after adapting {after:.3f} is not above the untrained model's "
            f"{untrained:.3f} by margin {margin} of it")
        assert after > unadapted + margin * abs(unadapted), (
            f"{algorithm_id}: adapting does not raise the meta-test return by margin {margin}: {unadapted:.3f} "
            f"before, {after:.3f} after")
    else:
        assert np.isfinite(result.after["mse"]), f"{algorithm_id}: meta-test MSE is {result.after['mse']}"
        assert result.after["mse"] < 0.7 * result.before["mse"], (
            f"{algorithm_id}: meta-test MSE {result.after['mse']:.4f} not well below untrained {result.before['mse']:.4f}"
        )
        assert result.after["mse"] < result.zero_mse, (
            f"{algorithm_id}: meta-test MSE {result.after['mse']:.4f} is no better than predicting zero "
            f"({result.zero_mse:.4f})"
        )
    return result


def check_resume(algorithm_id: str, home: Path, *, registry: Any | None = None, kind: str | None = None,
                 steps: int = 20, algorithm_params: dict[str, Any] | None = None,
                 task: dict[str, Any] | None = None) -> None:
    """Asserts a run restored from its checkpoint goes on exactly as the run that wrote it, then completes.

    The uninterrupted run saves a checkpoint at every step and stops after step ``k + 1`` (``k = steps // 2``).
    A second run starts from a copy of its step-``k`` checkpoint in a fresh session (new model, optimizer and
    sampler, as after a crash), takes step ``k + 1``, is cancelled (the cancellation saves its checkpoint) and is
    then resumed to the end. Its weights and optimizer state after step ``k + 1`` must agree with the
    uninterrupted run's to ``WEIGHT_TOLERANCE`` of each array's largest magnitude (at least
    ``WEIGHT_SCALE_FLOOR``). Both take that one step from the same saved bits, so only that step's round-off can
    differ (CPU kernels may sum in another order), and training that amplifies round-off step by step gets one
    step to do it. Any state the checkpoint lacks (a variable missing from the algorithm's ``variables``, a lost
    noise state) changes that step itself.

    Args:
        algorithm_id, home, registry, kind, algorithm_params, task: As for :func:`check_learns`.
        steps: Steps of the run (at least 2); the restore is at ``steps // 2``.

    Raises:
        AssertionError: If the restored run's step differs, or the resumed run does not complete.
    """
    import shutil

    from metalab.core.engine.checkpoints import LATEST, checkpoint_path
    from metalab.core.engine.runner import RunCancelled, train_run

    if steps < 2:
        raise ValueError(f"check_resume needs at least 2 steps (one to restore, one after it). Received: steps={steps}")
    registry = _registry(registry)
    kind = kind or supported_kinds(registry, algorithm_id)[0]
    config = tiny_config(registry, algorithm_id, kind, steps=steps, algorithm_params=algorithm_params, task=task)
    config = config.model_copy(update={"checkpoint_every": 1})
    k = steps // 2
    home = Path(home)
    kept: dict[int, Path] = {}

    def start(name: str) -> tuple[RunStore, str]:
        store = RunStore(home / name / "runs.sqlite")
        return store, store.create_run(config.model_dump())

    live_store, live_id = start("live")

    def keep_then_stop(step: int, total: int, metrics: dict[str, float]) -> None:
        if step in (k, k + 1):  # called after the step's checkpoint is written
            kept[step] = shutil.copy(checkpoint_path(live_store, live_id), home / f"live-step-{step}.npz")
        if step == k + 1:
            raise RunCancelled("conformance: the uninterrupted run's step k + 1 is kept")

    status = train_run(live_store, live_id, registry, progress=keep_then_stop)
    if status != "cancelled":
        run = live_store.get_run(live_id)
        raise AssertionError(f"{algorithm_id}: the run to resume from ended {status!r}: {run.error}\n{run.traceback}")

    store, run_id = start("restored")
    store.run_dir(run_id).mkdir(parents=True, exist_ok=True)
    shutil.copy(kept[k], store.run_dir(run_id) / LATEST)

    def stop_after_one(step: int, total: int, metrics: dict[str, float]) -> None:
        if step == k + 1:
            raise RunCancelled("conformance: one step after the restore")

    status = train_run(store, run_id, registry, progress=stop_after_one)
    if status != "cancelled":
        run = store.get_run(run_id)
        raise AssertionError(f"{algorithm_id}: the run restored at step {k} ended {status!r}: {run.error}\n"
                             f"{run.traceback}")
    live, restored = _checkpoint_arrays(kept[k + 1]), _checkpoint_arrays(checkpoint_path(store, run_id))
    _assert_same_weights(live["var"], restored["var"], f"{algorithm_id}: resumed weights differ after one step")
    _assert_same_weights(live["opt"], restored["opt"],
                         f"{algorithm_id}: resumed optimizer state differs after one step")
    status = train_run(store, run_id, registry)
    if status != "completed":
        run = store.get_run(run_id)
        raise AssertionError(f"{algorithm_id}: the resumed run ended {status!r}: {run.error}\n{run.traceback}")


def _checkpoint_arrays(path: Path) -> dict[str, list[np.ndarray]]:
    """A checkpoint's model (``var``) and optimizer (``opt``) arrays, each in index order."""
    with np.load(path) as data:
        names = sorted(data.files, key=_var_order)
        return {prefix: [data[n] for n in names if n.startswith(f"{prefix}_")] for prefix in ("var", "opt")}


#: How closely two runs that should be identical must agree, relative to each weight array's largest magnitude.
#: CPU kernels may sum in a different order from run to run (round-off near 1e-7), which training under Adam can
#: grow over many steps. A lost noise, sampler or optimizer state moves even one step by 6e-3 of the scale and
#: more. (A GAN's reruns once drifted by 1e-3 after 8 steps: its step read weights by reference, which
#: ``functional.read_now`` fixed; benchmarks/RESULTS.md.)
WEIGHT_TOLERANCE = 1e-3
#: The least magnitude a weight array's tolerance is taken of. Round-off is absolute: a GAN bias of largest
#: magnitude 0.002 once differed by 1.9e-5 between two runs, over 0.001 of its own scale; lost state still moves
#: the weights by about the learning rate a step (2e-4 for the GAN), 4x this floor's 5e-5.
WEIGHT_SCALE_FLOOR = 0.05


def _assert_same_weights(first: list[np.ndarray], second: list[np.ndarray], message: str) -> None:
    for index, (a, b) in enumerate(zip(first, second, strict=True)):
        if a.size == 0:
            continue
        scale = max(float(np.max(np.abs(a))), WEIGHT_SCALE_FLOOR)
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
        assert diff <= WEIGHT_TOLERANCE * scale, (
            f"{message}: variable {index} differs by up to {diff:.3g} (tolerance {WEIGHT_TOLERANCE:g} of {scale:.3g}: "
            f"its largest magnitude, at least {WEIGHT_SCALE_FLOOR:g})"
        )


def check_deterministic(algorithm_id: str, home: Path, *, registry: Any | None = None, kind: str | None = None,
                        steps: int = 10, algorithm_params: dict[str, Any] | None = None,
                        task: dict[str, Any] | None = None) -> None:
    """Asserts that two runs with the same seed end with the same weights and meta-test loss.

    Args:
        algorithm_id, home, registry, kind, algorithm_params, task: As for :func:`check_learns`.
        steps: Steps of each run.

    Raises:
        AssertionError: If the runs differ.
    """
    registry = _registry(registry)
    kind = kind or supported_kinds(registry, algorithm_id)[0]
    config = tiny_config(registry, algorithm_id, kind, steps=steps, algorithm_params=algorithm_params, task=task)
    a = run_tiny(registry, config, Path(home) / "a", evaluate_before=False)
    b = run_tiny(registry, config, Path(home) / "b", evaluate_before=False)
    _assert_same_weights(a.weights, b.weights, f"{algorithm_id}: same seed, other weights")
    np.testing.assert_allclose(a.after["loss"], b.after["loss"], rtol=WEIGHT_TOLERANCE, atol=1e-6)


def check_algorithm(algorithm_id: str, home: Path, *, registry: Any | None = None,
                    algorithm_params: dict[str, Any] | None = None, task: dict[str, Any] | None = None) -> None:
    """Runs :func:`check_learns`, :func:`check_resume` and :func:`check_deterministic` for every supported kind.

    Args:
        algorithm_id: The algorithm to check.
        home: A folder for the run stores (``tmp_path``).
        registry: The plugin registry; by default a fresh ``make_plugin_manager(strict=False)``.
        algorithm_params: Algorithm parameters overriding the defaults, in every check;
            ``paper_defaults(registry, algorithm_id)`` checks the spec's own defaults, uncapped.
        task: Run-config fields overriding the tiny task's (see :func:`tiny_config`).

    Raises:
        AssertionError: From the first check that fails.
    """
    registry = _registry(registry)
    given = {"registry": registry, "algorithm_params": algorithm_params, "task": task}
    for kind in supported_kinds(registry, algorithm_id):
        check_learns(algorithm_id, Path(home) / kind / "learns", kind=kind, **given)
        check_resume(algorithm_id, Path(home) / kind / "resume", kind=kind, **given)
        check_deterministic(algorithm_id, Path(home) / kind / "determinism", kind=kind, **given)


def paper_defaults(registry: Any | None, algorithm_id: str) -> dict[str, Any]:
    """Every parameter of the algorithm at its declared default (the paper's), to pass as ``algorithm_params``.

    The checks cap ``meta_batch_size`` at 4 and ``eval_inner_steps`` at 10 to stay fast, except for parameters
    given in ``algorithm_params``; these give them all, so a check runs the defaults users get (slower).

    Args:
        registry: The plugin registry; ``None`` makes a fresh one.
        algorithm_id: The algorithm.

    Returns:
        ``{name: default}`` for every parameter, default factories included.
    """
    return _registry(registry).algorithm(algorithm_id).params().model_dump()


def algorithm_ids(registry: Any | None = None) -> list[str]:
    """Every loaded algorithm id (for ``pytest.mark.parametrize``)."""
    return sorted(_registry(registry).algorithms)


# -- tiny synthetic tasks and compiled steps, for an algorithm's own unit tests ---------------------------------


def sinusoid_batch(rng: np.random.Generator, num_tasks: int, shots: int = 10, queries: int = 10) -> Any:
    """Sine-wave regression tasks of Finn et al. 2017, section 5.1, drawn with NumPy (no dataset plugin).

    Amplitude in [0.1, 5], phase in [0, pi], inputs uniform on [-5, 5].

    Returns:
        A :class:`~metalab.core.contract.specs.TaskBatch` of float32 arrays ``[num_tasks, n, 1]``.
    """
    from metalab.core.contract.specs import TaskBatch

    amplitude = rng.uniform(0.1, 5.0, (num_tasks, 1, 1))
    phase = rng.uniform(0.0, np.pi, (num_tasks, 1, 1))
    x = rng.uniform(-5.0, 5.0, (num_tasks, shots + queries, 1))
    y = (amplitude * np.sin(x + phase)).astype("float32")
    x = x.astype("float32")
    return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


def blob_batch(rng: np.random.Generator, num_tasks: int, ways: int = 3, shots: int = 1, queries: int = 5,
               dim: int = 16) -> Any:
    """Few-shot tasks whose classes are fresh Gaussian blobs in the first 2 of ``dim`` features; the rest is noise.

    A random embedding is swamped by the noise features, so beating chance on new tasks means the algorithm
    learned which features matter: a task that needs meta-learning yet trains in seconds.

    Returns:
        A :class:`~metalab.core.contract.specs.TaskBatch`: float32 ``[num_tasks, ways * n, dim]`` inputs, int32
        labels ``0..ways-1``.
    """
    from metalab.core.contract.specs import TaskBatch

    centers = rng.normal(size=(num_tasks, ways, 1, 2))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        signal = centers + 0.25 * rng.normal(size=(num_tasks, ways, n, 2))
        noise = rng.normal(size=(num_tasks, ways, n, dim - 2))
        x = np.concatenate([signal, noise], axis=-1).reshape(num_tasks, ways * n, dim).astype("float32")
        y = np.tile(np.repeat(np.arange(ways, dtype="int32"), n), (num_tasks, 1))
        return x, y

    (sx, sy), (qx, qy) = draw(shots), draw(queries)
    return TaskBatch(sx, sy, qx, qy)


def train_steps(algorithm: Any, sample: Any, steps: int) -> list[dict[str, np.ndarray]]:
    """Meta-trains ``algorithm`` as the runner does (one compiled step, fixed shapes) on ``sample()`` batches.

    Args:
        algorithm: An algorithm instance (the factory's result).
        sample: ``sample() -> TaskBatch``, called once per step.
        steps: Steps to run.

    Returns:
        The metrics of every step, as NumPy values.
    """
    from metalab.core.engine import functional
    from metalab.core.contract.specs import TaskBatch

    optimizer = algorithm.make_optimizer()
    optimizer.build(algorithm.trainable_variables)

    @functional.compile
    def step(sx: Any, sy: Any, qx: Any, qy: Any) -> Any:
        grads, metrics = algorithm.meta_gradients(TaskBatch(sx, sy, qx, qy))
        optimizer.apply(grads, algorithm.trainable_variables)
        return metrics

    return [functional.to_numpy(step(*sample().as_tuple())) for _ in range(steps)]


def evaluate_compiled(algorithm: Any, batch: Any) -> dict[str, np.ndarray]:
    """Runs ``algorithm.evaluate`` on ``batch`` compiled, as the runner does, and returns NumPy values."""
    from metalab.core.engine import functional
    from metalab.core.contract.specs import TaskBatch

    compiled = functional.compile(lambda *arrays: algorithm.evaluate(TaskBatch(*arrays)))
    return functional.to_numpy(compiled(*batch.as_tuple()))

"""The meta-test protocol: fixed evaluation episodes, compiled scoring with 95% intervals, and scoring a run.

Every algorithm is scored on the same fixed episodes of a dataset, split and episode shape (seed
:data:`~metalab.core.engine.fixed_tasks.EVAL_SEED`), so scores of different runs are comparable.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from metalab.core.contract.specs import Benchmark, TaskBatch
from metalab.core.engine.checkpoints import (CheckpointMismatchError, checkpoint_files, record_warning,
                                              restore_checkpoint)
from metalab.core.engine.config import RunConfig
from metalab.core.engine.devices import device_scope
from metalab.core.engine.fixed_tasks import EVAL_SEED
from metalab.core.engine.session import Session, build_session, cross_domain_session, episode_key
from metalab.core.settings import Settings
from metalab.core.store import RunStore

#: Episodes per compiled evaluation call.
EVAL_CHUNK = 16


def ci95(values: Any) -> float:
    """Half-width of the 95% confidence interval of the mean of ``values`` (1.96 standard errors, ddof=1)."""
    x = np.asarray(values)
    return float(1.96 * x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def evaluate_environment(family: Any, algorithm: Any, fixed: Any, steps: int,
                         progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Scores an environment algorithm on fixed tasks (:func:`~metalab.core.engine.rollouts.adaptation_curves`).

    Returns:
        ``return`` (after the last adaptation step) with ``ci95``, ``return_before`` (no adaptation) with
        ``return_before_ci95``, ``curve`` and ``curve_ci95`` (steps 0..``steps``), ``loss`` (``-return``),
        ``episodes`` (the number of tasks) and ``per_task`` (each task's curve).
    """
    from metalab.core.engine.rollouts import adaptation_curves

    curves = adaptation_curves(family, algorithm, fixed, steps, progress=progress)
    final = curves[:, -1]
    return {
        "episodes": int(fixed.n), "return": float(final.mean()), "ci95": ci95(final), "loss": float(-final.mean()),
        "return_before": float(curves[:, 0].mean()), "return_before_ci95": ci95(curves[:, 0]),
        "curve": [float(v) for v in curves.mean(axis=0)], "curve_ci95": [ci95(c) for c in curves.T],
        "per_task": [[float(v) for v in row] for row in curves],
    }


def fixed_batch(session: Session, split: str, episodes: int, seed: int = EVAL_SEED) -> TaskBatch:
    """The fixed, cached tasks every algorithm is scored on for this dataset, split and episode shape."""
    from metalab.core.engine.fixed_tasks import fixed_tasks

    cfg = session.config
    key = episode_key(cfg)
    return fixed_tasks(session.dataset, split, session.task.ways, cfg.shots, cfg.queries, episodes, seed=seed, key=key)


def fixed_episode_set(session: Session, split: str, episodes: int, seed: int = EVAL_SEED) -> Any:
    """Like :func:`fixed_batch`, but materialises the episodes one chunk at a time (600 20-way 5-shot episodes
    would otherwise take ~750 MB at once)."""
    from metalab.core.engine.fixed_tasks import fixed_episodes

    cfg = session.config
    if session.task.kind == "environment":
        from metalab.core.engine.rollouts import fixed_environment_tasks

        return fixed_environment_tasks(session.dataset, split, episodes, seed)
    key = episode_key(cfg)
    return fixed_episodes(session.dataset, split, session.task.ways, cfg.shots, cfg.queries, episodes, seed=seed,
                          key=key)


def cross_domain_episodes(cross: Session, episodes: int) -> Any:
    """The fixed test episodes of the cross-domain dataset (its ``test`` split, the run's episode shape).

    Returns:
        A :class:`~metalab.core.engine.fixed_tasks.FixedEpisodes` (indices only; ``.batch()`` builds the arrays).

    Raises:
        ConfigError: If that split cannot serve the run's episodes (too few classes or samples per class).
    """
    from metalab.core.engine.config import ConfigError
    from metalab.core.engine.fixed_tasks import fixed_episodes

    cfg = cross.config
    key = episode_key(cfg)
    try:
        return fixed_episodes(cross.dataset, "test", cross.task.ways, cfg.shots, cfg.queries, episodes, seed=EVAL_SEED,
                              key=key)
    except ValueError as exc:
        raise ConfigError(f"test_dataset {cfg.dataset!r}: {exc}") from None


def eval_steps(algorithm: Any) -> int:
    """An environment algorithm's adaptation steps at meta-test time: its ``eval_steps`` attribute, else 1."""
    steps = getattr(algorithm, "eval_steps", 1)
    return int(steps) if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0 else 1


def compile_evaluate(algorithm: Any) -> Callable | None:
    """``algorithm.evaluate`` compiled over the four task arrays (compiled graphs take tensors, not objects);
    ``None`` for an environment algorithm, which has no ``evaluate`` (:func:`evaluate_environment` scores it)."""
    from metalab.core.engine import functional

    if not callable(getattr(algorithm, "evaluate", None)):
        return None
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


def evaluate_batch(session: Session, batch: Any, evaluate_fn: Callable | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Scores ``session.algorithm`` on every task of ``batch`` and returns means with 95% confidence intervals.

    ``batch`` is a :class:`TaskBatch` or a lazily materialised episode set (:func:`fixed_episode_set`).
    ``progress(done, total)``, if given, is called after each chunk of :data:`EVAL_CHUNK` episodes is scored.

    Returns:
        ``accuracy`` (0–1) or ``mse``, ``ci95``, ``loss``, ``episodes`` and, for gradient-based algorithms,
        ``curve`` (mean score after 0..steps inner steps) with ``curve_ci95``.
    """
    from metalab.core.engine import functional

    if session.task.kind == "environment":
        return evaluate_environment(session.dataset, session.algorithm, batch, eval_steps(session.algorithm),
                                    progress=progress)
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
        if progress is not None:
            progress(start + size, n)
    values = {k: np.concatenate(v, axis=0) for k, v in parts.items()}

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
        result["curve_ci95"] = [ci95(c) for c in curve.T]
    return result


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
        store.add_evaluation(run.id, split, n, result, seed=EVAL_SEED)
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
    with device_scope(config.device):
        session = build_session(registry, config, settings)
        available = getattr(session.dataset, "benchmarks", {}) or {}
        if name not in available:
            raise ValueError(
                f"Dataset {config.dataset} has no benchmark task set {name!r} (available: "
                f"{', '.join(sorted(available)) or 'none'}). Received: benchmark={name!r}"
            )
        bench = available[name]
        # Refused from the config alone, before any weights: training further would not make the score fair.
        leak_check = _refuse_leaks(run.id, config, session.dataset, name, bench)
        _require_checkpoint(store, run)
        tasks = (bench.tasks if isinstance(bench, Benchmark) else bench)()
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
    result["leak_check"] = leak_check
    if record:
        store.add_evaluation(run.id, f"benchmark:{name}", result["episodes"], result)
    return result


class BenchmarkLeakError(ValueError):
    """A run trained (or validated) on classes of the benchmark it was asked to be scored on."""


def benchmark_overlap(dataset: Any, classes: Any) -> dict[str, list[str]]:
    """The benchmark classes each of the dataset's ``train`` and ``val`` splits holds (rotations included).

    A benchmark class ``b`` is held by a split with a class named ``b`` or ``b/<variant>`` (``b/rot90``).

    Returns:
        ``{"train": [...], "val": [...]}``: the benchmark classes found, sorted (empty lists: no leak).
    """
    wanted = {str(c) for c in classes}
    found: dict[str, list[str]] = {}
    for split in ("train", "val"):
        part = (getattr(dataset, "splits", None) or {}).get(split)
        hits: set[str] = set()
        for cls in getattr(part, "class_names", None) or []:
            pieces = str(cls).split("/")
            for end in range(1, len(pieces) + 1):
                prefix = "/".join(pieces[:end])
                if prefix in wanted:
                    hits.add(prefix)
                    break
        found[split] = sorted(hits)
    return found


def _refuse_leaks(run_id: str, config: RunConfig, dataset: Any, name: str, bench: Any) -> str:
    """Raises :class:`BenchmarkLeakError` when the run's train or val classes hold a class of the benchmark.

    Returns:
        What was checked, stored with the score: ``"no overlap with N benchmark classes"``, or, for a benchmark of
        a pre-1.5 plugin that declares no classes, a note that leaks were not checked.
    """
    if not isinstance(bench, Benchmark):
        return "not checked: the dataset plugin does not declare the benchmark's classes (plugin API < 1.5)"
    classes = sorted({str(c) for c in bench.classes()})
    overlap = benchmark_overlap(dataset, classes)
    leaked = sorted(set(overlap["train"]) | set(overlap["val"]))
    if leaked:
        params = config.dataset_params or {}
        shown = ", ".join(leaked[:5]) + (f" and {len(leaked) - 5} more" if len(leaked) > 5 else "")
        raise BenchmarkLeakError(
            f"Run {run_id} cannot be scored on {name!r}: {len(leaked)} of its {len(classes)} classes are classes this "
            f"run trained or validated on (train: {len(overlap['train'])}, val: {len(overlap['val'])}; e.g. "
            f"{shown}), so its score would not be a held-out result. "
            + (f"{bench.advice.rstrip('.')}. " if bench.advice else "Train on a split that keeps those classes out. ")
            + f"Received: dataset={config.dataset!r}"
            + (f", split={params['split']!r}" if isinstance(params.get("split"), str) else "")
            + f", benchmark={name!r}"
        )
    return f"no overlap with the benchmark's {len(classes)} classes (train and val checked)"

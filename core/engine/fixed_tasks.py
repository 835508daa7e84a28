"""Fixed evaluation tasks: a seeded set of episodes (or regression tasks), the same on every call and cached by
index in this process, so every run and algorithm is scored on the same tasks.

Only indices are kept (a few kilobytes for hundreds of episodes); floats are built when a batch is asked for. A
set is drawn from a stream of its own, and the first ``m`` tasks of a set of ``n`` are the set of ``m``.
"""

from __future__ import annotations

import collections
import math
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from metalab.core.contract.specs import SPLITS, TaskBatch
from metalab.core.engine.sampling import (
    _SALT_FIXED,
    _check_episode_shape,
    _check_int,
    _ClassTable,
    _derive_rng,
    _draw_episode_rows,
    _get_split,
    _is_regression,
    _materialise_episodes,
    _sample_regression,
)

__all__ = [
    "EVAL_SEED",
    "FixedEpisodes",
    "fixed_episodes",
    "fixed_tasks",
    "fixed_task_chunks",
    "clear_fixed_tasks_cache",
    "num_chunks",
]

#: Seed of the fixed evaluation episodes: the same for every run and algorithm, so scores are comparable.
EVAL_SEED = 2017

_FIXED_CACHE_SIZE = 32


@dataclass
class _FixedPlan:
    """The cached, dataset-independent part of a fixed task set."""

    n: int
    shots: int
    queries: int
    # Classification: episode rows and classes, plus what the rows index into (to catch a reused key).
    rows: np.ndarray | None = None
    classes: np.ndarray | None = None
    num_classes: int = 0
    num_rows: int = 0
    # Regression: the arrays themselves (small) and the task parameters.
    arrays: tuple[np.ndarray, ...] | None = None
    tasks: list = field(default_factory=list)
    dataset_ref: Any = None


class FixedEpisodes:
    """A fixed, seeded set of ``n`` tasks bound to a dataset; floats are built only when asked for.

    Attributes:
        n: Number of tasks.
        split, ways, shots, queries, seed: How the set was drawn.
        classes: Classification only: ``int64 [n, ways]`` class indices (into the split's ``class_names``);
            column ``i`` carries label ``i``.
        rows: Classification only: ``int64 [n, ways, shots+queries]`` rows of the split's images.
        tasks: Regression only: the ``n`` task parameter objects.
    """

    def __init__(self, dataset: Any, split: str, ways: int, shots: int, queries: int, seed: int, plan: _FixedPlan):
        self.dataset = dataset
        self.split = split
        self.ways = ways
        self.shots = shots
        self.queries = queries
        self.seed = seed
        self._plan = plan

    @property
    def n(self) -> int:
        return self._plan.n

    @property
    def classes(self) -> np.ndarray | None:
        return self._plan.classes

    @property
    def rows(self) -> np.ndarray | None:
        return self._plan.rows

    @property
    def tasks(self) -> list:
        return list(self._plan.tasks)

    def batch(self, start: int = 0, stop: int | None = None) -> TaskBatch:
        """Materialises tasks ``start:stop`` (all by default) as a :class:`TaskBatch` of new numpy arrays."""
        stop = self.n if stop is None else min(int(stop), self.n)
        start = int(start)
        if not 0 <= start < stop:
            raise ValueError(f"FixedEpisodes.batch: need 0 <= start < stop <= {self.n}. Received: start={start}, stop={stop}")
        plan = self._plan
        if plan.arrays is not None:
            return TaskBatch(*(a[start:stop].copy() for a in plan.arrays))
        split_obj = self.dataset.splits[self.split]
        return _materialise_episodes(self.dataset, split_obj, plan.rows[start:stop], self.shots, self.queries,
                                     self.split)

    def chunks(self, size: int) -> Iterator[TaskBatch]:
        """Yields the tasks in order as batches of at most ``size`` tasks (to bound memory).

        Args:
            size: Tasks per chunk.
        """
        size = _check_int("size", size, 1, "FixedEpisodes.chunks")
        for start in range(0, self.n, size):
            yield self.batch(start, start + size)


_fixed_cache: "collections.OrderedDict[tuple, _FixedPlan]" = collections.OrderedDict()
_fixed_lock = threading.Lock()


def _make_ref(dataset: Any) -> Any:
    try:
        return weakref.ref(dataset)
    except TypeError:
        # Not weak-referenceable: hold it, so that its id cannot be reused by another object while cached.
        return lambda: dataset


def _build_plan(dataset: Any, split: str, ways: int, shots: int, queries: int, n: int, seed: int,
                owner: str) -> _FixedPlan:
    rng = _derive_rng(seed, split, _SALT_FIXED)
    if _is_regression(dataset):
        if split not in SPLITS:
            raise ValueError(f"{owner}: split must be one of {list(SPLITS)}. Received: split={split!r}")
        batch, tasks = _sample_regression(dataset, rng, n, shots, queries)
        for array in batch.as_tuple():
            array.setflags(write=False)
        return _FixedPlan(n=n, shots=shots, queries=queries, arrays=batch.as_tuple(), tasks=tasks)
    split_obj = _get_split(dataset, split, owner)
    table = _ClassTable(split_obj, split, owner)
    _check_episode_shape(table, split_obj, split, ways, shots, queries, owner)
    classes, rows = _draw_episode_rows(rng, table, n, ways, shots + queries)
    classes.setflags(write=False)
    rows.setflags(write=False)
    return _FixedPlan(n=n, shots=shots, queries=queries, rows=rows, classes=classes,
                      num_classes=table.num_classes, num_rows=table.num_rows)


def fixed_episodes(dataset: Any, split: str, ways: int | None, shots: int, queries: int, n: int, seed: int = 0,
                   key: str | None = None) -> FixedEpisodes:
    """Returns a fixed, seeded set of ``n`` tasks, the same on every call (cached in this process).

    Every algorithm scored with the same arguments meets the same tasks. The set is drawn from a stream of its
    own (not the training sampler's), and the first ``m`` tasks of a set of ``n`` are the set of ``m``.

    Args:
        dataset: A :class:`ClassificationDataset` or a :class:`RegressionTaskFamily`.
        split, ways, shots, queries: The episode shape (``ways`` is ignored for regression).
        n: Number of tasks.
        seed: Non-negative integer.
        key: A name for the dataset (e.g. its id and parameters) so that separately loaded copies share the
            cached set; by default the cache is keyed by the dataset object's identity.

    Returns:
        A :class:`FixedEpisodes`.

    Raises:
        ValueError: As for :class:`~metalab.core.engine.sampling.EpisodeSampler`, or if ``key`` was used before
            for a dataset whose split has other classes.
    """
    owner = "fixed_tasks"
    regression = _is_regression(dataset)
    ways = 1 if regression else _check_int("ways", ways, 1, owner)
    shots = _check_int("shots", shots, 1, owner)
    queries = _check_int("queries", queries, 1, owner)
    n = _check_int("n", n, 1, owner)
    seed = _check_int("seed", seed, 0, owner)
    cache_key = (("key", key) if key is not None else ("id", id(dataset)), split, ways, shots, queries, n, seed)
    with _fixed_lock:
        plan = _fixed_cache.get(cache_key)
        if plan is not None and key is None and plan.dataset_ref() is not dataset:
            plan = None  # the id belonged to a dataset that is gone
        if plan is not None:
            _fixed_cache.move_to_end(cache_key)
    if plan is None:
        plan = _build_plan(dataset, split, ways, shots, queries, n, seed, owner)
        plan.dataset_ref = _make_ref(dataset)
        with _fixed_lock:
            _fixed_cache[cache_key] = plan
            while len(_fixed_cache) > _FIXED_CACHE_SIZE:
                _fixed_cache.popitem(last=False)
    elif not regression:
        split_obj = _get_split(dataset, split, owner)
        if split_obj.num_classes != plan.num_classes or len(split_obj.labels) != plan.num_rows:
            raise ValueError(
                f"{owner}: key {key!r} was first used for a dataset whose split {split!r} has "
                f"{plan.num_classes} classes and {plan.num_rows} images; this one has {split_obj.num_classes} "
                f"and {len(split_obj.labels)}. Use a key that names the dataset and its parameters. Received: key={key!r}"
            )
    return FixedEpisodes(dataset, split, ways, shots, queries, seed, plan)


def fixed_tasks(dataset: Any, split: str, ways: int | None, shots: int, queries: int, n: int, seed: int = 0,
                key: str | None = None) -> TaskBatch:
    """Returns a fixed, seeded set of ``n`` tasks as one :class:`TaskBatch` (leading axis ``n``).

    Same arguments as :func:`fixed_episodes`; identical arrays on every call. For hundreds of image episodes
    prefer :func:`fixed_task_chunks`, which bounds memory.
    """
    return fixed_episodes(dataset, split, ways, shots, queries, n, seed=seed, key=key).batch()


def fixed_task_chunks(dataset: Any, split: str, ways: int | None, shots: int, queries: int, n: int, chunk: int,
                      seed: int = 0, key: str | None = None) -> Iterator[TaskBatch]:
    """Yields the tasks of :func:`fixed_tasks` in order, ``chunk`` tasks at a time.

    Args:
        chunk: Tasks per yielded :class:`TaskBatch` (the last one may be shorter).
        Others: As for :func:`fixed_episodes`.
    """
    return fixed_episodes(dataset, split, ways, shots, queries, n, seed=seed, key=key).chunks(chunk)


def clear_fixed_tasks_cache() -> None:
    """Forgets every cached fixed task set (tests use it; sets are rebuilt identically on the next call)."""
    with _fixed_lock:
        _fixed_cache.clear()


def num_chunks(n: int, chunk: int) -> int:
    """Number of chunks :func:`fixed_task_chunks` yields for ``n`` tasks (for progress bars)."""
    return math.ceil(n / chunk)

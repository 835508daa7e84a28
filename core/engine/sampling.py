"""Task sampling: few-shot episodes from class-indexed datasets, tasks from regression task families, and
supervised mini-batches, each a seeded stream whose position a checkpoint can save.

Numpy only (no TensorFlow): samplers run in the training worker's input pipeline and in evaluation. Episodes
are drawn as indices first (which classes, which samples) and turned into ``float32`` arrays last.

Stream layout: every classification episode consumes the same number of random doubles, so
``sample_batch(4)`` gives exactly the episodes of four calls to ``sample()``; the fixed evaluation sets of
:mod:`metalab.core.engine.fixed_tasks` are drawn the same way, from streams of their own.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import numpy as np

from metalab.core.contract.specs import SPLITS, ClassificationDataset, ClassSplit, TaskBatch

__all__ = [
    "EpisodeSampler",
    "RegressionSampler",
    "SupervisedSampler",
    "make_sampler",
]

# Salts keep the training stream and the fixed evaluation sets apart even when they share a seed and split.
# Every purpose's salt is here, beside the one place streams are derived, so that no two share one.
_SALT_STREAM = 0x5354524D  # "STRM"
_SALT_FIXED = 0x46495844  # "FIXD"
_SALT_SUPERVISED = 0x53555056  # "SUPV"
_SALT_HOLDOUT = 0x484F4C44  # "HOLD"
_STATE_VERSION = 1


def _check_int(name: str, value: Any, minimum: int, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _derive_rng(seed: int, split: str, salt: int) -> np.random.Generator:
    """A generator whose stream depends on the seed, the split name and the purpose (salt)."""
    # crc32 rather than hash(): str hashes are salted per process, and streams must match across processes.
    entropy = [salt, int(seed), zlib.crc32(split.encode("utf-8"))]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def _is_regression(dataset: Any) -> bool:
    return getattr(dataset, "kind", None) == "regression"


def _to_json_state(value: Any) -> Any:
    # PCG64 state holds 128-bit integers; strings keep them exact in any JSON reader (JavaScript included).
    if isinstance(value, dict):
        return {k: _to_json_state(v) for k, v in value.items()}
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return value


_INT_RE = re.compile(r"^-?\d+$")


def _from_json_state(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _from_json_state(v) for k, v in value.items()}
    if isinstance(value, str) and _INT_RE.match(value):
        return int(value)
    return value


class _ClassTable:
    """Row indices of one split grouped by class: ``table[c, :counts[c]]`` are the rows of class ``c``."""

    def __init__(self, split: ClassSplit, split_name: str, owner: str):
        labels = np.asarray(split.labels)
        num_classes = split.num_classes
        if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
            raise ValueError(
                f"{owner}: labels of split {split_name!r} must be a 1-D integer array. "
                f"Received: labels.shape={labels.shape}, labels.dtype={labels.dtype}"
            )
        labels = labels.astype(np.int64, copy=False)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"{owner}: labels of split {split_name!r} must lie in 0..{num_classes - 1} "
                f"(one per class name). Received: labels in {labels.min()}..{labels.max()}"
            )
        counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
        order = np.argsort(labels, kind="stable")
        max_n = int(counts.max()) if num_classes else 0
        table = np.full((num_classes, max_n), -1, dtype=np.int64)
        starts = np.cumsum(counts) - counts
        position = np.arange(labels.size) - np.repeat(starts, counts)
        table[labels[order], position] = order
        self.table = table
        self.counts = counts
        self.num_classes = num_classes
        self.num_rows = int(labels.size)


def _get_split(dataset: ClassificationDataset, split: str, owner: str) -> ClassSplit:
    splits = getattr(dataset, "splits", None)
    if not isinstance(splits, dict):
        raise ValueError(
            f"{owner}: dataset must be a ClassificationDataset with a dict of splits. Received: dataset={dataset!r}"
        )
    if split not in splits:
        raise ValueError(f"{owner}: split must be one of {sorted(splits)}. Received: split={split!r}")
    return splits[split]


def _check_episode_shape(table: _ClassTable, split_obj: ClassSplit, split: str, ways: int, shots: int,
                         queries: int, owner: str) -> None:
    if ways > table.num_classes:
        raise ValueError(
            f"{owner}: ways must be at most the number of classes in split {split!r} ({table.num_classes}). "
            f"Received: ways={ways}"
        )
    need = shots + queries
    if table.num_classes and int(table.counts.min()) < need:
        smallest = int(np.argmin(table.counts))
        raise ValueError(
            f"{owner}: every class needs at least shots+queries samples, but class "
            f"{split_obj.class_names[smallest]!r} of split {split!r} has {int(table.counts[smallest])} images "
            f"but shots+queries={need}. Received: shots={shots}, queries={queries}"
        )


def _draw_episode_rows(rng: np.random.Generator, table: _ClassTable, num_tasks: int, ways: int,
                       per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws ``num_tasks`` episodes as (classes ``[T, ways]``, rows ``[T, ways, per_class]``).

    The class order in each episode is uniformly random, and so is the sample order within a class: label
    ``i`` goes to ``classes[:, i]`` and the first ``shots`` rows of a class form its support set.
    """
    num_classes, max_n = table.table.shape
    # One row of random keys per episode: sampling T at once equals T single draws (see module docstring).
    keys = rng.random((num_tasks, num_classes + ways * max_n))
    class_keys = keys[:, :num_classes]
    if ways < num_classes:
        chosen = np.argpartition(class_keys, ways - 1, axis=1)[:, :ways]
    else:
        chosen = np.broadcast_to(np.arange(num_classes), (num_tasks, num_classes))
    # argpartition picks a uniform subset but not a uniform order; sorting the chosen keys makes the
    # class-to-label assignment a uniformly random permutation.
    order = np.argsort(np.take_along_axis(class_keys, chosen, axis=1), axis=1)
    classes = np.take_along_axis(chosen, order, axis=1)

    sample_keys = keys[:, num_classes:].reshape(num_tasks, ways, max_n)
    valid = np.arange(max_n) < table.counts[classes][..., None]
    sample_keys = np.where(valid, sample_keys, 2.0)  # keys are < 1, so padding is never among the first k
    if per_class < max_n:
        picked = np.argpartition(sample_keys, per_class - 1, axis=2)[..., :per_class]
    else:
        picked = np.broadcast_to(np.arange(max_n), sample_keys.shape)
    picked = np.take_along_axis(picked, np.argsort(np.take_along_axis(sample_keys, picked, axis=2), axis=2), axis=2)
    rows = table.table[classes[..., None], picked]
    return classes, rows


def _class_extras(dataset: ClassificationDataset, split: str | None, classes: np.ndarray) -> dict[str, np.ndarray] | None:
    """Per-episode class side information: ``{"class_attributes": float32 [T, ways, A]}`` or ``None``.

    Present when ``dataset.info["class_attributes"][split]`` holds one attribute row per class of the split.
    """
    table = (getattr(dataset, "info", None) or {}).get("class_attributes")
    if split is None or not isinstance(table, dict) or split not in table:
        return None
    attributes = np.asarray(table[split], dtype=np.float32)
    num_classes = dataset.splits[split].num_classes
    if attributes.ndim != 2 or attributes.shape[0] != num_classes:
        raise ValueError(
            f"info['class_attributes'][{split!r}] must be a [classes, attributes] array with one row per class of "
            f"the split ({num_classes}). Received: shape={attributes.shape}"
        )
    return {"class_attributes": attributes[classes]}


def _materialise_episodes(dataset: ClassificationDataset, split_obj: ClassSplit, rows: np.ndarray,
                          shots: int, queries: int, split: str | None = None) -> TaskBatch:
    num_tasks, ways, _ = rows.shape
    support_rows = rows[:, :, :shots].reshape(num_tasks, ways * shots)
    query_rows = rows[:, :, shots:].reshape(num_tasks, ways * queries)
    images = split_obj.images
    support_x = np.asarray(dataset.to_float(images[support_rows]), dtype=np.float32)
    query_x = np.asarray(dataset.to_float(images[query_rows]), dtype=np.float32)
    label_row = np.arange(ways, dtype=np.int32)
    support_y = np.ascontiguousarray(np.broadcast_to(np.repeat(label_row, shots), (num_tasks, ways * shots)))
    query_y = np.ascontiguousarray(np.broadcast_to(np.repeat(label_row, queries), (num_tasks, ways * queries)))
    # The class of label i is that of its first row: episodes never mix classes within a label.
    extras = _class_extras(dataset, split, np.asarray(split_obj.labels)[rows[:, :, 0]])
    return TaskBatch(support_x=support_x, support_y=support_y, query_x=query_x, query_y=query_y, extras=extras)


class _StatefulSampler:
    """RNG state handling shared by both samplers."""

    _rng: np.random.Generator
    tasks_sampled: int

    def get_state(self) -> dict:
        """Returns the sampler's position in its task stream as a JSON-serialisable dict.

        Returns:
            ``{"version": 1, "tasks_sampled": int, "bit_generator": {...}}``; the numpy bit-generator state
            with its (128-bit) integers written as decimal strings.
        """
        return {
            "version": _STATE_VERSION,
            "tasks_sampled": int(self.tasks_sampled),
            "bit_generator": _to_json_state(self._rng.bit_generator.state),
        }

    def set_state(self, state: dict) -> None:
        """Restores a position saved by :meth:`get_state`; the next tasks continue that stream exactly.

        Args:
            state: A dict returned by :meth:`get_state` (possibly after a JSON round trip).

        Raises:
            ValueError: If ``state`` is not such a dict or belongs to another bit generator.
        """
        owner = type(self).__name__
        if not isinstance(state, dict) or "bit_generator" not in state:
            raise ValueError(f"{owner}.set_state expects a dict made by get_state(). Received: state={state!r}")
        bit_state = _from_json_state(state["bit_generator"])
        expected = type(self._rng.bit_generator).__name__
        if not isinstance(bit_state, dict) or bit_state.get("bit_generator") != expected:
            raise ValueError(
                f"{owner}.set_state expects the state of a {expected} bit generator. "
                f"Received: bit_generator={state['bit_generator']!r}"
            )
        try:
            self._rng.bit_generator.state = bit_state
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{owner}.set_state: malformed bit generator state ({exc}). Received: state={state!r}") from None
        self.tasks_sampled = int(state.get("tasks_sampled", 0))

    def sample(self) -> TaskBatch:
        """Draws one task.

        Returns:
            A :class:`TaskBatch` with a leading task axis of length 1.
        """
        return self.sample_batch(1)

    def sample_batch(self, num_tasks: int) -> TaskBatch:  # pragma: no cover - overridden
        raise NotImplementedError


class EpisodeSampler(_StatefulSampler):
    """Draws N-way K-shot episodes from one split of a :class:`ClassificationDataset`.

    Each episode picks ``ways`` distinct classes, and ``shots + queries`` distinct samples of each class. The
    chosen classes get labels ``0..ways-1`` in a random order (a fresh permutation per episode). Support and
    query sets are class-major: ``support_y`` is ``[0]*shots + [1]*shots + ...``.

    Args:
        dataset: The dataset to draw from.
        split: Which split (``"train"``, ``"val"`` or ``"test"``).
        ways: Classes per episode.
        shots: Support samples per class.
        queries: Query samples per class.
        seed: Non-negative integer; with ``split`` it fixes the task stream (other splits give other streams).

    Raises:
        ValueError: If the split is unknown, ``ways`` exceeds the split's classes, or a class has fewer than
            ``shots + queries`` samples.

    Example:
        sampler = EpisodeSampler(dataset, "train", ways=5, shots=1, queries=15, seed=0)
        batch = sampler.sample_batch(32)   # support_x [32, 5, 28, 28, 1], support_y [32, 5]
    """

    kind = "classification"

    def __init__(self, dataset: ClassificationDataset, split: str, ways: int, shots: int, queries: int, seed: int):
        owner = "EpisodeSampler"
        self.ways = _check_int("ways", ways, 1, owner)
        self.shots = _check_int("shots", shots, 1, owner)
        self.queries = _check_int("queries", queries, 1, owner)
        self.seed = _check_int("seed", seed, 0, owner)
        self.split = split
        self.dataset = dataset
        self._split = _get_split(dataset, split, owner)
        self._table = _ClassTable(self._split, split, owner)
        _check_episode_shape(self._table, self._split, split, self.ways, self.shots, self.queries, owner)
        self._rng = _derive_rng(self.seed, split, _SALT_STREAM)
        self.tasks_sampled = 0
        #: Class indices (into the split's ``class_names``) of the last batch, ``[T, ways]``; column i has label i.
        self.last_classes: np.ndarray | None = None

    def sample_indices(self, num_tasks: int) -> np.ndarray:
        """Draws episodes as row indices into the split's images, without building float arrays.

        Args:
            num_tasks: Number of episodes.

        Returns:
            ``int64`` array ``[num_tasks, ways, shots + queries]``: row ``[t, i, :shots]`` is the support set
            of label ``i``, the rest its queries.
        """
        num_tasks = _check_int("num_tasks", num_tasks, 1, "EpisodeSampler.sample_batch")
        classes, rows = _draw_episode_rows(self._rng, self._table, num_tasks, self.ways, self.shots + self.queries)
        self.last_classes = classes
        self.tasks_sampled += num_tasks
        return rows

    def sample_batch(self, num_tasks: int) -> TaskBatch:
        """Draws a batch of episodes.

        Args:
            num_tasks: Number of episodes ``T``.

        Returns:
            A :class:`TaskBatch`: ``support_x`` ``float32 [T, ways*shots, *input_shape]``, ``support_y``
            ``int32 [T, ways*shots]``, ``query_x`` ``float32 [T, ways*queries, ...]``, ``query_y``
            ``int32 [T, ways*queries]``; ``extras["class_attributes"]`` ``float32 [T, ways, A]`` (row ``i`` the
            attributes of label ``i``'s class) when ``dataset.info["class_attributes"]`` has this split, else
            ``extras`` is ``None``.
        """
        rows = self.sample_indices(num_tasks)
        return _materialise_episodes(self.dataset, self._split, rows, self.shots, self.queries, self.split)


def _sample_regression(family: Any, rng: np.random.Generator, num_tasks: int, shots: int,
                       queries: int) -> tuple[TaskBatch, list]:
    n = shots + queries
    input_shape = tuple(family.input_shape)
    output_dim = int(family.output_dim)
    xs = np.empty((num_tasks, n, *input_shape), dtype=np.float32)
    ys = np.empty((num_tasks, n, output_dim), dtype=np.float32)
    tasks = []
    for t in range(num_tasks):
        task = family.sample_task(rng)
        x, y = family.sample_points(task, n, rng)
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.float32)
        if x.shape != (n, *input_shape) or y.shape != (n, output_dim):
            raise ValueError(
                f"RegressionSampler: sample_points(task, {n}, rng) must return x {(n, *input_shape)} and "
                f"y {(n, output_dim)}. Received: x.shape={x.shape}, y.shape={y.shape}"
            )
        xs[t], ys[t] = x, y
        tasks.append(task)
    batch = TaskBatch(support_x=xs[:, :shots], support_y=ys[:, :shots], query_x=xs[:, shots:], query_y=ys[:, shots:])
    return batch, tasks


class RegressionSampler(_StatefulSampler):
    """Draws regression tasks (and their support and query points) from a :class:`RegressionTaskFamily`.

    Args:
        family: The task family (e.g. sinusoids).
        split: ``"train"``, ``"val"`` or ``"test"``; each split has its own task stream, so evaluation tasks
            are not the training tasks.
        ways: Ignored (regression has no classes); accepted so that one call makes either sampler.
        shots: Support points per task.
        queries: Query points per task.
        seed: Non-negative integer fixing the stream together with ``split``.

    Raises:
        ValueError: If ``split`` is not one of ``train``/``val``/``test`` or a count is not a positive integer.
    """

    kind = "regression"

    def __init__(self, family: Any, split: str, ways: int | None, shots: int, queries: int, seed: int):
        owner = "RegressionSampler"
        if split not in SPLITS:
            raise ValueError(f"{owner}: split must be one of {list(SPLITS)}. Received: split={split!r}")
        self.family = family
        self.dataset = family
        self.split = split
        self.ways = 1
        self.shots = _check_int("shots", shots, 1, owner)
        self.queries = _check_int("queries", queries, 1, owner)
        self.seed = _check_int("seed", seed, 0, owner)
        self._rng = _derive_rng(self.seed, split, _SALT_STREAM)
        self.tasks_sampled = 0
        #: The task parameters of the last batch (one object per task, as ``family.sample_task`` made them).
        self.last_tasks: list = []

    def sample_batch(self, num_tasks: int) -> TaskBatch:
        """Draws a batch of tasks.

        Args:
            num_tasks: Number of tasks ``T``.

        Returns:
            A :class:`TaskBatch`: ``support_x`` ``float32 [T, shots, *input_shape]``, ``support_y``
            ``float32 [T, shots, output_dim]``, ``query_x``/``query_y`` likewise with ``queries`` points.
        """
        num_tasks = _check_int("num_tasks", num_tasks, 1, "RegressionSampler.sample_batch")
        batch, tasks = _sample_regression(self.family, self._rng, num_tasks, self.shots, self.queries)
        self.last_tasks = tasks
        self.tasks_sampled += num_tasks
        return batch


class SupervisedSampler:
    """Draws ordinary mini-batches of (image, global class label) from one split, epoch by epoch.

    For algorithms that pre-train on all classes of a split (``batch_kind = "supervised"``, e.g. the
    Baseline of Chen et al. 2019). Each epoch visits every image of the split once, in a fresh random order;
    batches run on across epoch boundaries. Labels are the split's own class indices ``0..num_classes-1``
    (not relabelled per episode).

    To fit the runner's one training step, a batch is delivered as a :class:`TaskBatch` whose "tasks" are
    batches: task ``t`` of ``sample_batch(T)`` holds ``batch_size`` consecutive examples of the stream, the
    first ``batch_size - batch_size // 2`` in ``support_x``/``support_y`` and the rest in
    ``query_x``/``query_y``. Both halves are training data: an algorithm takes its step on their union.

    Args:
        dataset: A :class:`ClassificationDataset`.
        split: Which split (``"train"`` for pre-training).
        batch_size: Examples per batch (support and query together), at least 2.
        seed: Non-negative integer; with ``split`` it fixes the stream.
        exclude: Optional row indices of the split never to draw (e.g.
            :func:`~metalab.core.engine.transforms.holdout_rows`, held out to measure supervised accuracy). Epochs
            then visit every other row once; without it the stream is exactly as before.

    Raises:
        ValueError: If the dataset is not a classification dataset, the split is unknown or empty, a count
            is not a valid integer, or ``exclude`` names rows outside the split or every row of it.

    Example:
        sampler = SupervisedSampler(dataset, "train", batch_size=64, seed=0)
        batch = sampler.sample_batch(1)   # support_x [1, 32, 28, 28, 1], support_y [1, 32] in 0..C-1
    """

    kind = "supervised"

    def __init__(self, dataset: ClassificationDataset, split: str, batch_size: int, seed: int,
                 exclude: Any = None):
        owner = "SupervisedSampler"
        if _is_regression(dataset):
            raise ValueError(
                f"{owner} needs a classification dataset (images with class labels). Received: dataset.kind='regression'"
            )
        self.batch_size = _check_int("batch_size", batch_size, 2, owner)
        self.seed = _check_int("seed", seed, 0, owner)
        self.split = split
        self.dataset = dataset
        self._split = _get_split(dataset, split, owner)
        # Validates the labels the same way episodes do.
        _ClassTable(self._split, split, owner)
        self.num_rows = int(len(self._split.labels))
        if self.num_rows == 0:
            raise ValueError(f"{owner}: split {split!r} holds no images. Received: split={split!r}")
        #: Sorted row indices never drawn (empty without ``exclude``).
        self.excluded_rows = np.unique(np.asarray([] if exclude is None else exclude, dtype=np.int64))
        # The rows an epoch visits; None keeps the original stream (rows 0..n-1) bit for bit.
        self._rows: np.ndarray | None = None
        if len(self.excluded_rows):
            total = self.num_rows
            if self.excluded_rows[0] < 0 or self.excluded_rows[-1] >= total:
                raise ValueError(
                    f"{owner}: exclude must hold row indices of split {split!r} in 0..{total - 1}. "
                    f"Received: exclude rows from {self.excluded_rows[0]} to {self.excluded_rows[-1]}"
                )
            self._rows = np.setdiff1d(np.arange(total, dtype=np.int64), self.excluded_rows)
            self.num_rows = int(len(self._rows))
            if self.num_rows == 0:
                raise ValueError(f"{owner}: exclude leaves no image of split {split!r} to train on. "
                                 f"Received: {len(self.excluded_rows)} excluded rows of {total}")
        self.num_classes = int(self._split.num_classes)
        self._labels = np.asarray(self._split.labels).astype(np.int32)
        self._rng = _derive_rng(self.seed, split, _SALT_SUPERVISED)
        self._new_epoch()
        self.epoch = 0
        self.batches_sampled = 0

    def _new_epoch(self) -> None:
        # The state at the start of the epoch regenerates its permutation, so a checkpoint stores a few numbers
        # instead of the whole order.
        self._epoch_state = self._rng.bit_generator.state
        self._order = self._rng.permutation(self.num_rows)
        self._position = 0

    def sample_rows(self, n: int) -> np.ndarray:
        """Returns the next ``n`` row indices of the split (``int64 [n]``), crossing epochs as needed.

        Excluded rows never appear.
        """
        n = _check_int("n", n, 1, "SupervisedSampler.sample_rows")
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            if self._position == self.num_rows:
                self._new_epoch()
                self.epoch += 1
            take = min(n - filled, self.num_rows - self._position)
            out[filled:filled + take] = self._order[self._position:self._position + take]
            self._position += take
            filled += take
        return out if self._rows is None else self._rows[out]

    def sample_batch(self, num_tasks: int) -> TaskBatch:
        """Draws ``num_tasks`` consecutive batches.

        Args:
            num_tasks: Number of batches ``T`` (the runner passes the algorithm's ``meta_batch_size``).

        Returns:
            A :class:`TaskBatch`: ``support_x`` ``float32 [T, batch_size - batch_size//2, *input_shape]``,
            ``support_y`` ``int32 [T, batch_size - batch_size//2]`` (global class labels), ``query_x`` and
            ``query_y`` likewise with ``batch_size // 2`` examples.
        """
        num_tasks = _check_int("num_tasks", num_tasks, 1, "SupervisedSampler.sample_batch")
        rows = self.sample_rows(num_tasks * self.batch_size).reshape(num_tasks, self.batch_size)
        self.batches_sampled += num_tasks
        half = self.batch_size - self.batch_size // 2
        x = np.asarray(self.dataset.to_float(self._split.images[rows]), dtype=np.float32)
        y = self._labels[rows]
        return TaskBatch(support_x=np.ascontiguousarray(x[:, :half]), support_y=np.ascontiguousarray(y[:, :half]),
                         query_x=np.ascontiguousarray(x[:, half:]), query_y=np.ascontiguousarray(y[:, half:]))

    def sample(self) -> TaskBatch:
        """Draws one batch (a :class:`TaskBatch` with a leading axis of length 1)."""
        return self.sample_batch(1)

    def get_state(self) -> dict:
        """Returns the sampler's position in its stream as a JSON-serialisable dict.

        Returns:
            ``{"version": 1, "kind": "supervised", "epoch": int, "position": int, "batches_sampled": int,
            "epoch_start": {...}}``: the bit-generator state at the start of the current epoch (integers as
            decimal strings) and the position within the epoch.
        """
        return {
            "version": _STATE_VERSION,
            "kind": "supervised",
            "epoch": int(self.epoch),
            "position": int(self._position),
            "batches_sampled": int(self.batches_sampled),
            "num_rows": self.num_rows,
            "epoch_start": _to_json_state(self._epoch_state),
        }

    def set_state(self, state: dict) -> None:
        """Restores a position saved by :meth:`get_state`; the next batches continue that stream exactly.

        Args:
            state: A dict returned by :meth:`get_state` (possibly after a JSON round trip).

        Raises:
            ValueError: If ``state`` is not such a dict, or was saved for a split of another size.
        """
        owner = "SupervisedSampler.set_state"
        if not isinstance(state, dict) or state.get("kind") != "supervised" or "epoch_start" not in state:
            raise ValueError(f"{owner} expects a dict made by SupervisedSampler.get_state(). Received: state={state!r}")
        if int(state.get("num_rows", -1)) != self.num_rows:
            raise ValueError(
                f"{owner}: the state belongs to a split of {state.get('num_rows')} images, this one has "
                f"{self.num_rows}. Received: num_rows={state.get('num_rows')!r}"
            )
        position = int(state["position"])
        if not 0 <= position <= self.num_rows:
            raise ValueError(f"{owner}: position must lie in 0..{self.num_rows}. Received: position={position}")
        try:
            self._rng.bit_generator.state = _from_json_state(state["epoch_start"])
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{owner}: malformed bit generator state ({exc}). Received: state={state!r}") from None
        self._new_epoch()
        self._position = position
        self.epoch = int(state["epoch"])
        self.batches_sampled = int(state.get("batches_sampled", 0))


def make_sampler(dataset: Any, split: str, ways: int | None, shots: int, queries: int,
                 seed: int) -> EpisodeSampler | RegressionSampler:
    """Makes the sampler that fits the dataset's kind.

    Args:
        dataset: A :class:`ClassificationDataset` or a :class:`RegressionTaskFamily`.
        split, ways, shots, queries, seed: As for :class:`EpisodeSampler` (``ways`` is ignored for regression).

    Returns:
        An :class:`EpisodeSampler` or a :class:`RegressionSampler`.
    """
    if _is_regression(dataset):
        return RegressionSampler(dataset, split, ways, shots, queries, seed)
    return EpisodeSampler(dataset, split, ways, shots, queries, seed)

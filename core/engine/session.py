"""A run's session: its dataset, algorithm and task built through the plugins, and finished runs loaded again.

:func:`build_session` is the one place a run's plugins are instantiated (training, evaluation, the probe,
prediction, report data); :func:`load_run` rebuilds another finished run with its checkpoint, which plugins reach
through ``TaskSpec.load_run`` without touching the run store.
"""

from __future__ import annotations

import json
import sqlite3
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from metalab.core.contract.specs import LoadedRun, TaskSpec
from metalab.core.engine.config import ConfigError, RunConfig
from metalab.core.engine.devices import dtype_policy, set_matmul_precision
from metalab.core.reports.scores import headline
from metalab.core.settings import Settings, load_settings


@dataclass
class Session:
    """Everything built for one run: the dataset, the algorithm and the task shape."""

    config: RunConfig
    dataset: Any
    algorithm: Any
    task: TaskSpec


def build_session(registry: Any, config: RunConfig, settings: Settings | None = None) -> Session:
    """Instantiates the run's dataset, backbone and algorithm (imports Keras).

    The algorithm's :class:`~metalab.core.contract.specs.TaskSpec` carries ``load_run``: :func:`load_run` bound to
    ``registry`` and ``settings``, so a plugin can load another finished run of the same run store.
    """
    from metalab.core.contract.manager import backbone_maker, check_factory_result

    # The plugins first: a missing one (its plugin failed to load) fails before Keras is imported.
    dataset_spec = registry.dataset(config.dataset)
    algorithm_spec = registry.algorithm(config.algorithm)
    backbone_spec = registry.backbone(config.backbone)
    import keras

    settings = settings or load_settings()
    keras.utils.set_random_seed(config.seed)
    try:
        made = dataset_spec.factory(dataset_spec.params(**config.dataset_params), settings.data_context())
    except ImportError as exc:  # an optional package the dataset needs (its message names the extra to install)
        raise ConfigError(f"dataset {config.dataset!r}: {exc}") from None
    dataset = check_factory_result(dataset_spec, made, registry=registry)
    input_shape = tuple(dataset.input_shape)
    backbone_params = backbone_spec.params(**config.backbone_params)
    regression = dataset_spec.kind == "regression"
    environment = dataset_spec.kind == "environment"
    train_split = None if regression or environment else dataset.splits.get("train")
    task = TaskSpec(
        kind=dataset_spec.kind,
        input_shape=input_shape,
        output_dim=int(dataset.output_dim) if regression else int(dataset.action_dim) if environment
        else int(config.ways),
        ways=1 if regression or environment else int(config.ways),
        shots=int(config.shots),
        queries=int(config.queries),
        total_steps=int(config.steps),
        make_backbone=backbone_maker(backbone_spec, backbone_params, input_shape, registry=registry),
        num_train_classes=0 if train_split is None else int(train_split.num_classes),
        load_run=run_loader(registry, settings),
        action_kind=str(dataset.action_kind) if environment else "",
        horizon=int(dataset.horizon) if environment else 0,
    )
    set_matmul_precision(config.precision)
    with dtype_policy(config.precision):
        algorithm = check_factory_result(
            algorithm_spec, algorithm_spec.factory(algorithm_spec.params(**config.algorithm_params), task),
            registry=registry)
    return Session(config=config, dataset=dataset, algorithm=algorithm, task=task)


def make_training_sampler(session: Session) -> Any:
    """The sampler of the run's training stream: episodes, or mini-batches for a ``"supervised"`` algorithm.

    A supervised algorithm may hold out part of the training split: with an attribute
    ``supervised_holdout_fraction`` above 0, :func:`~metalab.core.engine.transforms.holdout_rows` (seeded by the run's
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
    from metalab.core.engine.sampling import SupervisedSampler, make_sampler
    from metalab.core.engine.transforms import holdout_rows

    config, algorithm = session.config, session.algorithm
    if getattr(session.task, "kind", None) == "environment":
        from metalab.core.engine.rollouts import EnvironmentSampler

        return EnvironmentSampler(session.dataset, algorithm, "train", config.seed)
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
    from metalab.core.engine.transforms import resize_images

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


def episode_key(config: RunConfig) -> str:
    """The cache key of a run's fixed episodes: its dataset and dataset parameters (the same for every algorithm)."""
    return json.dumps([config.dataset, config.dataset_params], sort_keys=True)


# -- another run, loaded again ----------------------------------------------------------------------------


def run_loader(registry: Any, settings: Settings | None = None) -> Callable[[str], LoadedRun]:
    """``load_run(ref)`` bound to ``registry`` and ``settings``: the value of ``TaskSpec.load_run``.

    With ``settings=None`` the run store is the one of the environment's settings when the loader is called.
    """

    def load(ref: str) -> LoadedRun:
        return load_run(ref, registry, settings)

    return load


def load_run(ref: str, registry: Any, settings: Settings | None = None) -> LoadedRun:
    """Rebuilds a completed run of the run store of ``settings`` and loads its trained weights.

    The run's session is built from its stored config through ``registry``; the newest usable checkpoint is
    loaded (``checkpoint.npz``, else ``checkpoint.prev.npz`` with a :class:`CheckpointWarning`), checked against
    the run's config and refused if it holds NaN or infinite weights. Nothing is written to the store.

    Args:
        ref: The run's id, or a unique prefix of it.
        registry: The plugin registry; it must know the run's dataset, algorithm and backbone.
        settings: Where the run store is (``METALAB_HOME``); read from the environment when ``None``.

    Returns:
        The :class:`~metalab.core.contract.specs.LoadedRun`; its ``fixed_episodes`` are the engine's fixed
        evaluation episodes (seed :data:`~metalab.core.engine.fixed_tasks.EVAL_SEED`) of the run's dataset.

    Raises:
        FileNotFoundError: There is no run store yet, or the run has no checkpoint.
        ValueError: ``ref`` is empty, names no run or several, or the run is not completed; the store cannot be
            read; no checkpoint file fits the model (a :class:`~metalab.core.engine.checkpoints.CheckpointError`).
    """
    from metalab.core.engine.checkpoints import CheckpointWarning, checkpoint_files, restore_checkpoint
    from metalab.core.engine.fixed_tasks import EVAL_SEED, fixed_tasks
    from metalab.core.store import AmbiguousRunError, RunNotFoundError, RunStore, StoreError

    ref = str(ref or "").strip()
    if not ref:
        raise ValueError(f"Loading a run needs its id (or a unique prefix of it). Received: run={ref!r}")
    settings = settings or load_settings()
    if not settings.store_path.exists():
        # Checked first: opening a store that is not there would create one.
        raise FileNotFoundError(
            f"There is no run store here yet (METALAB_HOME), so run {ref!r} cannot be loaded: train it first, or "
            f"point METALAB_HOME at the store that holds it. Received: run={ref!r}"
        )
    try:
        store = RunStore(settings.store_path, settings.runs_dir)
        run = store.get_run(ref)
        evaluations = store.evaluations(run.id)
    except AmbiguousRunError:
        raise ValueError(f"Run id prefix {ref!r} matches more than one run; give more of the id. "
                         f"Received: run={ref!r}") from None
    except RunNotFoundError:
        raise ValueError(f"The run store has no run {ref!r}; give the id (or a unique prefix) of a completed run. "
                         f"Received: run={ref!r}") from None
    except (StoreError, sqlite3.Error) as exc:
        raise ValueError(f"The run store could not be read ({type(exc).__name__}), so run {ref!r} cannot be loaded; "
                         f"`metalab doctor` checks it. Received: run={ref!r}") from None
    if run.status != "completed":
        raise ValueError(f"Run {run.id!r} is {run.status!r}; only a completed run can be loaded (train or resume it "
                         f"to the end first). Received: run={ref!r}")
    run_dir = store.run_dir(run.id)
    if not any(path.exists() for path in checkpoint_files(run_dir)):
        raise FileNotFoundError(f"Run {run.id!r} is completed but has no checkpoint. Received: run={ref!r}")
    config = RunConfig(**run.config)
    session = build_session(registry, config, settings)
    restored = restore_checkpoint(run_dir, session.algorithm, total_steps=int(config.steps) or None, config=run.config)
    if restored is None:  # removed since it was looked for
        raise FileNotFoundError(f"Run {run.id!r}: its checkpoint disappeared while loading. Received: run={ref!r}")
    for passed_over in restored.warnings:
        warnings.warn(f"Run {run.id} (loaded by another run): {passed_over}", CheckpointWarning, stacklevel=2)
    key = episode_key(config)
    dataset = session.dataset

    def episodes(split: str, ways: int | None, shots: int, queries: int, count: int) -> Any:
        return fixed_tasks(dataset, split, ways, shots, queries, count, seed=EVAL_SEED, key=key)

    return LoadedRun(id=run.id, config=dict(run.config), algorithm_id=config.algorithm, dataset_id=config.dataset,
                     algorithm=session.algorithm, dataset=dataset, task=session.task, evaluations=evaluations,
                     score=headline(evaluations, run.config), episode_maker=episodes)

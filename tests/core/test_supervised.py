"""Supervised (non-episodic) training: the SupervisedSampler's invariants and the runner's use of it."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from metalab.core.engine.config import resolve_config
from metalab.core.contract.specs import ClassificationDataset, ClassSplit
from metalab.core.engine.checkpoints import checkpoint_path
from metalab.core.engine.runner import train_run
from metalab.core.engine.session import Session, build_session, make_training_sampler
from metalab.core.store import RunStore
from metalab.core.engine.sampling import EpisodeSampler, SupervisedSampler
from metalab.plugins.digits import make_digits
from metalab.plugins.sinusoid.family import SinusoidFamily


def _toy(n_per_class=(5, 7, 3)) -> ClassificationDataset:
    """Images whose single pixel value encodes the row, so every drawn example can be traced back."""
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1)
    split = ClassSplit(images=images, labels=labels, class_names=[f"c{c}" for c in range(len(n_per_class))])
    return ClassificationDataset(splits={"train": split, "val": split, "test": split}, input_shape=(1, 1, 1), scale=1.0)


def _rows(batch) -> np.ndarray:
    return np.concatenate([batch.support_x.reshape(len(batch.support_x), -1),
                           batch.query_x.reshape(len(batch.query_x), -1)], axis=1).astype(np.int64)


def test_every_image_once_per_epoch_with_its_own_label():
    dataset = _toy()
    n = 15
    sampler = SupervisedSampler(dataset, "train", batch_size=5, seed=3)
    batch = sampler.sample_batch(3)  # exactly one epoch
    rows = _rows(batch).ravel()
    assert sorted(rows) == list(range(n))
    labels = np.concatenate([batch.support_y, batch.query_y], axis=1).ravel()
    np.testing.assert_array_equal(labels, dataset.splits["train"].labels[rows])
    assert batch.support_y.dtype == np.int32 and batch.support_x.dtype == np.float32
    second = _rows(sampler.sample_batch(3)).ravel()
    assert sorted(second) == list(range(n)) and not np.array_equal(second, rows)  # a fresh order each epoch
    assert sampler.epoch == 1


def test_batches_run_across_epoch_boundaries_and_odd_sizes_split_support_first():
    sampler = SupervisedSampler(_toy(), "train", batch_size=7, seed=0)
    batch = sampler.sample_batch(2)  # 14 of 15 rows
    assert batch.support_x.shape == (2, 4, 1, 1, 1) and batch.query_x.shape == (2, 3, 1, 1, 1)
    stream = list(_rows(batch).ravel()) + list(sampler.sample_rows(16))
    assert sorted(stream[:15]) == list(range(15)) and sorted(stream[15:30]) == list(range(15))


def test_resume_from_a_json_state_continues_the_stream_exactly():
    dataset = make_digits()
    whole = SupervisedSampler(dataset, "train", batch_size=64, seed=5)
    interrupted = SupervisedSampler(dataset, "train", batch_size=64, seed=5)
    for _ in range(13):  # past an epoch boundary (~720 training images)
        whole.sample_batch(1)
        interrupted.sample_batch(1)
    state = json.loads(json.dumps(interrupted.get_state()))
    resumed = SupervisedSampler(dataset, "train", batch_size=64, seed=5)
    resumed.set_state(state)
    for _ in range(20):
        a, b = whole.sample_batch(2), resumed.sample_batch(2)
        for x, y in zip(a.as_tuple(), b.as_tuple()):
            np.testing.assert_array_equal(x, y)
    assert resumed.epoch == whole.epoch and resumed.batches_sampled == whole.batches_sampled


def test_seeds_and_splits_give_other_streams():
    dataset = make_digits()
    a = _rows(SupervisedSampler(dataset, "train", 32, seed=0).sample_batch(1))
    b = _rows(SupervisedSampler(dataset, "train", 32, seed=1).sample_batch(1))
    c = _rows(SupervisedSampler(dataset, "train", 32, seed=0).sample_batch(1))
    assert not np.array_equal(a, b) and np.array_equal(a, c)
    val = SupervisedSampler(dataset, "val", 32, seed=0).sample_batch(1)
    assert set(np.unique(val.support_y)) <= set(range(dataset.splits["val"].num_classes))


def test_bad_arguments_and_states_are_refused_clearly():
    with pytest.raises(ValueError, match="batch_size must be an integer >= 2"):
        SupervisedSampler(_toy(), "train", batch_size=1, seed=0)
    with pytest.raises(ValueError, match="classification dataset"):
        SupervisedSampler(SinusoidFamily(), "train", batch_size=4, seed=0)
    with pytest.raises(ValueError, match="split must be one of"):
        SupervisedSampler(_toy(), "nope", batch_size=4, seed=0)
    sampler = SupervisedSampler(_toy(), "train", batch_size=4, seed=0)
    with pytest.raises(ValueError, match="get_state"):
        sampler.set_state(EpisodeSampler(_toy(), "train", 2, 1, 1, seed=0).get_state())
    other = SupervisedSampler(_toy((5, 5)), "train", batch_size=4, seed=0)
    with pytest.raises(ValueError, match="split of 10 images"):
        sampler.set_state(other.get_state())


def test_the_runner_picks_the_sampler_by_batch_kind():
    dataset = make_digits()
    config = SimpleNamespace(algorithm="x.y", shots=2, queries=3, seed=0)
    task = SimpleNamespace(ways=3)

    def session(algorithm):
        return Session(config=config, dataset=dataset, algorithm=algorithm, task=task)

    assert isinstance(make_training_sampler(session(SimpleNamespace())), EpisodeSampler)
    supervised = make_training_sampler(session(SimpleNamespace(batch_kind="supervised", batch_size=10)))
    assert isinstance(supervised, SupervisedSampler) and supervised.batch_size == 10
    with pytest.raises(ValueError, match="batch_kind must be 'episodic' or 'supervised'"):
        make_training_sampler(session(SimpleNamespace(batch_kind="tabular")))
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        make_training_sampler(session(SimpleNamespace(batch_kind="supervised")))


def test_task_spec_tells_the_number_of_training_classes(builtin_registry):
    config = resolve_config(builtin_registry, {"dataset": "metalab.digits", "algorithm": "metalab.mlp_classifier",
                                               "ways": 2, "dataset_params": {"train_classes": 5, "val_classes": 2}})
    session = build_session(builtin_registry, config)
    assert session.task.num_train_classes == 5
    assert session.algorithm.model.output_shape[-1] == 5


def test_a_supervised_run_resumed_midway_ends_like_an_uninterrupted_one(builtin_registry, tmp_path):
    from metalab.core.engine.runner import RunCancelled

    raw = {"dataset": "metalab.digits", "algorithm": "metalab.mlp_classifier", "steps": 14, "val_every": 14,
           "val_episodes": 4, "test_episodes": 8, "checkpoint_every": 100, "log_every": 7,
           "algorithm_params": {"hidden": [16], "batch_size": 50}}
    config = resolve_config(builtin_registry, raw)
    weights = []
    for name, stop_at in (("whole", None), ("resumed", 9)):  # 9 steps x 50 > one epoch of ~720 images
        store = RunStore(tmp_path / name / "runs.sqlite")
        run_id = store.create_run(config.model_dump())

        def stop(step, total, metrics, stop_at=stop_at):
            if step == stop_at:
                raise RunCancelled("test")

        status = train_run(store, run_id, builtin_registry, progress=stop)
        if stop_at is not None:
            assert status == "cancelled"
            status = train_run(store, run_id, builtin_registry)
        assert status == "completed", store.get_run(run_id).traceback
        with np.load(checkpoint_path(store, run_id)) as data:
            weights.append([data[f"var_{i}"] for i in range(4)])
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

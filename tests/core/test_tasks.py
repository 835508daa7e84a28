"""Tests for metalab.core.engine.sampling and fixed_tasks: episode and regression samplers, fixed evaluation tasks."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metalab.core.contract.specs import ClassificationDataset, ClassSplit, TaskBatch
from metalab.core.engine.fixed_tasks import clear_fixed_tasks_cache, fixed_episodes, fixed_task_chunks, fixed_tasks
from metalab.core.engine.sampling import EpisodeSampler, RegressionSampler, make_sampler
from metalab.plugins.sinusoid.family import SinusoidFamily


def make_dataset(counts_by_split: dict[str, list[int]]) -> ClassificationDataset:
    """A dataset whose every image spells its own row number, so episodes can be traced back to rows.

    Images are ``uint8 [n, 2]`` = (row // 256, row % 256); ``scale=1`` keeps those values in the floats.
    Classes are shuffled across rows so that grouping by class is exercised.
    """
    rng = np.random.default_rng(123)
    splits = {}
    for name, counts in counts_by_split.items():
        labels = rng.permutation(np.repeat(np.arange(len(counts)), counts))
        rows = np.arange(len(labels))
        images = np.stack([rows // 256, rows % 256], axis=1).astype(np.uint8)
        splits[name] = ClassSplit(images=images, labels=labels, class_names=[f"c{i}" for i in range(len(counts))])
    return ClassificationDataset(splits=splits, input_shape=(2,), scale=1.0)


def rows_of(x: np.ndarray) -> np.ndarray:
    return (x[..., 0].astype(np.int64) * 256 + x[..., 1].astype(np.int64))


def assert_valid_episodes(dataset: ClassificationDataset, split: str, batch: TaskBatch, ways: int, shots: int,
                          queries: int) -> None:
    labels_of_rows = np.asarray(dataset.splits[split].labels)
    t = batch.num_tasks
    assert batch.support_x.shape == (t, ways * shots, 2) and batch.support_x.dtype == np.float32
    assert batch.query_x.shape == (t, ways * queries, 2) and batch.query_x.dtype == np.float32
    assert batch.support_y.dtype == np.int32 and batch.query_y.dtype == np.int32
    expected_s = np.repeat(np.arange(ways), shots)
    expected_q = np.repeat(np.arange(ways), queries)
    for i in range(t):
        np.testing.assert_array_equal(batch.support_y[i], expected_s)
        np.testing.assert_array_equal(batch.query_y[i], expected_q)
        s_rows, q_rows = rows_of(batch.support_x[i]), rows_of(batch.query_x[i])
        all_rows = np.concatenate([s_rows, q_rows])
        assert len(set(all_rows.tolist())) == len(all_rows), "a sample appears twice in one episode"
        s_cls, q_cls = labels_of_rows[s_rows], labels_of_rows[q_rows]
        # Each episode label stands for exactly one original class, the same in support and query.
        for label in range(ways):
            originals = set(s_cls[batch.support_y[i] == label]) | set(q_cls[batch.query_y[i] == label])
            assert len(originals) == 1
        assert len(set(s_cls.tolist())) == ways, "classes repeated within an episode"


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_fixed_tasks_cache()
    yield
    clear_fixed_tasks_cache()


@pytest.fixture
def dataset() -> ClassificationDataset:
    return make_dataset({"train": [7, 9, 8, 10, 7, 12, 7], "val": [8, 8, 9, 8], "test": [6, 7, 6, 9, 6]})


def test_episode_shapes_dtypes_and_invariants(dataset):
    sampler = EpisodeSampler(dataset, "train", ways=3, shots=2, queries=4, seed=0)
    batch = sampler.sample_batch(16)
    assert_valid_episodes(dataset, "train", batch, 3, 2, 4)
    assert sampler.last_classes.shape == (16, 3)
    assert sampler.tasks_sampled == 16
    one = sampler.sample()
    assert one.num_tasks == 1 and one.support_x.shape == (1, 6, 2)


def test_episodes_use_only_their_split(dataset):
    batch = EpisodeSampler(dataset, "val", ways=4, shots=1, queries=7, seed=3).sample_batch(8)
    assert rows_of(batch.query_x).max() < len(dataset.splits["val"].labels)
    assert_valid_episodes(dataset, "val", batch, 4, 1, 7)


def test_relabelling_is_a_random_permutation(dataset):
    # With ways == all classes, only the label permutation varies: class c0 must get different labels.
    sampler = EpisodeSampler(dataset, "test", ways=5, shots=1, queries=1, seed=1)
    sampler.sample_batch(200)
    label_of_c0 = np.argmax(sampler.last_classes == 0, axis=1)
    assert set(label_of_c0.tolist()) == set(range(5))
    counts = np.bincount(label_of_c0, minlength=5)
    assert counts.min() > 20  # roughly uniform (expected 40 each)


def test_every_class_and_sample_gets_drawn(dataset):
    sampler = EpisodeSampler(dataset, "train", ways=2, shots=1, queries=1, seed=5)
    batch = sampler.sample_batch(400)
    seen = set(rows_of(batch.support_x).ravel().tolist()) | set(rows_of(batch.query_x).ravel().tolist())
    assert seen == set(range(len(dataset.splits["train"].labels)))


def test_same_seed_same_stream_other_seed_or_split_differs(dataset):
    a = EpisodeSampler(dataset, "train", 3, 1, 2, seed=7).sample_batch(5)
    b = EpisodeSampler(dataset, "train", 3, 1, 2, seed=7).sample_batch(5)
    c = EpisodeSampler(dataset, "train", 3, 1, 2, seed=8).sample_batch(5)
    for x, y in zip(a.as_tuple(), b.as_tuple()):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.support_x, c.support_x)


def test_batch_equals_repeated_single_samples(dataset):
    batched = EpisodeSampler(dataset, "train", 3, 2, 2, seed=11).sample_batch(4)
    single = EpisodeSampler(dataset, "train", 3, 2, 2, seed=11)
    parts = [single.sample() for _ in range(4)]
    np.testing.assert_array_equal(batched.support_x, np.concatenate([p.support_x for p in parts]))
    np.testing.assert_array_equal(batched.query_x, np.concatenate([p.query_x for p in parts]))


def test_get_and_set_state_resume_the_stream(dataset):
    sampler = EpisodeSampler(dataset, "train", 3, 1, 3, seed=2)
    sampler.sample_batch(3)
    state = json.loads(json.dumps(sampler.get_state()))  # must survive a JSON round trip
    expected = sampler.sample_batch(4)

    resumed = EpisodeSampler(dataset, "train", 3, 1, 3, seed=99)
    resumed.set_state(state)
    assert resumed.tasks_sampled == 3
    got = resumed.sample_batch(4)
    np.testing.assert_array_equal(got.support_x, expected.support_x)
    np.testing.assert_array_equal(got.query_x, expected.query_x)


def test_set_state_rejects_garbage(dataset):
    sampler = EpisodeSampler(dataset, "train", 3, 1, 3, seed=2)
    with pytest.raises(ValueError, match="get_state"):
        sampler.set_state({"nope": 1})
    bad = sampler.get_state()
    bad["bit_generator"]["bit_generator"] = "MT19937"
    with pytest.raises(ValueError, match="PCG64"):
        sampler.set_state(bad)


def test_too_many_ways_names_field_and_value(dataset):
    with pytest.raises(ValueError, match=r"number of classes in split 'val' \(4\)\. Received: ways=5"):
        EpisodeSampler(dataset, "val", ways=5, shots=1, queries=1, seed=0)


def test_too_few_samples_names_the_class(dataset):
    with pytest.raises(ValueError, match=r"class 'c0' of split 'test' has 6 images but shots\+queries=7"):
        EpisodeSampler(dataset, "test", ways=2, shots=2, queries=5, seed=0)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"ways": 0}, "ways"), ({"shots": 0}, "shots"), ({"queries": -1}, "queries"), ({"seed": -3}, "seed"),
     ({"ways": 2.5}, "ways"), ({"split": "holdout"}, "split")],
)
def test_bad_arguments_are_named(dataset, kwargs, field):
    args = {"split": "train", "ways": 2, "shots": 1, "queries": 1, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=f"Received: {field}="):
        EpisodeSampler(dataset, **args)


def test_fixed_tasks_identical_and_cached(dataset):
    a = fixed_tasks(dataset, "test", 3, 1, 2, n=20, seed=0)
    b = fixed_tasks(dataset, "test", 3, 1, 2, n=20, seed=0)
    for x, y in zip(a.as_tuple(), b.as_tuple()):
        np.testing.assert_array_equal(x, y)
    assert a.support_x is not b.support_x  # fresh arrays: a caller may modify its copy
    e1 = fixed_episodes(dataset, "test", 3, 1, 2, n=20, seed=0)
    e2 = fixed_episodes(dataset, "test", 3, 1, 2, n=20, seed=0)
    assert e1.rows is e2.rows  # drawn once, served from the cache
    assert_valid_episodes(dataset, "test", a, 3, 1, 2)
    clear_fixed_tasks_cache()
    c = fixed_tasks(dataset, "test", 3, 1, 2, n=20, seed=0)
    np.testing.assert_array_equal(a.query_x, c.query_x)  # rebuilt identically


def test_fixed_tasks_seed_prefix_and_training_stream(dataset):
    small = fixed_tasks(dataset, "test", 3, 1, 2, n=5, seed=0)
    large = fixed_tasks(dataset, "test", 3, 1, 2, n=30, seed=0)
    np.testing.assert_array_equal(small.support_x, large.support_x[:5])
    other = fixed_tasks(dataset, "test", 3, 1, 2, n=30, seed=1)
    assert not np.array_equal(large.support_x, other.support_x)
    stream = EpisodeSampler(dataset, "test", 3, 1, 2, seed=0).sample_batch(30)
    assert not np.array_equal(large.support_x, stream.support_x)


def test_fixed_task_chunks_cover_the_set(dataset):
    whole = fixed_tasks(dataset, "train", 2, 3, 3, n=23, seed=4)
    chunks = list(fixed_task_chunks(dataset, "train", 2, 3, 3, n=23, chunk=10, seed=4))
    assert [c.num_tasks for c in chunks] == [10, 10, 3]
    for i, field in enumerate(("support_x", "support_y", "query_x", "query_y")):
        np.testing.assert_array_equal(np.concatenate([c.as_tuple()[i] for c in chunks]), getattr(whole, field))


def test_fixed_tasks_key_shares_across_copies_and_detects_misuse(dataset):
    copy = make_dataset({"train": [7, 9, 8, 10, 7, 12, 7], "val": [8, 8, 9, 8], "test": [6, 7, 6, 9, 6]})
    e1 = fixed_episodes(dataset, "val", 2, 1, 1, n=10, key="toy")
    e2 = fixed_episodes(copy, "val", 2, 1, 1, n=10, key="toy")
    assert e1.rows is e2.rows
    other = make_dataset({"train": [5, 5], "val": [5, 5, 5], "test": [5, 5]})
    with pytest.raises(ValueError, match="key 'toy'"):
        fixed_episodes(other, "val", 2, 1, 1, n=10, key="toy")


def test_fixed_tasks_by_identity_are_per_dataset(dataset):
    other = make_dataset({"train": [9] * 7, "val": [9] * 4, "test": [9] * 5})
    a = fixed_episodes(dataset, "test", 2, 1, 1, n=10)
    b = fixed_episodes(other, "test", 2, 1, 1, n=10)
    assert a.rows is not b.rows


def test_sampling_is_fast_on_omniglot_sized_data():
    # 4800 classes x 20 images of 28x28: the size of Omniglot's training split with rotations.
    n_classes, per_class = 4800, 20
    images = np.zeros((n_classes * per_class, 28, 28, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(n_classes), per_class)
    ds = ClassificationDataset(
        splits={"train": ClassSplit(images, labels, [str(i) for i in range(n_classes)])}, input_shape=(28, 28, 1)
    )
    sampler = EpisodeSampler(ds, "train", ways=5, shots=1, queries=15, seed=0)
    sampler.sample_batch(32)
    start = time.perf_counter()
    for _ in range(10):
        batch = sampler.sample_batch(32)
    per_batch = (time.perf_counter() - start) / 10
    assert batch.query_x.shape == (32, 75, 28, 28, 1)
    assert per_batch < 0.1, f"sampling a meta-batch took {per_batch:.3f} s"


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=2, max_value=12), min_size=2, max_size=9),
    ways=st.integers(min_value=1, max_value=9),
    shots=st.integers(min_value=1, max_value=4),
    queries=st.integers(min_value=1, max_value=4),
    seed=st.integers(min_value=0, max_value=2**32),
    num_tasks=st.integers(min_value=1, max_value=6),
)
def test_property_episode_invariants(counts, ways, shots, queries, seed, num_tasks):
    ds = make_dataset({"train": counts})
    if ways > len(counts) or min(counts) < shots + queries:
        with pytest.raises(ValueError, match="Received"):
            EpisodeSampler(ds, "train", ways, shots, queries, seed)
        return
    sampler = EpisodeSampler(ds, "train", ways, shots, queries, seed)
    batch = sampler.sample_batch(num_tasks)
    assert_valid_episodes(ds, "train", batch, ways, shots, queries)
    state = sampler.get_state()
    nxt = sampler.sample_batch(2)
    sampler.set_state(state)
    np.testing.assert_array_equal(sampler.sample_batch(2).support_x, nxt.support_x)


# ------------------------------------------------------------------------------------------------------
# Regression
# ------------------------------------------------------------------------------------------------------


def test_regression_sampler_shapes_ranges_and_targets():
    family = SinusoidFamily()
    sampler = RegressionSampler(family, "train", None, shots=10, queries=7, seed=0)
    batch = sampler.sample_batch(25)
    assert batch.support_x.shape == (25, 10, 1) and batch.support_y.shape == (25, 10, 1)
    assert batch.query_x.shape == (25, 7, 1) and batch.query_y.shape == (25, 7, 1)
    for array in batch.as_tuple():
        assert array.dtype == np.float32
    assert np.all(np.abs(batch.support_x) <= 5.0)
    assert len(sampler.last_tasks) == 25
    for t, task in enumerate(sampler.last_tasks):
        assert 0.1 <= task.amplitude <= 5.0 and 0.0 <= task.phase <= np.pi
        np.testing.assert_allclose(batch.query_y[t], family.evaluate(task, batch.query_x[t]), rtol=1e-6)
        assert np.all(np.abs(batch.support_y[t]) <= task.amplitude + 1e-5)


def test_regression_splits_have_different_streams_and_state_resumes():
    family = SinusoidFamily()
    train = RegressionSampler(family, "train", 1, 5, 5, seed=0).sample_batch(3)
    test = RegressionSampler(family, "test", 1, 5, 5, seed=0).sample_batch(3)
    assert not np.allclose(train.support_y, test.support_y)

    sampler = RegressionSampler(family, "val", 1, 5, 5, seed=3)
    sampler.sample_batch(2)
    state = json.loads(json.dumps(sampler.get_state()))
    expected = sampler.sample_batch(3)
    other = RegressionSampler(family, "val", 1, 5, 5, seed=0)
    other.set_state(state)
    np.testing.assert_array_equal(other.sample_batch(3).query_y, expected.query_y)


def test_regression_bad_split_is_named():
    with pytest.raises(ValueError, match="Received: split='meta'"):
        RegressionSampler(SinusoidFamily(), "meta", 1, 5, 5, seed=0)


def test_fixed_regression_tasks_identical_with_params():
    family = SinusoidFamily()
    a = fixed_episodes(family, "test", None, 5, 10, n=12, seed=0)
    b = fixed_tasks(family, "test", None, 5, 10, n=12, seed=0)
    np.testing.assert_array_equal(a.batch().query_y, b.query_y)
    assert len(a.tasks) == 12
    np.testing.assert_allclose(b.support_y[3], family.evaluate(a.tasks[3], b.support_x[3]), rtol=1e-6)
    b.support_y[:] = 0  # callers get copies: the cached set stays intact
    assert np.abs(fixed_tasks(family, "test", None, 5, 10, n=12, seed=0).support_y).max() > 0


def test_make_sampler_dispatches_on_kind(dataset):
    assert isinstance(make_sampler(dataset, "train", 2, 1, 1, 0), EpisodeSampler)
    assert isinstance(make_sampler(SinusoidFamily(), "train", None, 1, 1, 0), RegressionSampler)

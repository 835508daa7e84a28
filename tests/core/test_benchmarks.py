"""Named benchmark task sets: a run scored on Omniglot's 20 one-shot runs of Lake et al. (real files), and refused
when it trained on the benchmark's classes."""

import numpy as np
import pytest

from metalab.api import Benchmark, ClassificationDataset, ClassSplit
from metalab.core.engine.config import resolve_config
from metalab.core.engine.evaluation import BenchmarkLeakError, benchmark_overlap, evaluate_run
from metalab.core.engine.runner import train_run
from metalab.core.store import RunStore


@pytest.fixture
def omniglot_env(shared_data_dir, tmp_path, monkeypatch, omniglot_cache):
    if not (shared_data_dir / "omniglot" / "all_runs.zip").exists():
        pytest.skip("all_runs.zip not in the shared data folder")
    monkeypatch.setenv("METALAB_DATA_DIR", str(shared_data_dir))
    monkeypatch.setenv("METALAB_CACHE_DIR", str(omniglot_cache))
    monkeypatch.setenv("METALAB_OFFLINE", "1")
    return RunStore(tmp_path / "runs.sqlite")


def _run(registry, store, algorithm, dataset_params=None, **params):
    config = resolve_config(registry, {
        "dataset": "metalab.omniglot", "algorithm": algorithm, "steps": 2, "val_every": 2, "val_episodes": 2,
        "eval_at_end": False,
        "dataset_params": {"split": "minimal", "rotations": False} if dataset_params is None else dataset_params,
        "algorithm_params": params,
    })
    run_id = store.create_run(config.model_dump())
    assert train_run(store, run_id, registry) == "completed", store.get_run(run_id).traceback
    return run_id


@pytest.mark.slow
def test_protonet_is_scored_on_lakes_twenty_runs(builtin_registry, omniglot_env):
    store = omniglot_env
    run_id = _run(builtin_registry, store, "metalab.protonet")
    result = evaluate_run(store, run_id, builtin_registry, split="benchmark:lake20")
    assert result["episodes"] == 20 and result["benchmark"] == "lake20"
    assert result["leak_check"] == "no overlap with the benchmark's 200 classes (train and val checked)"
    # 20-way one-shot: chance is 5% (and a wrong answer key would score about that); a barely trained Conv-4
    # embedding already matches many characters by shape.
    assert result["accuracy"] > 0.15
    assert store.evaluations(run_id)[0]["split"] == "benchmark:lake20"

    with pytest.raises(ValueError, match="available: lake20"):
        evaluate_run(store, run_id, builtin_registry, split="benchmark:nope")


@pytest.mark.slow
def test_an_algorithm_whose_weights_depend_on_ways_gets_a_clear_refusal(builtin_registry, omniglot_env):
    store = omniglot_env
    run_id = _run(builtin_registry, store, "metalab.maml", meta_batch_size=1, first_order=True)
    with pytest.raises(ValueError, match="cannot be scored on 'lake20'"):
        evaluate_run(store, run_id, builtin_registry, split="benchmark:lake20")


def _dataset(train: list[str], val: list[str]) -> ClassificationDataset:
    def split(names):
        return ClassSplit(images=np.zeros((len(names), 2), np.uint8), labels=np.arange(len(names)), class_names=names)

    return ClassificationDataset(splits={"train": split(train), "val": split(val), "test": split(["z"])},
                                 input_shape=(2,))


def test_overlap_counts_a_class_and_its_variants_but_not_a_longer_name():
    dataset = _dataset(train=["Greek/character01/rot90", "Greek/character010", "Latin/character02"],
                       val=["Greek/character03"])
    overlap = benchmark_overlap(dataset, ["Greek/character01", "Greek/character03", "Korean/character01"])
    # rot90 is a variant of character01; character010 is another character.
    assert overlap == {"train": ["Greek/character01"], "val": ["Greek/character03"]}
    assert benchmark_overlap(dataset, ["Korean/character01"]) == {"train": [], "val": []}


def test_lake20_on_a_run_of_the_default_split_is_refused_naming_the_overlap(builtin_registry, omniglot_env):
    """The default Vinyals split pools background and evaluation characters: 136 of the 200 characters of Lake's
    runs are training classes there, drawings included. Scoring it would report a number trained on the answers."""
    store = omniglot_env
    # Refused from the run's config, before its weights are read: the run needs no training for this check.
    config = resolve_config(builtin_registry, {"dataset": "metalab.omniglot", "algorithm": "metalab.protonet"})
    assert config.dataset_params["split"] == "vinyals"  # the default
    run_id = store.create_run(config.model_dump())
    with pytest.raises(BenchmarkLeakError) as info:
        evaluate_run(store, run_id, builtin_registry, split="benchmark:lake20")
    message = str(info.value)
    assert f"Run {run_id} cannot be scored on 'lake20': 144 of its 200 classes" in message
    assert "(train: 136, val: 8; e.g. " in message
    assert "split=background_evaluation, minimal1 or minimal2" in message
    assert "split='vinyals'" in message and "/work" not in message and "sha256" not in message
    assert store.evaluations(run_id) == []  # nothing recorded


def test_a_benchmark_without_declared_classes_is_scored_with_a_note():
    from metalab.core.engine.evaluation import _refuse_leaks
    from metalab.core.engine.config import RunConfig

    config = RunConfig(dataset="x", algorithm="y")
    dataset = _dataset(train=["a/1"], val=["b/1"])
    assert _refuse_leaks("r", config, dataset, "old", lambda: None).startswith("not checked: the dataset plugin")
    declared = Benchmark(tasks=lambda: None, classes=lambda: ["a/1"], advice="Use split=other")
    with pytest.raises(BenchmarkLeakError, match=r"1 of its 1 classes .* Use split=other\. Received: dataset='x'"):
        _refuse_leaks("r", config, dataset, "new", declared)

"""Named benchmark task sets: a run scored on Omniglot's 20 one-shot runs of Lake et al. (real files)."""

import pytest

from metalab.core.engine.config import resolve_config
from metalab.core.engine.evaluation import evaluate_run
from metalab.core.engine.runner import train_run
from metalab.core.store import RunStore


@pytest.fixture
def omniglot_env(shared_data_dir, tmp_path, monkeypatch):
    if not (shared_data_dir / "omniglot" / "all_runs.zip").exists():
        pytest.skip("all_runs.zip not in the shared data folder")
    monkeypatch.setenv("METALAB_DATA_DIR", str(shared_data_dir))
    monkeypatch.setenv("METALAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("METALAB_OFFLINE", "1")
    return RunStore(tmp_path / "runs.sqlite")


def _run(registry, store, algorithm, **params):
    config = resolve_config(registry, {
        "dataset": "metalab.omniglot", "algorithm": algorithm, "steps": 2, "val_every": 2, "val_episodes": 2,
        "eval_at_end": False, "dataset_params": {"split": "minimal", "rotations": False},
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

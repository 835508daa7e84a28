"""Sessions and another run loaded back: ``TaskSpec.load_run`` gives a plugin a finished run without the store."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest

from metalab.api import LoadedRun
from metalab.core.engine.checkpoints import CheckpointWarning, checkpoint_files
from metalab.core.engine.config import resolve_config
from metalab.core.engine.evaluation import fixed_batch
from metalab.core.engine.runner import train_run
from metalab.core.engine.session import build_session, load_run, run_loader
from metalab.core.settings import load_settings
from metalab.core.store import RunStore

TINY = {
    "dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 6, "val_every": 6, "val_episodes": 4,
    "test_episodes": 8, "checkpoint_every": 3, "log_every": 3,
    "algorithm_params": {"meta_batch_size": 2, "eval_inner_steps": 1},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store (METALAB_HOME) with one completed run, one queued run and their registry."""
    from metalab.core.contract.manager import make_plugin_manager

    home = tmp_path_factory.mktemp("home")
    settings = load_settings(home=str(home), disable_plugins="")
    registry = make_plugin_manager(distributions={"metalab"}, settings=settings, strict=False)
    store = RunStore(settings.store_path, settings.runs_dir)
    config = resolve_config(registry, TINY)
    run_id = store.create_run(config.model_dump())
    assert train_run(store, run_id, registry, settings=settings) == "completed", store.get_run(run_id).traceback
    queued = store.create_run(config.model_dump())
    shared = os.path.commonprefix([run_id, queued])
    return {"settings": settings, "registry": registry, "store": store, "run": run_id, "queued": queued,
            "config": config, "shared": shared, "prefix": run_id[:len(shared) + 1]}


def test_every_session_task_can_load_runs_of_its_store(trained):
    session = build_session(trained["registry"], trained["config"], trained["settings"])
    assert callable(session.task.load_run)
    loaded = session.task.load_run(trained["prefix"])
    assert isinstance(loaded, LoadedRun) and loaded.id == trained["run"]


def test_a_loaded_run_holds_its_trained_weights_config_and_evaluations(trained):
    loaded = load_run(trained["prefix"], trained["registry"], trained["settings"])
    assert loaded.algorithm_id == "metalab.maml" and loaded.dataset_id == "metalab.sinusoid"
    assert loaded.config == trained["store"].get_run(trained["run"]).config
    assert loaded.task.kind == "regression" and loaded.task.shots == trained["config"].shots
    # The weights are the checkpoint's, not a fresh initialisation.
    with np.load(checkpoint_files(trained["store"].run_dir(trained["run"]))[0]) as data:
        saved = [data[f"var_{i}"] for i in range(len(loaded.algorithm.variables))]
    fresh = build_session(trained["registry"], trained["config"], trained["settings"]).algorithm
    for variable, value in zip(loaded.algorithm.variables, saved):
        np.testing.assert_array_equal(np.asarray(variable), value)
    assert any(not np.array_equal(np.asarray(v), s) for v, s in zip(fresh.variables, saved))
    assert [e["split"] for e in loaded.evaluations] == ["test"] and loaded.evaluations[0]["episodes"] == 8


def test_fixed_episodes_are_the_engines_evaluation_episodes(trained):
    loaded = load_run(trained["run"], trained["registry"], trained["settings"])
    session = build_session(trained["registry"], trained["config"], trained["settings"])
    mine = loaded.fixed_episodes("test", None, trained["config"].shots, trained["config"].queries, 5)
    engine = fixed_batch(session, "test", 5)
    for a, b in zip(mine.as_tuple(), engine.as_tuple()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = loaded.fixed_episodes("val", None, trained["config"].shots, trained["config"].queries, 5)
    assert not np.array_equal(np.asarray(other.support_x), np.asarray(mine.support_x))


def test_a_run_that_cannot_be_loaded_is_named_never_a_path(trained, tmp_path):
    registry, settings = trained["registry"], trained["settings"]
    cases = [
        ("nosuchrun", ValueError, "no run 'nosuchrun'"),
        (trained["queued"], ValueError, f"Run '{trained['queued']}' is 'queued'; only a completed run"),
        ("", ValueError, "needs its id"),
        (trained["shared"], ValueError, "matches more than one run; give more of the id"),
    ]
    for ref, error, text in cases:
        with pytest.raises(error) as caught:
            load_run(ref, registry, settings)
        assert text in str(caught.value) and f"Received: run={ref!r}" in str(caught.value)
        assert str(settings.home) not in str(caught.value)
    empty = load_settings(home=str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="no run store here yet") as caught:
        run_loader(registry, empty)("abc")
    assert str(tmp_path) not in str(caught.value) and not empty.store_path.exists()


def test_a_completed_run_without_checkpoint_is_refused(trained, tmp_path):
    settings = load_settings(home=str(tmp_path), disable_plugins="")
    store = RunStore(settings.store_path, settings.runs_dir)
    run_id = store.create_run(trained["config"].model_dump())
    store.update_run(run_id, status="completed")
    with pytest.raises(FileNotFoundError, match=f"Run '{run_id}' is completed but has no checkpoint"):
        load_run(run_id, trained["registry"], settings)


def test_a_bad_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(trained, tmp_path):
    # A copy of the trained run's store, whose newest checkpoint is then damaged.
    home = tmp_path / "copy"
    shutil.copytree(trained["settings"].home, home)
    settings = load_settings(home=str(home), disable_plugins="")
    latest, previous = checkpoint_files(settings.runs_dir / trained["run"])
    assert previous.exists()
    latest.write_bytes(b"not a checkpoint")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_run(trained["run"], trained["registry"], settings)
    assert any(issubclass(w.category, CheckpointWarning) and "checkpoint.prev.npz" in str(w.message) for w in caught)
    with np.load(previous) as data:
        np.testing.assert_array_equal(np.asarray(loaded.algorithm.variables[0]), data["var_0"])
    # Loading writes nothing: the damaged file stays where it was for its own run's worker to deal with.
    assert latest.read_bytes() == b"not a checkpoint" and os.listdir(settings.runs_dir / trained["run"])


def test_a_loaded_run_without_episode_maker_says_so():
    bare = LoadedRun(id="abc", config={}, algorithm_id="x.y", dataset_id="x.z", algorithm=None, dataset=None,
                     task=None)
    with pytest.raises(ValueError, match="Run 'abc' was loaded without an episode maker"):
        bare.fixed_episodes("test", 5, 1, 15, 10)

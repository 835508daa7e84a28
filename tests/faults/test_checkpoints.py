"""Checkpoints: atomic writes, the last two kept, manifests verified on load, fallbacks recorded; worker liveness."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import warnings

import numpy as np
import pytest

from metalab.core.engine.checkpoints import (
    LATEST,
    PREVIOUS,
    CheckpointError,
    CheckpointWarning,
    checkpoint_step,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    write_checkpoint_file,
)
from metalab.core.engine.config import resolve_config
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.engine.evaluation import evaluate_run
from metalab.core.engine.runner import RunCancelled, make_optimizer, train_run
from metalab.core.engine.session import build_session, make_training_sampler
from metalab.core.settings import load_settings
from metalab.core.store import RunStore, _pid_alive

# Protonet on the embedded digits: the cheapest run to trace. Checkpoints every 5 steps of 12.
TINY = {
    "dataset": "metalab.digits", "algorithm": "metalab.protonet", "backbone": "metalab.mlp",
    "backbone_params": {"hidden": [16]}, "ways": 3, "shots": 2, "queries": 2, "steps": 12, "val_every": 12,
    "val_episodes": 4, "test_episodes": 8, "checkpoint_every": 5, "log_every": 2, "eval_at_end": False,
}


@pytest.fixture(scope="module")
def registry():
    return make_plugin_manager(distributions={"metalab"}, settings=load_settings(disable_plugins=""), strict=False)


@pytest.fixture(scope="module")
def trained(registry, tmp_path_factory):
    """A run cancelled at step 7 (checkpoints 5 and 7), its newest checkpoint truncated, then resumed to the end.

    Returns what was seen: ``store``, ``run_id``, ``before`` (the run's step and the resume step before the
    resume), ``recorded`` (steps written by ``update_run``), ``truncated`` (``truncate_metrics`` calls),
    ``warnings`` and the resumed ``status``. Tests copy the run's folder before changing files.
    """
    store = RunStore(tmp_path_factory.mktemp("trained") / "runs.sqlite")
    run_id = store.create_run(resolve_config(registry, TINY).model_dump())

    def cancel(step, total, metrics):
        if step == 7:
            raise RunCancelled("test")

    seen = {"store": store, "run_id": run_id, "recorded": [], "truncated": []}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("metalab.core.engine.report_data.write_report_data", lambda *a, **k: None)  # not under test here
        assert train_run(store, run_id, registry, progress=cancel) == "cancelled", store.get_run(run_id).error
        run_dir = store.run_dir(run_id)
        seen["first"] = (store.get_run(run_id).step, checkpoint_step(run_dir, total_steps=12))
        (run_dir / LATEST).write_bytes((run_dir / LATEST).read_bytes()[:100])
        seen["before"] = (store.get_run(run_id).step, checkpoint_step(run_dir, total_steps=12))
        update, truncate = store.update_run, store.truncate_metrics
        patch.setattr(store, "update_run", lambda rid, **f: (seen["recorded"].append(f.get("step")), update(rid, **f))[1])
        patch.setattr(store, "truncate_metrics", lambda rid, s: (seen["truncated"].append(s), truncate(rid, s))[1])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seen["status"] = train_run(store, run_id, registry)
    seen["warnings"] = [str(w.message) for w in caught if w.category is CheckpointWarning]
    assert seen["status"] == "completed", store.get_run(run_id).error
    return seen


@pytest.fixture(scope="module")
def session(registry, trained):
    """The run's model, optimizer and sampler, built once (restores only assign into them)."""
    store, run_id = trained["store"], trained["run_id"]
    built = build_session(registry, resolve_config(registry, store.get_run(run_id).config))
    optimizer = make_optimizer(built.algorithm)
    optimizer.build(built.algorithm.trainable_variables)
    return built.algorithm, optimizer, make_training_sampler(built)


def _copy_run(trained, tmp_path, name="20990101-000000-abcdef"):
    store, run_id = trained["store"], trained["run_id"]
    target = tmp_path / name
    shutil.copytree(store.run_dir(run_id), target)
    (target / (LATEST + ".rejected")).unlink()  # the fixture's own fallback; each test makes its own
    return target, store.get_run(run_id).config


def _arrays(path):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k not in ("manifest",)}
    meta = json.loads(bytes(arrays.pop("meta")).decode())
    return arrays, meta


def _rewrite(path, *, step=None, legacy=False, change=None):
    """Rewrites a checkpoint consistently (valid zip, valid checksum) with another step or arrays."""
    arrays, meta = _arrays(path)
    if change:
        change(arrays)
    held = meta.pop("step")
    step = held if step is None else step
    if legacy:  # today's format before manifests: arrays and meta only
        np.savez(path, **arrays, meta=np.frombuffer(json.dumps({**meta, "step": step}).encode(), dtype=np.uint8))
    else:
        write_checkpoint_file(path, step, arrays, meta)


def _nan(arrays):
    arrays["var_0"] = np.full_like(arrays["var_0"], np.nan)


def _wrong_shape(arrays):
    arrays["var_0"] = np.zeros(arrays["var_0"].shape + (2,), arrays["var_0"].dtype)


def _tamper(path):
    """Changes a weight but keeps the old manifest: only the checksum can tell."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["var_0"] = arrays["var_0"] + 1.0
    np.savez(path, **arrays)


BAD_FILES = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated or corrupt"),
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "random bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not a NumPy .npz archive"),
    "nan weights": (lambda p: _rewrite(p, change=_nan), "NaN or inf in var_0"),
    "wrong shape": (lambda p: _rewrite(p, change=_wrong_shape), "var_0"),
    "step 1e9": (lambda p: _rewrite(p, step=10**9), "step 1000000000, outside this run's steps (0..12)"),
    "negative step": (lambda p: _rewrite(p, step=-3), "step -3, outside this run's steps"),
    "legacy step 1e9": (lambda p: _rewrite(p, step=10**9, legacy=True), "step 1000000000, outside"),
    "tampered": (_tamper, "fails its sha256 checksum"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(kind, trained, session, tmp_path):
    run_dir, config = _copy_run(trained, tmp_path)
    damage, why = BAD_FILES[kind]
    damage(run_dir / LATEST)
    restored = restore_checkpoint(run_dir, *session, total_steps=12, config=config, quarantine=True)
    assert restored.step == 10 and restored.path.name == PREVIOUS
    [warning] = restored.warnings
    assert f"checkpoint.npz of run {run_dir.name}" in warning and why in warning, warning
    assert "restored checkpoint.prev.npz" in warning and "(step 10)" in warning
    # The rejected file is set aside, so the next save cannot rotate it over the good previous one.
    assert not (run_dir / LATEST).exists() and (run_dir / (LATEST + ".rejected")).exists()


def test_a_missing_newest_checkpoint_falls_back_to_the_previous_one(trained, session, tmp_path):
    run_dir, config = _copy_run(trained, tmp_path)
    (run_dir / LATEST).unlink()  # a crash between the two renames of a save
    restored = restore_checkpoint(run_dir, *session, total_steps=12, config=config, quarantine=True)
    assert restored.step == 10 and restored.warnings == [
        f"checkpoint.npz of run {run_dir.name} is missing; restored checkpoint.prev.npz of run {run_dir.name} "
        f"(step 10) instead"]


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_without_a_good_previous_checkpoint_the_error_names_the_file(kind, trained, session, tmp_path):
    run_dir, config = _copy_run(trained, tmp_path)
    BAD_FILES[kind][0](run_dir / LATEST)
    (run_dir / PREVIOUS).unlink()
    with pytest.raises(CheckpointError) as caught:
        restore_checkpoint(run_dir, *session, total_steps=12, config=config)
    message = str(caught.value)
    assert f"checkpoint.npz of run {run_dir.name}" in message and BAD_FILES[kind][1] in message
    assert "checkpoint.prev.npz of run" in message and "is missing" in message
    assert "Traceback" not in message and "allow_pickle" not in message and "pickle.load" not in message


def test_a_completed_run_keeps_two_plain_npz_checkpoints_with_manifests(trained):
    store, run_id = trained["store"], trained["run_id"]
    run_dir = store.run_dir(run_id)
    # The newest and the previous one; the truncated file the resume passed over is set aside, not rotated in.
    assert sorted(p.name for p in run_dir.iterdir() if "checkpoint" in p.name and "warning" not in p.name) == [
        LATEST, LATEST + ".rejected", PREVIOUS]
    steps = []
    for name in (LATEST, PREVIOUS):
        with np.load(run_dir / name) as data:  # plain np.load: the public promise
            manifest = json.loads(bytes(data["manifest"]).decode())
            assert set(manifest["arrays"]) == set(data.files) - {"manifest"}
            assert manifest["arrays"]["var_0"]["shape"] == list(data["var_0"].shape)
        assert manifest["config_hash"].startswith("sha256:") and len(manifest["sha256"]) == 64
        assert read_checkpoint(run_dir / name, total_steps=12, config=store.get_run(run_id).config).verified
        steps.append(manifest["step"])
    assert steps == [12, 10]


def test_resume_falls_back_records_the_step_it_restarted_from_and_completes(trained):
    store, run_id = trained["store"], trained["run_id"]
    assert trained["first"] == (7, 7)
    # The run's recorded step says 7; a resume message must say 5, where the usable checkpoint is.
    assert trained["before"] == (7, 5)
    [warning] = trained["warnings"]
    assert f"checkpoint.npz of run {run_id} is truncated or corrupt" in warning and "(step 5)" in warning
    assert trained["truncated"] == [5]
    assert [s for s in trained["recorded"] if s is not None][0] == 5  # recorded before the first new step
    assert store.get_run(run_id).step == 12 and store.get_run(run_id).status == "completed"
    assert [s for s, _ in store.metrics(run_id)["train/loss"]] == [2, 4, 6, 8, 10, 12]
    events = json.loads((store.run_dir(run_id) / "checkpoint_warning.json").read_text())["events"]
    assert events[-1]["action"] == "resume" and events[-1]["step"] == 5 and events[-1]["restored"] == PREVIOUS
    assert "truncated or corrupt" in events[-1]["warnings"][0]
    assert any(a["name"] == "checkpoint_warning" for a in store.artifacts(run_id))


def test_a_checkpoint_without_manifest_still_loads(trained, session, tmp_path):
    run_dir, config = _copy_run(trained, tmp_path)
    _rewrite(run_dir / LATEST, legacy=True)
    data = read_checkpoint(run_dir / LATEST, total_steps=12, config=config)
    assert data.step == 12 and not data.verified
    restored = restore_checkpoint(run_dir, *session, total_steps=12, config=config)
    assert restored.step == 12 and restored.warnings == []


def test_a_checkpoint_of_another_config_is_refused(trained, session, tmp_path):
    run_dir, config = _copy_run(trained, tmp_path)
    (run_dir / PREVIOUS).unlink()
    with pytest.raises(CheckpointError, match="written for another config"):
        restore_checkpoint(run_dir, *session, total_steps=12, config={**config, "seed": 99})


class _Var:
    def __init__(self, value):
        self.value, self.path = np.asarray(value, dtype=np.float32), "dense/kernel"
        self.shape, self.dtype = self.value.shape, "float32"

    def numpy(self):
        return self.value


class _Model:
    def __init__(self, *values):
        self.variables = [_Var(v) for v in values]


class _Sampler:
    def get_state(self):
        return {"version": 1}


def test_save_refuses_non_finite_weights_and_keeps_both_checkpoints(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run({"dataset": "d", "algorithm": "a", "steps": 30})
    for step in (10, 20):
        save_checkpoint(store, run_id, step, _Model([1.0, 2.0]), _Model([0.5]), _Sampler())
    run_dir = store.run_dir(run_id)
    before = {name: (run_dir / name).read_bytes() for name in (LATEST, PREVIOUS)}
    with pytest.raises(FloatingPointError, match=r"var_0 \(dense/kernel\) hold NaN or inf.*previous checkpoint is kept"):
        save_checkpoint(store, run_id, 30, _Model([np.nan, 1.0]), _Model([0.5]), _Sampler())
    assert {name: (run_dir / name).read_bytes() for name in (LATEST, PREVIOUS)} == before
    assert sorted(p.name for p in run_dir.iterdir()) == [LATEST, PREVIOUS]  # no temporary file left behind
    # Saving the same step again replaces the newest and keeps the previous one.
    save_checkpoint(store, run_id, 20, _Model([3.0, 4.0]), _Model([0.5]), _Sampler())
    assert checkpoint_step(run_dir) == 20 and read_checkpoint(run_dir / PREVIOUS).step == 10


@pytest.mark.parametrize("step", [10**9, -1])
def test_resume_from_an_out_of_range_step_fails_clearly_instead_of_retraining(step, registry, trained, tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(trained["store"].get_run(trained["run_id"]).config)
    shutil.copytree(trained["store"].run_dir(trained["run_id"]), store.run_dir(run_id))
    _rewrite(store.run_dir(run_id) / LATEST, step=step, legacy=True)  # made by today's code: no manifest
    (store.run_dir(run_id) / PREVIOUS).unlink()
    assert train_run(store, run_id, registry) == "failed"
    run = store.get_run(run_id)
    assert f"checkpoint.npz of run {run_id} has step {step}, outside this run's steps (0..12)" in run.error
    assert run.traceback is None and "Traceback" not in run.error and not store.metrics(run_id).get("train/loss")


def test_evaluate_refuses_nan_weights_and_falls_back_when_it_can(registry, trained, tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(trained["store"].get_run(trained["run_id"]).config)
    shutil.copytree(trained["store"].run_dir(trained["run_id"]), store.run_dir(run_id))
    _rewrite(store.run_dir(run_id) / LATEST, change=_nan)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_run(store, run_id, registry, episodes=4)
    assert np.isfinite(result["loss"]) and 0 <= result["accuracy"] <= 1
    assert any("NaN or inf in var_0" in str(w.message) for w in caught if w.category is CheckpointWarning)
    (store.run_dir(run_id) / PREVIOUS).unlink()
    with pytest.raises(CheckpointError, match=f"checkpoint.npz of run {run_id} holds NaN or inf") as refused:
        evaluate_run(store, run_id, registry, episodes=4)
    assert "Traceback" not in str(refused.value)
    assert len(store.evaluations(run_id)) == 1  # the refused evaluation recorded nothing (no 'MSE nan')


# -- liveness -----------------------------------------------------------------------------------------------


def test_pid_alive_tells_live_dead_zombie_and_reused_pids(tmp_path):
    host = os.uname().nodename
    proc = subprocess.Popen(["sleep", "30"])
    try:
        launched = time.time()
        assert _pid_alive(proc.pid, host, launched)
        assert _pid_alive(proc.pid, host)  # start unknown: alive
        # A process under that pid that started after the worker was known to run is another process.
        assert not _pid_alive(proc.pid, host, launched - 60)
        assert _pid_alive(proc.pid, "another-host", launched - 60)  # another host: cannot tell
        proc.kill()
        deadline = time.time() + 5
        while _pid_alive(proc.pid, host) and time.time() < deadline:  # a zombie until waited for
            time.sleep(0.05)
        assert not _pid_alive(proc.pid, host)
    finally:
        proc.kill()
        proc.wait()
    assert not _pid_alive(proc.pid, host)
    assert _pid_alive(os.getpid(), host, time.time() - 3600)  # a run trained in this very process


def test_a_run_whose_pid_was_reused_is_marked_interrupted(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    host = os.uname().nodename
    proc = subprocess.Popen(["sleep", "30"])
    try:
        running = store.create_run({"dataset": "d", "algorithm": "a", "steps": 10})
        store.update_run(running, status="running", pid=proc.pid, host=host, started=time.time() - 60)
        alive = store.create_run({"dataset": "d", "algorithm": "a", "steps": 10})
        store.update_run(alive, status="running", pid=proc.pid, host=host, started=time.time())
        assert store.get_run(running).status == "interrupted"
        assert store.get_run(alive).status == "running"
    finally:
        proc.kill()
        proc.wait()
    queued = store.create_run({"dataset": "d", "algorithm": "a", "steps": 10})
    store.update_run(queued, pid=proc.pid, host=host)
    assert store.get_run(queued).status == "failed"

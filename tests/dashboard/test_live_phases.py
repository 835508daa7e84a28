"""The live view names the phase a run is in, with that phase's own progress and ETA, and the score tile of the
run's task kind; the finished report splits the run's time into its phases."""

from __future__ import annotations

import os
import time

from tests.dashboard.conftest import SINUSOID_CONFIG, make_completed_run

DIGITS_CONFIG = {**SINUSOID_CONFIG, "dataset": "metalab.digits", "algorithm": "metalab.protonet",
                 "backbone": "metalab.conv4", "ways": 5, "steps": 300, "test_episodes": 600}


def _running(store, config, step):
    run_id = store.create_run(dict(config))
    store.update_run(run_id, status="running", pid=os.getpid(), host=os.uname().nodename, started=time.time() - 60,
                     step=step)
    return run_id


def _labels(at):
    return [m.label for m in at.metric]


def test_a_classification_run_meta_testing_shows_that_phase_its_episodes_and_accuracy(page, store):
    run_id = _running(store, DIGITS_CONFIG, 300)
    store.log_metrics(run_id, 300, {"train/loss": 0.4, "train/steps_per_s": 5.0, "val/accuracy": 0.91})
    now = time.time()
    for name, at in (("loading", now - 60), ("compiling", now - 57), ("training", now - 50)):
        store.start_phase(run_id, name, at=at)
    store.start_phase(run_id, "meta-testing", total=600, detail="test", at=now - 32)
    store.phase_progress(run_id, 320)
    at = page("run_report", {"run": run_id}).run()
    assert not at.exception
    bar = at.get("progress")[0].proto
    assert bar.text == "Meta-testing: episode 320 of 600" and bar.value == 53
    assert "Validation accuracy" in _labels(at) and not [label for label in _labels(at) if "mse" in label.lower()]
    assert next(m for m in at.metric if m.label == "Validation accuracy").value == "91.0%"
    # 320 episodes in 32 s (and the moments this page took): at most 10 a second, and 280 left at that pace.
    rate = float(next(m for m in at.metric if m.label == "Episodes/s").value)
    eta = int(next(m for m in at.metric if m.label == "ETA").value.removesuffix(" s"))
    assert 7.0 < rate <= 10.0 and abs(eta - 280 / rate) <= 1
    assert any(c.value.startswith("Time so far: loading 3 s · compiling 7 s · training 18 s · meta-testing")
               for c in at.caption)


def test_a_starting_worker_says_so_and_a_silent_one_is_waited_for(page, store):
    waiting = store.create_run(dict(SINUSOID_CONFIG))
    at = page("run_report", {"run": waiting}).run()
    assert not at.exception
    assert [i.value for i in at.info] == ["Waiting for the worker to start."]
    starting = store.create_run(dict(SINUSOID_CONFIG))
    store.update_run(starting, pid=os.getpid(), host=os.uname().nodename)
    store.start_phase(starting, "starting", at=time.time() - 12)
    at = page("run_report", {"run": starting}).run()
    assert not at.exception
    text = at.get("progress")[0].proto.text
    assert text.startswith("Starting the worker (importing TensorFlow) · 1") and text.endswith(" s so far")
    assert not at.info
    assert "Validation MSE" in _labels(at)  # a regression run's score tile, even before it logged one


def test_validating_shows_its_step_and_episodes(page, store):
    run_id = _running(store, SINUSOID_CONFIG, 20)
    store.start_phase(run_id, "validating", total=100, detail="step 20")
    store.phase_progress(run_id, 48)
    at = page("run_report", {"run": run_id}).run()
    assert not at.exception
    assert at.get("progress")[0].proto.text == "Validating (step 20): episode 48 of 100"
    assert "Episodes/s" in _labels(at) and "Steps/s" not in _labels(at)


def test_a_training_regression_run_shows_its_steps_and_mse(page, store):
    run_id = _running(store, SINUSOID_CONFIG, 20)
    store.log_metrics(run_id, 20, {"train/loss": 0.7, "train/steps_per_s": 10.0, "val/mse": 0.8})
    store.start_phase(run_id, "training")
    at = page("run_report", {"run": run_id}).run()
    assert not at.exception
    assert at.get("progress")[0].proto.text == "Training: step 20 of 40"
    assert next(m for m in at.metric if m.label == "Validation MSE").value == "0.8"
    assert next(m for m in at.metric if m.label == "ETA").value == "2 s"


def test_the_report_splits_the_time_and_training_time_is_training_only(page, store):
    run_id = make_completed_run(store)
    t = 1_000.0
    for name, start in (("starting", 0), ("loading", 10), ("compiling", 13), ("training", 25), ("validating", 145),
                        ("training", 150), ("meta-testing", 180), ("report", 200)):
        store.start_phase(run_id, name, at=t + start)
    store.end_phases(run_id, at=t + 202)
    at = page("run_report", {"run": run_id}).run()
    assert not at.exception
    assert next(m for m in at.metric if m.label == "Training time").value == "2 min 30 s"
    assert ("Time: worker start 10 s · loading 3 s · compiling 12 s · training 2 min 30 s · validating 5 s · "
            "meta-testing 20 s · report 2 s · total 3 min 22 s") in [c.value for c in at.caption]
    older = make_completed_run(store)  # recorded before phases were: its wall time, named so
    at = page("run_report", {"run": older}).run()
    assert next(m for m in at.metric if m.label == "Wall time").value == "30 s"
    assert "Training time" not in _labels(at)

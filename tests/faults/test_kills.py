"""kill -9 at queued, training, checkpoint-writing and evaluating points: each run ends readable and resumable.

Every case kills a real worker process, then asserts the state the store reports, the slot it frees, the steps it
loses (at most one checkpoint interval) and that resuming finishes the run.
"""

from __future__ import annotations

import random

import pytest

from tests.faults.helpers import CHECKPOINT_EVERY, TINY, finished, kill9, wait_for

pytestmark = pytest.mark.integration  # real workers killed and relaunched: the integration stage of the test command


def test_a_worker_killed_while_queued_then_twice_while_training_resumes_losing_at_most_one_interval(svc):
    run_id = svc.submit(svc.resolve(TINY))
    pid = svc.store.get_run(run_id).pid
    kill9(pid)  # before it could import TensorFlow or touch the run
    assert svc.active_runs() == []  # its slot is free
    run = svc.store.get_run(run_id)
    assert run.status == "failed" and "before training started" in run.error
    assert "Traceback" not in run.error
    svc.relaunch(run_id)
    rng = random.Random(7)
    for _ in range(2):  # two kills at random points of training, each resumed
        target = rng.randint(CHECKPOINT_EVERY + 1, TINY["steps"] - 10)
        run = wait_for(lambda: (r := svc.store.get_run(run_id)).status == "running" and r.step >= target and r,
                       what=f"step {target}")
        kill9(run.pid)
        reached = svc.store.get_run(run_id).step
        run = svc.store.get_run(run_id)
        assert run.status == "interrupted" and "ended without finishing" in run.error
        checkpoint = max((a["step"] or 0) for a in svc.store.artifacts(run_id) if a["name"] == "checkpoint")
        assert reached - checkpoint <= CHECKPOINT_EVERY + TINY["log_every"]
        svc.relaunch(run_id)
    run = wait_for(lambda: finished(svc, run_id), what="the run to finish")
    assert run.status == "completed" and run.step == TINY["steps"], (run.error, run.traceback)
    steps = [s for s, _ in svc.metrics(run_id)["train/loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == TINY["steps"]
    assert any(e["split"] == "test" for e in svc.evaluations(run_id))


def test_a_worker_killed_while_writing_checkpoints_then_while_evaluating_resumes_and_evaluates_once(svc):
    # A checkpoint every step: a kill at a random moment lands in or next to a checkpoint write.
    config = {**TINY, "checkpoint_every": 1, "steps": 30, "test_episodes": 400}
    run_id = svc.submit(svc.resolve(config))
    run = wait_for(lambda: (r := svc.store.get_run(run_id)).status == "running" and r.step >= 10 and r,
                   what="step 10")
    kill9(run.pid)
    assert svc.store.get_run(run_id).status == "interrupted"
    svc.relaunch(run_id)  # from a whole checkpoint, or the run would fail here
    # Training is over (the last step is recorded) and the run is still running: it is meta-testing.
    run = wait_for(lambda: (r := svc.store.get_run(run_id)).status == "running" and r.step == 30 and r,
                   what="the meta-test to start")
    kill9(run.pid)
    run = svc.store.get_run(run_id)
    assert run.status == "interrupted" and run.step == 30
    assert not any(e["split"] == "test" for e in svc.evaluations(run_id))
    svc.relaunch(run_id)
    run = wait_for(lambda: finished(svc, run_id), what="the run to finish")
    assert run.status == "completed" and run.step == 30, (run.status, run.error, run.traceback)
    assert [e["episodes"] for e in svc.evaluations(run_id) if e["split"] == "test"] == [400]

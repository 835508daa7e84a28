"""Sweeps on Ray Tune: the space is read and every grid point resolved before Ray starts; trials are ordinary runs
tagged with the sweep's id; a raised budget runs only the new trials."""

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from metalab.core.cli import app
from metalab.core.sweeps import SweepBook, SweepError, parse_seeds, read_space_file, spec_from_sources

runner = CliRunner()
requires_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                  reason="Ray Tune is not installed (pip install 'metalab[sweep]')")

#: A sinusoid MAML run of a few seconds: six steps, two tasks a step, a few test episodes.
TINY = ["-d", "metalab.sinusoid", "-a", "metalab.maml", "--steps", "6", "--set", "meta_batch_size=2",
        "--set", "test_episodes=8", "--set", "val_episodes=8", "--set", "val_every=3", "--set", "eval_inner_steps=2"]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("METALAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def one_ray():
    """One local Ray cluster at a time across the test processes (pytest-xdist): the tests that start one wait here."""
    import fcntl
    import tempfile
    from pathlib import Path

    with open(Path(tempfile.gettempdir()) / "metalab-tests-ray.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def test_seeds_and_list_options_parse_and_bad_ones_name_the_option():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0-2,9,1") == [0, 1, 2, 9]
    with pytest.raises(SweepError, match=r"Received: --seeds '4-1'"):
        parse_seeds("4-1")
    spec = spec_from_sources(grid=["inner_lr=0.01,0.1"], seeds="0-1", loguniform=["outer_lr=1e-4,1e-2"],
                             choice=["inner_steps=1,5"], metric="val_mse", mode="min")
    assert spec.grid == {"inner_lr": [0.01, 0.1], "run.seed": [0, 1]}
    assert spec.random["outer_lr"] == {"kind": "loguniform", "low": 1e-4, "high": 1e-2}
    assert len(spec.grid_points()) == 4 and spec.total_trials() == 10  # drawn dimensions: ten by default
    assert (spec.store_metric, spec.tune_metric) == ("val/mse", "val_mse")
    with pytest.raises(SweepError, match=r"0 < low < high\. Received: outer_lr=\[0, 0\.1\]"):
        spec_from_sources(loguniform=["outer_lr=0,0.1"])
    with pytest.raises(SweepError, match="inner_lr is both a grid dimension and a sampled one"):
        spec_from_sources(grid=["inner_lr=0.1"], choice=["inner_lr=0.2"])


@pytest.mark.parametrize("suffix, text", [
    (".toml", 'dataset = "d"\nalgorithm = "a"\nseeds = "0-1"\nmetric = "val_mse"\nmode = "min"\n'
              '[grid]\ninner_lr = [0.01, 0.1]\n[set]\nsteps = 4\n'),
    (".yaml", "dataset: d\nalgorithm: a\nseeds: 0-1\nmetric: val_mse\nmode: min\ngrid:\n  inner_lr: [0.01, 0.1]\n"
              "set:\n  steps: 4\n"),
])
def test_a_sweep_file_gives_the_same_space_in_toml_or_yaml_and_options_win(tmp_path, suffix, text):
    path = tmp_path / f"space{suffix}"
    path.write_text(text, encoding="utf-8")
    spec = spec_from_sources(read_space_file(path), mode="max")
    assert spec.raw == {"dataset": "d", "algorithm": "a"} and spec.assignments == {"steps": 4}
    assert spec.grid == {"inner_lr": [0.01, 0.1], "run.seed": [0, 1]}
    assert (spec.metric, spec.mode) == ("val_mse", "max")
    path.write_text(("typo = 1\n" if suffix == ".toml" else "typo: 1\n") + text, encoding="utf-8")
    with pytest.raises(SweepError, match="Unknown key in the sweep file: 'typo'"):
        spec_from_sources(read_space_file(path))


def test_a_bad_grid_value_is_refused_before_ray_starts_and_leaves_nothing(home):
    result = invoke("sweep", *TINY, "--grid", "inner_lr=0.01,-1", "--seeds", "0-1")
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "grid point 3 of 4 (inner_lr=-1, run.seed=0)" in out and "Received: inner_lr=-1" in out
    assert "Traceback" not in result.output
    if importlib.util.find_spec("ray") is not None:
        import ray

        assert not ray.is_initialized()
    assert not (home / "sweeps").exists()
    listed = json.loads(invoke("runs", "list", "--json").stdout)
    assert listed == []


def test_a_drawn_range_is_checked_at_both_ends_before_ray_starts(home):
    result = invoke("sweep", *TINY, "--loguniform", "inner_lr=0.001,500", "--trials", "4")
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "sampled value (inner_lr=500.0)" in out and "Received: inner_lr=500.0" in out
    assert not (home / "sweeps").exists()


@requires_ray
@pytest.mark.integration
def test_a_grid_sweep_stores_tagged_runs_and_a_raised_budget_runs_only_the_new_trials(home, one_ray):
    import ray

    from metalab.core.services import Services

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # Two values by two seeds is four trials; a budget of two runs the first two side by side, the rest wait.
        # ASHA with its only rung at the last step: a trailing trial must still meta-test and complete, not be
        # stopped there (the trial reports its last step with its outcome).
        # (A meta-test of 600 episodes lasts long enough for a stop to land in it.)
        result = invoke("sweep", *TINY, "--grid", "inner_lr=0.01,0.1", "--seeds", "0-1", "--trials", "2",
                        "--max-concurrent", "2", "--scheduler", "asha", "--grace-steps", "6",
                        "--set", "test_episodes=600", "--json")
        assert result.exit_code == 0, result.output
        first = json.loads(result.stdout)
        sweep_id = first["id"]
        assert first["status"] == "completed" and len(first["trials"]) == 2
        assert {t["state"] for t in first["trials"].values()} == {"completed"}, first["trials"]
        services = Services()
        before = {r.id: (r.started, r.finished, len(services.store.metrics(r.id)["val/mse"])) for r in services.runs()}
        assert len(before) == 2

        result = invoke("sweep", "resume", sweep_id[3:], "--trials", "3", "--json")
        assert result.exit_code == 0, result.output
        book = json.loads(result.stdout)
    finally:
        ray.shutdown()

    # A regression dataset's objective is its validation MSE, lowest best, unless --metric and --mode say otherwise.
    assert (book["spec"]["metric"], book["spec"]["mode"]) == ("val_mse", "min")
    trials = book["trials"]
    # The raised budget ran one more grid point (three of the four), the fourth still waits for a larger budget.
    assert sorted(trials) == ["0", "1", "2"] and {t["state"] for t in trials.values()} == {"completed"}
    points = {json.dumps(t["params"], sort_keys=True) for t in trials.values()}
    assert len(points) == 3 and points < {
        json.dumps({"inner_lr": lr, "run.seed": s}, sort_keys=True) for lr in (0.01, 0.1) for s in (0, 1)}
    services = Services()
    runs = {r.id: r for r in services.runs()}
    assert set(runs) == {t["run"] for t in trials.values()}
    # The first three were not trained again: same start and end, no metric logged twice.
    for run_id, (started, finished, points) in before.items():
        assert (runs[run_id].started, runs[run_id].finished) == (started, finished)
        assert len(services.store.metrics(run_id)["val/mse"]) == points
    # Every trial is an ordinary, completed, evaluated run with its sweep's tag, in the table `runs list` reads.
    table = services.runs_table()
    assert {row["id"] for row in table.rows} == set(runs)
    for row in table.rows:
        assert row["status"] == "completed" and f"sweep:{sweep_id}" in row["tags"] and row["score"] is not None
        assert services.store.artifacts(row["id"])  # the final checkpoint was brought home
    for trial in trials.values():
        run = runs[trial["run"]]
        assert run.config["algorithm_params"]["inner_lr"] == trial["params"]["inner_lr"]
        assert run.config["seed"] == trial["params"]["run.seed"]
        assert trial["objective"] == pytest.approx(services.store.metrics(run.id)["val/mse"][-1][1])
    # The best trial is the one with the lowest validation MSE.
    lowest = min(trials.values(), key=lambda t: t["objective"])
    assert book["best"]["run"] == lowest["run"]
    shown = invoke("sweep", "show", sweep_id)
    assert shown.exit_code == 0 and f"best: trial {book['best']['slot']}, run {lowest['run']}" in " ".join(
        shown.output.split())
    listed = json.loads(invoke("sweep", "list", "--json").stdout)
    assert [(s["id"], s["states"]) for s in listed] == [(sweep_id, {"completed": 3})]
    assert SweepBook.load(home, sweep_id).pending_slots() == []


@requires_ray
@pytest.mark.slow
def test_a_sweep_whose_driver_is_killed_resumes_without_rerunning_its_finished_trials(home, tmp_path, one_ray):
    """The driver (`metalab sweep`, with the local Ray it started) is killed once two of three trials have finished;
    `metalab sweep resume` runs the third alone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from metalab.core.services import Services

    command = [sys.executable, "-c", "from metalab.core.cli import main; main()", "sweep", *TINY,
               "--seeds", "0-2", "--max-concurrent", "1", "--num-cpus", "2", "--scheduler", "none"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "driver.log", "wb"),
                            start_new_session=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            books = SweepBook.all(home)
            if books and books[0].counts().get("completed", 0) >= 2:
                break
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "driver.log").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started (its own session)
        proc.wait()
    book = SweepBook.all(home)[0]
    assert book.state == "interrupted" and book.pending_slots() == [2]
    services = Services()
    finished = {t["run"]: services.run(t["run"]).finished for t in book.trials.values() if t["state"] == "completed"}
    assert len(finished) == 2

    result = invoke("sweep", "resume", book.id, "--num-cpus", "2", "--json")
    assert result.exit_code == 0, result.output
    trials = json.loads(result.stdout)["trials"]
    assert [t["state"] for t in trials.values()] == ["completed"] * 3
    runs = {r.id: r for r in Services().runs()}
    assert len(runs) == 3 and all(r.status == "completed" for r in runs.values())
    assert {run_id: runs[run_id].finished for run_id in finished} == finished


@requires_ray
@pytest.mark.integration
def test_a_sweep_launched_as_the_dashboard_does_runs_in_its_own_driver_process(home, one_ray):
    """The Train page's "Launch sweep": the sweep is recorded, then a detached driver process (`metalab sweep
    resume`, its own local Ray) trains every trial; the page only reads the record and the runs."""
    import os
    import signal
    import time

    from metalab.core.services import Services

    services = Services()
    raw = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 6, "test_episodes": 8,
           "val_episodes": 8, "val_every": 3, "algorithm_params": {"meta_batch_size": 2}}
    spec = services.build_sweep(raw, grid={"algorithm.inner_lr": "0.01,0.1"}, seeds="0", trials=None,
                                max_concurrent=None)
    sweep_id = services.launch_sweep(spec)
    driver = services._sweep_drivers[sweep_id]
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and SweepBook.load(home, sweep_id).state not in (
                "completed", "failed", "interrupted"):
            time.sleep(1)
        book = SweepBook.load(home, sweep_id)
        log = (home / "sweeps" / f"{sweep_id}.log").read_text(errors="replace")
        assert book.state == "completed", log[-2000:]
        assert driver.wait(timeout=60) == 0
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started (its own session)
            driver.wait()
    # The page's sweeps use ASHA: a trial that trails at a rung may be stopped there, and says so in its run.
    states = {t["run"]: t["state"] for t in book.trials.values()}
    assert len(states) == 2 and set(states.values()) <= {"completed", "stopped"} and "completed" in states.values()
    runs = {r.id: r for r in services.runs()}
    assert set(runs) == set(states) and all(f"sweep:{sweep_id}" in r.tags for r in runs.values())
    assert sorted(r.config["algorithm_params"]["inner_lr"] for r in runs.values()) == [0.01, 0.1]
    for run_id, state in states.items():
        if state == "completed":
            assert runs[run_id].status == "completed" and services.evaluations(run_id)  # meta-tested
        else:
            assert runs[run_id].status == "cancelled" and "Stopped early by sweep" in runs[run_id].error

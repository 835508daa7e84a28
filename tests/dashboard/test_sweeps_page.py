"""The Sweeps page and its service: sweeps listed and opened, trials by objective, the parallel-coordinates plot, the
best configuration (a longer run, its test-split score), the seeds view's numbers, and launching from the Train page
within the mode's rules. No Ray here: sweeps are recorded and their trials stored through core's own code, as the
driver does (tests/core/test_sweeps.py runs real ones)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from scipy import stats

from metalab.core.services import AccessError, Actor, Services
from metalab.core.services.sweeps import seed_summary
from metalab.core.sweeps import SweepBook, record_sweep, spec_from_sources, sweep_tag

#: val/mse of each trial, by (inner_lr, seed): 0.01 is the better setting (lower), over three seeds.
OBJECTIVES = {(0.01, 0): 0.30, (0.01, 1): 0.34, (0.01, 2): 0.29, (0.1, 0): 0.52, (0.1, 1): 0.47, (0.1, 2): 0.61}


def make_sweep(services: Services, *, status: str = "completed", started: int | None = None) -> SweepBook:
    """A sinusoid MAML sweep over inner_lr and three seeds, recorded and its trials stored as runs the way the driver
    stores them (resolved config, sweep tag, metrics, the end-of-training test evaluation, the outcome)."""
    spec = spec_from_sources(dataset="metalab.sinusoid", algorithm="metalab.maml", steps=40,
                             grid=["algorithm.inner_lr=0.01,0.1"], seeds="0-2")
    book = record_sweep(services, spec)
    store = services.store
    for slot, point in enumerate(book.points[:started]):
        config = services.resolve(dict(spec.raw), {**spec.assignments, **point}, recommended=True)
        run_id = services.create_run(config, name=f"{book.id} #{slot}")
        store.set_tags(run_id, [sweep_tag(book.id)])
        value = OBJECTIVES[(point["algorithm.inner_lr"], point["run.seed"])]
        store.log_metrics(run_id, 40, {"val/mse": value, "val/ci95": 0.05})
        store.add_evaluation(run_id, "test", config.test_episodes, {"mse": value + 0.01, "ci95": 0.02}, seed=2017)
        store.update_run(run_id, status="completed", step=40, started=time.time() - 5, finished=time.time())
        book.trials[slot] = {"run": run_id, "trial": f"t{slot}", "state": "completed", "params": point,
                             "objective": value, "step": 40}
    book.status = status
    book.save()
    return book


def test_seed_summary_gives_each_setting_its_mean_and_students_t_interval():
    trials = [{"state": "completed", "params": {"lr": lr, "run.seed": s}, "objective": OBJECTIVES[(lr, s)],
               "run": f"r{lr}{s}"} for lr, s in OBJECTIVES]
    trials += [{"state": "failed", "params": {"lr": 0.01, "run.seed": 3}, "objective": 9.0},
               {"state": "completed", "params": {"lr": 0.01, "run.seed": 4}, "objective": math.nan},
               {"state": "completed", "params": {"lr": 1.0, "run.seed": 0}, "objective": 0.9}]
    rows = seed_summary(trials, mode="min")
    assert [r["label"] for r in rows] == ["lr=0.01", "lr=0.1", "lr=1.0"]  # lowest mean first
    for row, lr in zip(rows, (0.01, 0.1)):
        values = [OBJECTIVES[(lr, s)] for s in (0, 1, 2)]
        mean = sum(values) / 3
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
        half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)  # 4.303 * s / sqrt(3)
        assert row["n"] == 3 and row["seeds"] == [0, 1, 2] and row["setting"] == {"lr": lr}
        assert row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(sd)
        assert row["ci95"] == pytest.approx(half) and row["low"] == pytest.approx(mean - half)
    assert rows[0]["ci95"] == pytest.approx(0.06572, abs=1e-4)  # by hand: s = 0.02646, t(0.975, 2) = 4.3027
    # One seed: a mean, no interval; the failed and the NaN trial count for nothing.
    assert (rows[2]["n"], rows[2]["ci95"], rows[2]["std"]) == (1, None, None)
    assert [r["label"] for r in seed_summary(trials, mode="max")][0] == "lr=1.0"


def test_the_page_lists_sweeps_and_shows_one_by_objective_with_plot_best_and_seeds(page, home, figures):
    book = make_sweep(Services())
    at = page("sweeps").run()
    assert not at.exception
    listed = at.dataframe[0].value
    assert list(listed["id"]) == [book.id] and listed["open"][0] == f"sweeps?sweep={book.id}"
    assert listed["status"][0] == "completed" and listed["best"][0] == pytest.approx(0.29)

    at = page("sweeps", {"sweep": book.id[3:12]}).run()  # a unique prefix is enough
    assert not at.exception
    assert book.id in at.title[0].value
    trials = at.dataframe[0].value
    # val_mse is minimised: the lowest first.
    assert list(trials["val_mse"]) == sorted(OBJECTIVES.values())
    assert list(trials["algorithm.inner_lr"][:3]) == [0.01, 0.01, 0.01]
    assert list(trials["report"])[0] == f"report?run={book.trials[2]['run']}"
    assert trials["test"][0] == pytest.approx(0.30)  # the run's canonical test-split score
    (parcoords,) = [f for f in figures(at) if f["data"][0]["type"] == "parcoords"]
    axes = parcoords["data"][0]["dimensions"]
    assert [a["label"] for a in axes] == ["algorithm.inner_lr", "run.seed", "val_mse"]
    assert sorted(axes[2]["values"]) == sorted(OBJECTIVES.values())
    # The best configuration, its test-split score and its report.
    assert any("Trial 2" in m.value and "0.29" in m.value for m in at.markdown)
    assert at.metric[0].value == "0.3 ± 0.02"
    seeds = at.dataframe[1].value
    assert list(seeds["setting"]) == ["algorithm.inner_lr=0.01", "algorithm.inner_lr=0.1"]
    assert list(seeds["n"]) == [3, 3] and seeds["mean"][0] == pytest.approx(0.31)
    half = stats.t.ppf(0.975, 2) * math.sqrt(((0.30 - 0.31) ** 2 + (0.34 - 0.31) ** 2 + (0.29 - 0.31) ** 2) / 2) / 3 ** .5
    assert seeds["95% interval"][0] == f"[{0.31 - half:.4g}, {0.31 + half:.4g}]"
    at.segmented_control(key="sweeps.seeds_key").set_value("test").run()
    assert at.dataframe[1].value["mean"][0] == pytest.approx(0.32)  # the test scores, 0.01 above


def test_a_running_sweep_is_watched_live_and_an_unknown_one_is_explained(page, home):
    services = Services()
    book = make_sweep(services, status="running", started=2)
    book.driver = {"pid": os.getpid(), "host": os.uname().nodename}  # its driver is alive
    book.save()
    at = page("sweeps", {"sweep": book.id}).run()
    assert not at.exception
    assert "2 of 6 trials finished" in at.get("progress")[0].proto.text
    assert "best so far" in " ".join(m.value for m in at.markdown)
    assert len(at.dataframe[0].value) == 2
    # The driver records a third trial: the next poll shows it.
    point = book.points[2]
    config = services.resolve(dict(book.spec.raw), {**book.spec.assignments, **point}, recommended=True)
    run_id = services.create_run(config)
    book.trials[2] = {"run": run_id, "state": "running", "params": point, "objective": None, "step": 10}
    book.save()
    at.run()
    assert len(at.dataframe[0].value) == 3 and "running" in list(at.dataframe[0].value["state"])

    at = page("sweeps", {"sweep": "sw-nothing"}).run()
    assert not at.exception and "No sweep 'sw-nothing'" in at.error[0].value


def test_train_this_with_more_steps_launches_the_best_config_as_a_run(page, home, monkeypatch):
    book = make_sweep(Services())
    monkeypatch.setenv("METALAB_MAX_STEPS", "100")
    at = page("sweeps", {"sweep": book.id}).run()
    at.number_input(key="sweeps.more_steps").set_value(120)
    at.button(key="sweeps.train_longer").click().run()
    assert "steps: at most 100 steps per run here (METALAB_MAX_STEPS). Received: steps=120" in at.error[0].value
    assert len(Services().runs()) == 6  # nothing was created

    at.number_input(key="sweeps.more_steps").set_value(80)
    at.button(key="sweeps.train_longer").click().run()
    assert not at.exception
    services = Services()
    (run,) = [r for r in services.runs() if f"from-sweep:{book.id}" in r.tags]
    try:
        assert run.config["steps"] == 80 and run.config["seed"] == 2
        assert run.config["algorithm_params"]["inner_lr"] == pytest.approx(0.01)
        assert run.config["val_every"] > services.run(book.trials[2]["run"]).config["val_every"]  # scaled
    finally:
        pid = services.store.get_run(run.id).pid
        if pid:
            os.kill(pid, signal.SIGKILL)  # the worker this test started; its training is not what is tested


def test_a_bad_sweep_value_on_the_train_page_names_it_and_writes_nothing(page, home):
    at = page("train").run()
    at.multiselect(key="train.sweep.fields").set_value(["algorithm.inner_lr"]).run()
    assert at.text_input(key="train.sweep.values.algorithm.inner_lr").value == "0.01"
    at.text_input(key="train.sweep.values.algorithm.inner_lr").input("0.01,-1")
    at.text_input(key="train.sweep.seeds").input("0-1")
    at.button(key="train.sweep.launch").click().run()
    assert not at.exception
    message = " ".join(e.value for e in at.error)
    assert "grid point 3 of 4 (algorithm.inner_lr=-1, run.seed=0) is invalid" in message
    assert "Received: inner_lr=-1" in message and str(home) not in message
    assert not (home / "sweeps").exists() and Services().runs() == []


def test_sweeps_are_refused_to_demo_visitors_and_team_members_and_hidden_from_visitors(page, home, monkeypatch):
    book = make_sweep(Services())
    spec = spec_from_sources(dataset="metalab.sinusoid", algorithm="metalab.maml", seeds="0-1")
    monkeypatch.setenv("METALAB_MODE", "demo")
    visitor = Services(actor=Actor.visitor("abcdefgh12"))
    with pytest.raises(AccessError, match="not offered on a demo dashboard"):
        visitor.launch_sweep(spec)
    assert visitor.sweeps() == []
    at = page("sweeps", {"sweep": book.id}).run()
    assert not at.exception and "No sweep" in at.error[0].value
    monkeypatch.setenv("METALAB_MODE", "team")
    member = Services(actor=Actor.user("ann@example.org"))
    with pytest.raises(AccessError, match=r"only an admin \(METALAB_ADMINS\) may launch one"):
        member.record_sweep(spec)
    assert member.sweeps()[0]["id"] == book.id  # a team sees the team's sweeps
    assert Services(actor=Actor.user("boss@example.org", admins=["boss@example.org"])).sweep_refusal() is None
    assert len(SweepBook.all(home)) == 1  # nothing more was recorded


def test_the_launch_command_is_the_clis_resume_of_the_recorded_sweep(home):
    services = Services()
    spec = services.build_sweep({"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 4,
                                 "seed": 7, "algorithm_params": {"inner_lr": 0.5}},
                                grid={"algorithm.inner_lr": "0.01,0.1"}, seeds="0-1", trials=3)
    assert spec.raw["algorithm_params"] == {} and "seed" not in spec.raw  # the swept values win over the form's
    book = services.record_sweep(spec)
    assert book.status == "created" and book.total == 3 and len(book.points) == 4 and book.max_steps == 4
    command = services.sweep_command(book.id)
    assert command[-6:] == [sys.executable, "-m", "metalab.core.cli", "sweep", "resume", book.id]
    # The same entry point shows the recorded sweep (what the driver process resumes).
    shown = subprocess.run([*command[-6:-2], "show", book.id, "--json"], capture_output=True, text=True,
                           env=services._worker_env(), timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["spec"]["grid"] == {"algorithm.inner_lr": [0.01, 0.1], "run.seed": [0, 1]}

"""The Run report page: deep links, the live view of a running run, finished and failed runs."""

from __future__ import annotations

import re
import time

from metalab.core.services import Services


def test_deep_link_on_the_root_opens_the_report(app, fake_runs):
    run_id = fake_runs.completed(name="linked")
    at = app({"run": run_id}).run()
    assert not at.exception
    assert at.title[0].value.endswith(f"Run {run_id} — linked")


def test_completed_run_shows_its_figures_score_and_download(page, fake_runs, figures):
    run_id = fake_runs.completed()
    at = page("run_report", {"run": run_id}).run()
    assert not at.exception
    titles = [(spec["layout"].get("title") or {}).get("text") for spec in figures(at)]
    # The page prints each heading once: the figures under "Learning curves" and "Adaptation curve" don't repeat it.
    headings = [h.value for h in at.subheader]
    assert headings.count("Learning curves") == 1 and "Adaptation curve" in headings
    assert titles[0] is None
    assert titles[1].startswith("Mean over 20 test episodes")
    assert any(t and t.startswith("Sinusoid regression") for t in titles)
    sinusoid = next(s for s in figures(at) if (s["layout"].get("title") or {}).get("text", "").startswith("Sinusoid"))
    assert {"ground truth", "support points", "pre-update", "1 grad step", "10 grad steps"} <= {
        trace.get("name") for trace in sinusoid["data"]}
    score = next(m for m in at.metric if m.label == "Meta-test MSE")
    assert score.value == "0.8 ± 0.04"
    assert at.get("download_button")[0].label == "Download report (HTML)"
    assert not [b for b in at.button if b.key == "report-resume"]  # a completed run is not resumable
    # One evaluation: nothing more to list.
    assert not [d for d in at.dataframe if "protocol" in d.value.columns]


def test_a_later_shorter_evaluation_is_listed_and_the_headline_stays(page, fake_runs, store):
    run_id = fake_runs.completed()
    store.add_evaluation(run_id, "test", 5, {"episodes": 5, "loss": 9.0, "mse": 9.0, "ci95": 3.0}, seed=2017)
    at = page("run_report", {"run": run_id}).run()
    assert not at.exception
    assert next(m for m in at.metric if m.label == "Meta-test MSE").value == "0.8 ± 0.04"
    table = next(d.value for d in at.dataframe if "protocol" in d.value.columns)
    assert list(table["protocol"]) == ["test · 5 episodes · seed 2017", "test · 20 episodes · seed 2017"]
    assert list(table["headline"]) == ["", "yes"]


def test_failed_run_shows_error_traceback_config_and_resume(page, fake_runs):
    run_id = fake_runs.failed()
    at = page("run_report", {"run": run_id}).run()
    assert not at.exception
    assert "ValueError: the loss became NaN" in at.error[0].value
    assert any("Traceback (most recent call last)" in c.value for c in at.code)
    assert any('"inner_lr": 0.01' in c.value for c in at.code)  # the config
    assert at.button(key="report-resume").label == "Resume"


def test_live_view_polls_the_store_and_cancels(page, fake_runs, store, figures):
    run_id = fake_runs.running()
    at = page("run_report", {"run": run_id}).run()
    assert not at.exception
    assert at.get("progress")[0].proto.value == 50  # step 20 of 40
    assert next(m for m in at.metric if m.label == "Steps/s").value == "10.0"
    assert next(m for m in at.metric if m.label == "ETA").value == "2 s"
    assert figures(at)[0]["layout"]["title"]["text"] == "Live learning curves"
    at.button(key="live-cancel").click().run()
    assert store.cancel_requested(run_id)
    assert any("Cancel requested" in w.value for w in at.warning)
    # The worker logs more and finishes; the next poll (AppTest does not fire run_every itself) shows it.
    store.log_metrics(run_id, 30, {"train/loss": 0.5, "train/steps_per_s": 10.0})
    store.update_run(run_id, step=30)
    at.run()
    assert at.get("progress")[0].proto.value == 75
    store.update_run(run_id, status="cancelled", step=30)
    at.run()
    assert not at.get("progress")
    assert at.button(key="report-resume").label == "Resume"


def test_resume_relaunches_a_cancelled_run_in_a_worker(page, fake_runs, store, monkeypatch):
    run_id = fake_runs.failed()
    monkeypatch.setattr(Services, "launch", lambda self, rid: _FakeProcess())
    at = page("run_report", {"run": run_id}).run()
    at.button(key="report-resume").click().run()
    assert not at.exception
    assert store.get_run(run_id).status == "queued"


class _FakeProcess:
    """Stands in for a worker process that has not exited (the real launch is tested on the Train page)."""

    returncode = None

    def poll(self):
        return None


def test_unknown_run_is_reported_not_crashed(page, home):
    at = page("run_report", {"run": "nope"}).run()
    assert not at.exception
    assert "No run with id 'nope'" in at.error[0].value


def test_without_a_run_the_page_offers_a_choice(page, fake_runs):
    run_id = fake_runs.completed()
    at = page("run_report").run()
    assert at.selectbox[0].options and run_id in at.selectbox[0].options[0]
    at.selectbox[0].set_value(run_id).run()
    assert at.query_params["run"] in (run_id, [run_id])


def test_report_says_which_batch_norm_mode_the_run_used(page, fake_runs):
    from .conftest import SINUSOID_CONFIG

    config = {**SINUSOID_CONFIG, "backbone": "metalab.conv4",
              "algorithm_params": {"inner_lr": 0.01, "transductive": False, "per_step_bn": True}}
    at = page("run_report", {"run": fake_runs.completed(config=config)}).run()
    assert not at.exception
    assert any("inductive (per-step running statistics)" in c.value for c in at.caption)
    # The sinusoid MLP has no batch norm: the report says so rather than naming a mode.
    at = page("run_report", {"run": fake_runs.completed(config={**config, "backbone": "metalab.mlp"})}).run()
    captions = [c.value for c in at.caption]
    assert "Batch norm: none (the MLP backbone has no batch-norm layers)." in captions
    assert not any("inductive" in c for c in captions)


def test_the_owner_names_tags_and_annotates_a_run_on_its_report_and_the_html_keeps_them(page, fake_runs, store, home):
    run_id = fake_runs.completed()
    now = time.time()
    for at, name in ((now - 30, "loading"), (now - 27, "training"), (now - 7, "meta-testing")):
        store.start_phase(run_id, name, at=at)
    store.end_phases(run_id, at=now)
    at = page("run_report", {"run": run_id}).run()
    assert not at.exception
    at.text_input(key="report.edit.name").set_value("baseline lr 0.01")
    at.multiselect(key="report.edit.tags").set_value(["paper", "sinusoid"])
    at.text_area(key="report.edit.notes").set_value("first try *not* tuned")
    at.button(key="report.edit.save").click().run()
    assert not at.exception
    record = store.get_run(run_id)
    assert (record.name, record.tags, record.notes) == ("baseline lr 0.01", ["paper", "sinusoid"],
                                                         "first try *not* tuned")
    assert at.title[0].value.endswith("— baseline lr 0.01")
    assert "tags: paper, sinusoid" in at.caption[0].value
    # The notes read as typed: Markdown's characters escaped, not made emphasis.
    assert any("first try \\*not\\* tuned" in m.value for m in at.markdown)
    text = Services().report_html(run_id)
    assert "Tags: paper, sinusoid" in text and "first try *not* tuned</blockquote>" in text
    # The HTML report splits the run's time into its phases, as the page does.
    assert re.search(r"<p class='phases'>Time: loading 3 s · training 20 s · meta-testing 7 s", text)


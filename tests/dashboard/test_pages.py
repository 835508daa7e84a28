"""Home, Plugins, Runs and Compare pages, and the router."""

from __future__ import annotations

import subprocess
import sys

from metalab.core.services import Services

SINUSOID = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "backbone": "metalab.mlp", "ways": 1,
            "shots": 5, "queries": 5, "steps": 40, "seed": 3, "algorithm_params": {"inner_lr": 0.01, "eval_inner_steps": 2}}


def test_router_serves_the_home_page(app, fake_runs):
    fake_runs.completed(name="first")
    at = app().run()
    assert not at.exception
    assert at.title[0].value == "metalab"
    assert next(m for m in at.metric if m.label == "Runs").value == "1"
    assert next(m for m in at.metric if m.label == "Algorithms").value != "0"


def test_plugins_page_lists_specs_with_parameters_and_broken_plugins(page):
    at = page("plugins").run()
    assert not at.exception
    listed = {kind: list(t.value["id"]) for kind, t in zip(("algorithm", "dataset", "backbone"), at.table)}
    assert "metalab.maml" in listed["algorithm"] and "metalab.sinusoid" in listed["dataset"]
    assert "metalab.conv4" in listed["backbone"]
    kinds = dict(zip(at.table[1].value["id"], at.table[1].value["task kinds"]))
    assert kinds["metalab.nav2d"] == "environment" and kinds["metalab.sinusoid"] == "regression"
    # The details of one spec at a time, chosen in a box (or by a link's ?spec=).
    at.selectbox(key="plugins.spec").set_value("metalab.maml").run()
    assert at.query_params["spec"] == "metalab.maml"
    maml = at.table[-1].value
    row = maml[maml["name"] == "inner_lr"].iloc[0]
    assert row["type"] == "float" and row["default"] == "0.4" and row["range"] == "> 0, <= 100"
    errors = " ".join(e.value for e in at.error)
    # metalab-testplugins ships broken plugins: each is shown with its error, and the page still renders.
    assert "broken_import" in errors and "No module named 'a_module_that_does_not_exist_xyz'" in errors
    assert "future_api" in errors and "plugin API 2.0" in errors
    assert any("ModuleNotFoundError" in c.value for c in at.code)  # a traceback


def test_a_plugins_link_names_the_spec_to_detail_and_a_bad_one_is_named(page):
    at = page("plugins", {"spec": "metalab.protonet"}).run()
    assert at.selectbox(key="plugins.spec").value == "metalab.protonet"
    assert "distance" in set(at.table[-1].value["name"])
    at = page("plugins", {"spec": "nobody.nothing"}).run()
    assert any("spec='nobody.nothing' is not a loaded" in w.value for w in at.warning)


def test_plugins_page_checks_whether_a_datasets_files_are_present(page, monkeypatch, tmp_path):
    monkeypatch.setenv("METALAB_DATA_DIR", str(tmp_path / "empty"))  # no MNIST anywhere here
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    at = page("plugins", {"spec": "metalab.digits"}).run()
    at.button(key="files-metalab.digits").click().run()
    assert not at.exception
    assert any("Files present" in s.value and "train:" in s.value for s in at.success)
    at.selectbox(key="plugins.spec").set_value("metalab.mnist").run()
    at.button(key="files-metalab.mnist").click().run()
    missing = " ".join(e.value for e in at.error)
    assert "Files missing" in missing and "mnist.npz" in missing


def test_plugins_page_marks_disabled_plugins(page, monkeypatch):
    monkeypatch.setenv("METALAB_DISABLE_PLUGINS", "lines")
    at = page("plugins").run()
    assert any("lines" in w.value and "disabled" in w.value for w in at.warning)


def test_runs_page_filters_and_links_reports(page, fake_runs):
    first = fake_runs.completed(name="alpha")
    second = fake_runs.failed()
    at = page("runs").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["id"]) == {first, second}
    assert set(table[table["id"] == first]["report"]) == {f"report?run={first}"}
    at.multiselect(key="runs.status").set_value(["failed"]).run()
    assert list(at.dataframe[0].value["id"]) == [second]


def test_runs_page_renames_and_deletes_with_confirmation(page, fake_runs):
    run_id = fake_runs.completed(name="old")
    at = page("runs").run()
    at.multiselect(key="runs.chosen").set_value([run_id]).run()
    at.text_input(key="runs.edit.name").input("new name")
    at.button(key="runs.edit.save").click().run()
    assert Services().run(run_id).name == "new name"
    at.multiselect(key="runs.chosen").set_value([run_id]).run()
    at.button(key="runs.delete").click().run()
    assert any("cannot be undone" in w.value for w in at.warning)
    assert [r.id for r in Services().runs()] == [run_id]  # nothing deleted before confirming
    at.button(key="runs.confirm").click().run()
    assert Services().runs() == []


def test_compare_page_overlays_curves_and_groups_scores(page, fake_runs, figures):
    a = fake_runs.completed(name="lr small")
    b = fake_runs.completed(name="lr big", config={**SINUSOID, "test_episodes": 20,
                                                   "algorithm_params": {"inner_lr": 0.1, "eval_inner_steps": 2}})
    at = page("compare", {"runs": f"{a},{b}"}).run()
    assert not at.exception
    curves, scores, _ = figures(at)
    assert curves["layout"]["title"]["text"] == "val/mse"
    assert len(curves["data"]) == 2
    assert at.selectbox(key="compare.group").options[1] == "inner_lr"  # shown by its own name
    at.selectbox(key="compare.group").set_value("algorithm.inner_lr").run()
    scores = figures(at)[1]
    assert sorted(trace["x"][0] for trace in scores["data"]) == ["inner_lr=0.01", "inner_lr=0.1"]
    table = at.dataframe[0].value
    assert set(table["id"]) == {a, b} and "algorithm.inner_lr" in table.columns


def test_dashboard_pages_import_no_tensorflow():
    code = ("import sys, metalab.dashboard.pages, metalab.dashboard.app\n"
            "print([m for m in ('tensorflow', 'keras') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr

"""The Runs page as an experiment table (score first, parameters as columns, search, filter, sort, name, tags and
notes) and the Compare page (colours, parameters × metrics, parallel coordinates); both keep their state in the
link, and a bad value in a link is a warning naming it."""

from __future__ import annotations

import pytest

from metalab.core.services import AccessError, Actor, Services

from .conftest import SINUSOID_CONFIG


def _config(inner_lr: float, shots: int = 5) -> dict:
    return {**SINUSOID_CONFIG, "shots": shots, "algorithm_params": {"inner_lr": inner_lr, "eval_inner_steps": 2}}


def _three(fake_runs, store):
    """Three runs told apart by inner_lr, name, tags and their last val/mse."""
    small = fake_runs.completed(name="alpha", config=_config(0.01))
    mid = fake_runs.completed(name="beta", config=_config(0.05, shots=1))
    big = fake_runs.completed(name="gamma", config=_config(0.1))
    store.log_metrics(big, 50, {"val/mse": 2.5})
    store.set_tags(mid, ["baseline"])
    return small, mid, big


def _ids(at) -> list[str]:
    return list(at.dataframe[0].value["id"])


def test_the_table_starts_with_id_name_score_and_ci_and_shows_key_parameters(page, fake_runs, store):
    small, mid, big = _three(fake_runs, store)
    at = page("runs").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table.columns[:6]) == ["report", "short_id", "name", "score", "ci95", "metric"]
    assert all(len(short) >= 8 and full.startswith(short) for short, full in zip(table["short_id"], table["id"]))
    row = table[table["id"] == small].iloc[0]
    assert (row["score"], row["ci95"], row["protocol"]) == (0.8, 0.04, "test · 20 episodes · seed 2017")
    assert row["report"] == f"report?run={small}"
    # The swept parameters are columns; others can be added by name.
    assert {"shots", "algorithm.inner_lr"} <= set(table.columns)
    assert at.multiselect(key="runs.columns").value[:3] == ["ways", "shots", "algorithm.inner_lr"]
    at.multiselect(key="runs.columns").set_value(["val/mse", "train/loss"]).run()
    table = at.dataframe[0].value
    assert "val/mse" in table.columns and "algorithm.inner_lr" not in table.columns
    assert at.query_params["cols"] == "val/mse,train/loss"


def test_filter_by_a_parameter_a_metric_a_tag_and_search(page, fake_runs, store):
    small, mid, big = _three(fake_runs, store)
    at = page("runs").run()
    at.text_input(key="runs.filter").input("inner_lr = 0.1").run()
    assert _ids(at) == [big]
    at.text_input(key="runs.filter").input("val/mse >= 0.85 and val/mse < 2").run()
    assert sorted(_ids(at)) == sorted([small, mid])
    at.text_input(key="runs.filter").input("val/mse > 2").run()
    assert _ids(at) == [big]
    at.text_input(key="runs.filter").input("").run()
    at.multiselect(key="runs.tags").set_value(["baseline"]).run()
    assert _ids(at) == [mid]
    at.multiselect(key="runs.tags").set_value([]).run()
    at.text_input(key="runs.search").input("gamma").run()
    assert _ids(at) == [big]
    at.text_input(key="runs.search").input("").run()
    at.selectbox(key="runs.sort").set_value("algorithm.inner_lr").run()
    at.toggle(key="runs.desc").set_value(False).run()
    assert _ids(at) == [small, mid, big]
    at.text_input(key="runs.filter").input("inner_lr >").run()
    assert not at.exception and len(_ids(at)) == 3
    assert any("filter=inner_lr >" in w.value and "Cannot read the filter clause" in w.value for w in at.warning)


def test_a_link_restores_search_filter_sort_and_columns(page, fake_runs, store):
    small, mid, big = _three(fake_runs, store)
    at = page("runs").run()
    at.text_input(key="runs.filter").input("inner_lr >= 0.05").run()
    at.text_input(key="runs.search").input("a").run()
    at.selectbox(key="runs.sort").set_value("score").run()
    at.multiselect(key="runs.columns").set_value(["val/mse"]).run()
    link = dict(at.query_params)
    assert link == {"filter": "inner_lr >= 0.05", "q": "a", "sort": "score", "desc": "1", "cols": "val/mse"}
    shown = _ids(at)
    assert sorted(shown) == sorted([mid, big])
    opened = page("runs", link).run()  # a new session opens the shared link
    assert not opened.exception and not opened.warning
    assert opened.text_input(key="runs.filter").value == "inner_lr >= 0.05"
    assert opened.selectbox(key="runs.sort").value == "score"
    assert _ids(opened) == shown and "val/mse" in opened.dataframe[0].value.columns


def test_a_bad_link_is_a_warning_naming_the_parameter_and_value(page, fake_runs, store):
    _three(fake_runs, store)
    at = page("runs", {"sort": "nonsense", "desc": "maybe", "dataset": "metalab.nope", "cols": "inner_lr,zzz",
                       "filter": "score > high"}).run()
    assert not at.exception
    warnings = " ".join(w.value for w in at.warning)
    for text in ("`sort=nonsense`", "`desc=maybe`", "`dataset=metalab.nope`", "`cols=zzz`", "filter=score > high"):
        assert text in warnings, warnings
    assert len(_ids(at)) == 3 and "algorithm.inner_lr" in at.dataframe[0].value.columns
    compare = page("compare", {"runs": "nope", "metric": "x/y"}).run()
    assert not compare.exception and "`runs=nope`" in " ".join(w.value for w in compare.warning)


def test_name_tags_and_notes_are_edited_and_kept(page, fake_runs, store):
    small, _, _ = _three(fake_runs, store)
    at = page("runs").run()
    at.multiselect(key="runs.chosen").set_value([small]).run()
    assert at.text_input(key="runs.edit.name").value == "alpha"
    at.text_input(key="runs.edit.name").input("alpha, tuned")
    at.multiselect(key="runs.edit.tags").set_value(["baseline", "keep"])
    at.text_area(key="runs.edit.notes").input("best so far")
    at.button(key="runs.edit.save").click().run()
    assert not at.exception
    run = Services().run(small)
    assert (run.name, run.tags, run.notes) == ("alpha, tuned", ["baseline", "keep"], "best so far")
    row = at.dataframe[0].value.set_index("id").loc[small]
    assert row["name"] == "alpha, tuned" and list(row["tags"]) == ["baseline", "keep"] and row["notes"] == "best so far"
    at.multiselect(key="runs.tags").set_value(["keep"]).run()
    assert _ids(at) == [small]


def test_compare_three_runs_with_consistent_colours_and_parallel_coordinates(page, fake_runs, store, figures):
    small, mid, big = _three(fake_runs, store)
    at = page("compare", {"runs": f"{small},{mid[:-2]},{big}"}).run()
    assert not at.exception and not at.warning
    curves, scores, parallel = figures(at)
    colour = {trace["meta"]: trace["line"]["color"] for trace in curves["data"]}
    assert list(colour) == [small, mid, big] and len(set(colour.values())) == 3
    assert {trace["meta"]: trace["marker"]["color"] for trace in scores["data"]} == colour
    # Scores are points with their intervals on an axis fitted to them, not bars rising from 0.
    assert {trace["type"] for trace in scores["data"]} == {"scatter"}
    assert all(trace["mode"] == "markers" and trace["error_y"]["array"][0] > 0 for trace in scores["data"])
    low, high = scores["layout"]["yaxis"]["range"]
    tops = [trace["y"][0] + trace["error_y"]["array"][0] for trace in scores["data"]]
    bottoms = [trace["y"][0] - trace["error_y"]["array"][0] for trace in scores["data"]]
    assert 0 < low <= min(bottoms) and max(tops) <= high
    # One SVG line per run (no WebGL), in the run's colour, across one axis per field.
    lines = parallel["data"]
    assert {trace["type"] for trace in lines} == {"scatter"} and [t["meta"] for t in lines] == [small, mid, big]
    assert all(trace["line"]["color"] == colour[trace["meta"]] for trace in lines)
    axes = parallel["layout"]["xaxis"]["ticktext"]
    assert "inner_lr" in axes and "shots" in axes and axes[-1] == "score"
    at_inner = axes.index("inner_lr")
    # inner_lr 0.01, 0.05, 0.1: placed from the axis's bottom (least) to its top (greatest), in proportion.
    assert [round(t["y"][at_inner], 4) for t in lines] == [0.0, round(0.04 / 0.09, 4), 1.0]
    assert [t["customdata"][at_inner][1] for t in lines] == ["0.01", "0.05", "0.1"]
    table = at.dataframe[0].value
    assert list(table["id"]) == [small, mid, big] and {"algorithm.inner_lr", "shots", "val/mse"} <= set(table.columns)
    # Metric, grouping and axes are in the link, and a new session restores them.
    at.selectbox(key="compare.metric").set_value("train/loss").run()
    at.selectbox(key="compare.group").set_value("shots").run()
    at.multiselect(key="compare.dims").set_value(["shots", "val/mse"]).run()
    link = dict(at.query_params)
    assert link == {"runs": f"{small},{mid},{big}", "metric": "train/loss", "group": "shots", "dims": "shots,val/mse"}
    opened = page("compare", link).run()
    assert not opened.exception and not opened.warning
    curves, scores, parallel = figures(opened)
    assert curves["layout"]["title"]["text"] == "train/loss"
    assert sorted({trace["x"][0] for trace in scores["data"]}) == ["shots=1", "shots=5"]
    assert parallel["layout"]["xaxis"]["ticktext"] == ["shots", "val/mse"]



def test_the_runs_table_benchmark_runs_on_a_small_store(tmp_path):
    import subprocess
    import sys

    from .conftest import REPO_ROOT

    out = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "runs_table.py"), "--runs", "24", "--points",
                          "3", "--repeats", "1", "--home", str(tmp_path / "home")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode in (0, 1), out.stderr  # 1: slower than the goal on a loaded machine, not a failure here
    result = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    assert '"runs": 24' in result and "Compare page, 20 runs" in out.stdout


def test_a_demo_visitor_sees_only_own_and_showcase_runs_and_annotates_only_its_own(page, fake_runs, store, monkeypatch):
    from metalab.dashboard.state import reset_services

    showcase = fake_runs.completed(name="showcase run")
    someone = fake_runs.completed(name="someone else's")
    store.update_run(showcase, owner="showcase")
    store.update_run(someone, owner="session:someone-else")
    monkeypatch.setenv("METALAB_MODE", "demo")
    reset_services()
    at = page("runs").run()
    assert not at.exception and _ids(at) == [showcase]
    at.multiselect(key="runs.chosen").set_value([showcase]).run()
    assert "runs.edit.name" not in [w.key for w in at.text_input]  # no form to change it
    assert any("Only their owners can annotate" in c.value for c in at.caption)
    with pytest.raises(AccessError, match="showcase runs are read-only"):
        Services().for_actor(Actor.visitor("visitor-token")).set_run_tags(showcase, ["mine"])

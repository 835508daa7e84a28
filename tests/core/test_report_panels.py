"""The metalab_report_panels hook: plugins add panels to a run's report through the service facade."""

from __future__ import annotations

import json
import types

import plotly.graph_objects as go
import pytest

from metalab.core.reports import figures as reports
from metalab.core.contract.specs import ReportPanel, hookimpl
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.services import Services
from metalab.core.settings import load_settings


def _plugin(**hooks):
    return types.SimpleNamespace(METALAB_PLUGIN_API="1.2", **{k: hookimpl(v) for k, v in hooks.items()})


def _good(run, report_data, artifacts_dir):
    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2], name="bars"))
    return [ReportPanel(title=f"Rates of {run['algorithm']}", figure=json.loads(fig.to_json()),
                        markdown=f"| k | v |\n| --- | --- |\n| `x` | {report_data['demo.algo']['x']} |"),
            ReportPanel(title="Folder", markdown=f"dir ends with {artifacts_dir[-8:]}")]


def _broken(run):
    raise RuntimeError("no figure today")


def _wrong(run):
    return [{"title": "a dict, not a panel"}]


@pytest.fixture
def services(tmp_path, monkeypatch):
    monkeypatch.setenv("METALAB_HOME", str(tmp_path))
    settings = load_settings(disable_plugins="")
    registry = make_plugin_manager(
        entry_points=False, settings=settings, strict=True,
        plugins=[("good", _plugin(metalab_report_panels=_good)), ("broken", _plugin(metalab_report_panels=_broken)),
                 ("wrong", _plugin(metalab_report_panels=_wrong))],
    )
    return Services(settings=settings, registry=registry)


def _run_with_data(svc: Services, data: dict | None) -> str:
    run_id = svc.store.create_run({"algorithm": "demo.algo", "dataset": "d.d", "backbone": "b.b", "seed": 1})
    if data is not None:
        path = svc.store.run_dir(run_id) / "report_data.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        svc.store.add_artifact(run_id, "report_data", "json", path)
    svc.store.update_run(run_id, status="completed")
    return run_id


def test_metalab_report_panels_are_collected_in_order_and_failures_stay_apart(services):
    run_id = _run_with_data(services, {"demo.algo": {"x": 7}})
    panels = services.report_panels(run_id)
    assert [p["plugin"] for p in panels] == ["good", "good", "broken", "wrong"]
    first, folder, broken, wrong = panels
    assert first["title"] == "Rates of demo.algo" and first["error"] is None
    assert first["figure"]["data"][0]["name"] == "bars" and "| `x` | 7 |" in first["markdown"]
    assert folder["markdown"].endswith(str(services.store.run_dir(run_id))[-8:])
    assert broken["error"] == "RuntimeError: no figure today" and broken["figure"] is None
    assert "ReportPanel" in wrong["error"]
    report = services.run_report(run_id)
    assert [p["title"] for p in report["panels"]] == [p["title"] for p in panels]


def test_the_hook_gets_an_empty_dict_when_the_worker_wrote_no_report_data(services):
    run_id = _run_with_data(services, None)
    panels = services.report_panels(run_id)
    # _good reads report_data["demo.algo"]: with no data it raises, which becomes its error panel.
    assert panels[0]["error"].startswith("KeyError")


def test_html_report_shows_plugin_panels(services):
    run_id = _run_with_data(services, {"demo.algo": {"x": 7}})
    text = reports.report_html(services.run_report(run_id), generated=0)
    assert "<h2>Rates of demo.algo</h2>" in text and "<td><code>x</code></td><td>7</td>" in text
    assert "could not draw its panel: RuntimeError: no figure today" in text
    assert reports.panel_figure({"figure": None}) is None
    assert isinstance(reports.panel_figure(services.report_panels(run_id)[0]), go.Figure)


def test_a_hook_with_an_unknown_argument_fails_its_plugin_at_load():
    def bad(run, figures):
        return []

    registry = make_plugin_manager(entry_points=False, strict=False,
                                   plugins=[("bad", _plugin(metalab_report_panels=bad))])
    assert registry.failures and "figures" in registry.failures[0].error


@pytest.mark.parametrize("panel, match", [
    (ReportPanel(title=""), "title"),
    (ReportPanel(title="t"), "figure or markdown"),
    (ReportPanel(title="t", figure=go.Figure()), "JSON dict"),
])
def test_malformed_panels_are_refused(panel, match):
    with pytest.raises(ValueError, match=match):
        panel.validate()


def test_a_trained_meta_sgd_run_shows_its_learned_rates(tmp_path, monkeypatch):
    """End to end: the worker stores report_data() under the algorithm's id; the built-in hook draws it."""
    from metalab.core.authoring import testing

    monkeypatch.setenv("METALAB_HOME", str(tmp_path))
    settings = load_settings(disable_plugins="")
    registry = make_plugin_manager(distributions={"metalab"}, settings=settings, strict=False)
    svc = Services(settings=settings, registry=registry)
    config = testing.tiny_config(registry, "metalab.metasgd", "classification", steps=5)
    run_id = svc.create_run(config)
    assert svc.train(run_id) == "completed"
    data = svc.report_data(run_id)
    assert data["metalab.metasgd"]["init"] == 0.1 and "embedding" in data
    panels = [p for p in svc.report_panels(run_id) if p["plugin"] == "metasgd"]
    assert [p["title"] for p in panels] == ["Learned inner learning rates"] and panels[0]["error"] is None
    assert not [p for p in svc.report_panels(run_id) if p["error"]]


def test_the_hook_gets_the_runs_logged_metrics(tmp_path, monkeypatch):
    def curves(metrics):
        return [ReportPanel(title="Steps", markdown=", ".join(f"{name}: {points}" for name, points in sorted(metrics.items())))]

    monkeypatch.setenv("METALAB_HOME", str(tmp_path))
    settings = load_settings(disable_plugins="")
    registry = make_plugin_manager(entry_points=False, settings=settings, strict=True,
                                   plugins=[("curves", _plugin(metalab_report_panels=curves))])
    svc = Services(settings=settings, registry=registry)
    run_id = _run_with_data(svc, None)
    svc.store.log_metrics(run_id, 5, {"train/loss": 0.5})
    svc.store.log_metrics(run_id, 10, {"train/loss": 0.25, "val/accuracy": 0.75})
    (panel,) = svc.report_panels(run_id)
    assert panel["markdown"] == "train/loss: [(5, 0.5), (10, 0.25)], val/accuracy: [(10, 0.75)]"
    assert svc.run_report(run_id)["panels"][0]["markdown"] == panel["markdown"]


def _spec_plugin(api: str, algorithm: str | None, calls: list):
    from metalab.core.contract.specs import AlgorithmSpec, Params

    def panels(run):
        calls.append(run["algorithm"])
        return [ReportPanel(title=f"{api} on {run['algorithm']}", markdown="x")]

    hooks = {"metalab_report_panels": hookimpl(panels)}
    if algorithm:
        spec = AlgorithmSpec(id=algorithm, title="A", description="d", params=Params, factory=lambda p, t: None)
        hooks["metalab_register_algorithms"] = hookimpl(lambda: [spec])
    return types.SimpleNamespace(METALAB_PLUGIN_API=api, **hooks)


def test_a_plugin_targeting_api_1_4_sees_only_the_runs_that_use_its_specs(tmp_path, monkeypatch):
    monkeypatch.setenv("METALAB_HOME", str(tmp_path))
    settings = load_settings(disable_plugins="")
    calls: dict[str, list] = {"scoped": [], "legacy": [], "generic": []}
    registry = make_plugin_manager(entry_points=False, settings=settings, strict=True, plugins=[
        ("scoped", _spec_plugin("1.4", "scoped.algo", calls["scoped"])),
        ("legacy", _spec_plugin("1.3", "legacy.algo", calls["legacy"])),
        ("generic", _spec_plugin("1.4", None, calls["generic"])),
    ])
    svc = Services(settings=settings, registry=registry)
    for algorithm in ("scoped.algo", "demo.algo"):
        run_id = svc.store.create_run({"algorithm": algorithm, "dataset": "d.d", "backbone": "b.b", "seed": 1})
        svc.report_panels(run_id)
    # A plugin registering specs under API 1.4 is called for its own runs only; one targeting an earlier API, or
    # registering nothing, is called for every run.
    assert calls == {"scoped": ["scoped.algo"], "legacy": ["scoped.algo", "demo.algo"],
                     "generic": ["scoped.algo", "demo.algo"]}
    # A run uses a plugin's specs through its dataset or backbone too.
    run_id = svc.store.create_run({"algorithm": "demo.algo", "dataset": "d.d", "backbone": "scoped.algo", "seed": 1})
    assert "1.4 on demo.algo" in [p["title"] for p in svc.report_panels(run_id)]


def test_builtin_panels_need_no_check_of_the_runs_algorithm(tmp_path, monkeypatch):
    """Every built-in panel hook is reached by its own runs only: a MAML run whose report data holds every other
    algorithm's entry gets no panel (and no error) from their plugins."""
    monkeypatch.setenv("METALAB_HOME", str(tmp_path))
    settings = load_settings(disable_plugins="")
    registry = make_plugin_manager(distributions={"metalab"}, settings=settings, strict=False)
    svc = Services(settings=settings, registry=registry)
    with_panels = [impl.plugin_name for impl in registry.pm.hook.metalab_report_panels.get_hookimpls()]
    assert len(with_panels) >= 10
    versions = {record.name: record.api_version for record in registry.plugins}
    # Every one targets 1.4 or later, where a panel hook is called only for runs of its own specs.
    assert all(tuple(map(int, versions[name].split("."))) >= (1, 4) for name in with_panels), versions
    data = {spec_id: {"x": 1} for spec_id in registry.algorithms}

    def run_of(algorithm: str) -> str:
        run_id = svc.store.create_run({"algorithm": algorithm, "dataset": "metalab.sinusoid",
                                       "backbone": "metalab.mlp", "seed": 1})
        path = svc.store.run_dir(run_id) / "report_data.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        svc.store.add_artifact(run_id, "report_data", "json", path)
        return run_id

    assert svc.report_panels(run_of("metalab.maml")) == []
    # The same data under an ANIL run reaches ANIL's hook alone (it cannot draw {"x": 1}: an error in its place).
    assert [p["plugin"] for p in svc.report_panels(run_of("metalab.anil"))] == ["anil"]

"""The ``metalab`` command line: list plugins, train, inspect, resume and evaluate runs, start the dashboard.

``metalab --help`` stays fast: TensorFlow is imported only by the commands that train or evaluate.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from typer.core import TyperGroup


class _StoreErrors(TyperGroup):
    """Turns a run store that cannot be opened or read into ``error: ...`` and exit code 2, without a traceback."""

    def invoke(self, ctx: Any) -> Any:
        from metalab.core.store import StoreError

        try:
            return super().invoke(ctx)
        except StoreError as exc:
            _fail(escape(str(exc)))
        except sqlite3.DatabaseError as exc:
            _fail(escape(f"The run store could not be read ({exc}); `metalab doctor` checks it."))


app = typer.Typer(help="metalab: a workbench for meta-learning.", no_args_is_help=True, add_completion=False,
                  cls=_StoreErrors)
plugins_app = typer.Typer(help="Inspect the installed plugins.", no_args_is_help=True)
runs_app = typer.Typer(help="List, inspect, resume, cancel and delete runs.", no_args_is_help=True)
demo_app = typer.Typer(help="Showcase bundles for a shared (demo) dashboard.", no_args_is_help=True)
app.add_typer(plugins_app, name="plugins")
app.add_typer(runs_app, name="runs")
app.add_typer(demo_app, name="demo")

console = Console()
err = Console(stderr=True)


def _services():
    from metalab.core.services import Services

    return Services()


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _plugin_registry() -> tuple[Any, bool]:
    """The registry the ``plugins`` commands show, and whether strict mode is on.

    Every failure is kept even in strict mode (the command lists them, then exits 1), and the loader's own log line
    per failure is silenced: the command prints each failure once itself.
    """
    import logging

    from metalab.core.contract.manager import make_plugin_manager
    from metalab.core.settings import load_settings

    settings = load_settings()
    log = logging.getLogger("metalab.core.contract.manager")
    was_disabled, log.disabled = log.disabled, True
    try:
        registry = make_plugin_manager(settings=settings, strict=False)
    finally:
        log.disabled = was_disabled
    return registry, bool(settings.strict_plugins)


def _strict_exit(registry: Any, strict: bool) -> None:
    failed = len(registry.failures)
    if strict and failed:
        _fail(f"{failed} plugin(s) failed to load and strict mode is on (METALAB_STRICT_PLUGINS); fix or uninstall "
              f"them, or block them with METALAB_DISABLE_PLUGINS=<name>. Received: strict_plugins=True", code=1)


@plugins_app.command("list")
def plugins_list(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """Every algorithm, dataset and backbone, with its plugin, package and version; failed plugins with errors.

    In strict mode (METALAB_STRICT_PLUGINS=1) the listing is printed as usual and the exit code is 1 when any
    plugin failed.
    """
    registry, strict = _plugin_registry()
    rows = registry.describe()
    if as_json:
        keep = ("id", "kind", "title", "plugin", "package", "version", "status", "error", "seconds")
        _print_json([{k: row.get(k) for k in keep} for row in rows])
        _strict_exit(registry, strict)
        return
    table = Table(title="metalab plugins")
    for col in ("id", "kind", "title", "plugin", "package", "version", "status"):
        table.add_column(col)
    for row in rows:
        style = {"failed": "red", "disabled": "yellow"}.get(row.get("status"), "")
        table.add_row(*(escape(str(row.get(c) or "")) for c in ("id", "kind", "title", "plugin", "package", "version",
                                                                 "status")), style=style)
    console.print(table)
    for record in registry.failures:
        err.print(f"[red]plugin {escape(record.name)} failed:[/] {escape(record.error or '')}", highlight=False)
    from metalab.core.contract.manager import SLOW_PLUGIN_SECONDS, plugin_import_timeout

    slow = {row["plugin"]: row["seconds"] for row in rows if (row.get("seconds") or 0) >= SLOW_PLUGIN_SECONDS}
    for name, seconds in sorted(slow.items(), key=lambda item: -item[1]):
        err.print(f"[yellow]plugin {name} took {seconds:.1f} s to import and register[/] (budget "
                  f"{plugin_import_timeout():g} s, METALAB_PLUGIN_IMPORT_TIMEOUT)", highlight=False)
    _strict_exit(registry, strict)


def _spec_details(registry: Any, kind: str, spec: Any) -> dict[str, Any]:
    from metalab.core.contract.params import describe_params

    record = registry.plugin_of(spec.id, kind=kind)
    details: dict[str, Any] = {
        "id": spec.id, "kind": kind, "title": spec.title, "description": spec.description, "paper": spec.paper,
        "plugin": record.name, "package": record.package, "version": record.version,
    }
    if kind == "algorithm":
        details["task_kinds"] = list(spec.task_kinds)
    elif kind == "dataset":
        details.update(dataset_kind=spec.kind, default_backbone=spec.default_backbone,
                       episode_defaults=dict(spec.episode_defaults))
    else:
        details.update(input_kinds=list(spec.input_kinds), feature_maps=bool(getattr(spec, "feature_maps", False)))
    details["params"] = describe_params(spec.params)
    return details


@plugins_app.command("show")
def plugins_show(
    spec_id: str = typer.Argument(..., metavar="ID", help="An algorithm, dataset or backbone id."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """One algorithm, dataset or backbone: its description, paper and parameters (type, range, default, meaning)."""
    from metalab.core.contract.manager import UnknownPluginError

    registry, _ = _plugin_registry()
    found = [(kind, table[spec_id]) for kind, table in
             (("algorithm", registry.algorithms), ("dataset", registry.datasets), ("backbone", registry.backbones))
             if spec_id in table]
    if not found:
        try:
            registry.plugin_of(spec_id)
        except UnknownPluginError as exc:
            _fail(escape(str(exc)))
    items = [_spec_details(registry, kind, spec) for kind, spec in found]
    if as_json:
        _print_json(items[0] if len(items) == 1 else items)
        return
    for item in items:
        console.print(f"[bold]{escape(item['id'])}[/] ({item['kind']}): {escape(item['title'])}", highlight=False)
        origin = f"{item['package']} {item['version']}" if item["package"] else "registered directly"
        console.print(f"plugin {escape(item['plugin'])} ({escape(origin)})", highlight=False)
        if item["paper"]:
            console.print(f"paper: {escape(item['paper'])}", highlight=False)
        for key in ("task_kinds", "dataset_kind", "default_backbone", "episode_defaults", "input_kinds",
                    "feature_maps"):
            if key in item and item[key] not in (None, {}, []):
                value = ", ".join(item[key]) if isinstance(item[key], list) else item[key]
                console.print(f"{key.replace('_', ' ')}: {escape(str(value))}", highlight=False)
        console.print(escape(item["description"]), highlight=False)
        console.print(f"\n[bold]parameters[/] (metalab train --set name=value, or --set {item['kind']}.name=value "
                      "when another plugin has a parameter of that name):", highlight=False)
        if not item["params"]:
            console.print("  (none)")
        for row in item["params"]:
            facts = [row["type"], *([row["range"]] if row["range"] else []), f"default {json.dumps(row['default'])}"]
            console.print(f"  [bold]{escape(row['name'])}[/]: {escape(', '.join(facts))}", highlight=False)
            if row["description"]:
                console.print(Padding(escape(row["description"]), (0, 0, 0, 6)), highlight=False)
        if len(items) > 1:
            console.print()


@app.command()
def train(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset id (`metalab plugins list` lists them)."),
    algorithm: str = typer.Option(..., "--algorithm", "-a", help="Algorithm id (`metalab plugins list` lists them)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="Backbone id (default: the dataset's)."),
    set_: list[str] = typer.Option([], "--set", "-s", help="name=value; e.g. inner_lr=0.4, ways=20, dataset.split=minimal."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Meta-training steps."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    name: str = typer.Option("", "--name", help="A name for the run."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON at the end."),
) -> None:
    """Validate a config, train a run with a progress bar, evaluate it, and print its id."""
    from metalab.core.engine.config import ConfigError, parse_assignments

    services = _services()
    raw: dict[str, Any] = {"dataset": dataset, "algorithm": algorithm, "backbone": backbone}
    if steps is not None:
        raw["steps"] = steps
    if seed is not None:
        raw["seed"] = seed
    try:
        config = services.resolve(raw, parse_assignments(set_))
    except ConfigError as exc:
        _fail(str(exc))
    run_id = services.create_run(config, name=name)
    err.print(f"run [bold]{run_id}[/]: {config.algorithm} on {config.dataset} ({config.backbone}), {config.steps} steps")
    status = _train_with_progress(services, run_id, lambda progress: services.train(run_id, progress=progress))
    _report_end(services, run_id, status, as_json)


def _train_with_progress(services: Any, run_id: str, start: Any) -> str:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=err, transient=False,
    ) as bar:
        task = bar.add_task("training", total=None, info="")
        shown: dict[str, float] = {}

        def progress(step: int, total: int, metrics: dict[str, float]) -> None:
            shown.update({k: v for k, v in metrics.items() if k in ("train/loss", "train/accuracy", "val/accuracy", "val/mse")})
            info = "  ".join(f"{k.split('/')[0][0]}.{k.split('/')[1][:3]}={v:.3f}" for k, v in shown.items())
            bar.update(task, completed=step, total=total, info=info)

        return start(progress)


def _report_end(services: Any, run_id: str, status: str, as_json: bool) -> None:
    run = services.run(run_id)
    evals = services.evaluations(run_id)
    if as_json:
        _print_json({**run.summary(), "evaluation": evals[0] if evals else None, "error": run.error})
    else:
        if evals:
            console.print(_score_line(evals[0]))
        _print_panels(services, run_id)
        console.print(run_id)
    if status == "failed":
        err.print(f"[red]run {run_id} failed:[/] {run.error}\n{run.traceback or ''}", highlight=False)
        raise typer.Exit(1)
    if status == "cancelled":
        err.print(f"run {run_id} cancelled at step {run.step}; resume with: metalab runs resume {run_id}")


def _print_panels(services: Any, run_id: str) -> None:
    """Prints how batch norm was used and the text of the panels plugins add to the run's report."""
    from rich.markdown import Markdown

    bn = services.batch_norm_summary(services.run(run_id).config)
    if bn:
        console.print(bn, highlight=False)
    for panel in services.report_panels(run_id):
        if panel.get("error"):
            err.print(f"plugin {panel.get('plugin')} could not draw its panel {panel['title']!r}: {panel['error']}")
        elif panel.get("markdown"):
            console.print(f"[bold]{panel['title']}[/]")
            console.print(Markdown(panel["markdown"]))
        else:
            console.print(f"[bold]{panel['title']}[/]: a figure; see the dashboard or `metalab report {run_id} --html`")


def _score_line(result: dict[str, Any]) -> str:
    what = f"{result['benchmark']} accuracy" if result.get("benchmark") else "meta-test accuracy"
    if "accuracy" in result:
        line = f"{what} {100 * result['accuracy']:.2f}% ± {100 * result['ci95']:.2f} ({result['episodes']} episodes)"
    else:
        line = f"meta-test MSE {result['mse']:.4f} ± {result['ci95']:.4f} ({result['episodes']} episodes)"
    if result.get("curve"):
        line += "; after each inner step: " + ", ".join(f"{v:.3f}" for v in result["curve"])
    return line


@runs_app.command("list")
def runs_list(
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    dataset: Optional[str] = typer.Option(None, help="Only runs on this dataset."),
    algorithm: Optional[str] = typer.Option(None, help="Only runs of this algorithm."),
    status: Optional[str] = typer.Option(None, help="Only runs with this status."),
) -> None:
    """All runs, newest first."""
    from metalab.core.store import STATUSES

    if status and status not in STATUSES:
        _fail(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}. Received: status={status!r}")
    runs = _services().runs(dataset=dataset, algorithm=algorithm, status=status)
    if as_json:
        _print_json([r.summary() for r in runs])
        return
    table = Table(title=f"{len(runs)} runs")
    for col in ("id", "name", "dataset", "algorithm", "status", "step", "created"):
        table.add_column(col)
    for r in runs:
        s = r.summary()
        table.add_row(s["id"], s["name"], s["dataset"], s["algorithm"], s["status"], f"{s['step']}/{s['total_steps']}",
                      s["created"])
    console.print(table)


def _get_run(services: Any, run_id: str) -> Any:
    from metalab.core.store import RunNotFoundError

    try:
        return services.run(run_id)
    except RunNotFoundError as exc:
        _fail(str(exc))


@runs_app.command("show")
def runs_show(run_id: str = typer.Argument(..., metavar="RUN"),
              as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """One run: config, status, versions, latest metrics and evaluations."""
    services = _services()
    run = _get_run(services, run_id)
    metrics = services.metrics(run.id)
    latest = {name: points[-1][1] for name, points in metrics.items() if points}
    data = {**run.to_dict(), "latest_metrics": latest, "evaluations": services.evaluations(run.id),
            "checkpoint_warnings": services.checkpoint_warnings(run.id)}
    if as_json:
        _print_json(data)
        return
    console.print(f"[bold]{run.id}[/] {run.name}  status={run.status}  step={run.step}/{run.total_steps}")
    console.print(f"{run.algorithm} on {run.dataset} with {run.backbone}; device {run.device}")
    console.print_json(json.dumps(run.config))
    for name, value in sorted(latest.items()):
        console.print(f"  {name} = {value:.4f}")
    for ev in data["evaluations"][:1]:
        console.print(_score_line(ev))
    for event in data["checkpoint_warnings"][-1:]:
        err.print(f"[yellow]on {event.get('action')} the run went back to {event.get('restored')} (step "
                  f"{event.get('step')}):[/] " + "; ".join(map(str, event.get("warnings") or [])), highlight=False)
    _print_panels(services, run.id)
    if run.error:
        err.print(f"[red]{run.error}[/]\n{run.traceback or ''}", highlight=False)


@runs_app.command("resume")
def runs_resume(run_id: str = typer.Argument(..., metavar="RUN"),
                as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON at the end.")) -> None:
    """Continue an interrupted, cancelled or failed run from its last checkpoint."""
    services = _services()
    run = _get_run(services, run_id)
    if run.status in ("running", "queued"):
        _fail(f"Run {run.id} is {run.status}; only a finished run can be resumed. Received: run={run_id!r}")
    err.print(f"resuming run [bold]{run.id}[/] {_resume_point(services, run)}", highlight=False)
    status = _train_with_progress(services, run.id, lambda progress: services.resume(run.id, progress=progress))
    _report_end(services, run.id, status, as_json)


def _resume_point(services: Any, run: Any) -> str:
    """Where a resume restarts: the step of the checkpoint it will restore (not the last step the run logged)."""
    run_dir = services.run_dir(run.id)
    try:
        from metalab.core.engine.checkpoints import checkpoint_files, checkpoint_step
    except ImportError:  # pragma: no cover - a metalab from before the checkpoints module
        files = [run_dir / "checkpoint.npz"]
        step = _checkpoint_step(files[0]) if files[0].exists() else None
    else:
        files = list(checkpoint_files(run_dir))
        step = checkpoint_step(run_dir, total_steps=run.total_steps or None, config=run.config)
    if not any(path.exists() for path in files):
        return "from the start (it has no checkpoint)"
    if step is None:
        return "from its last checkpoint (none of its checkpoint files passed the checks; the run will say why)"
    later = f"; steps {step + 1}-{run.step} are trained again" if run.step > step else ""
    return f"from its checkpoint at step {step}{later}"


def _checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint file was taken at, read without unpickling; ``None`` if it does not say."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            if "step" in data.files:
                return int(data["step"])
            if "meta" in data.files:
                return int(json.loads(bytes(data["meta"]).decode())["step"])
    except Exception:  # noqa: BLE001 - a damaged checkpoint is the runner's to report; here only the message
        return None
    return None


@runs_app.command("cancel")
def runs_cancel(run_id: str = typer.Argument(..., metavar="RUN")) -> None:
    """Ask a running run to stop (it keeps a checkpoint and can be resumed)."""
    services = _services()
    run = _get_run(services, run_id)
    services.cancel(run.id)
    console.print(f"cancel requested for {run.id}")


@runs_app.command("delete")
def runs_delete(
    run_id: str = typer.Argument(..., metavar="RUN"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    force: bool = typer.Option(False, "--force", help="Delete a running run too: cancel it, wait for its worker to "
                               "stop (see --wait), then delete it."),
    wait: float = typer.Option(30.0, "--wait", min=0, help="With --force: seconds to wait for the worker to stop."),
) -> None:
    """Delete a run with its metrics and files (a running one only with --force)."""
    from metalab.core.store import RunActiveError

    services = _services()
    run = _get_run(services, run_id)
    active = run.status == "running" or (run.status == "queued" and run.pid)
    if active and not force:
        _fail(_still_running(run))
    if not yes and not typer.confirm(f"Delete run {run.id} ({run.algorithm} on {run.dataset})"
                                     + (f", which is {run.status}" if active else "") + "?"):
        raise typer.Exit(1)
    if active:
        err.print(f"cancelling run {run.id}; waiting up to {wait:g} s for its worker to stop", highlight=False)
    try:
        last = services.delete_run(run.id, force=force, wait_s=wait)
    except RunActiveError:  # it started between the look and the delete
        _fail(_still_running(services.run(run.id)))
    except PermissionError as exc:
        _fail(escape(str(exc)))
    if last.status in ("queued", "running") and active:
        err.print(f"run {run.id}'s worker did not stop within {wait:g} s; deleted it anyway (the worker ends at its "
                  "next write to the store)", highlight=False)
    console.print(f"deleted {run.id}")


def _still_running(run: Any) -> str:
    return (f"run {run.id} is {run.status}; cancel it first (metalab runs cancel {run.id}) and delete it once it "
            f"has stopped, or pass --force to cancel it, wait for its worker to stop and delete it. "
            f"Received: run={run.id!r}, status={run.status!r}")


@app.command()
def doctor(
    repair: bool = typer.Option(False, "--repair", help="Fix what is safe: delete orphan rows, move orphan run "
                                "folders to runs/.orphans/, record dead runs as interrupted, mend artifact rows."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Check the run store: SQLite integrity, orphan rows and folders, missing files, runs whose worker died.

    Exit code 0 when healthy (or everything found was repaired), 1 when problems remain.
    """
    from metalab.core.settings import load_settings
    from metalab.core.store import RunStore, StoreError

    try:
        settings = load_settings()
    except Exception as exc:  # noqa: BLE001 - a bad setting is the user's to fix: say which
        _fail(escape(f"the settings are invalid: {exc}"))
    try:
        report = RunStore(settings.store_path, settings.runs_dir).doctor(repair=repair)
    except StoreError as exc:
        report = {"store": str(settings.store_path), "schema_version": None, "healthy": False, "error": str(exc),
                  "checks": [{"check": "open", "status": "problem", "found": 1, "repaired": 0, "detail": str(exc),
                              "items": []}]}
    except sqlite3.DatabaseError as exc:
        report = {"store": str(settings.store_path), "schema_version": None, "healthy": False, "error": str(exc),
                  "checks": [{"check": "integrity", "status": "problem", "found": 1, "repaired": 0,
                              "detail": f"SQLite could not read the store: {exc}", "items": []}]}
    if as_json:
        _print_json(report)
    else:
        version = report.get("schema_version")
        table = Table(title=f"metalab doctor: {report['store']}"
                      + (f" (schema version {version})" if version is not None else ""))
        for col in ("check", "status", "found", "repaired", "detail"):
            table.add_column(col, overflow="fold")
        for check in report["checks"]:
            style = {"problem": "red", "repaired": "yellow"}.get(check["status"], "")
            table.add_row(check["check"], check["status"], str(check["found"]), str(check["repaired"]),
                          escape(check["detail"]), style=style)
        console.print(table)
        for check in report["checks"]:
            for item in check["items"]:
                console.print(f"  {check['check']}: {escape(item)}", highlight=False)
        console.print("healthy" if report["healthy"] else "problems remain"
                      + ("" if repair else "; `metalab doctor --repair` fixes what it safely can"), highlight=False)
    raise typer.Exit(0 if report["healthy"] else 1)


@app.command("eval")
def eval_(
    run_id: str = typer.Argument(..., metavar="RUN"),
    episodes: Optional[int] = typer.Option(None, "--episodes", "-n", min=2, help="Fixed test episodes (default: the run's, 600)."),
    benchmark: Optional[str] = typer.Option(
        None, "--benchmark", help="Score on one of the dataset's named task sets instead, e.g. lake20 (Omniglot's "
        "20 one-shot runs of Lake et al.)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Score a run on the fixed meta-test episodes: mean with 95% CI, and the adaptation curve."""
    services = _services()
    run = _get_run(services, run_id)
    split = f"benchmark:{benchmark}" if benchmark else "test"
    try:
        result = services.evaluate(run.id, episodes=episodes, split=split)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        _print_json({"run": run.id, **result})
    else:
        console.print(_score_line(result))


@app.command("predict")
def predict_(
    run_id: str = typer.Argument(..., metavar="RUN"),
    support: Path = typer.Option(..., "--support", help="Folder with one sub-folder per class, a few labelled images each."),
    query: Path = typer.Option(..., "--query", help="Folder of images to classify (or one image file)."),
    invert: Optional[bool] = typer.Option(
        None, "--invert/--no-invert", help="Invert grey levels of the images (default: as the run's dataset does)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Adapt a run to a labelled support set and classify query images, with per-class probabilities."""
    from metalab.core.engine.predict import predict

    services = _services()
    run = _get_run(services, run_id)
    try:
        results = predict(services.store, run.id, services.registry, support, query, settings=services.settings,
                          invert=invert)
    except (FileNotFoundError, ValueError) as exc:  # PredictionError and unknown plugins are ValueErrors
        _fail(str(exc))
    if as_json:
        _print_json({"run": run.id, "predictions": results})
        return
    classes = list(results[0]["probabilities"]) if results else []
    table = Table(title=f"run {run.id}: {len(results)} queries, {len(classes)} classes")
    table.add_column("file")
    table.add_column("predicted")
    table.add_column("p", justify="right")
    show = classes if len(classes) <= 8 else []
    for name in show:
        table.add_column(f"p({name})", justify="right")
    for row in results:
        probs = row["probabilities"]
        table.add_row(row["file"], row["predicted"], f"{probs[row['predicted']]:.3f}",
                      *(f"{probs[name]:.3f}" for name in show))
    console.print(table)


@app.command()
def report(
    run_id: str = typer.Argument(..., metavar="RUN"),
    html: Path = typer.Option(..., "--html", help="Write the self-contained HTML report to this file."),
) -> None:
    """Write a run's report (interactive figures, config, metrics, versions) as one offline HTML file."""
    services = _services()
    run = _get_run(services, run_id)
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(services.report_html(run.id), encoding="utf-8")
    console.print(f"wrote {html}")


@app.command()
def dashboard(
    port: int = typer.Option(8501, help="Port to serve on."),
    host: Optional[str] = typer.Option(
        None, help="Address to listen on. Default 127.0.0.1 (this machine only); give 0.0.0.0 or an interface's "
                   "address to let other machines reach it."),
    mode: Optional[str] = typer.Option(
        None, help="private (one trusted user; the default), demo (anyone with the link) or team (signed-in "
                   "users). Default: METALAB_MODE, else private."),
    headless: bool = typer.Option(True, help="Do not open a browser."),
) -> None:
    """Start the metalab dashboard (Streamlit)."""
    import os
    import signal
    import subprocess

    from metalab.core.settings import load_settings
    from metalab.core import __file__ as core_file

    env = dict(os.environ)
    if mode is not None:
        env["METALAB_MODE"] = mode
    try:
        settings = load_settings(**({"mode": mode} if mode else {}))
    except Exception as exc:  # noqa: BLE001 - a bad setting is the user's to fix: say which
        _fail(f"the dashboard's settings are invalid: {exc}")
    problem = _mode_problem(settings)
    if problem:
        _fail(problem)
    address = host or "127.0.0.1"
    if host is None:
        console.print(f"metalab dashboard ({settings.mode} mode) on http://127.0.0.1:{port} (this machine only; "
                      "--host 0.0.0.0 to listen on every interface)", highlight=False)
    else:
        console.print(f"metalab dashboard ({settings.mode} mode) listening on {host}:{port}: anyone who can reach "
                      "this address can open it" + (" and use everything (private mode: one trusted user)"
                                                     if settings.mode == "private" else ""), highlight=False)
    app_path = Path(core_file).resolve().parent.parent / "streamlit_app.py"
    if not app_path.exists():
        from importlib import resources

        app_path = Path(str(resources.files("metalab.dashboard") / "serve.py"))
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_path), "--server.port", str(port),
           "--server.address", address, "--server.headless", str(headless).lower(),
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
           # A served dashboard does not watch its source files: on a small host that is CPU the runs need.
           "--server.fileWatcherType", "none", "--server.runOnSave", "false"]
    if os.environ.get("METALAB_SECRETS"):
        # Streamlit reads exactly these secrets files (the [auth] section of team mode among them).
        cmd += ["--secrets.files", os.environ["METALAB_SECRETS"]]
    if settings.mode != "private":
        cmd += ["--server.maxUploadSize", str(int(settings.max_upload_mb)),
                "--server.enableXsrfProtection", "true", "--server.enableCORS", "true"]
    proc = subprocess.Popen(cmd, env=env)

    def stop(signum: int, frame: Any) -> None:
        # The server goes with this command: SIGTERM/SIGINT never leave it holding the port.
        proc.terminate()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    raise typer.Exit(0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code)


def _mode_problem(settings: Any) -> str | None:
    """Why the dashboard cannot start in its mode, or ``None``: team mode needs an OIDC provider in secrets."""
    if settings.mode != "team":
        return None
    import os

    import tomllib

    places = [Path(p) for p in os.environ.get("METALAB_SECRETS", "").split(os.pathsep) if p] or [
        Path.cwd() / ".streamlit" / "secrets.toml", Path.home() / ".streamlit" / "secrets.toml"]
    for place in places:
        try:
            auth = tomllib.loads(place.read_text(encoding="utf-8")).get("auth") or {}
        except (OSError, ValueError):
            continue
        missing = [k for k in ("redirect_uri", "cookie_secret") if not auth.get(k)]
        if not missing and (auth.get("server_metadata_url") or any(isinstance(v, dict) for v in auth.values())):
            return None
    return ("team mode signs users in with an OIDC provider: put an [auth] section (redirect_uri, cookie_secret, "
            "client_id, client_secret, server_metadata_url) in .streamlit/secrets.toml (see docs/deploy.md). "
            "Received: mode='team'")


@demo_app.command("pack")
def demo_pack(
    run_ids: list[str] = typer.Argument(..., metavar="RUN...", help="Completed runs to show."),
    out: Path = typer.Option(..., "--out", "-o", help="A new folder for the bundle."),
) -> None:
    """Write a read-only showcase bundle (store rows, reports, checkpoints) that a dashboard serves with
    METALAB_SHOWCASE_DIR=OUT (e.g. `metalab dashboard --mode demo`)."""
    from metalab.core.services.showcase import pack
    from metalab.core.store import RunNotFoundError

    services = _services()
    try:
        folder = pack(services.store, run_ids, out)
    except (ValueError, RunNotFoundError) as exc:
        _fail(str(exc))
    console.print(f"wrote {folder} ({len(run_ids)} runs); serve it with METALAB_SHOWCASE_DIR={folder} "
                  "metalab dashboard --mode demo", highlight=False, soft_wrap=True)


@app.command("new-plugin")
def new_plugin(
    name: str = typer.Argument(..., help="Short name, e.g. myalgo: package metalab-myalgo, spec id metalab_myalgo.myalgo."),
    kind: str = typer.Option("algorithm", "--kind", "-k", help="algorithm (first-order MAML to build on) or dataset."),
    dest: Path = typer.Option(Path("."), "--dest", help="Folder to write the package folder metalab-NAME/ into."),
) -> None:
    """Write a ready-to-install plugin package: pyproject with the entry point, one spec, a conformance test, a README."""
    from metalab.core.authoring.scaffold import new_plugin as write_plugin
    from metalab.core.authoring.scaffold import plugin_names

    try:
        root = write_plugin(name, kind=kind, dest=dest)
    except (ValueError, FileExistsError) as exc:
        _fail(str(exc))
    names = plugin_names(name)
    console.print(f"wrote {root} ({kind} {names.spec_id})")
    console.print(f"next: pip install -e {root} && metalab plugins list && (cd {root} && pytest)", highlight=False,
                  soft_wrap=True)


def main() -> None:
    """Console-script entry point.

    Strict plugin mode's refusal (plugins failed to load) ends any command with its one message and exit code 1:
    the failures are the user's to fix, not a fault of metalab's to show a traceback for.
    """
    from metalab.core.contract.manager import PluginLoadError

    try:
        app()
    except PluginLoadError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

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
from metalab.core.sweeps.cli import sweep_app  # noqa: E402 - registered beside the other command groups

app.add_typer(sweep_app, name="sweep")

console = Console()
err = Console(stderr=True)


@app.callback()
def _options(
    verbose: bool = typer.Option(False, "--verbose", help="Show TensorFlow's start-up log lines and warnings, "
                                 "here and in the worker processes this command starts (silenced otherwise)."),
) -> None:
    # Before any command imports TensorFlow; TF_CPP_MIN_LOG_LEVEL and TF_ENABLE_ONEDNN_OPTS set by the user are kept.
    from metalab.core.engine.devices import configure_cpu_kernels
    from metalab.core.worker import quiet_backend_logs

    configure_cpu_kernels()
    quiet_backend_logs(verbose=verbose)


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
    hosts: Optional[str] = typer.Option(
        None, "--hosts", help="One run across processes or hosts: every process's host:port, comma-separated, the "
                              "chief first, the same on every process (default: METALAB_HOSTS)."),
    host_index: Optional[str] = typer.Option(
        None, "--host-index", help="This process's place in --hosts; 0, the chief, records the run "
                                   "(default: METALAB_HOST_INDEX, else 0)."),
) -> None:
    """Validate a config, train a run with a progress bar, evaluate it, and print its id.

    With --hosts, start the same command on every host, each with its --host-index: the chief (0) records the run
    and prints its id; the others train alongside it and record nothing.
    """
    from metalab.core.engine.config import ConfigError, parse_assignments
    from metalab.core.engine.parallel import parse_hosts

    services = _services()
    try:
        cluster = parse_hosts(services.settings.hosts if hosts is None else hosts,
                              services.settings.host_index if host_index is None else host_index)
    except ConfigError as exc:
        _fail(str(exc))
    raw: dict[str, Any] = {"dataset": dataset, "algorithm": algorithm, "backbone": backbone}
    if steps is not None:
        raw["steps"] = steps
    if seed is not None:
        raw["seed"] = seed
    try:
        # The dataset's recommended values fill what is not given: the Train page starts from the same ones.
        config = services.resolve(raw, parse_assignments(set_), recommended=True)
    except ConfigError as exc:
        _fail(str(exc))
    for warning in services.config_warnings(config):
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if cluster is not None and not cluster.chief:
        _follow(services, config, cluster)
        return
    run_id = services.create_run(config, name=name)
    err.print(f"run [bold]{run_id}[/]: {config.algorithm} on {config.dataset} ({config.backbone}), "
              f"{config.steps} steps; validates every {config.val_every}, checkpoints every "
              f"{config.checkpoint_every}, logs every {config.log_every}", highlight=False)
    if cluster is not None:
        err.print(f"across {len(cluster.addresses)} processes ({', '.join(cluster.addresses)}); this one is the "
                  f"chief and records the run", highlight=False)
    status = _train_with_progress(
        services, run_id, lambda progress: services.train(run_id, progress=progress, hosts=cluster))
    _report_end(services, run_id, status, as_json)


def _follow(services: Any, config: Any, cluster: Any) -> None:
    """``metalab train --host-index N`` (N > 0): trains beside the chief, which records the run."""
    from metalab.core.engine.config import ConfigError

    chief = cluster.addresses[0]
    err.print(f"process {cluster.index} of {len(cluster.addresses)} ({cluster.addresses[cluster.index]}) of a run "
              f"across hosts: {config.algorithm} on {config.dataset}, {config.steps} steps; the chief {chief} "
              f"records the run", highlight=False)
    try:
        steps = _train_with_progress(services, "", lambda progress: services.follow(config, cluster,
                                                                                     progress=progress))
    except ConfigError as exc:
        _fail(str(exc))
    err.print(f"trained {steps} steps with the chief {chief}; its run store holds the run", highlight=False)


#: The metrics the progress bar shows, in this order.
_PROGRESS_METRICS = ("train/loss", "train/accuracy", "val/accuracy", "val/mse")


def progress_label(metrics: dict[str, float]) -> str:
    """The progress bar's metrics in words, e.g. ``"train loss 0.123  val accuracy 0.810"``."""
    shown = [name for name in _PROGRESS_METRICS if name in metrics]
    return "  ".join(f"{name.replace('/', ' ')} {metrics[name]:.3f}" for name in shown)


def bar_view(current: dict[str, Any] | None, steps: dict[str, int], shown: dict[str, float]) -> dict[str, Any]:
    """What the progress bar shows for the run's current phase (``phase_summary``'s ``current``): the training
    steps, or another phase by name with its own count (a meta-test's episodes done of the total) when it has one."""
    if not current or current["name"] == "training":
        return {"description": "training", "completed": steps.get("step", 0), "total": steps.get("total"),
                "info": progress_label(shown)}
    if current.get("total"):
        return {"description": current["name"], "completed": current.get("done") or 0, "total": current["total"],
                "info": f"{current.get('detail') or ''} episodes".strip()}
    return {"description": current["name"], "completed": 0, "total": None, "info": ""}


def _train_with_progress(services: Any, run_id: str, start: Any) -> str:
    """Runs ``start(progress)`` under a progress bar: the training steps, and between them the phase the run is in
    (loading, compiling, validating, meta-testing with its episodes), read from the store twice a second."""
    import threading

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=err, transient=False,
    ) as bar:
        task = bar.add_task("starting", total=None, info="")
        shown: dict[str, float] = {}
        steps: dict[str, int] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def progress(step: int, total: int, metrics: dict[str, float]) -> None:
            shown.update({k: v for k, v in metrics.items() if k in _PROGRESS_METRICS})
            with lock:
                steps.update(step=step, total=total)
                bar.update(task, **bar_view(None, steps, shown))

        def watch() -> None:
            while not stop.wait(0.5):
                try:
                    current = services.run_phases(run_id)["current"]
                except Exception:  # noqa: BLE001 - the bar is a view; the run records its own outcome
                    continue
                if current:
                    with lock:
                        bar.update(task, **bar_view(current, steps, shown))

        watcher = threading.Thread(target=watch, name="metalab-progress", daemon=True)
        if run_id:  # a process following a run across hosts records none: only its steps to show
            watcher.start()
        try:
            return start(progress)
        finally:
            stop.set()
            if watcher.is_alive():
                watcher.join(timeout=5)
            if steps:  # the bar left on screen ends on the training it counted
                bar.update(task, **bar_view(None, steps, shown))


def _report_end(services: Any, run_id: str, status: str, as_json: bool) -> None:
    from metalab.core.reports.scores import headline

    run = services.run(run_id)
    top = headline(services.evaluations(run_id), run.config)
    if as_json:
        _print_json({**run.summary(), "evaluation": top, "error": run.error})
    else:
        if top:
            console.print(_score_line(top))
        _print_panels(services, run_id)
        # The progress bar's clock ran through loading and meta-testing too: say where the time went.
        times = services.run_phases(run_id)["line"]
        if times:
            err.print(f"time: {times}", highlight=False, soft_wrap=True)
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
    elif "return" in result:
        line = (f"meta-test average return {result['return']:.2f} ± {result['ci95']:.2f} after adapting "
                f"({result['episodes']} test tasks; {result['return_before']:.2f} before)")
    else:
        line = f"meta-test MSE {result['mse']:.4f} ± {result['ci95']:.4f} ({result['episodes']} episodes)"
    if result.get("curve"):
        steps = "adaptation step" if "return" in result else "inner step"
        line += f"; after each {steps}: " + ", ".join(f"{v:.3f}" for v in result["curve"])
    if str(result.get("leak_check", "")).startswith("not checked"):
        line += f"\nnote: train/benchmark class overlap {result['leak_check']}"
    return line


#: What ``metalab runs list`` shows by default: it fits 80 columns, with an id ``runs show`` accepts and the score.
_LIST_COLUMNS = ("id", "name", "algorithm", "dataset", "status", "score")


def _list_cell(row: dict[str, Any], column: str) -> str:
    """One cell of ``runs list``: ``id`` is the short id, ``score`` the headline with its 95% CI."""
    if column == "id":
        return row["short_id"]
    if column == "score":
        if row["score"] is None:
            return "-"
        ci = f" ± {row['ci95']:.2g}" if row["ci95"] is not None else ""
        if row["metric"] == "average return":
            return f"{row['score']:.4g}{ci} return"
        return f"{row['score']:.2f}%{ci}" if row["metric"] == "accuracy (%)" else f"{row['score']:.4g}{ci} MSE"
    value = row.get(column)
    if column == "created" and value is not None:
        from datetime import datetime

        return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M")
    if column == "progress" and value is not None:
        return f"{value:.0%}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


@runs_app.command("list")
def runs_list(
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    dataset: Optional[str] = typer.Option(None, help="Only runs on this dataset."),
    algorithm: Optional[str] = typer.Option(None, help="Only runs of this algorithm."),
    status: Optional[str] = typer.Option(None, help="Only runs with this status."),
    columns: Optional[str] = typer.Option(
        None, "--columns", "-c", metavar="FIELDS",
        help=f"Comma-separated fields to show (default {','.join(_LIST_COLUMNS)}); +FIELD adds one to the default. "
             "Any run field (tags, notes, protocol, created), parameter (inner_lr, shots) or metric (val/accuracy)."),
    filter_: Optional[str] = typer.Option(
        None, "--filter", "-f", metavar="EXPR", help="Only runs matching, e.g. 'score > 80 and inner_lr = 0.01'."),
    sort: Optional[str] = typer.Option(None, help="Sort by this field; -FIELD sorts descending (default: newest "
                                                  "first)."),
) -> None:
    """All runs, newest first: a short id that `runs show` accepts, the headline score, and --columns to choose."""
    from metalab.core.reports.runs_table import QueryError, parse_query, resolve_field, sort_rows
    from metalab.core.store import STATUSES

    if status and status not in STATUSES:
        _fail(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}. Received: status={status!r}")
    services = _services()
    table = services.runs_table(dataset=dataset, algorithm=algorithm, status=status)
    rows = table.rows
    try:
        rows = parse_query(filter_).apply(rows, table.fields)
        if sort:
            rows = sort_rows(rows, resolve_field(sort.lstrip("-"), table.fields), descending=sort.startswith("-"))
        wanted = [c.strip() for c in (columns or "").split(",") if c.strip()]
        if not wanted or all(c.startswith("+") for c in wanted):
            wanted = [*_LIST_COLUMNS, *wanted]
        shown = [c if c.lstrip("+") in ("id", "score") else resolve_field(c.lstrip("+"), table.fields)
                 for c in wanted]
    except QueryError as exc:
        _fail(escape(str(exc)))
    if as_json:
        keep = ("short_id", "score", "ci95", "metric", "protocol")
        by_id = {r.id: r for r in services.runs(dataset=dataset, algorithm=algorithm, status=status)}
        _print_json([{**by_id[r["id"]].summary(), **{k: r[k] for k in keep}} for r in rows if r["id"] in by_id])
        return
    shown = list(dict.fromkeys(c.lstrip("+") for c in shown))
    cells = [[_list_cell(r, c) for c in shown] for r in rows]
    headers = ["score ± CI" if c == "score" else c.split(".", 1)[1] if "." in c and "/" not in c
               and sum(o.split(".", 1)[-1] == c.split(".", 1)[1] for o in shown) == 1 else c for c in shown]
    widths = _fit_widths(shown, headers, cells, console.width)
    for i, column in enumerate(shown):
        # A plugin id column too narrow for its ids shows every id without its "plugin." prefix, alike.
        if column in ("algorithm", "dataset", "backbone") and any(len(line[i]) > widths[i] for line in cells):
            for line in cells:
                line[i] = line[i].split(".", 1)[-1]
            widths = _fit_widths(shown, headers, cells, console.width)
    from rich.text import Text

    console.print(Text(_list_line(headers, widths).rstrip(), style="bold"), soft_wrap=True)
    for line in cells:
        console.print(_list_line(line, widths).rstrip(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"{len(rows)} run{'s' if len(rows) != 1 else ''}" + (f" of {len(table.rows)}" if filter_ else ""),
                  style="dim", highlight=False)


#: Columns ``runs list`` never shortens: the id users copy, the score they came for, and the status.
_KEEP_WHOLE = ("id", "score", "status")


def _fit_widths(columns: list[str], headers: list[str], cells: list[list[str]], width: int) -> list[int]:
    """Column widths that fit ``width`` characters (two between columns): the widest shortenable column gives a
    character at a time, down to 6; the id, score, status and numbers are never shortened."""
    widths = [max([len(h), *(len(line[i]) for line in cells)]) for i, h in enumerate(headers)]
    # A column of numbers keeps its numbers whole; only its header may be shortened.
    floor = [max([6, *(len(line[i]) for line in cells)]) if all(_is_number(line[i]) for line in cells) else 6
             for i in range(len(columns))]
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    while excess > 0:
        flexible = [i for i, c in enumerate(columns) if c not in _KEEP_WHOLE and widths[i] > floor[i]]
        if not flexible:
            break
        widest = max(flexible, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    return widths


def _is_number(text: str) -> bool:
    try:
        float(text or "0")
    except ValueError:
        return False
    return True


def _list_line(cells: list[str], widths: list[int]) -> str:
    """One line of ``runs list``: each cell in its width, a cell too long for it ending in ``…``."""
    return "  ".join((c if len(c) <= w else c[: max(w - 1, 0)] + "…").ljust(w) for c, w in zip(cells, widths))


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
    from metalab.core.reports.scores import headline, protocol_label

    evaluations = services.evaluations(run.id)
    data = {**run.to_dict(), "latest_metrics": latest, "evaluations": evaluations,
            "headline": headline(evaluations, run.config), "checkpoint_warnings": services.checkpoint_warnings(run.id)}
    if as_json:
        _print_json(data)
        return
    console.print(f"[bold]{run.id}[/] {run.name}  status={run.status}  step={run.step}/{run.total_steps}")
    console.print(f"{run.algorithm} on {run.dataset} with {run.backbone}; device {run.device}")
    console.print_json(json.dumps(run.config))
    for name, value in sorted(latest.items()):
        console.print(f"  {name} = {value:.4f}")
    if data["headline"]:
        console.print("headline: " + _score_line(data["headline"]))
    for ev in evaluations:
        if ev is not data["headline"]:
            console.print(f"  also {protocol_label(ev)}: " + _score_line(ev).split(" (")[0], highlight=False)
    for event in data["checkpoint_warnings"][-1:]:
        err.print(f"[yellow]on {event.get('action')} the run went back to {event.get('restored')} (step "
                  f"{event.get('step')}):[/] " + "; ".join(map(str, event.get("warnings") or [])), highlight=False)
    _print_panels(services, run.id)
    if run.error:
        err.print(f"[red]{run.error}[/]\n{run.traceback or ''}", highlight=False)


@runs_app.command("export")
def runs_export(
    run_ids: list[str] = typer.Argument(None, metavar="RUN...", help="Runs to export (ids or unique prefixes)."),
    mlflow: str = typer.Option(..., "--mlflow", help="The MLflow tracking URI, e.g. http://mlflow.example:5000, "
                               "sqlite:///mlflow.db or file:./mlruns."),
    experiment: str = typer.Option("metalab", "--experiment", help="The MLflow experiment (created when missing)."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Also every run with this tag (e.g. sweep:ID for a sweep)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Copy runs (settings, metrics, scores, tags, notes, config) to an MLflow tracking store."""
    from metalab.core.reports.mlflow_export import ExportError, export_runs
    from metalab.core.store import RunNotFoundError

    services = _services()
    wanted = list(run_ids or [])
    if tag:
        wanted += [r.id for r in services.runs() if tag in r.tags and r.id not in wanted]
    if not wanted:
        _fail("Name the runs to export, or --tag TAG." + (f" No run has the tag. Received: --tag {tag!r}" if tag else ""))
    try:
        results = export_runs(services, wanted, mlflow, experiment)
    except (ExportError, RunNotFoundError) as exc:
        _fail(str(exc))
    if as_json:
        _print_json(results)
        return
    for row in results:
        typer.echo(f"{row['run']}: {row['status']} as MLflow run {row['mlflow_run']}"
                   + (f" ({row['params']} parameters, {row['metrics']} metric points)" if row["status"] == "exported"
                      else ""))


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
        from metalab.core.reports.scores import CANONICAL_SEED, canonical_protocol, is_canonical

        if split == "test" and not is_canonical({"split": split, "episodes": result["episodes"],
                                                 "seed": CANONICAL_SEED}, run.config):
            episodes = canonical_protocol(run.config)["episodes"]
            err.print(f"kept beside the run's headline score, which stays the canonical protocol's ({episodes} "
                      f"fixed test episodes); `metalab runs show {run.id}` lists both", highlight=False)


@app.command("predict")
def predict_(
    run_id: str = typer.Argument(..., metavar="RUN"),
    support: Optional[Path] = typer.Option(
        None, "--support", help="Folder with one sub-folder per class, a few labelled images each. For a text run: a "
        "folder with one <class>.txt per class (one example a line), or one .txt file of 'class: example' lines."),
    query: Optional[Path] = typer.Option(
        None, "--query", help="Folder of images to classify (or one image file). For a text run: a .txt file with "
        "one text a line (or a folder of them)."),
    task: Optional[int] = typer.Option(
        None, "--task", help="For a run on an environment (meta-RL): the index of the test task to adapt to (0 to "
        "test_episodes - 1, as its meta-test numbered them)."),
    steps: Optional[int] = typer.Option(
        None, "--steps", help="For an environment run: adaptation steps (default: the algorithm's eval_steps)."),
    invert: Optional[bool] = typer.Option(
        None, "--invert/--no-invert", help="Invert grey levels of the images (default: as the run's dataset does)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Adapt a run to a labelled support set and classify query images (or texts, for a text run), with per-class
    probabilities; or adapt an environment run to one of its test tasks and show the return after each step."""
    from metalab.core.engine.predict import adapt_to_task, predict

    services = _services()
    run = _get_run(services, run_id)
    spec = services.registry.datasets.get(run.config.get("dataset") or "")
    if spec is not None and spec.kind == "environment":
        if support is not None or query is not None:
            _fail(f"Run {run.id} is on the environment {spec.id!r}: it adapts to a test task (--task N), not to a "
                  f"support set. Received: --support={support}, --query={query}")
        try:
            result = adapt_to_task(services.store, run.id, services.registry, 0 if task is None else task,
                                   settings=services.settings, steps=steps)
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
        if as_json:
            _print_json(result)
            return
        table = Table(title=f"run {run.id}: test task {result['index']} of {result['tasks']}, {result['task']}")
        table.add_column("adaptation steps", justify="right")
        table.add_column("average return", justify="right")
        for k, value in enumerate(result["returns"]):
            table.add_row(str(k), f"{value:.3f}")
        console.print(table)
        return
    if support is None or query is None or task is not None:
        _fail(f"Run {run.id} classifies: give --support and --query (--task is for environment runs). "
              f"Received: --support={support}, --query={query}, --task={task}")
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
    texts = any("text" in row for row in results)
    table.add_column("file:line" if texts else "file", no_wrap=True)
    if texts:
        table.add_column("text", max_width=48, overflow="ellipsis")
    table.add_column("predicted")
    table.add_column("p", justify="right")
    show = classes if len(classes) <= 8 else []
    for name in show:
        table.add_column(f"p({name})", justify="right")
    for row in results:
        probs = row["probabilities"]
        table.add_row(row["file"], *([row.get("text", "")] if texts else []), row["predicted"],
                      f"{probs[row['predicted']]:.3f}",
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
           "--server.address", address, "--server.headless", str(headless).lower(), *SERVE_OPTIONS]
    if os.environ.get("METALAB_SECRETS"):
        # Streamlit reads exactly these secrets files (the [auth] section of team mode among them).
        cmd += ["--secrets.files", os.environ["METALAB_SECRETS"]]
    if settings.mode != "private":
        cmd += ["--server.maxUploadSize", str(int(settings.max_upload_mb)),
                "--server.enableXsrfProtection", "true", "--server.enableCORS", "true"]
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_dies_with(os.getpid()))
    code = _serve_until_stopped(proc)
    raise typer.Exit(0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code)


#: The Streamlit options of every served dashboard (``metalab dashboard``, and ``benchmarks/ui.py`` times the same).
#: No source-file watcher: besides the CPU a small host's runs need, it took about 1 s of every new browser session
#: before the page's script started (a warm page 1.5 s with it, 0.45 s without, on this project's 2-core host).
SERVE_OPTIONS = ("--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
                 "--server.fileWatcherType", "none", "--server.runOnSave", "false")

#: Seconds the dashboard's Streamlit server has to stop after SIGTERM before it is killed.
DASHBOARD_STOP_SECONDS = 10.0


class _Stop(Exception):
    """Raised by the dashboard command's signal handler: SIGTERM, SIGINT or SIGHUP reached the command."""


def _dies_with(parent: int) -> Any:
    """A ``preexec_fn`` that has Linux send the server SIGTERM when the command that started it dies, even by
    SIGKILL, which no handler sees (``None`` elsewhere: there the signal handlers alone stop the server)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import os
    import signal

    try:
        prctl = ctypes.CDLL(None).prctl  # loaded here: the child only calls it, between fork and exec
    except (OSError, AttributeError):
        return None

    def arrange() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the command died before the line above: no signal will come
            os._exit(1)

    return arrange


def _serve_until_stopped(proc: Any, grace_s: float = DASHBOARD_STOP_SECONDS) -> int:
    """Waits for the server process; SIGTERM, SIGINT or SIGHUP to this command stop it first (forwarded as SIGTERM,
    then SIGKILL after ``grace_s``), so the server never outlives the command holding the port.

    Returns:
        The server's exit code (0 when it was stopped by a signal to this command).
    """
    import signal
    import subprocess

    def stop(signum: int, frame: Any) -> None:
        raise _Stop(signum)

    def force(signum: int, frame: Any) -> None:  # a second Ctrl-C while stopping: no more waiting
        proc.kill()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        try:
            return proc.wait()
        except _Stop:
            for sig in previous:
                signal.signal(sig, force)
            proc.terminate()
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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

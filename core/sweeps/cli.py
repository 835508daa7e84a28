"""``metalab sweep``: run a search over run and plugin fields on Ray Tune, list sweeps, show one, resume one.

Ray is imported only when a sweep runs, so ``metalab --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

sweep_app = typer.Typer(
    help="Sweeps on Ray Tune: every trial an ordinary run (tagged sweep:<id>). `metalab sweep -d DATASET -a "
         "ALGORITHM --grid inner_lr=0.01,0.1 --seeds 0-4` runs one; list, show and resume manage them.",
    invoke_without_command=True,
)
console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    raise typer.Exit(code)


def _services() -> Any:
    from metalab.core.services import Services

    return Services()


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Sends what Ray and Ray Tune write on this process's standard output to its standard error meanwhile (their
    tables would otherwise mix with ``--json``); Python's ``sys.stdout`` and file descriptor 1 alike."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no descriptor 1 (an embedding host): Python's stream alone
        saved = None
    try:
        if saved is not None:
            os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _say(text: str) -> None:
    err.print(escape(text), highlight=False)


@sweep_app.callback()
def sweep(
    ctx: typer.Context,
    file: Optional[Path] = typer.Option(None, "--file", "-F", help="A sweep file (.toml or .yaml): dataset, "
                                        "algorithm, steps, set, grid, seeds, choice, uniform, loguniform, metric, "
                                        "mode, trials, ..."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset id."),
    algorithm: Optional[str] = typer.Option(None, "--algorithm", "-a", help="Algorithm id."),
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="Backbone id (default: the dataset's)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Meta-training steps of every trial."),
    set_: list[str] = typer.Option([], "--set", "-s", help="A fixed name=value, as `metalab train --set`."),
    grid: list[str] = typer.Option([], "--grid", help="name=a,b,c: every value, crossed with the other grids."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds as a grid dimension: 0-4 or 0,3,7."),
    choice: list[str] = typer.Option([], "--choice", help="name=a,b,c: one value drawn for each trial."),
    uniform: list[str] = typer.Option([], "--uniform", help="name=low,high: drawn uniformly for each trial."),
    loguniform: list[str] = typer.Option([], "--loguniform", help="name=low,high: drawn log-uniformly."),
    metric: Optional[str] = typer.Option(None, "--metric", help="The objective (default val_accuracy; val_mse for "
                                         "regression); any logged metric, as val_accuracy or val/accuracy."),
    mode: Optional[str] = typer.Option(None, "--mode", help="max (default) or min."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Total trials (default: each grid point once; 10 "
                                         "with drawn dimensions). Trial k takes grid point k mod the grid's size."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", help="Trials at once (default: as the "
                                                 "cluster's CPUs allow)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="asha (default: stop trials that trail at "
                                            "each rung) or none."),
    grace_steps: Optional[int] = typer.Option(None, "--grace-steps", help="Steps before ASHA may stop a trial "
                                              "(default: a quarter of the steps)."),
    cpus_per_trial: Optional[float] = typer.Option(None, "--cpus-per-trial", help="CPUs each trial reserves (1)."),
    address: Optional[str] = typer.Option(None, "--address", help="Join a Ray cluster: auto, or ray://host:10001. "
                                          "Default: start a local one sized to this machine."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs of the local Ray (default: all)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Where trial checkpoints go: a path or URI "
                                          "every node reaches (default: METALAB_HOME/sweeps/<id>/)."),
    as_json: bool = typer.Option(False, "--json", help="Print the sweep's record as JSON at the end."),
) -> None:
    """Run a sweep: every grid point is validated first; trials train on Ray Tune as ordinary runs."""
    if ctx.invoked_subcommand is not None:
        return
    from metalab.core.engine.config import ConfigError, parse_assignments
    from metalab.core.sweeps import SweepError, read_space_file, spec_from_sources, start_sweep

    try:
        data = read_space_file(file) if file else None
        spec = spec_from_sources(
            data, dataset=dataset, algorithm=algorithm, backbone=backbone, steps=steps,
            assignments=parse_assignments(set_), grid=grid, choice=choice, uniform=uniform, loguniform=loguniform,
            seeds=seeds, metric=metric, mode=mode, trials=trials, max_concurrent=max_concurrent,
            scheduler=scheduler, grace_steps=grace_steps, cpus_per_trial=cpus_per_trial)
    except (SweepError, ConfigError) as exc:
        _fail(str(exc))
    if not file and not spec.raw.get("dataset") and not spec.grid and not spec.random:
        console.print(ctx.get_help())
        raise typer.Exit(0)
    if address and not storage:
        err.print("[yellow]warning:[/] on a cluster of several machines give --storage a path or URI every node "
                  "reaches; the default is a folder on this one", highlight=False)
    services = _services()
    try:
        with _stdout_to_stderr():
            book = start_sweep(services, spec, address=address, num_cpus=num_cpus, storage=storage, on_event=_say)
    except SweepError as exc:
        _fail(str(exc))
    _summary(book, as_json)


@sweep_app.command("resume")
def sweep_resume(
    sweep_id: str = typer.Argument(..., metavar="SWEEP"),
    trials: Optional[int] = typer.Option(None, "--trials", help="Raise the budget to this many trials."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster (default: the sweep's, else local)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs of the local Ray (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the sweep's record as JSON at the end."),
) -> None:
    """Run the trials of a sweep that never ended (from their checkpoints); finished trials are not run again."""
    from metalab.core.sweeps import SweepError, resume_sweep

    try:
        with _stdout_to_stderr():
            book = resume_sweep(_services(), sweep_id, trials=trials, address=address, num_cpus=num_cpus,
                                on_event=_say)
    except SweepError as exc:
        _fail(str(exc))
    _summary(book, as_json)


@sweep_app.command("list")
def sweep_list(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """Every sweep, newest first: its status, trials by state, and its best trial."""
    from metalab.core.settings import load_settings
    from metalab.core.sweeps import SweepBook

    books = SweepBook.all(load_settings().home)
    rows = []
    for book in books:
        best = book.best()
        rows.append({"id": book.id, "status": book.state, "dataset": book.spec.raw.get("dataset"),
                     "algorithm": book.spec.raw.get("algorithm"), "trials": book.total, "states": book.counts(),
                     "metric": book.spec.metric, "mode": book.spec.mode,
                     "best": None if best is None else {**best[1], "slot": best[0]}})
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    table = Table(title="metalab sweeps")
    for col in ("id", "status", "dataset", "algorithm", "trials", "objective", "best", "best run"):
        table.add_column(col)
    for row in rows:
        states = ", ".join(f"{n} {s}" for s, n in sorted(row["states"].items())) or "none started"
        best = row["best"]
        table.add_row(row["id"], row["status"], str(row["dataset"] or ""), str(row["algorithm"] or ""),
                      f"{row['trials']} ({states})", f"{row['metric']} ({row['mode']})",
                      "-" if best is None else f"{best['objective']:.4g}", "-" if best is None else best["run"])
    console.print(table)


@sweep_app.command("show")
def sweep_show(sweep_id: str = typer.Argument(..., metavar="SWEEP"),
               as_json: bool = typer.Option(False, "--json", help="Print the sweep's record as JSON.")) -> None:
    """One sweep: its space, objective and budget, and its trials ranked by the objective."""
    from metalab.core.settings import load_settings
    from metalab.core.sweeps import SweepBook, SweepError

    try:
        book = SweepBook.load(load_settings().home, sweep_id)
    except SweepError as exc:
        _fail(str(exc))
    _summary(book, as_json)


def _summary(book: Any, as_json: bool) -> None:
    if as_json:
        best = book.best()
        sys.stdout.write(json.dumps({**book.to_dict(), "best": None if best is None else {**best[1], "slot": best[0]}},
                                    indent=2, default=str) + "\n")
        return
    spec = book.spec
    console.print(f"[bold]{book.id}[/] {book.state}: {spec.raw.get('algorithm', '')} on {spec.raw.get('dataset', '')}"
                  f", {book.total} trials, objective {spec.metric} ({spec.mode}), scheduler {spec.scheduler}",
                  highlight=False)
    table = Table()
    for col in ("rank", "trial", "state", spec.metric, "step", "run", "values"):
        table.add_column(col)
    for rank, (slot, entry) in enumerate(book.ranked(), 1):
        value = entry.get("objective")
        table.add_row(str(rank), str(slot), entry.get("state", ""), "-" if value is None else f"{value:.4g}",
                      str(entry.get("step", "")), entry.get("run", ""),
                      escape(", ".join(f"{k}={json.dumps(v)}" for k, v in (entry.get("params") or {}).items())))
    console.print(table)
    pending = book.pending_slots()
    if pending and book.state != "running":
        console.print(f"{len(pending)} trial(s) not finished; continue with: metalab sweep resume {book.id}",
                      highlight=False)
    best = book.best()
    if best:
        console.print(f"best: trial {best[0]}, run {best[1]['run']}, {spec.metric} {best[1]['objective']:.4g}",
                      highlight=False)

"""Reruns a named figure of benchmarks/RESULTS.md and prints the old and the new value with their 95% intervals.

The figures are registered in ``benchmarks/figures.json``: each with the exact command that produced it, the
commit, the training steps, the seed, the machine, the value with its 95% interval, and the date. This script runs
the command (with this interpreter), picks the figure from the ``RESULT`` lines it prints, and says whether the two
intervals overlap. Figures produced by the same command are printed too.

Example:
    .venv/bin/python benchmarks/reproduce.py --list
    .venv/bin/python benchmarks/reproduce.py fewshot-5w1s --log fewshot.log
    .venv/bin/python benchmarks/reproduce.py --record fewshot.log   # register a finished run's figures

Exit status: 0 when the intervals overlap, 1 when they do not, 3 when the rerun reached a time cap (not a result).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REGISTRY = HERE / "figures.json"

#: Fields every registered figure carries.
REQUIRED = ("name", "title", "command", "commit", "steps", "seed", "machine", "value", "ci95", "unit", "date",
            "select", "metric")
#: Scale from a RESULT line's metric (a fraction) to the registered unit.
UNITS = {"%": 100.0}


def load_registry(path: Path = REGISTRY) -> list[dict[str, Any]]:
    """The registered figures, each checked to carry every :data:`REQUIRED` field."""
    figures = json.loads(path.read_text())["figures"]
    for figure in figures:
        missing = [k for k in REQUIRED if figure.get(k) in (None, "")]
        if missing:
            raise ValueError(f"{path.name}: figure {figure.get('name')!r} lacks {', '.join(missing)}. "
                             f"Received: {sorted(figure)}")
        if figure["unit"] not in UNITS:
            raise ValueError(f"{path.name}: figure {figure['name']!r} has an unknown unit (known: {sorted(UNITS)}). "
                             f"Received: unit={figure['unit']!r}")
    names = [f["name"] for f in figures]
    if len(set(names)) != len(names):
        raise ValueError(f"{path.name}: figure names must be unique. Received: {names}")
    return figures


def interval(value: float, ci95: float, unit: str) -> str:
    return f"{value:.2f}{unit} ± {ci95:.2f} (95% interval {value - ci95:.2f}-{value + ci95:.2f}{unit})"


def overlap(a: float, a_ci: float, b: float, b_ci: float) -> bool:
    """Whether the intervals ``a ± a_ci`` and ``b ± b_ci`` overlap."""
    return abs(a - b) <= a_ci + b_ci


def pick(results: list[dict[str, Any]], select: dict[str, Any]) -> dict[str, Any] | None:
    """The last ``RESULT`` payload whose fields include every ``select`` field with its value."""
    matches = [r for r in results if all(r.get(k) == v for k, v in select.items())]
    return matches[-1] if matches else None


def parse_results(text: str) -> list[dict[str, Any]]:
    """Every ``RESULT {json}`` line of a benchmark's output."""
    out = []
    for line in text.splitlines():
        if line.startswith("RESULT "):
            try:
                out.append(json.loads(line[len("RESULT "):]))
            except json.JSONDecodeError:
                continue
    return out


def command_argv(command: str) -> tuple[list[str], dict[str, str]]:
    """The registered command as an argv and its leading ``NAME=value`` environment, run with this interpreter
    (the registry writes ``.venv/bin/python``)."""
    argv = shlex.split(command)
    env: dict[str, str] = {}
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        key, value = argv.pop(0).split("=", 1)
        env[key] = value
    if argv and Path(argv[0]).name.startswith("python"):
        argv[0] = sys.executable
    return argv, env


def print_list(figures: list[dict[str, Any]]) -> None:
    print("| name | value (95% CI) | steps | seed | date | commit | command |")
    print("|---|---:|---|---:|---|---|---|")
    for f in figures:
        commit = str(f["commit"])[:12] + (" +uncommitted" if "uncommitted" in str(f["commit"]) else "")
        print(f"| {f['name']} | {f['value']:.2f}{f['unit']} ± {f['ci95']:.2f} | {f['steps']} | {f['seed']} | "
              f"{f['date']} | {commit} | `{f['command']}` |")


def describe(f: dict[str, Any]) -> str:
    return (f"{interval(f['value'], f['ci95'], f['unit'])}; commit {f['commit']}, steps {f['steps']}, seed "
            f"{f['seed']}, machine {f['machine']}, {f['date']}")


def _minute(date: str) -> str:
    return date[:16] + "Z" if len(date) >= 16 else date


def figures_of_log(text: str) -> list[dict[str, Any]]:
    """Registry entries for the figures of one benchmark's output (its per-figure RESULT lines and the last one,
    which carries the command, the commit, the date and the machine).

    Raises:
        ValueError: The output has no final RESULT line with the provenance, or a figure of it was capped.
    """
    results = parse_results(text)
    final = next((r for r in reversed(results) if "command" in r and "commit" in r), None)
    if final is None:
        raise ValueError("no final RESULT line with command and commit: was the run complete?")
    common = {"command": final["command"], "commit": final["commit"], "machine": final["machine_line"],
              "date": _minute(final["date"]), "wall_s": round(float(final["total_s"])), "unit": "%",
              "result": "result"}
    entries = []
    for r in results:
        if r is final:
            continue
        if r.get("capped"):
            raise ValueError(f"a figure of this run is capped (not a result): {r}")
        bench = r.get("benchmark")
        if bench == "omniglot_fewshot" and "ways" in r:
            name, metric, decimals = f"fewshot-{r['ways']}w{r['shots']}s", "accuracy", 2
            select = {"benchmark": bench, "ways": r["ways"], "shots": r["shots"]}
            title = (f"ProtoNets, Omniglot {r['ways']}-way {r['shots']}-shot accuracy (vinyals split, "
                     f"{r['train_ways']}-way training, {r['episodes']} fixed test episodes)")
            paper = r.get("paper_accuracy")
        elif bench == "omniglot_oneshot" and "condition" in r:
            name, metric, decimals = f"oneshot-{r['condition']}", "mean_error", 1
            select = {"benchmark": bench, "condition": r["condition"]}
            title = f"ProtoNets on Lake et al.'s 20 one-shot runs, {r['condition']} condition: mean error"
            paper = None
        elif bench == "paper_tables" and "row" in r:
            where = "gpu" if " no GPU" not in final["machine_line"] else "cpu"
            name, metric, decimals = f"maml-{r['row']}-{where}", "accuracy", 2
            select = {"benchmark": bench, "row": r["row"]}
            title = (f"MAML (second order), {r['row']}: accuracy after {r['steps']} of the paper's "
                     f"{r['paper_steps']} iterations, {r['episodes']} fixed test tasks")
            paper = r.get("paper_accuracy")
        else:
            continue
        entry = {"name": name, "title": title, **common, "steps": r["steps"], "seed": r["seed"],
                 "value": round(100 * float(r[metric]), 4), "ci95": round(100 * float(r["ci95"]), 4),
                 "decimals": decimals, "metric": metric, "select": select}
        if paper is not None:
            entry["paper"] = round(100 * float(paper), 2)
        entries.append(entry)
    return entries


def record(log: Path, registry: Path) -> list[str]:
    """Adds (or replaces, by name) the figures of a benchmark log in the registry; returns their names."""
    entries = figures_of_log(log.read_text())
    data = json.loads(registry.read_text()) if registry.exists() else {"figures": []}
    names = {e["name"] for e in entries}
    data["figures"] = [f for f in data["figures"] if f["name"] not in names] + entries
    registry.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return [e["name"] for e in entries]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="The figure to rerun (see --list).")
    parser.add_argument("--list", action="store_true", help="List the registered figures and exit.")
    parser.add_argument("--dry-run", action="store_true", help="Print the figure and its command; do not run it.")
    parser.add_argument("--log", type=Path, default=None, help="Also write the command's output to this file.")
    parser.add_argument("--record", type=Path, default=None, metavar="LOG",
                        help="Add the figures of a finished benchmark's output (its RESULT lines) to the registry, "
                             "replacing those of the same name; capped figures are refused.")
    parser.add_argument("--registry", type=Path, default=REGISTRY, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.record:
        names = record(args.record, args.registry)
        print(f"recorded in {args.registry.name}: {', '.join(names)}")
        return 0
    figures = load_registry(args.registry)
    if args.list:
        print_list(figures)
        return 0
    by_name = {f["name"]: f for f in figures}
    if args.name not in by_name:
        parser.error(f"name one of the registered figures ({', '.join(by_name)}); --list shows them. "
                     f"Received: {args.name!r}")
    figure = by_name[args.name]
    siblings = [f for f in figures if f["command"] == figure["command"] and f["name"] != figure["name"]]
    print(f"figure: {figure['name']} ({figure['title']})")
    print(f"command: {figure['command']}")
    print(f"old: {describe(figure)}")
    if figure.get("result", "result") != "result":
        print(f"note: the registered figure is marked {figure['result']!r}")
    if args.dry_run:
        return 0

    argv_run, env = command_argv(figure["command"])
    print(f"running from {REPO}: {' '.join(shlex.quote(a) for a in argv_run)}", flush=True)
    t0 = time.perf_counter()
    lines: list[str] = []
    log = args.log.open("w") if args.log else None
    try:
        with subprocess.Popen(argv_run, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if log:
                    log.write(line)
                    log.flush()
                if not line.startswith("RESULT "):
                    sys.stdout.write("  | " + line)
            rc = proc.wait()
    finally:
        if log:
            log.close()
    wall_s = time.perf_counter() - t0
    results = parse_results("".join(lines))
    final = results[-1] if results else {}
    print(f"\nexit status {rc}, wall {wall_s:.0f} s; commit {final.get('commit', 'unknown')}, machine "
          f"{final.get('machine_line', 'unknown')}")
    status = 0
    for f in [figure, *siblings]:
        new = pick(results, f["select"])
        print(f"\n{f['name']}: {f['title']}")
        print(f"  old: {describe(f)}")
        if new is None:
            print("  new: no RESULT line for this figure (see the output above)")
            status = status or 1
            continue
        scale = UNITS[f["unit"]]
        value, ci95 = scale * float(new[f["metric"]]), scale * float(new["ci95"])
        if new.get("capped"):
            print(f"  new: {interval(value, ci95, f['unit'])} after {new.get('steps')} steps: capped: not a result")
            status = 3
            continue
        same = overlap(f["value"], f["ci95"], value, ci95)
        print(f"  new: {interval(value, ci95, f['unit'])}; steps {new.get('steps')}, seed {new.get('seed')}")
        print(f"  intervals overlap: {'yes' if same else 'NO'} (difference {abs(value - f['value']):.2f} points, "
              f"half-widths {f['ci95']:.2f} + {ci95:.2f})")
        if not same and f is figure:
            status = status or 1
    if rc not in (0, 3):
        return rc or 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())

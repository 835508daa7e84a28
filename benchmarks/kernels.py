"""Which oneDNN kernels each side of a ``speed.py`` workload runs, and for how long (issue 22 point 1).

Run from the repository root with the project's virtual environment (torch from the ``bench`` extra)::

    python benchmarks/kernels.py --workload protonet
    python benchmarks/kernels.py --workload maml2 --iters 3 --max-isa avx2

Both sides call oneDNN for their convolutions, batch norms and pooling: TensorFlow through its oneDNN ops (on by
default), torch through ``mkldnn``. Each side runs the workload in a process of its own (``speed.py --inprocess``)
with ``ONEDNN_VERBOSE=1``, which makes oneDNN print every primitive it executes: its kind, pass, implementation
(``brg_conv_fwd:avx2``, ``jit:avx512_core``, ...), memory layouts, problem shape and milliseconds. This script adds
them up per step and prints, for the costliest primitives, the implementation and time on each side, a total per
kind, and the time in oneDNN against the step's wall time. On a host where one side is slower, this says whether
the two sides run different kernels or layouts, or the same ones for a different time.

A primitive's time is its own wall time. TensorFlow runs independent kernels at once (two inter-op threads), so its
kernel times overlap and can add up to more than the step. The verbose output slows both sides a little, so the
step times printed here are not figures for the speed table: ``speed.py`` measures those.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import speed  # noqa: E402  (the workloads and the ISA cap are speed.py's)

Key = tuple[str, str, str]  # (kind, pass, problem shape)


def parse_verbose(lines: Iterable[str]) -> dict[Key, dict[str, Any]]:
    """Adds up oneDNN's ``exec`` lines: ``{(kind, pass, shape): {"impl": ..., "ms": total, "calls": n}}``.

    Reads both verbose formats: ``onednn_verbose,v1,primitive,exec,cpu,...`` (oneDNN 3.x) and
    ``onednn_verbose,exec,cpu,...`` (older). An implementation that changes between calls is listed joined by ``|``.
    """
    found: dict[Key, dict[str, Any]] = {}
    for line in lines:
        if not line.startswith(("onednn_verbose,", "dnnl_verbose,")):
            continue
        parts = line.strip().split(",")
        if "exec" not in parts:
            continue
        at = parts.index("exec")
        try:
            kind, impl, pass_ = parts[at + 2], parts[at + 3], parts[at + 4]
            shape, ms = parts[-2], float(parts[-1])
        except (IndexError, ValueError):
            continue
        entry = found.setdefault((kind, pass_ or "-", shape), {"impl": impl, "ms": 0.0, "calls": 0})
        if impl not in entry["impl"].split("|"):
            entry["impl"] += f"|{impl}"
        entry["ms"] += ms
        entry["calls"] += 1
    return found


def run_side(impl: str, workload: str, iters: int, warmup: int, max_isa: str | None) -> dict[str, Any]:
    """One side's kernels per step and its ``RESULT`` (or ``{"error": ...}``)."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1"}
    if max_isa:
        env.update(speed.isa_cap_environment(max_isa))
    cmd = [sys.executable, str(HERE / "speed.py"), "--workload", workload, "--impl", impl, "--inprocess",
           "--iters", str(iters), "--warmup", str(warmup)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    result = next((json.loads(line[7:]) for line in proc.stdout.splitlines()[::-1] if line.startswith("RESULT ")),
                  None)
    if proc.returncode or result is None or "median_step_s" not in result:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    steps = max(warmup, 1) + iters  # speed.measure: the first step, warmup - 1 more, then the timed ones
    kernels = parse_verbose(proc.stdout.splitlines())
    for entry in kernels.values():
        entry["ms_per_step"] = entry["ms"] / steps
    return {"kernels": kernels, "result": result, "steps": steps}


def table(sides: dict[str, dict[str, Any]], top: int) -> list[str]:
    """The report's lines: the costliest primitives side by side, the totals per kind, oneDNN's share of a step."""
    names = list(sides)
    keys = {k for side in sides.values() for k in side["kernels"]}
    cost = {k: max(side["kernels"].get(k, {}).get("ms_per_step", 0.0) for side in sides.values()) for k in keys}
    lines = ["| kind | pass | problem | " + " | ".join(f"{n} kernel | {n} ms/step" for n in names) + " | same kernel |",
             "|---|---|---|" + "---|---:|" * len(names) + "---|"]
    for key in sorted(keys, key=cost.get, reverse=True)[:top]:
        cells = []
        impls = []
        for n in names:
            entry = sides[n]["kernels"].get(key)
            impls.append(entry["impl"] if entry else None)
            cells.append(f"{entry['impl']} | {entry['ms_per_step']:.2f}" if entry else "– | –")
        same = "yes" if len(set(impls)) == 1 else ("–" if None in impls else "**no**")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + f" | {same} |")
    lines += ["", "| kind | " + " | ".join(f"{n} ms/step" for n in names) + " |",
              "|---|" + "---:|" * len(names)]
    kinds = sorted({k[0] for k in keys})
    totals = {n: collections.Counter() for n in names}
    for n in names:
        for key, entry in sides[n]["kernels"].items():
            totals[n][key[0]] += entry["ms_per_step"]
    for kind in sorted(kinds, key=lambda k: -max(totals[n][k] for n in names)):
        lines.append(f"| {kind} | " + " | ".join(f"{totals[n][kind]:.2f}" for n in names) + " |")
    lines.append("")
    for n in names:
        step_ms = 1000 * sides[n]["result"]["median_step_s"]
        in_onednn = sum(totals[n].values())
        lines.append(f"{n}: {in_onednn:.1f} ms a step in oneDNN kernels (summed; they may overlap) against a median "
                     f"step of {step_ms:.1f} ms with verbose output on; {sides[n]['result']['cpu_s_per_iter']} CPU-s "
                     "a step")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="protonet",
                        choices=[n for n, w in speed.WORKLOADS.items() if not w.get("data")])
    parser.add_argument("--impl", default="both", choices=["metalab", "torch", "both"])
    parser.add_argument("--iters", type=int, default=5, help="Timed steps after the warm-up (default 5).")
    parser.add_argument("--warmup", type=int, default=2, help="Steps before, the first (tracing) included.")
    parser.add_argument("--top", type=int, default=20, help="Primitives listed, costliest first (default 20).")
    parser.add_argument("--max-isa", default=None, choices=["avx2"],
                        help="Keep both sides to AVX2 code paths (as speed.py --max-isa).")
    args = parser.parse_args(argv)
    from _common import cpu_model

    cpu = cpu_model()
    print(f"[machine] {os.cpu_count()} CPUs, {cpu['model']} (AVX2 {cpu['avx2']}, AVX-512 {cpu['avx512f']})"
          + (f"; capped at {args.max_isa.upper()}" if args.max_isa else ""), flush=True)
    sides: dict[str, dict[str, Any]] = {}
    for impl in (["metalab", "torch"] if args.impl == "both" else [args.impl]):
        side = run_side(impl, args.workload, args.iters, args.warmup, args.max_isa)
        if "error" in side:
            print(f"{impl}: {side['error']}", flush=True)
            continue
        if not side["kernels"]:
            print(f"{impl}: no oneDNN primitive ran (oneDNN off, or another library's kernels)", flush=True)
        sides[impl] = side
    if not sides:
        return 1
    print(f"{args.workload}: oneDNN primitives per step, over {next(iter(sides.values()))['steps']} steps a side",
          flush=True)
    print("\n".join(table(sides, args.top)), flush=True)
    print("KERNELS " + json.dumps({"workload": args.workload, "max_isa": args.max_isa, "cpu": cpu, "sides": {
        n: {"step_s": s["result"]["median_step_s"],
            "kernels": [{"kind": k[0], "pass": k[1], "problem": k[2], "impl": e["impl"],
                         "ms_per_step": round(e["ms_per_step"], 3)} for k, e in s["kernels"].items()]}
        for n, s in sides.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

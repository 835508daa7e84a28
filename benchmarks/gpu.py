"""The GPU check of issue 5 (point 4): second-order MAML per iteration with and without XLA and mixed precision.

One prepared command for a machine with an accelerator (TensorFlow with GPU support: ``pip install -e '.[gpu]'``)::

    python benchmarks/gpu.py                        # maml2: Omniglot-shaped 5-way 1-shot, meta-batch 32
    python benchmarks/gpu.py --iters 50 --schedule 60000
    python benchmarks/gpu.py --workload protonet --iters 5     # a quick check of the plumbing, e.g. on a CPU
    python benchmarks/gpu.py --backend jax          # Keras's JAX backend (every step is XLA-compiled there)

On a lent device machine whose image has JAX but no TensorFlow, ``benchmarks/gpu_device.sh`` installs what is
missing from carried wheels and runs this script with ``--backend jax``.

Each configuration (float32 / mixed_bfloat16 / mixed_float16 with dynamic loss scaling, each without and with
XLA: the run config's ``precision`` and ``jit_compile``) runs in its own process
through ``benchmarks/speed.py`` (metalab's side: the plugin-built algorithm and the runner's compiled step) and
prints its ``RESULT`` line; a table follows with seconds per iteration, the first (compiling) step and the time a
``--schedule``-iteration run would take (first step + schedule x median step), against the issue's target of one
hour on one H100. A configuration that fails (e.g. a precision the device lacks) is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: (precision, XLA) pairs, in the order they run.
CONFIGS = [("float32", False), ("float32", True), ("mixed_bfloat16", False), ("mixed_bfloat16", True),
           ("mixed_float16", False), ("mixed_float16", True)]
#: The issue's target for the whole schedule, in hours.
TARGET_HOURS = 1.0


def measure(workload: str, precision: str, jit: bool, iters: int, warmup: int,
            backend: str = "tensorflow") -> dict[str, Any] | None:
    """Runs one configuration of ``workload`` through speed.py in a fresh process; returns its RESULT or None."""
    cmd = [sys.executable, str(HERE / "speed.py"), "--workload", workload, "--impl", "metalab", "--inprocess",
           "--iters", str(iters), "--warmup", str(warmup), "--precision", precision, "--backend", backend]
    if jit:
        cmd.append("--jit")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    result = None
    for line in proc.stdout.splitlines():
        print(line, flush=True)
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    if proc.returncode != 0 or result is None:
        print(f"{workload} precision={precision} jit={jit} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}",
              flush=True)
        return None
    return result


def schedule_hours(result: dict[str, Any], schedule: int) -> float:
    """Hours for ``schedule`` iterations: the first (compiling) step, then the median step for the rest."""
    return (float(result["first_step_s"]) + max(schedule - 1, 0) * float(result["median_step_s"])) / 3600.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="maml2", help="A workload of speed.py (default: maml2).")
    parser.add_argument("--iters", type=int, default=30, help="Timed iterations per configuration.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed iterations, the compiling one included.")
    parser.add_argument("--schedule", type=int, default=60_000, help="Iterations of the schedule to extrapolate.")
    parser.add_argument("--only", nargs="*", default=None, metavar="PRECISION[+xla]",
                        help="Run only these configurations, e.g. float32 float32+xla mixed_bfloat16+xla.")
    parser.add_argument("--backend", default="tensorflow", choices=["tensorflow", "jax"],
                        help="The Keras backend metalab runs on (jax: every step is XLA-compiled, so the "
                             "+xla configurations are the only ones).")
    args = parser.parse_args(argv)

    rows = []
    for precision, jit in CONFIGS:
        if args.backend == "jax" and not jit:
            continue  # JAX compiles every step with XLA: the "without XLA" configurations do not exist there
        label = precision + ("+xla" if jit else "")
        if args.only is not None and label not in args.only:
            continue
        result = measure(args.workload, precision, jit, args.iters, args.warmup, args.backend)
        if result is None:
            rows.append((label, None))
            continue
        hours = schedule_hours(result, args.schedule)
        rows.append((label, result))
        print("GPU " + json.dumps({"workload": args.workload, "config": label, "median_step_s": result["median_step_s"],
                                   "first_step_s": result["first_step_s"], "schedule": args.schedule,
                                   "schedule_hours": round(hours, 3), "meets_target": hours < TARGET_HOURS,
                                   "device": result.get("device"),
                                   "backend": args.backend}), flush=True)

    print(f"\n{args.workload} on {args.backend}: {args.schedule:,}-iteration schedule (target under "
          f"{TARGET_HOURS:g} h)")
    print(f"{'configuration':<22}{'s/iter':>10}{'first step s':>14}{'schedule h':>12}")
    for label, result in rows:
        if result is None:
            print(f"{label:<22}{'failed':>10}")
            continue
        print(f"{label:<22}{result['median_step_s']:>10.4f}{result['first_step_s']:>14.1f}"
              f"{schedule_hours(result, args.schedule):>12.2f}")
    return 0 if any(result for _, result in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

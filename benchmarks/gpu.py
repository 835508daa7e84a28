"""The GPU check of issue 5 (point 4): second-order MAML per iteration with and without XLA and mixed precision.

One prepared command for a machine with an accelerator (TensorFlow with GPU support: ``pip install -e '.[gpu]'``)::

    python benchmarks/gpu.py                        # maml2: Omniglot-shaped 5-way 1-shot, meta-batch 32
    python benchmarks/gpu.py --iters 50 --schedule 60000
    python benchmarks/gpu.py --workload protonet --iters 5     # a quick check of the plumbing, e.g. on a CPU
    python benchmarks/gpu.py --backend jax          # Keras's JAX backend (every step is XLA-compiled there)

On a lent device machine whose image has JAX but no TensorFlow, ``benchmarks/gpu_device.sh`` installs what is
missing from carried wheels and runs this script with ``--backend jax``.

Each configuration (float32 (exact) / tf32 (TensorFloat-32 matrix units) / mixed_bfloat16 / mixed_float16 with
dynamic loss scaling, each without and with XLA: the run config's ``precision`` and ``jit_compile``; on JAX each
with the tasks vectorized (``+vmap``, MAML's ``vectorize_tasks``) and unrolled) runs in its own process
through ``benchmarks/speed.py`` (metalab's side: the plugin-built algorithm and the runner's compiled step) and
prints its ``RESULT`` line; a table follows with seconds per iteration, the first (compiling) step and the time a
``--schedule``-iteration run would take (first step + schedule x median step), against the issue's target of one
hour on one H100. A configuration that fails (e.g. a precision the device lacks) is reported and skipped;
``--torch-device cuda`` also times the PyTorch reference on the GPU, and ``--budget-s`` fits the whole into a
device lease.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from speed import WORKLOADS, echoed_result  # noqa: E402  (no TensorFlow or Keras import)

#: (precision, XLA) pairs, in the order they run.
CONFIGS = [("float32", False), ("float32", True), ("tf32", False), ("tf32", True), ("mixed_bfloat16", False),
           ("mixed_bfloat16", True), ("mixed_float16", False), ("mixed_float16", True)]
#: The issue's target for the whole schedule, in hours.
TARGET_HOURS = 1.0


@dataclass(frozen=True)
class Config:
    """One measured configuration: metalab at a precision, with or without XLA and vmap; or the torch reference."""

    precision: str = "float32"
    jit: bool = False
    vectorize: bool = False
    torch_device: str | None = None  # set: the PyTorch reference on this device instead of metalab

    @property
    def label(self) -> str:
        if self.torch_device:
            return f"torch {self.torch_device}"
        return self.precision + ("+xla" if self.jit else "") + ("+vmap" if self.vectorize else "")


def plan(backend: str, torch_device: str | None, only: list[str] | None, vectorizable: bool = True) -> list[Config]:
    """The configurations in the order they run: the most telling first, so a time budget cuts the least.

    ``vectorizable``: the workload's algorithm has ``vectorize_tasks`` (MAML); otherwise no ``+vmap`` configurations.
    """
    if backend == "jax" and not vectorizable:
        configs = [Config(p, True) for p, jit in CONFIGS if jit]
    elif backend == "jax":
        # JAX compiles every step with XLA; each precision runs with the tasks vectorized (vmap, quick to
        # compile) and unrolled (one copy of the inner loop per task: minutes of compiling), the vmap ones first.
        f32, tf32, bf16, f16 = (Config(p, True, True) for p in ("float32", "tf32", "mixed_bfloat16", "mixed_float16"))
        configs = [tf32, f32, bf16, Config("tf32", True), f16, Config("float32", True), Config("mixed_bfloat16", True),
                   Config("mixed_float16", True)]
    else:
        configs = [Config(p, jit) for p, jit in CONFIGS]
    if torch_device:
        configs.insert(1, Config(torch_device=torch_device))
    if only is not None:
        configs = [c for c in configs if c.label in only]
    return configs


def measure(workload: str, config: Config, iters: int, warmup: int, backend: str = "tensorflow",
            timeout: float | None = None) -> dict[str, Any] | None:
    """Runs one configuration of ``workload`` through speed.py in a fresh process; returns its RESULT or None."""
    cmd = [sys.executable, str(HERE / "speed.py"), "--workload", workload, "--inprocess", "--iters", str(iters),
           "--warmup", str(warmup)]
    if config.torch_device:
        cmd += ["--impl", "torch", "--torch-device", config.torch_device]
    else:
        cmd += ["--impl", "metalab", "--precision", config.precision, "--backend", backend]
        cmd += ["--jit"] if config.jit else []
        if WORKLOADS[workload]["algorithm"] == "maml":  # explicit: the default ("auto") would vmap on a GPU
            cmd += ["--param", "vectorize_tasks=" + ("on" if config.vectorize else "off")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        print(f"{workload} {config.label}: stopped after {timeout:.0f} s (the time budget)\n"
              f"{(error.stdout or b'')[-2000:]!r}", flush=True)
        return None
    result = echoed_result(proc.stdout)
    if proc.returncode != 0 or result is None:
        print(f"{workload} {config.label} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
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
    parser.add_argument("--only", nargs="*", default=None, metavar="LABEL",
                        help="Run only these configurations, e.g. float32 float32+xla mixed_bfloat16+xla+vmap "
                             "'torch cuda'.")
    parser.add_argument("--backend", default="tensorflow", choices=["tensorflow", "jax"],
                        help="The Keras backend metalab runs on (jax: every step is XLA-compiled, so the "
                             "+xla configurations are the only ones, each with and without +vmap).")
    parser.add_argument("--torch-device", default=None,
                        help="Also time the PyTorch reference on this device (e.g. cuda), right after the first "
                             "configuration.")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="Stop starting configurations after this many seconds, and stop one that would "
                             "run past it (for a device lease of fixed length).")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    rows: list[tuple[Config, dict[str, Any] | None]] = []
    vectorizable = WORKLOADS[args.workload]["algorithm"] == "maml"
    for config in plan(args.backend, args.torch_device, args.only, vectorizable):
        timeout = None
        if args.budget_s is not None:
            timeout = args.budget_s - (time.perf_counter() - start)
            if timeout < 30:
                print(f"{config.label}: skipped, {timeout:.0f} s of the budget left", flush=True)
                rows.append((config, None))
                continue
        result = measure(args.workload, config, args.iters, args.warmup, args.backend, timeout)
        rows.append((config, result))
        if result is None:
            continue
        hours = schedule_hours(result, args.schedule)
        print("GPU " + json.dumps({"workload": args.workload, "config": config.label,
                                   "median_step_s": result["median_step_s"], "first_step_s": result["first_step_s"],
                                   "schedule": args.schedule, "schedule_hours": round(hours, 3),
                                   "meets_target": hours < TARGET_HOURS, "device": result.get("device"),
                                   "device_peak_mb": result.get("device_peak_mb"),
                                   "backend": "torch" if config.torch_device else args.backend}), flush=True)

    print(f"\n{args.workload} on {args.backend}: {args.schedule:,}-iteration schedule (target under "
          f"{TARGET_HOURS:g} h)")
    print(f"{'configuration':<28}{'s/iter':>10}{'first step s':>14}{'schedule h':>12}{'peak MB':>10}")
    for config, result in rows:
        if result is None:
            print(f"{config.label:<28}{'failed or skipped':>20}")
            continue
        peak = result.get("device_peak_mb")
        print(f"{config.label:<28}{result['median_step_s']:>10.4f}{result['first_step_s']:>14.1f}"
              f"{schedule_hours(result, args.schedule):>12.2f}{peak if peak is not None else '-':>10}")
    return 0 if any(result for _, result in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

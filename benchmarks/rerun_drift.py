"""How far reruns of the same tiny run drift apart, process by process (the conformance suite's resume check).

Run from the repository root with the project's virtual environment::

    python benchmarks/rerun_drift.py --algorithm metalab.gan --processes 8
    python benchmarks/rerun_drift.py --algorithm metalab.gan --processes 8 --inter 1   # one inter-op thread

Each process trains the conformance suite's tiny config of the algorithm (``testing.tiny_config``, ``--steps``
steps, seed 0, a loss logged every step) three times through the real runner: ``A`` uninterrupted, ``B1`` and
``B2`` each cancelled at ``steps // 2`` and resumed to the end. It prints one ``DRIFT`` line per process: the
largest difference between the runs' final weights and optimizer state (relative to each array's largest
magnitude, at least ``WEIGHT_SCALE_FLOOR``, as the suite measures it), the same at the halfway checkpoints of
``B1`` and ``B2``, and the first step whose logged loss differs between the runs. Every run starts from the same
seed, so on a deterministic platform every figure is 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _arrays(path: Path) -> dict[str, "object"]:
    import numpy as np

    with np.load(path) as data:
        return {name: data[name] for name in data.files if name.startswith(("var_", "opt_"))}


def _drift(first: dict, second: dict) -> float:
    import numpy as np

    from metalab.core.authoring.testing import WEIGHT_SCALE_FLOOR

    worst = 0.0
    for name, a in first.items():
        b = second[name]
        if a.size == 0 or a.dtype.kind != "f":
            continue
        scale = max(float(np.max(np.abs(a))), WEIGHT_SCALE_FLOOR)
        worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))) / scale)
    return worst


def one_process(algorithm: str, steps: int) -> dict:
    """Trains A, B1 and B2 in this process and returns the drift figures."""
    from metalab.core.authoring import testing
    from metalab.core.contract.manager import make_plugin_manager
    from metalab.core.engine.checkpoints import checkpoint_path
    from metalab.core.engine.runner import RunCancelled, train_run
    from metalab.core.store import RunStore

    registry = make_plugin_manager(strict=False)
    kind = testing.supported_kinds(registry, algorithm)[0]
    config = testing.tiny_config(registry, algorithm, kind, steps=steps).model_copy(update={"log_every": 1})
    home = Path(tempfile.mkdtemp(prefix="metalab-drift-"))
    half = steps // 2
    final, halfway, losses = {}, {}, {}

    def stop(step: int, total: int, metrics: dict) -> None:
        if step == half:
            raise RunCancelled("drift: halfway")

    for name in ("A", "B1", "B2"):
        store = RunStore(home / name / "runs.sqlite")
        run_id = store.create_run(config.model_dump())
        if name != "A":
            assert train_run(store, run_id, registry, progress=stop) == "cancelled"
            halfway[name] = _arrays(checkpoint_path(store, run_id))
        status = train_run(store, run_id, registry)
        assert status == "completed", store.get_run(run_id).error
        final[name] = _arrays(checkpoint_path(store, run_id))
        losses[name] = [value for _, value in store.metrics(run_id, ["train/loss"])["train/loss"]]
    first = [step + 1 for step, values in enumerate(zip(*losses.values())) if len(set(values)) > 1]
    return {"B1_vs_A": _drift(final["A"], final["B1"]), "B2_vs_A": _drift(final["A"], final["B2"]),
            "B1_vs_B2_halfway": _drift(halfway["B1"], halfway["B2"]),
            "first_step_loss_differs": first[0] if first else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithm", default="metalab.gan")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--inter", type=int, default=None, help="TensorFlow's inter-op threads (default: the worker's).")
    parser.add_argument("--inprocess", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inprocess:
        from metalab.core.engine.devices import configure_cpu_kernels, configure_threads

        configure_cpu_kernels()
        if args.inter is not None:
            configure_threads(0, args.inter)
        print("DRIFT " + json.dumps({"algorithm": args.algorithm, "steps": args.steps, "inter": args.inter,
                                     **one_process(args.algorithm, args.steps)}), flush=True)
        return 0
    drifted = failed = 0
    for _ in range(args.processes):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--inprocess", "--algorithm", args.algorithm,
               "--steps", str(args.steps)] + (["--inter", str(args.inter)] if args.inter is not None else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ))
        lines = [line for line in proc.stdout.splitlines() if line.startswith("DRIFT ")]
        if proc.returncode != 0 or not lines:
            print(f"a process failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
            failed += 1
            continue
        print(lines[-1], flush=True)
        figures = json.loads(lines[-1][len("DRIFT "):])
        drifted += any(figures[k] for k in ("B1_vs_A", "B2_vs_A", "B1_vs_B2_halfway"))
    print(f"{drifted} of {args.processes - failed} processes had runs that drifted apart"
          + (f"; {failed} failed" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The MAML paper's 2D-navigation curve: average return after 0-3 policy-gradient steps, MAML against the baselines.

Trains ``metalab.maml_rl`` and ``metalab.pretrained_policy`` on ``metalab.nav2d`` for the same fixed number of
iterations through the product's runner (the paper's settings: 20 tasks per meta-batch, 20 episodes per adaptation
step, horizon 100, alpha 0.1, a policy of two 100-unit ReLU layers), scores both on the same 40 fixed test tasks
after 0, 1, 2 and 3 adaptation steps, and adapts a new, untrained policy the same way (the random initialisation).
It prints the three curves with 95% intervals, each figure with its command, commit, iterations and seed, and
beside them what the paper reports.

The paper (Finn, Abbeel and Levine 2017, Figure 4, left) gives the curve as a plot on a log scale and no table, so
no number of it is transcribed here; its claims are the ordering this script checks and prints: MAML's return
rises most after one step and stays above the pretrained policy and the random initialisation at every step.
The paper trains with TRPO; metalab's outer step is PPO's clipped surrogate with Adam (one update per iteration:
the plain policy gradient through the adaptation), so its iterations are not the paper's.

    .venv/bin/python benchmarks/metarl.py --steps 100              # about 10 minutes on a two-core CPU
    .venv/bin/python benchmarks/metarl.py --steps 5 --test-tasks 4 # a smoke run of the script
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (add_common_args, fix_steps, make_services, print_machine_note, print_provenance,  # noqa: E402
                     print_result, provenance, result_status, train)

#: The claims of the paper's Figure 4 (left) this script checks on its own curves.
PAPER = ("Finn, Abbeel and Levine 2017, Figure 4 (left), 2D navigation: a plot on a log scale, no table. Claims: "
         "MAML's average return rises most after one policy-gradient step and stays above the pretrained policy "
         "and the random initialisation at every step.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--steps", type=int, default=None, help="Meta-training iterations of each run (default 100).")
    parser.add_argument("--test-tasks", type=int, default=40, help="Fixed test tasks every curve is scored on.")
    parser.add_argument("--meta-batch", type=int, default=20, help="Tasks per iteration (20 in the paper).")
    args = parser.parse_args(argv)
    fix_steps(parser, args, 100)
    return args


def _curve(evaluation: dict[str, Any]) -> list[tuple[float, float]]:
    return list(zip(evaluation["curve"], evaluation["curve_ci95"]))


def main(argv: list[str] | None = None) -> int:
    import os
    import tempfile

    args = parse_args(argv)
    prov = provenance(argv)
    print_provenance(prov)
    machine = print_machine_note("metarl")
    home = args.home or Path(tempfile.mkdtemp(prefix="metalab-metarl-"))
    os.environ["METALAB_HOME"] = str(home)
    services = make_services()
    common = {"dataset": "metalab.nav2d", "steps": args.steps, "seed": args.seed, "test_episodes": args.test_tasks,
              "val_episodes": 10, "val_every": args.steps, "checkpoint_every": args.steps,
              "log_every": max(1, args.steps // 10), "backbone": "metalab.mlp",
              "backbone_params": {"hidden": [100, 100]}}
    algorithm_params = {"meta_batch_size": args.meta_batch, "eval_steps": 3}
    curves: dict[str, list[tuple[float, float]]] = {}
    capped = False
    runs = {}
    t0 = time.perf_counter()
    for algorithm, label in (("metalab.pretrained_policy", "pretrained"), ("metalab.maml_rl", "MAML")):
        raw = {**common, "algorithm": algorithm, "algorithm_params": dict(algorithm_params)}
        outcome = train(services, raw, label=label, max_minutes=args.max_minutes,
                        print_every=max(1, args.steps // 10))
        capped = capped or outcome["capped"]
        runs[label] = outcome
        evaluation = services.evaluations(outcome["run_id"])[0]
        curves[label] = _curve(evaluation)
        print(f"[{label}] {outcome['steps']} iterations in {outcome['train_s']:.0f} s", flush=True)
    report = services.run_report(runs["MAML"]["run_id"])
    random = report["report_data"]["adaptation"]["curves"]["random initialisation"]
    random_tasks = report["report_data"]["adaptation"]["tasks"]
    curves["random"] = list(zip(random["curve"], random["curve_ci95"]))
    elapsed = time.perf_counter() - t0

    print()
    print(f"Average return on metalab.nav2d after each adaptation step (mean ± 95% CI; {args.test_tasks} fixed test "
          f"tasks, the random initialisation on {random_tasks} of them); {args.steps} iterations, seed {args.seed}")
    print(f"{'steps':>5}  {'MAML':>16}  {'pretrained':>16}  {'random init.':>16}")
    for k in range(len(curves["MAML"])):
        cells = [f"{curves[name][k][0]:8.2f} ± {curves[name][k][1]:5.2f}" for name in ("MAML", "pretrained", "random")]
        print(f"{k:>5}  " + "  ".join(f"{c:>16}" for c in cells))
    maml, pre, rnd = ([v for v, _ in curves[n]] for n in ("MAML", "pretrained", "random"))
    gains = {name: values[1] - values[0] for name, values in (("MAML", maml), ("pretrained", pre), ("random", rnd))}
    checks = {
        "MAML rises most after one step": gains["MAML"] > max(gains["pretrained"], gains["random"]),
        "MAML above pretrained at every step after 0": all(m > p for m, p in zip(maml[1:], pre[1:])),
        "MAML above the random initialisation at every step": all(m > r for m, r in zip(maml, rnd)),
    }
    print()
    print("paper: " + PAPER)
    for claim, holds in checks.items():
        print(f"  {claim}: {'holds' if holds else 'does not hold'} here")
    print(f"wall time {elapsed:.0f} s")
    print_result({**prov, "machine": machine, "benchmark": "metarl_nav2d", "steps": args.steps, "seed": args.seed,
                  "test_tasks": args.test_tasks, "meta_batch": args.meta_batch, "result": result_status(capped),
                  "curves": {k: [[round(v, 3), round(c, 3)] for v, c in rows] for k, rows in curves.items()},
                  "checks": checks, "wall_s": round(elapsed, 1)})
    return 3 if capped else 0


if __name__ == "__main__":
    raise SystemExit(main())

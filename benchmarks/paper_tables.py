"""The MAML paper's few-shot tables (Finn, Abbeel & Levine 2017, Table 1), reproduced with metalab's MAML.

Rows: Omniglot 5-/20-way, 1-/5-shot and Mini-ImageNet 5-way 1-/5-shot, each trained with the paper's
hyperparameters (Appendix A.1) through metalab's runner for a fixed number of iterations, then scored on 600 fixed
test tasks (as the paper's code, ``NUM_TEST_POINTS = 600``) with a 95% interval, and printed beside the paper's.

- Omniglot: the vinyals split with rotations (1100 training, 100 validation, 423 test characters: the dataset's
  defaults, as the MAML code's 1200 training characters of which 100 validate), 28x28, conv-4 with 64 filters.
  5-way: one inner step of alpha = 0.4, meta-batch 32 tasks, three steps at test. 20-way: five inner steps of
  alpha = 0.1, meta-batch 16, five at test. K support and K query images per class, in training and at test (the
  code's ``update_batch_size * 2``).
- Mini-ImageNet (Ravi & Larochelle's split, 84x84): conv-4 with 32 filters, five inner steps of alpha = 0.01, ten
  at test, meta-batch 4 (1-shot) or 2 (5-shot), 15 query images per class in training, K at test.
- The paper trains every row for 60,000 iterations (Adam, beta = 0.001) on a GPU. A run of fewer iterations is a
  partial schedule: its accuracy is expected to fall short of the protocol's, and is reported with its step count.

Differences from the paper, kept because they are metalab's conv-4: Omniglot uses 2x2 max-pooling where the
paper's Omniglot network strides its convolutions, and the convolutions carry no bias (batch norm cancels it).

``--plan cpu`` prints the row set that fits 30 minutes on this 2-core CPU and ``--plan gpu`` the plan for a
15-minute GPU device lease (JAX backend, the path measured there), both with their fixed iterations and predicted
times, without training. A row whose data is missing is skipped with a line saying which files go where.

Example:
    .venv/bin/python benchmarks/paper_tables.py --plan cpu
    .venv/bin/python benchmarks/paper_tables.py --rows omniglot-5w1s --steps 300 > paper.log 2>&1

One ``RESULT {json}`` line per row and a last one with everything. Exit status 3 when a run reached its time cap.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from _common import CAPPED, EXIT_CAPPED, add_common_args, fix_steps, result_status

#: Iterations of every row in the paper (Appendix A.1: "All models were trained for 60000 iterations").
PAPER_ITERATIONS = 60_000
PAPER = "Finn, Abbeel & Levine 2017, Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks (ICML), Table 1"


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the paper's table and the run configuration that reproduces it."""

    name: str
    dataset: str
    ways: int
    shots: int
    train_queries: int
    test_queries: int
    inner_lr: float
    inner_steps: int
    eval_inner_steps: int
    meta_batch_size: int
    filters: int
    paper: tuple[float, float]  # accuracy %, 95% CI half-width

    def config(self, steps: int, seed: int) -> dict[str, Any]:
        """The run config (validated by ``Services.resolve``) that trains this row for ``steps`` iterations."""
        dataset_params = ({"split": "vinyals", "rotations": True, "image_size": 28} if self.dataset == "omniglot"
                          else {"image_size": 84})
        return {
            "dataset": DATASET_IDS[self.dataset], "algorithm": "metalab.maml", "backbone": "metalab.conv4",
            "dataset_params": dataset_params,
            "algorithm_params": {"inner_lr": self.inner_lr, "inner_steps": self.inner_steps,
                                 "eval_inner_steps": self.eval_inner_steps, "meta_batch_size": self.meta_batch_size,
                                 "outer_lr": 1e-3, "first_order": False},
            "backbone_params": {"filters": self.filters},
            "ways": self.ways, "shots": self.shots, "queries": self.train_queries, "steps": steps, "seed": seed,
            # One validation at the end (20 tasks) shows that training moved; it steers nothing.
            "val_every": steps, "val_episodes": 20, "checkpoint_every": max(min(steps, 500), 1), "log_every": 10,
            "eval_at_end": False,
        }


DATASET_IDS = {"omniglot": "metalab.omniglot", "mini_imagenet": "metalab.mini_imagenet"}

_O5 = dict(dataset="omniglot", inner_lr=0.4, inner_steps=1, eval_inner_steps=3, meta_batch_size=32, filters=64)
_O20 = dict(dataset="omniglot", inner_lr=0.1, inner_steps=5, eval_inner_steps=5, meta_batch_size=16, filters=64)
_MINI = dict(dataset="mini_imagenet", inner_lr=0.01, inner_steps=5, eval_inner_steps=10, filters=32)

ROWS: dict[str, Row] = {r.name: r for r in (
    Row("omniglot-5w1s", ways=5, shots=1, train_queries=1, test_queries=1, paper=(98.7, 0.4), **_O5),
    Row("omniglot-5w5s", ways=5, shots=5, train_queries=5, test_queries=5, paper=(99.9, 0.1), **_O5),
    Row("omniglot-20w1s", ways=20, shots=1, train_queries=1, test_queries=1, paper=(95.8, 0.3), **_O20),
    Row("omniglot-20w5s", ways=20, shots=5, train_queries=5, test_queries=5, paper=(98.9, 0.2), **_O20),
    Row("miniimagenet-5w1s", ways=5, shots=1, train_queries=15, test_queries=1, meta_batch_size=4,
        paper=(48.70, 1.84), **_MINI),
    Row("miniimagenet-5w5s", ways=5, shots=5, train_queries=15, test_queries=5, meta_batch_size=2,
        paper=(63.11, 0.92), **_MINI),
)}

# ----------------------------------------------------------------------------------------------------------
# Plans: fixed iterations per row and what they are predicted to cost
# ----------------------------------------------------------------------------------------------------------

#: Measured on this project's 2-core CPU (AMD EPYC, AVX2, no AVX-512; TensorFlow 2.21 CPU) while other jobs
#: shared it (load average 5-7), 2026-12-03 18:40-18:51 UTC, by ``paper_tables.py --rows omniglot-5w1s
#: omniglot-5w5s omniglot-20w1s omniglot-20w5s --steps 12 12 6 6 --test-episodes 100`` (stopped after the 5-way
#: rows): seconds per iteration (iterations 2-11), the first (tracing) iteration, the end-of-training validation
#: (20 tasks), and scoring 600 test tasks (100 measured, compile included, times 6: an upper bound).
CPU_MEASURED: dict[str, dict[str, float]] = {
    "omniglot-5w1s": {"s_per_step": 2.38, "first_step_s": 174.0, "val_s": 14.0, "eval_600_s": 144.0},
    "omniglot-5w5s": {"s_per_step": 11.2, "first_step_s": 165.0, "val_s": 22.0, "eval_600_s": 372.0},
}
#: Why the 20-way rows are not measured or planned on this CPU: their first step alone would take most of the budget.
CPU_20WAY = ("20-way rows train five inner steps per task: the first (tracing) step of five-step MAML took 3.8x "
             "that of one step on a quiet CPU (129 s against 34 s, RESULTS.md, speed), so about 11 minutes each "
             "at this host's 174 s before any training, and each iteration processes 16 tasks of 20 classes "
             "through five inner steps")
#: The CPU row set: fixed iterations per row, chosen so that the whole set fits 30 minutes by CPU_MEASURED with
#: room for the load to rise (the measurement was made under a load average of 5-7 on 2 cores).
CPU_PLAN: dict[str, int] = {"omniglot-5w1s": 300}
CPU_BUDGET_S = 30 * 60
#: Loading Omniglot (decoded arrays cached after the first load), building services and scoring setup.
CPU_OVERHEAD_S = 40.0


def cpu_predicted_s(name: str, steps: int) -> float:
    """Predicted CPU seconds of one row: first iteration, the rest, validation and scoring 600 tasks."""
    m = CPU_MEASURED[name]
    return m["first_step_s"] + (steps - 1) * m["s_per_step"] + m["val_s"] + m["eval_600_s"]


#: The GPU figure this plan scales from: second-order MAML, Omniglot-shaped 5-way 1-shot with 5 queries per class,
#: meta-batch 32, one inner step, tasks vectorized, exact float32, on one H100 with JAX 0.11.2 (RESULTS.md, "GPU":
#: 0.0206 s/iter in the second device session, 0.0199 in the third; first step 6.4 s).
GPU_MEASURED = {"s_per_step": 0.0206, "first_step_s": 8.0, "ways": 5, "shots": 1, "queries": 5, "inner_steps": 1,
                "meta_batch_size": 32}
#: The GPU row set for one 15-minute device lease: fixed iterations per row.
GPU_PLAN: dict[str, int] = {"omniglot-5w1s": 12_000, "omniglot-5w5s": 5_000}
GPU_BUDGET_S = 15 * 60
#: Device time that is not training: the machine's start, installing the wheels (gpu_device.sh), decoding Omniglot.
GPU_OVERHEAD_S = 300.0
#: Scoring 600 test tasks on the GPU, per row (a compiled evaluate on chunks of tasks: seconds).
GPU_EVAL_S = 20.0


def gpu_seconds_per_step(row: Row) -> float:
    """Predicted GPU seconds per iteration of ``row``, scaled from :data:`GPU_MEASURED`.

    The larger of two ratios to the measured configuration: the convolution work of the step (meta-batch x ways x
    (shots x inner steps + queries) images, times pixels x filters squared relative to 28x28 with 64 filters), and
    the sequential passes (inner steps + 1), which bound a small network on a GPU whose kernels are latency-bound.
    An estimate, not a measurement: only the 5-way 1-shot step was timed there.
    """
    m = GPU_MEASURED
    size = 28 if row.dataset == "omniglot" else 84
    per_image = (size / 28) ** 2 * (row.filters / 64) ** 2
    work = row.meta_batch_size * row.ways * (row.shots * row.inner_steps + row.train_queries) * per_image
    work_measured = m["meta_batch_size"] * m["ways"] * (m["shots"] * m["inner_steps"] + m["queries"])
    sequential = (row.inner_steps + 1) / (m["inner_steps"] + 1)
    return m["s_per_step"] * max(work / work_measured, sequential)


def data_problem(row: Row, data_dir: Path) -> str | None:
    """``None`` when the row's files are where the dataset plugin looks, else a line saying what is needed where."""
    if row.dataset == "omniglot":
        folder = data_dir / "omniglot"
        if (folder / "images_background.repacked.zip").exists() or (folder / "images_background.zip").exists() \
                or (folder / "images_background").is_dir():
            return None
        return (f"data not available: needs images_background.zip and images_evaluation.zip (or the repacked "
                f"copies) in {folder}")
    folder = data_dir / "mini_imagenet"
    pickles = [f"mini-imagenet-cache-{s}.pkl" for s in ("train", "val", "test")]
    if folder.is_dir() and (all(any(folder.rglob(p)) for p in pickles)
                            or all(any(folder.rglob(f"{s}.csv")) for s in ("train", "val", "test"))):
        return None
    return (f"data not available: needs {', '.join(pickles)} (Ravi & Larochelle's split as pickles with image_data "
            f"and class_dict), or an images/ folder with train.csv, val.csv and test.csv, in {folder} "
            f"(METALAB_DATA_DIR/mini_imagenet/); no copy is on this machine and it has no network")


def print_plan(kind: str, data_dir: Path) -> None:
    """Prints the CPU or GPU plan: rows, fixed iterations, predicted times, and the rows it leaves out."""
    if kind == "cpu":
        plan, budget = CPU_PLAN, CPU_BUDGET_S
        print(f"CPU plan: the MAML paper's Omniglot rows that fit {budget // 60} minutes on this project's 2-core "
              f"CPU (TensorFlow), with fixed iterations; predicted from the times measured here under a load "
              f"average of 5-7 (CPU_MEASURED). Load changes the wall time, never the figures.")
        print("| row | iterations | of the paper's | s/iter | first iter (s) | val + eval 600 tasks (s) "
              "| predicted (s) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        total = CPU_OVERHEAD_S
        for name, steps in plan.items():
            m = CPU_MEASURED[name]
            predicted = cpu_predicted_s(name, steps)
            total += predicted
            print(f"| {name} | {steps} | {100 * steps / PAPER_ITERATIONS:.1f}% | {m['s_per_step']:.2f} | "
                  f"{m['first_step_s']:.0f} | {m['val_s'] + m['eval_600_s']:.0f} | {predicted:.0f} |")
        print(f"Predicted total {total:.0f} s ({total / 60:.1f} min, with {CPU_OVERHEAD_S:.0f} s of loading) "
              f"against {budget // 60} min.")
        for name, row in ROWS.items():
            if name in plan:
                continue
            problem = data_problem(row, data_dir)
            if problem and row.dataset != "omniglot":
                reason = problem
            elif name in CPU_MEASURED:
                m = CPU_MEASURED[name]
                reason = (f"measured {m['s_per_step']:.1f} s/iter, first iteration {m['first_step_s']:.0f} s and "
                          f"{m['val_s'] + m['eval_600_s']:.0f} s to validate and score: "
                          f"{cpu_predicted_s(name, 100) / 60:.0f} min for 100 iterations beside the plan's rows")
            else:
                reason = CPU_20WAY
            print(f"{name}: not in the CPU plan; {reason}")
        print("The paper's 60,000 iterations at the measured rates: "
              + ", ".join(f"{name} {PAPER_ITERATIONS * m['s_per_step'] / 3600:.0f} h"
                          for name, m in CPU_MEASURED.items())
              + ". What the partial schedule predicts: each row's accuracy under the paper's "
                "protocol after a small fraction of its iterations, expected below the paper's figure, not an "
                "estimate of it; the interval says whether the partial run already reaches it.")
        command = (".venv/bin/python benchmarks/paper_tables.py --rows " + " ".join(plan)
                   + " --steps " + " ".join(str(v) for v in plan.values()))
        print(f"Run it: {command}")
        return

    plan, budget = GPU_PLAN, GPU_BUDGET_S
    m = GPU_MEASURED
    print(f"GPU plan: one {budget // 60}-minute device lease (Keras on JAX: the path measured there; MAML's tasks "
          f"vectorized, exact float32). Predicted from the {m['s_per_step'] * 1000:.1f} ms per iteration of "
          f"second-order MAML 5-way 1-shot (5 queries per class, meta-batch 32) measured on one H100 (RESULTS.md, "
          f"GPU; machines of one kind differed by about 20%, and a lent machine may be another model), scaled per "
          f"row (gpu_seconds_per_step: the larger of the image ratio and the sequential-pass ratio; only that one "
          f"configuration was measured).")
    print("| row | iterations | of the paper's | predicted s/iter | train (s) | first iter + eval (s) | predicted (s) "
          "| paper's 60k (h) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    total = GPU_OVERHEAD_S
    for name, steps in plan.items():
        per = gpu_seconds_per_step(ROWS[name])
        train_s = steps * per
        extra = m["first_step_s"] + GPU_EVAL_S
        total += train_s + extra
        print(f"| {name} | {steps} | {100 * steps / PAPER_ITERATIONS:.0f}% | {per:.4f} | {train_s:.0f} | {extra:.0f} | "
              f"{train_s + extra:.0f} | {PAPER_ITERATIONS * per / 3600:.2f} |")
    print(f"Predicted device time {total:.0f} s ({total / 60:.1f} min) against {budget // 60} min, of which "
          f"{GPU_OVERHEAD_S:.0f} s is the machine's start, installing the wheels and decoding Omniglot; the training "
          f"command alone {total - GPU_OVERHEAD_S:.0f} s, under the tool's 600 s per call.")
    for name, row in ROWS.items():
        if name in plan:
            continue
        problem = data_problem(row, data_dir)
        per = gpu_seconds_per_step(row)
        reason = problem or "does not fit this lease"
        print(f"{name}: not in this plan ({reason}); predicted {per:.4f} s/iter, the paper's 60k iterations in "
              f"{PAPER_ITERATIONS * per / 3600:.2f} h")
    print("What the partial schedule predicts: 5-way rows at 8-20% of the paper's iterations, so each figure measures "
          "the protocol's accuracy part way, expected below the paper's (the paper's 60k would take the hours in the "
          "last column); the 20-way rows' full schedules take about 1 and 3.4 hours by this scaling and need leases "
          "of their own.")
    command = (f"python3 benchmarks/paper_tables.py --rows {' '.join(plan)} --steps "
               f"{' '.join(str(v) for v in plan.values())} --data-dir data")
    print(f"Run it there (the device image has JAX, no TensorFlow; gpu_device.sh sets KERAS_BACKEND=jax): here "
          f"`bash benchmarks/gpu_device.sh fetch` and copy the Omniglot zips (14 MB) to an ignored data/omniglot/; "
          f"there, carrying .whl and data, `GPU_LOG=paper.log bash benchmarks/gpu_device.sh exec {command}`.")


# ----------------------------------------------------------------------------------------------------------
# Running rows
# ----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=None,
                        help="Rows to run (default: the CPU plan's rows).")
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="Meta-training iterations: one value for every row or one per --rows value (default: "
                             "the CPU plan's iterations of each row; the paper's are 60000).")
    parser.add_argument("--plan", choices=("cpu", "gpu"), default=None,
                        help="Print the plan (rows, fixed iterations, predicted times) and exit without training.")
    parser.add_argument("--test-episodes", type=int, default=600,
                        help="Fixed test tasks per row (600, as the paper's code).")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.plan:
        return args
    args.rows = args.rows or list(CPU_PLAN)
    fix_steps(parser, args, [CPU_PLAN.get(name, 0) for name in args.rows])
    if len(args.steps) not in (1, len(args.rows)):
        parser.error(f"--steps takes one value, or one per --rows value ({len(args.rows)}). "
                     f"Received: --steps {' '.join(map(str, args.steps))}")
    args.steps_by_row = {name: (args.steps[0] if len(args.steps) == 1 else args.steps[i])
                         for i, name in enumerate(args.rows)}
    missing = [name for name, steps in args.steps_by_row.items() if steps < 1]
    if missing:
        parser.error(f"rows outside the CPU plan need --steps. Received: --rows {' '.join(args.rows)} without "
                     f"--steps for {', '.join(missing)}")
    return args


def overlap(a: float, a_ci: float, b: float, b_ci: float) -> bool:
    """Whether the 95% intervals ``a ± a_ci`` and ``b ± b_ci`` overlap."""
    return abs(a - b) <= a_ci + b_ci


def run_row(services: Any, row: Row, steps: int, args: argparse.Namespace) -> dict[str, Any]:
    """Trains ``row`` for ``steps`` iterations and scores it on the fixed test tasks."""
    from _common import describe_data, restore, train
    from metalab.core.engine.evaluation import evaluate_batch, fixed_episode_set

    raw = row.config(steps, args.seed)
    data = describe_data(services, raw["dataset"], raw["dataset_params"], row.name)
    trained = train(services, raw, label=row.name, max_minutes=args.max_minutes, print_every=max(steps // 10, 1))
    t0 = time.perf_counter()
    session = restore(services, trained["run_id"], ways=row.ways, shots=row.shots, queries=row.test_queries)
    result = evaluate_batch(session, fixed_episode_set(session, "test", args.test_episodes))
    eval_s = time.perf_counter() - t0
    return {"trained": trained, "accuracy": result["accuracy"], "ci95": result["ci95"],
            "episodes": result["episodes"], "eval_s": eval_s, "data": data}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plan:
        print_plan(args.plan, Path(args.data_dir).resolve())
        return 0

    from _common import (Environment, machine_line, make_services, print_machine_note, print_provenance,
                         print_result, provenance)

    prov = provenance(argv)
    available = {}
    for name in args.rows:
        problem = data_problem(ROWS[name], Path(args.data_dir).resolve())
        if problem:
            print(f"[{name}] skipped: {problem}", flush=True)
        else:
            available[name] = args.steps_by_row[name]
    if not available:
        print("No row has its data here: nothing to run.", flush=True)
        return 1
    env = Environment(args.data_dir, args.home)
    t_start = time.perf_counter()
    rows_out: list[dict[str, Any]] = []
    try:
        print(f"MAML paper tables ({PAPER}): rows "
              + ", ".join(f"{name} {steps} iterations" for name, steps in available.items())
              + f" (the paper: {PAPER_ITERATIONS})"
              + (f", each capped at {args.max_minutes:g} min" if args.max_minutes else "")
              + f"; seed {args.seed}; {args.test_episodes} fixed test tasks per row; data {env.data_dir}", flush=True)
        print_provenance(prov)
        note_start = print_machine_note("start")
        services = make_services()
        for name, steps in available.items():
            row = ROWS[name]
            print(f"\n== {name}: {row.ways}-way {row.shots}-shot, meta-batch {row.meta_batch_size}, "
                  f"{row.inner_steps} inner step(s) of {row.inner_lr} ({row.eval_inner_steps} at test), "
                  f"{row.train_queries} queries per class in training and {row.test_queries} at test, {steps} "
                  f"iterations ==", flush=True)
            out = run_row(services, row, steps, args)
            trained = out["trained"]
            acc, ci = 100 * out["accuracy"], 100 * out["ci95"]
            paper, paper_ci = row.paper
            payload = {
                "benchmark": "paper_tables", "row": name, "accuracy": out["accuracy"], "ci95": out["ci95"],
                "episodes": out["episodes"], "paper_accuracy": paper / 100, "paper_ci95": paper_ci / 100,
                "overlaps_paper": overlap(acc, ci, paper, paper_ci), "steps": trained["steps"],
                "steps_requested": steps, "paper_steps": PAPER_ITERATIONS, "capped": trained["capped"],
                "result": result_status(trained["capped"]), "seed": args.seed, "train_s": trained["train_s"],
                "eval_s": out["eval_s"], "val_accuracy": trained["val_accuracy"], "data": out["data"],
                "config": {k: v for k, v in row.config(steps, args.seed).items() if k.endswith("params")
                           or k in ("ways", "shots", "queries")},
            }
            rows_out.append(payload)
            print(f"[{name}] accuracy {acc:.2f}% ± {ci:.2f} over {out['episodes']} tasks after {trained['steps']} "
                  f"iterations ({trained['train_s']:.0f} s; eval {out['eval_s']:.0f} s); paper {paper}% ± {paper_ci} "
                  f"after {PAPER_ITERATIONS}" + (f"; {CAPPED}" if trained["capped"] else ""), flush=True)
            print_result(payload)

        note_end = print_machine_note("end")
        total_s = time.perf_counter() - t_start
        print(f"\n| row | metalab (95% CI) | paper (95% CI) | intervals overlap | iterations (paper: "
              f"{PAPER_ITERATIONS}) | train wall (s) | eval wall (s) |")
        print("|---|---:|---:|---|---:|---:|---:|")
        for r in rows_out:
            ours = f"{100 * r['accuracy']:.2f}% ± {100 * r['ci95']:.2f}" + (f" ({CAPPED})" if r["capped"] else "")
            print(f"| {r['row']} | {ours} | {100 * r['paper_accuracy']:.2f}% ± {100 * r['paper_ci95']:.2f} | "
                  f"{'yes' if r['overlaps_paper'] else 'no'} | {r['steps']} | {r['train_s']:.0f} | {r['eval_s']:.0f} |")
        for name in args.rows:
            if name not in available:
                print(f"| {name} | skipped: data not available | {ROWS[name].paper[0]:.2f}% ± "
                      f"{ROWS[name].paper[1]:.2f} | - | - | - | - |")
        print(f"Total wall time {total_s:.0f} s.", flush=True)
        capped = any(r["capped"] for r in rows_out)
        print_result({"benchmark": "paper_tables", "rows": rows_out, "skipped": [n for n in args.rows
                                                                               if n not in available],
                      "seed": args.seed, "max_minutes": args.max_minutes, "capped": capped,
                      "result": result_status(capped), "total_s": total_s, **prov,
                      "machine_line": machine_line(note_start), "machine": {"start": note_start, "end": note_end}})
        if capped:
            print(f"A run reached its time cap: its figures are marked '{CAPPED}'.", flush=True)
            return EXIT_CAPPED
        return 0
    finally:
        env.close()


if __name__ == "__main__":
    raise SystemExit(main())

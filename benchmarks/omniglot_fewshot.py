"""Omniglot few-shot benchmark: Prototypical Networks on the standard 5-/20-way, 1-/5-shot protocol, on CPU.

Protocol (Vinyals et al. 2016; Snell, Swersky & Zemel 2017): 28x28 images, every character under 0/90/180/270
degrees is its own class, 1200 training characters (4800 classes) and the remaining characters for test; the
meta-test score is the mean query accuracy over fixed test episodes (600 by default) with a 95% confidence interval.

As in the paper, one model is trained per shot (1-shot and 5-shot episodes, 5 queries per class) and each is
scored on 5-way and 20-way test episodes of its shot, 15 queries per class. The paper trains 60-way episodes to
convergence on a GPU; here training is 20-way by default and bounded by a time budget on CPU, so expect lower
figures than the paper's at small budgets (raise ``--budget-minutes`` or ``--steps`` to approach them).

Training goes through metalab's runner (``Services.train``; a time budget stops a run through the runner's cancel,
which checkpoints); scoring restores the checkpoint into a session of the test episode shape and uses the runner's
fixed test episodes and ``evaluate_batch`` (mean, 95% CI).

Example:
    python benchmarks/omniglot_fewshot.py --budget-minutes 7 > fewshot.log 2>&1

One ``RESULT {json}`` line is printed per setting, and a last ``RESULT`` line with everything.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _common import Environment, add_common_args, make_services, print_machine_note, print_result, restore, train

#: Snell, Swersky & Zemel 2017, Table 1 (Omniglot, Euclidean distance, 60-way training), by (ways, shots).
PAPER = {(5, 1): 0.988, (5, 5): 0.997, (20, 1): 0.960, (20, 5): 0.989}

#: Steps for a budget-only run: the time budget, not this, ends training.
UNBOUNDED_STEPS = 1_000_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="Training time for all models together, split equally between the 1-shot and the "
                             "5-shot model (evaluation comes on top and is timed separately). Default: 20 when "
                             "--steps is not given.")
    parser.add_argument("--steps", type=int, default=None,
                        help="Meta-training episodes per model (with --budget-minutes, whichever ends first).")
    parser.add_argument("--train-ways", type=int, default=20,
                        help="Classes per training episode (default 20; the paper uses 60).")
    parser.add_argument("--train-queries", type=int, default=5, help="Query images per class in training (5).")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="Models to train, by shot (1 5).")
    parser.add_argument("--eval-ways", type=int, nargs="+", default=[5, 20], help="Test episode ways (5 20).")
    parser.add_argument("--test-episodes", type=int, default=600,
                        help="Fixed test episodes per setting (600; the paper's code averages 1000).")
    parser.add_argument("--test-queries", type=int, default=15, help="Query images per class in test (15).")
    parser.add_argument("--train-characters", type=int, default=1200,
                        help="Training characters of the vinyals split (1200, as in the paper).")
    parser.add_argument("--val-characters", type=int, default=5,
                        help="Characters held out for the runner's periodic validation (default 5: 20 classes "
                             "with rotations, enough for 20-way episodes); the rest are test.")
    add_common_args(parser, train_minutes=False)
    args = parser.parse_args(argv)
    if args.budget_minutes is None and args.steps is None:
        args.budget_minutes = 20.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = Environment(args.data_dir, args.home)
    t_start = time.perf_counter()
    per_model_minutes = None if args.budget_minutes is None else args.budget_minutes / len(args.shots)
    steps = args.steps or UNBOUNDED_STEPS
    try:
        test_chars = 1623 - args.train_characters - args.val_characters
        print(f"Omniglot few-shot (Snell et al. 2017 protocol): ProtoNets, vinyals split "
              f"{args.train_characters}/{args.val_characters}/{test_chars} characters (train/val/test, x4 "
              f"rotations); training {args.train_ways}-way K-shot {args.train_queries}-query, one model per K in "
              f"{args.shots}; "
              + (f"budget {args.budget_minutes:g} min of training ({per_model_minutes:g} per model)"
                 if per_model_minutes else "no time budget")
              + (f", at most {args.steps} steps per model" if args.steps else "")
              + f"; test: {args.test_episodes} fixed episodes, {args.test_queries} queries per class; "
              f"data {env.data_dir}; METALAB_HOME {env.home}", flush=True)
        note_start = print_machine_note("start")
        services = make_services()
        dataset_params = {"split": "vinyals", "rotations": True, "train_characters": args.train_characters,
                          "val_characters": args.val_characters}

        settings: list[dict[str, Any]] = []
        for shots in args.shots:
            label = f"{args.train_ways}w{shots}s"
            print(f"\n== train the {shots}-shot model ({args.train_ways}-way {shots}-shot "
                  f"{args.train_queries}-query episodes) ==", flush=True)
            # Validation and checkpoints every ~500 steps; a budget-only run may stop anywhere.
            every = min(500, steps)
            raw = {
                "dataset": "metalab.omniglot", "algorithm": "metalab.protonet", "dataset_params": dataset_params,
                "ways": args.train_ways, "shots": shots, "queries": args.train_queries,
                "steps": steps, "seed": args.seed, "val_every": every, "val_episodes": 50,
                "checkpoint_every": every, "log_every": 50, "eval_at_end": False,
            }
            trained = train(services, raw, label=label, train_minutes=per_model_minutes, print_every=250)
            print(f"[{label}] trained {trained['steps']} steps in {trained['train_s']:.1f} s ({trained['status']})",
                  flush=True)
            from metalab.core.engine.evaluation import evaluate_batch, fixed_batch

            for ways in args.eval_ways:
                t0 = time.perf_counter()
                session = restore(services, trained["run_id"], ways=ways, shots=shots, queries=args.test_queries)
                batch = fixed_batch(session, "test", args.test_episodes)
                result = evaluate_batch(session, batch)
                eval_s = time.perf_counter() - t0
                paper = PAPER.get((ways, shots))
                row = {
                    "benchmark": "omniglot_fewshot", "ways": ways, "shots": shots,
                    "accuracy": result["accuracy"], "ci95": result["ci95"], "episodes": result["episodes"],
                    "paper_accuracy": paper, "train_ways": args.train_ways, "train_queries": args.train_queries,
                    "test_queries": args.test_queries, "steps": trained["steps"], "train_s": trained["train_s"],
                    "eval_s": eval_s, "status": trained["status"], "seed": args.seed,
                }
                settings.append(row)
                print(f"[{ways}-way {shots}-shot] accuracy {100 * result['accuracy']:.2f}% "
                      f"± {100 * result['ci95']:.2f} over {result['episodes']} episodes (paper "
                      f"{100 * paper:.1f}%); model trained {trained['steps']} steps in {trained['train_s']:.0f} s; "
                      f"eval {eval_s:.1f} s", flush=True)
                print_result(row)

        note_end = print_machine_note("end")
        total_s = time.perf_counter() - t_start
        print("\n| setting | ours (95% CI) | paper | training | train wall (s) | eval wall (s) |")
        print("|---|---:|---:|---|---:|---:|")
        for r in settings:
            paper = f"{100 * r['paper_accuracy']:.1f}%" if r["paper_accuracy"] is not None else "-"
            print(f"| {r['ways']}-way {r['shots']}-shot | {100 * r['accuracy']:.2f}% ± {100 * r['ci95']:.2f} | "
                  f"{paper} | {r['train_ways']}-way {r['shots']}-shot, {r['steps']} steps | {r['train_s']:.0f} | "
                  f"{r['eval_s']:.1f} |")
        print(f"Total wall time {total_s:.0f} s.", flush=True)
        print_result({"benchmark": "omniglot_fewshot", "settings": settings, "budget_minutes": args.budget_minutes,
                      "steps_requested": args.steps, "total_s": total_s,
                      "machine": {"start": note_start, "end": note_end}})
        return 0
    finally:
        env.close()


if __name__ == "__main__":
    raise SystemExit(main())

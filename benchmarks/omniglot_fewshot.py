"""Omniglot few-shot benchmark: Prototypical Networks on the standard 5-/20-way, 1-/5-shot protocol, on CPU.

Protocol (Vinyals et al. 2016; Snell, Swersky & Zemel 2017): 28x28 images, every character under 0/90/180/270
degrees is its own class, 1200 training characters (4800 classes) and the remaining characters for test; the
meta-test score is the mean query accuracy over fixed test episodes (600 by default) with a 95% confidence interval.
The script prints the characters, classes and alphabets of every split as loaded.

As in the paper, one model is trained per shot (1-shot and 5-shot episodes, 5 queries per class) and each is
scored on 5-way and 20-way test episodes of its shot, 15 queries per class. The paper trains 60-way episodes to
convergence on a GPU; here training is 20-way by default for a fixed number of steps on CPU, so expect lower
figures than the paper's at small step counts.

Training goes through metalab's runner (``Services.train``) for fixed ``--steps`` (``--max-minutes`` only caps: a
run stopped by it is marked "capped: not a result"); scoring restores the checkpoint into a session of the test
episode shape and uses the runner's fixed test episodes and ``evaluate_batch`` (mean, 95% CI).

Example:
    .venv/bin/python benchmarks/omniglot_fewshot.py --steps 500 250 > fewshot.log 2>&1

One ``RESULT {json}`` line is printed per setting, and a last ``RESULT`` line with everything. Exit status 3 when
a run reached its time cap.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _common import (CAPPED, EXIT_CAPPED, Environment, add_common_args, describe_data, fix_steps, make_services,
                     machine_line, print_machine_note, print_provenance, print_result, provenance, restore,
                     result_status, train)

#: Snell, Swersky & Zemel 2017, Table 1 (Omniglot, Euclidean distance, 60-way training), by (ways, shots).
PAPER = {(5, 1): 0.988, (5, 5): 0.997, (20, 1): 0.960, (20, 5): 0.989}

#: Training steps per model, by shot, when --steps is not given: the step counts of the figures in RESULTS.md
#: (about 5 minutes each on 2 cores shared with other jobs; far from convergence).
DEFAULT_STEPS = {1: 500, 5: 250}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="Meta-training episodes per model: one value for every model, or one per --shots "
                             f"value (default {' '.join(str(v) for v in DEFAULT_STEPS.values())} for shots "
                             f"{' '.join(str(k) for k in DEFAULT_STEPS)}; 250 for another shot).")
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
    add_common_args(parser)
    args = parser.parse_args(argv)
    fix_steps(parser, args, [DEFAULT_STEPS.get(k, 250) for k in args.shots])
    if len(args.steps) not in (1, len(args.shots)):
        parser.error(f"--steps takes one value, or one per --shots value ({len(args.shots)}). "
                     f"Received: --steps {' '.join(map(str, args.steps))} --shots {' '.join(map(str, args.shots))}")
    args.steps_by_shot = {k: (args.steps[0] if len(args.steps) == 1 else args.steps[i])
                          for i, k in enumerate(args.shots)}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prov = provenance(argv)
    env = Environment(args.data_dir, args.home)
    t_start = time.perf_counter()
    try:
        print(f"Omniglot few-shot (Snell et al. 2017 protocol): ProtoNets, vinyals split with "
              f"{args.train_characters} training and {args.val_characters} validation characters (x4 rotations); "
              f"training {args.train_ways}-way K-shot {args.train_queries}-query, one model per K: "
              + ", ".join(f"{k}-shot {n} steps" for k, n in args.steps_by_shot.items())
              + (f" (capped at {args.max_minutes:g} min each)" if args.max_minutes else "")
              + f", seed {args.seed}; test: {args.test_episodes} fixed episodes, {args.test_queries} queries per "
              f"class; data {env.data_dir}; METALAB_HOME {env.home}", flush=True)
        print_provenance(prov)
        note_start = print_machine_note("start")
        services = make_services()
        dataset_params = {"split": "vinyals", "rotations": True, "train_characters": args.train_characters,
                          "val_characters": args.val_characters}
        data = describe_data(services, "metalab.omniglot", dataset_params, "vinyals")

        settings: list[dict[str, Any]] = []
        for shots in args.shots:
            steps = args.steps_by_shot[shots]
            label = f"{args.train_ways}w{shots}s"
            print(f"\n== train the {shots}-shot model ({args.train_ways}-way {shots}-shot "
                  f"{args.train_queries}-query episodes, {steps} steps) ==", flush=True)
            every = min(500, steps)
            raw = {
                "dataset": "metalab.omniglot", "algorithm": "metalab.protonet", "dataset_params": dataset_params,
                "ways": args.train_ways, "shots": shots, "queries": args.train_queries,
                "steps": steps, "seed": args.seed, "val_every": every, "val_episodes": 50,
                "checkpoint_every": every, "log_every": 50, "eval_at_end": False,
            }
            trained = train(services, raw, label=label, max_minutes=args.max_minutes, print_every=250)
            print(f"[{label}] trained {trained['steps']} of {steps} steps in {trained['train_s']:.1f} s "
                  f"({trained['status']})", flush=True)
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
                    "test_queries": args.test_queries, "steps": trained["steps"], "steps_requested": steps,
                    "capped": trained["capped"], "result": result_status(trained["capped"]),
                    "train_s": trained["train_s"], "eval_s": eval_s, "status": trained["status"], "seed": args.seed,
                }
                settings.append(row)
                paper_text = f"{100 * paper:.1f}%" if paper is not None else "-"
                print(f"[{ways}-way {shots}-shot] accuracy {100 * result['accuracy']:.2f}% "
                      f"± {100 * result['ci95']:.2f} over {result['episodes']} episodes (paper {paper_text}); "
                      f"model trained {trained['steps']} steps in {trained['train_s']:.0f} s; eval {eval_s:.1f} s"
                      + (f"; {CAPPED}" if trained["capped"] else ""), flush=True)
                print_result(row)

        note_end = print_machine_note("end")
        total_s = time.perf_counter() - t_start
        print("\n| setting | ours (95% CI) | paper | training | train wall (s) | eval wall (s) |")
        print("|---|---:|---:|---|---:|---:|")
        for r in settings:
            paper = f"{100 * r['paper_accuracy']:.1f}%" if r["paper_accuracy"] is not None else "-"
            ours = f"{100 * r['accuracy']:.2f}% ± {100 * r['ci95']:.2f}" + (f" ({CAPPED})" if r["capped"] else "")
            print(f"| {r['ways']}-way {r['shots']}-shot | {ours} | {paper} | {r['train_ways']}-way "
                  f"{r['shots']}-shot, {r['steps']} steps | {r['train_s']:.0f} | {r['eval_s']:.1f} |")
        print(f"Total wall time {total_s:.0f} s.", flush=True)
        capped = any(r["capped"] for r in settings)
        print_result({"benchmark": "omniglot_fewshot", "settings": settings, "data": data,
                      "steps_requested": args.steps_by_shot, "max_minutes": args.max_minutes, "seed": args.seed,
                      "capped": capped, "result": result_status(capped), "total_s": total_s, **prov,
                      "machine_line": machine_line(note_start), "machine": {"start": note_start, "end": note_end}})
        if capped:
            print(f"A run reached its time cap: its figures are marked '{CAPPED}'.", flush=True)
            return EXIT_CAPPED
        return 0
    finally:
        env.close()


if __name__ == "__main__":
    raise SystemExit(main())

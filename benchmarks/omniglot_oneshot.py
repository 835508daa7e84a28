"""Omniglot one-shot benchmark: Lake et al.'s 20 within-alphabet 20-way runs, scored by Prototypical Networks.

Training conditions (Lake, Salakhutdinov & Tenenbaum 2015, Science 350:1332):

- ``minimal1`` and ``minimal2``: Lake et al.'s minimal condition, run as the paper defines it: ProtoNets
  meta-trained on ``images_background_small1`` alone, and separately on ``images_background_small2`` alone (5
  alphabets each); the two are reported each and as their mean (per run, the mean of the two models' errors);
- ``background``: meta-trained on the full background set (``images_background``, 30 alphabets);
- ``union`` (not one of Lake et al.'s conditions, not run by default): on small1 + small2 together;

in each, ``--val-alphabets`` of the training alphabets are held out for the runner's periodic validation (which
steers nothing), so training sees the rest: the script prints the characters, classes and alphabets of every split
as loaded. Each trained model is scored on the 20 one-shot runs of ``all_runs.zip`` (drawn from the evaluation
alphabets): per run the 20 training images are the support set (one per class, labels 0..19) and each of the 20
test images is classified by its nearest prototype. People err 4.5% on this task.

Training goes through metalab's runner (``Services.train``) for a fixed number of steps (``--max-minutes`` only
caps: a run stopped by it is marked "capped: not a result"); scoring restores the run's checkpoint into a
20-way session and calls the algorithm's own ``evaluate`` on a TaskBatch holding the 20 runs as 20 tasks.

Example:
    .venv/bin/python benchmarks/omniglot_oneshot.py --steps 500 > oneshot.log 2>&1

One ``RESULT {json}`` line is printed per condition (and one for the minimal mean), and a last one with
everything. Exit status 3 when a run reached its time cap.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from _common import (CAPPED, EXIT_CAPPED, Environment, add_common_args, describe_data, fix_steps, make_services,
                     machine_line, mean_ci95, print_machine_note, print_provenance, print_result, provenance,
                     restore, result_status, train)

#: Mean error of people on the 20 runs (Lake et al. 2015).
HUMAN_ERROR = 0.045

#: Steps per condition when --steps is not given (the step count of the figures in RESULTS.md).
DEFAULT_STEPS = 500

#: condition: (the Omniglot dataset's split option, the training source as Lake et al. name it).
CONDITIONS = {
    "minimal1": ("minimal1", "images_background_small1 alone (Lake et al.'s minimal condition, first subset)"),
    "minimal2": ("minimal2", "images_background_small2 alone (Lake et al.'s minimal condition, second subset)"),
    "background": ("background_evaluation", "images_background (Lake et al.'s background condition)"),
    "union": ("minimal", "images_background_small1 + small2 together (not one of Lake et al.'s conditions)"),
}
DEFAULT_CONDITIONS = ["minimal1", "minimal2", "background"]
#: The mean of Lake et al.'s two minimal subsets, reported when both ran.
MINIMAL_MEAN = "minimal"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None,
                        help=f"Meta-training episodes per condition (default {DEFAULT_STEPS}; 20-way 1-shot "
                             "5-query training ran 4-12 steps/s on 2 shared CPU cores).")
    parser.add_argument("--ways", type=int, default=20,
                        help="Classes per training episode (default 20; the paper trains Omniglot 60-way, "
                             "which costs three times as much per step on CPU).")
    parser.add_argument("--shots", type=int, default=1, help="Support images per class in training (default 1).")
    parser.add_argument("--queries", type=int, default=5,
                        help="Query images per class in training (default 5, as in the paper).")
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=DEFAULT_CONDITIONS,
                        help="Training conditions to run (default: minimal1 minimal2 background).")
    parser.add_argument("--val-alphabets", type=int, default=1,
                        help="Training alphabets held out for the runner's validation in every condition (default "
                             "1, the fewest the dataset allows: Lake et al. train on all of them).")
    parser.add_argument("--no-rotations", action="store_true",
                        help="Train without the 90-degree rotation classes (default: with them).")
    add_common_args(parser)
    args = parser.parse_args(argv)
    fix_steps(parser, args, DEFAULT_STEPS)
    return args


def runs_batch(runs: list[dict[str, Any]], to_float: Any) -> Any:
    """The 20 one-shot runs as one TaskBatch of 20 tasks (support: training images 0..19; query: test images)."""
    from metalab.core.contract.specs import TaskBatch

    support_x = np.stack([to_float(r["train_images"]) for r in runs])
    query_x = np.stack([to_float(r["test_images"]) for r in runs])
    ways = support_x.shape[1]
    support_y = np.tile(np.arange(ways, dtype=np.int32), (len(runs), 1))
    query_y = np.stack([np.asarray(r["answers"], dtype=np.int32) for r in runs])
    return TaskBatch(support_x=support_x, support_y=support_y, query_x=query_x, query_y=query_y)


def score_runs(services: Any, run_id: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Restores the trained run as a 20-way ProtoNet and classifies every run's test images."""
    from metalab.core.engine import functional
    from metalab.core.engine.evaluation import compile_evaluate, evaluate_batch

    t0 = time.perf_counter()
    ways = len(runs[0]["train_images"])
    session = restore(services, run_id, ways=ways, shots=1, queries=1)
    batch = runs_batch(runs, session.dataset.to_float)
    out = compile_evaluate(session.algorithm)(*batch.as_tuple())
    accuracy = np.asarray(functional.to_numpy(out["accuracy"]), dtype=np.float64)
    predictions = np.argmax(functional.to_numpy(out["predictions"]), axis=-1)
    # Count the errors from the predicted classes too: the error rate is a count out of 20 per run.
    wrong = (predictions != np.asarray(batch.query_y)).sum(axis=1)
    errors = wrong / batch.query_y.shape[1]
    if not np.allclose(errors, 1.0 - accuracy, atol=1e-6):
        raise RuntimeError(f"Errors from predictions and from evaluate's accuracy disagree. Received: "
                           f"errors={errors.tolist()}, accuracy={accuracy.tolist()}")
    # The runner's own protocol (mean and 95% CI over the tasks of a batch) must give the same mean.
    summary = evaluate_batch(session, batch)
    if abs(summary["accuracy"] - accuracy.mean()) > 1e-6:
        raise RuntimeError(f"evaluate_batch disagrees with the per-run scores. Received: {summary['accuracy']} vs "
                           f"{accuracy.mean()}")
    return {
        "errors": errors.tolist(),
        "wrong": wrong.astype(int).tolist(),
        "mean_error": float(errors.mean()),
        "ci95": float(summary["ci95"]),
        "eval_s": time.perf_counter() - t0,
    }


def minimal_mean(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Lake et al.'s minimal condition over its two subsets: per run the mean of the two models' errors."""
    per_run = np.mean([results["minimal1"]["errors"], results["minimal2"]["errors"]], axis=0)
    mean, ci95 = mean_ci95(per_run)
    capped = results["minimal1"]["capped"] or results["minimal2"]["capped"]
    return {"errors": per_run.tolist(), "mean_error": mean, "ci95": ci95, "capped": capped,
            "steps": [results["minimal1"]["steps"], results["minimal2"]["steps"]]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prov = provenance(argv)
    env = Environment(args.data_dir, args.home)
    t_start = time.perf_counter()
    try:
        print(f"Omniglot one-shot (Lake et al. 2015): ProtoNets, {args.ways}-way {args.shots}-shot "
              f"{args.queries}-query training episodes, {args.steps} steps per condition"
              + (f" (capped at {args.max_minutes:g} min each)" if args.max_minutes else "")
              + f", seed {args.seed}; data {env.data_dir}; METALAB_HOME {env.home}", flush=True)
        print_provenance(prov)
        note_start = print_machine_note("start")
        services = make_services()
        from metalab.plugins.omniglot import load_oneshot_runs

        runs = load_oneshot_runs(services.settings.data_context(), image_size=28)
        print(f"Loaded {len(runs)} one-shot runs ({runs[0]['train_images'].shape[0]}-way) from all_runs.zip",
              flush=True)

        train_episode = {"ways": args.ways, "shots": args.shots, "queries": args.queries,
                         "rotations": not args.no_rotations}
        results: dict[str, Any] = {}
        for condition in args.conditions:
            split, source = CONDITIONS[condition]
            print(f"\n== {condition}: meta-train on {source} (split={split}) ==", flush=True)
            dataset_params = {"split": split, "rotations": not args.no_rotations,
                              "val_alphabets": args.val_alphabets}
            data = describe_data(services, "metalab.omniglot", dataset_params, condition)
            raw = {
                "dataset": "metalab.omniglot",
                "algorithm": "metalab.protonet",
                "dataset_params": dataset_params,
                "ways": args.ways, "shots": args.shots, "queries": args.queries,
                "steps": args.steps, "seed": args.seed,
                # Validation steers nothing here (no early stopping); a few episodes now and then show progress.
                "val_every": max(args.steps // 5, 1), "val_episodes": 50,
                "checkpoint_every": max(args.steps // 5, 1), "log_every": 50,
                "eval_at_end": False,
            }
            trained = train(services, raw, label=condition, max_minutes=args.max_minutes)
            scored = score_runs(services, trained["run_id"], runs)
            results[condition] = {**trained, **scored, "data": data}
            del results[condition]["config"]
            print(f"[{condition}] trained {trained['steps']} of {args.steps} steps in {trained['train_s']:.1f} s "
                  f"({trained['status']}); scored the 20 runs in {scored['eval_s']:.1f} s", flush=True)
            print(f"[{condition}] errors per run (of 20 test images): "
                  + " ".join(f"{r['run'][-2:]}:{w}" for r, w in zip(runs, scored["wrong"])), flush=True)
            print(f"[{condition}] mean error {100 * scored['mean_error']:.1f}% "
                  f"(95% CI ±{100 * scored['ci95']:.1f} over runs); people: {100 * HUMAN_ERROR:.1f}%"
                  + (f"; {CAPPED}" if trained["capped"] else ""), flush=True)
            print_result({
                "benchmark": "omniglot_oneshot", "condition": condition, "split": split,
                "mean_error": scored["mean_error"], "ci95": scored["ci95"], "errors": scored["errors"],
                "steps": trained["steps"], "steps_requested": args.steps, "capped": trained["capped"],
                "result": result_status(trained["capped"]), "seed": args.seed, "data": data,
                "train_episode": train_episode, "train_s": trained["train_s"], "eval_s": scored["eval_s"],
            })

        summary = dict(results)
        if "minimal1" in results and "minimal2" in results:
            summary[MINIMAL_MEAN] = minimal_mean(results)
            m = summary[MINIMAL_MEAN]
            print(f"\n[minimal] Lake et al.'s minimal condition, mean of minimal1 and minimal2 (per run, the mean of "
                  f"the two models' errors): {100 * m['mean_error']:.1f}% (95% CI ±{100 * m['ci95']:.1f} over runs)"
                  + (f"; {CAPPED}" if m["capped"] else ""), flush=True)
            print_result({
                "benchmark": "omniglot_oneshot", "condition": MINIMAL_MEAN, "of": ["minimal1", "minimal2"],
                "mean_error": m["mean_error"], "ci95": m["ci95"], "errors": m["errors"], "steps": m["steps"],
                "steps_requested": args.steps, "capped": m["capped"], "result": result_status(m["capped"]),
                "seed": args.seed, "train_episode": train_episode,
            })

        note_end = print_machine_note("end")
        total_s = time.perf_counter() - t_start
        print("\n| condition | trained on (counted from the loaded data) | steps | train wall (s) | mean error "
              "| 95% CI | people |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for condition, r in summary.items():
            if condition == MINIMAL_MEAN:
                trained_on, steps, wall = "mean of minimal1 and minimal2, per run", "-", "-"
            else:
                d = r["data"]["train"]
                trained_on = (f"{CONDITIONS[condition][1].split(' (')[0]}: {d['characters']} characters of "
                              f"{d['alphabets']} alphabets ({d['classes']} classes)")
                steps, wall = str(r["steps"]), f"{r['train_s']:.0f}"
            error = f"{100 * r['mean_error']:.1f}%" + (f" ({CAPPED})" if r["capped"] else "")
            print(f"| {condition} | {trained_on} | {steps} | {wall} | {error} | ±{100 * r['ci95']:.1f} "
                  f"| {100 * HUMAN_ERROR:.1f}% |")
        print(f"Total wall time {total_s:.0f} s.", flush=True)
        capped = any(r["capped"] for r in summary.values())
        print_result({
            "benchmark": "omniglot_oneshot",
            "algorithm": "metalab.protonet",
            "train_episode": train_episode,
            "val_alphabets": args.val_alphabets,
            "steps_requested": args.steps,
            "max_minutes": args.max_minutes,
            "seed": args.seed,
            "human_error": HUMAN_ERROR,
            "conditions": {c: {k: r[k] for k in ("mean_error", "ci95", "errors", "steps", "capped", "status",
                                                 "train_s", "eval_s", "last_train_accuracy", "val_accuracy",
                                                 "data") if k in r}
                           for c, r in summary.items()},
            "capped": capped,
            "result": result_status(capped),
            "total_s": total_s,
            **prov,
            "machine_line": machine_line(note_start),
            "machine": {"start": note_start, "end": note_end},
        })
        if capped:
            print(f"A run reached its time cap: its figures are marked '{CAPPED}'.", flush=True)
            return EXIT_CAPPED
        return 0
    finally:
        env.close()


if __name__ == "__main__":
    raise SystemExit(main())

"""Omniglot one-shot benchmark: Lake et al.'s 20 within-alphabet 20-way runs, scored by Prototypical Networks.

Two training conditions (Lake, Salakhutdinov & Tenenbaum 2015, Science 350:1332):

- ``minimal``: ProtoNets meta-trained on ``images_background_small1`` + ``_small2`` (242 characters, 8 alphabets),
- ``background``: meta-trained on the full background set (964 characters, 30 alphabets);

each is scored on the 20 one-shot runs of ``all_runs.zip`` (drawn from the evaluation alphabets): per run the
20 training images are the support set (one per class, labels 0..19) and each of the 20 test images is
classified by its nearest prototype. People err 4.5% on this task.

Training goes through metalab's runner (``Services.train``); scoring restores the run's checkpoint into a
20-way session and calls the algorithm's own ``evaluate`` on a TaskBatch holding the 20 runs as 20 tasks.

Example:
    python benchmarks/omniglot_oneshot.py --steps 2500 --ways 20 --shots 1 --queries 5 > oneshot.log 2>&1

The last line printed is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from _common import Environment, add_common_args, make_services, print_machine_note, print_result, restore, train

#: Mean error of people on the 20 runs (Lake et al. 2015).
HUMAN_ERROR = 0.045

CONDITIONS = {
    "minimal": "images_background_small1 + small2 (242 characters, 8 alphabets)",
    "background": "images_background (964 characters, 30 alphabets)",
}
DATASET_SPLIT = {"minimal": "minimal", "background": "background_evaluation"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2500,
                        help="Meta-training episodes per condition (default 2500: about 10 minutes of 20-way "
                             "1-shot 5-query training at the ~4 steps/s measured on 2 heavily shared CPU cores; "
                             "about 4 minutes at the ~11 steps/s of 2 quiet cores).")
    parser.add_argument("--ways", type=int, default=20,
                        help="Classes per training episode (default 20; the paper trains Omniglot 60-way, "
                             "which costs three times as much per step on CPU).")
    parser.add_argument("--shots", type=int, default=1, help="Support images per class in training (default 1).")
    parser.add_argument("--queries", type=int, default=5,
                        help="Query images per class in training (default 5, as in the paper).")
    parser.add_argument("--conditions", nargs="+", choices=sorted(CONDITIONS), default=["minimal", "background"],
                        help="Which training conditions to run (default both).")
    parser.add_argument("--no-rotations", action="store_true",
                        help="Train without the 90-degree rotation classes (default: with them).")
    add_common_args(parser)
    return parser.parse_args(argv)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = Environment(args.data_dir, args.home)
    t_start = time.perf_counter()
    try:
        print(f"Omniglot one-shot (Lake et al. 2015): ProtoNets, {args.ways}-way {args.shots}-shot "
              f"{args.queries}-query training episodes, {args.steps} steps per condition"
              + (f" (at most {args.train_minutes:g} min each)" if args.train_minutes else "")
              + f"; data {env.data_dir}; METALAB_HOME {env.home}", flush=True)
        note_start = print_machine_note("start")
        services = make_services()
        from metalab.plugins.omniglot import load_oneshot_runs

        runs = load_oneshot_runs(services.settings.data_context(), image_size=28)
        print(f"Loaded {len(runs)} one-shot runs ({runs[0]['train_images'].shape[0]}-way) from all_runs.zip",
              flush=True)

        results: dict[str, Any] = {}
        for condition in args.conditions:
            print(f"\n== {condition}: meta-train on {CONDITIONS[condition]} ==", flush=True)
            raw = {
                "dataset": "metalab.omniglot",
                "algorithm": "metalab.protonet",
                "dataset_params": {"split": DATASET_SPLIT[condition], "rotations": not args.no_rotations},
                "ways": args.ways, "shots": args.shots, "queries": args.queries,
                "steps": args.steps, "seed": args.seed,
                # Validation steers nothing here (no early stopping); a few episodes now and then show progress.
                "val_every": max(args.steps // 5, 1), "val_episodes": 50,
                "checkpoint_every": max(args.steps // 5, 1), "log_every": 50,
                "eval_at_end": False,
            }
            trained = train(services, raw, label=condition, train_minutes=args.train_minutes)
            scored = score_runs(services, trained["run_id"], runs)
            results[condition] = {**trained, **scored}
            del results[condition]["config"]
            print(f"[{condition}] trained {trained['steps']} steps in {trained['train_s']:.1f} s "
                  f"({trained['status']}); scored the 20 runs in {scored['eval_s']:.1f} s", flush=True)
            print(f"[{condition}] errors per run (of 20 test images): "
                  + " ".join(f"{r['run'][-2:]}:{w}" for r, w in zip(runs, scored["wrong"])), flush=True)
            print(f"[{condition}] mean error {100 * scored['mean_error']:.1f}% "
                  f"(95% CI ±{100 * scored['ci95']:.1f} over runs); people: {100 * HUMAN_ERROR:.1f}%", flush=True)

        note_end = print_machine_note("end")
        total_s = time.perf_counter() - t_start
        print("\n| condition | training set | steps | train wall (s) | eval wall (s) | mean error | 95% CI | people |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for condition, r in results.items():
            print(f"| {condition} | {CONDITIONS[condition]} | {r['steps']} | {r['train_s']:.0f} | {r['eval_s']:.1f} "
                  f"| {100 * r['mean_error']:.1f}% | ±{100 * r['ci95']:.1f} | {100 * HUMAN_ERROR:.1f}% |")
        print(f"Total wall time {total_s:.0f} s.", flush=True)
        print_result({
            "benchmark": "omniglot_oneshot",
            "algorithm": "metalab.protonet",
            "train_episode": {"ways": args.ways, "shots": args.shots, "queries": args.queries,
                              "rotations": not args.no_rotations},
            "steps_requested": args.steps,
            "train_minutes": args.train_minutes,
            "seed": args.seed,
            "human_error": HUMAN_ERROR,
            "conditions": {c: {k: r[k] for k in ("mean_error", "ci95", "errors", "steps", "status", "train_s",
                                                 "eval_s", "last_train_accuracy", "val_accuracy")}
                           for c, r in results.items()},
            "total_s": total_s,
            "machine": {"start": note_start, "end": note_end},
        })
        return 0
    finally:
        env.close()


if __name__ == "__main__":
    raise SystemExit(main())

"""The Runs page at scale: render time of the page (streamlit.testing AppTest) over a store of 2,000 runs.

Makes a temporary METALAB_HOME whose run store (a real ``RunStore``) holds ``--runs`` completed runs of four
algorithms with swept parameters, each with ``--points`` logged steps of four metrics and a headline evaluation
(some runs also a second, shorter one), then times:

- ``Services.runs_table()`` alone: its first build, and after one run changed (only that row is read again);
- the Runs page: the first render (imports, store open, first build) and the median of ``--repeats`` later
  renders: unchanged, after one run logged a metric (as while a run trains), and with a search, a filter on a
  parameter and a metric, and a sort by score;
- the Compare page with 20 runs (curves, scores, parameters × metrics, parallel coordinates).

    .venv/bin/python benchmarks/runs_table.py [--runs 2000] [--points 100] [--repeats 5] [--home DIR]

Prints one line per figure and a ``RESULT {json}`` line; the goal is a Runs page render under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ALGORITHMS = {
    "metalab.maml": {"inner_lr": [0.4, 0.1, 0.01], "inner_steps": [1, 5], "meta_batch_size": [16, 32],
                     "first_order": [False, True], "eval_inner_steps": [10]},
    "metalab.protonet": {"distance": ["euclidean", "cosine"], "temperature": [1.0, 10.0]},
    "metalab.reptile": {"inner_lr": [0.001, 0.0005], "inner_steps": [5, 10], "meta_batch_size": [5, 10]},
    "metalab.anil": {"inner_lr": [0.4, 0.1], "inner_steps": [1, 5], "meta_batch_size": [16, 32]},
}
METRICS = ("train/loss", "train/accuracy", "val/accuracy", "val/ci95")


def _page(name: str) -> None:
    # Runs inside AppTest: only what is imported here exists there.
    from metalab.dashboard import pages

    getattr(pages, name)()


def make_store(home: Path, runs: int, points: int, seed: int = 0) -> list[str]:
    """``runs`` completed runs with metrics and evaluations in ``home``'s store; returns their ids."""
    from metalab.core.settings import load_settings
    from metalab.core.store import RunStore

    settings = load_settings()
    store = RunStore(settings.store_path, settings.runs_dir)
    rng = random.Random(seed)
    ids = []
    base = time.time() - runs * 60
    for i in range(runs):
        algorithm = list(ALGORITHMS)[i % len(ALGORITHMS)]
        params = {k: rng.choice(v) for k, v in ALGORITHMS[algorithm].items()}
        ways, shots = rng.choice([(5, 1), (5, 5), (20, 1), (20, 5)])
        config = {"dataset": "metalab.omniglot", "algorithm": algorithm, "backbone": "metalab.conv4",
                  "dataset_params": {"split": "vinyals", "rotations": True, "image_size": 28},
                  "algorithm_params": params, "backbone_params": {"filters": 64, "batch_norm": True},
                  "ways": ways, "shots": shots, "queries": 15, "steps": points * 10, "seed": i, "test_episodes": 600,
                  "log_every": 10, "val_every": 500, "val_episodes": 100}
        run_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(base + i * 60))}-{rng.getrandbits(24):06x}"
        store.create_run(config, run_id=run_id, name=f"sweep {i // 50} #{i % 50}" if i % 3 else "",
                         versions={"python": platform.python_version()})
        accuracy = min(0.99, 0.5 + 0.4 * rng.random() + 0.02 * shots / 5)
        with store._connect() as conn:  # one connection per run: the same rows log_metrics writes, faster
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO metrics (run_id, step, name, value, time) VALUES (?,?,?,?,?)",
                [(run_id, step * 10, name, rng.random(), base + i * 60 + step)
                 for step in range(1, points + 1) for name in METRICS])
            conn.execute("COMMIT")
        store.add_evaluation(run_id, "test", 600, {"accuracy": accuracy, "ci95": 0.006, "loss": 0.4}, seed=2017)
        if i % 4 == 0:
            store.add_evaluation(run_id, "test", 200, {"accuracy": accuracy - 0.01, "ci95": 0.01}, seed=2017)
        if i % 7 == 0:
            store.set_tags(run_id, ["baseline"] if i % 2 else ["sweep", "omniglot"])
        store.update_run(run_id, status="completed", step=points * 10, started=base + i * 60,
                         finished=base + i * 60 + 50)
        ids.append(run_id)
    return ids


def _store_ids(home: Path) -> list[str]:
    from metalab.core.store import RunStore

    return RunStore(home / "runs.sqlite").run_ids()


def _renders(at, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - start)
        if at.exception:
            raise SystemExit(f"the page raised: {at.exception[0].value}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--points", type=int, default=100, help="logged steps per run (four metrics each)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--home", type=Path, help="keep the store in this folder, and reuse it when it is there")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="metalab-runs-table-"))
    home = args.home or tmp / "home"
    os.environ["METALAB_HOME"] = str(home)
    os.environ.setdefault("METALAB_DISABLE_PLUGINS", "")
    start = time.perf_counter()
    reused = (home / "runs.sqlite").exists()
    ids = sorted(_store_ids(home)) if reused else make_store(home, args.runs, args.points)
    args.runs = len(ids)
    import sqlite3

    with sqlite3.connect(home / "runs.sqlite") as conn:
        metric_rows = conn.execute("SELECT count(*) FROM metrics").fetchone()[0]
    conn.close()
    print(f"store: {len(ids)} runs, {metric_rows:,} metric rows, " + (f"reused from {home}" if reused else
                                                                      f"made in {time.perf_counter() - start:.1f} s"))

    from streamlit.testing.v1 import AppTest

    from metalab.core.services import Services

    svc = Services()
    t0 = time.perf_counter()
    table = svc.runs_table()
    built = time.perf_counter() - t0
    assert len(table.rows) == args.runs
    timings = []
    for i in range(args.repeats):
        svc.store.set_notes(ids[-1 - i], f"edited {i}")  # a change: that run's row is read again
        t0 = time.perf_counter()
        svc.runs_table()
        timings.append(time.perf_counter() - t0)
    print(f"Services.runs_table(): first build {built * 1000:.0f} ms; after one run changed, median "
          f"{statistics.median(timings) * 1000:.0f} ms")

    at = AppTest.from_function(_page, args=("runs",), default_timeout=120)
    first = _renders(at, 1)[0]
    plain = _renders(at, args.repeats)
    shown = len(at.dataframe[0].value)
    print(f"Runs page, {shown} rows: first render {first:.2f} s, then median {statistics.median(plain):.3f} s "
          f"(min {min(plain):.3f}, max {max(plain):.3f})")
    # As while a run trains: one run's metrics change between renders, so its row is read again.
    changed = []
    for i in range(args.repeats):
        svc.store.log_metrics(ids[i], 10**6 + i, {"val/accuracy": 0.5})
        changed += _renders(at, 1)
    print(f"Runs page after one run logged a metric: median {statistics.median(changed):.3f} s")

    at = AppTest.from_function(_page, args=("runs",), default_timeout=120)
    for key, value in {"q": "sweep", "filter": "inner_lr = 0.1 and val/accuracy > 0.2", "sort": "score",
                       "desc": "1"}.items():
        at.query_params[key] = value
    _renders(at, 1)
    filtered = _renders(at, args.repeats)
    print(f"Runs page with search, filter and sort ({len(at.dataframe[0].value)} rows): median "
          f"{statistics.median(filtered):.3f} s")

    at = AppTest.from_function(_page, args=("compare",), default_timeout=120)
    at.query_params["runs"] = ",".join(ids[:20])
    _renders(at, 1)
    compared = _renders(at, args.repeats)
    print(f"Compare page, 20 runs: median {statistics.median(compared):.3f} s")

    result = {"runs": args.runs, "metric_rows": metric_rows,
              "runs_table_first_s": round(built, 3), "runs_table_s": round(statistics.median(timings), 4),
              "runs_page_first_s": round(first, 3), "runs_page_s": round(statistics.median(plain), 3),
              "runs_page_after_change_s": round(statistics.median(changed), 3), "runs_page_filtered_s": round(
                  statistics.median(filtered), 3), "compare_20_s": round(statistics.median(compared), 3),
              "goal_s": 1.0, "python": platform.python_version(), "cpus": os.cpu_count()}
    print("RESULT " + json.dumps(result))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if max(result["runs_page_s"], result["runs_page_after_change_s"]) < 1.0 else 1)


if __name__ == "__main__":
    main()

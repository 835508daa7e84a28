"""A randomized fault campaign: kill -9 workers at random moments, damage checkpoints and stores, and count what is lost.

For each of ``--runs`` tiny runs (sinusoid MAML, a checkpoint every ``--checkpoint-every`` steps) the campaign kills
the worker ``--kills`` times at random steps, sometimes damages the newest checkpoint file first (truncated, emptied
or overwritten with random bytes), resumes it each time, and checks it completes. Then it damages copies of the run
store (garbage, truncated, zero bytes) and asks the CLI to list runs. It prints:

- kills, and steps lost per kill against the checkpoint interval (a kill may lose up to one interval);
- runs unrecoverable (goal: 0);
- every user-facing message seen (run errors, CLI errors) and how many carry a traceback or pickle hint (goal: 0).

Example::

    python benchmarks/faults.py --runs 3 --kills 3 --seed 0

Every figure is printed with the exact command, the commit and the machine's CPU flags.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_flags() -> str:
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return "unknown"
    return ",".join(sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_tile"))) or "no avx2"


def _wait(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _damage(path: Path, how: str, rng: random.Random) -> None:
    size = path.stat().st_size
    if how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(max(1, size // 2))
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(rng.randbytes(max(64, size)))


def _has_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" in text or "allow_pickle" in text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kills", type=int, default=3, help="kills per run")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--checkpoint-every", type=int, default=25)
    parser.add_argument("--damage", type=float, default=0.4, help="share of kills that also damage the newest checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800, help="cap on the whole campaign's wall time (s)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="metalab-faults-"))
    os.environ.update(METALAB_HOME=str(work / "home"), METALAB_DATA_DIR=str(work / "data"),
                      METALAB_CACHE_DIR=str(work / "cache"), METALAB_INTRA_OP_THREADS="1",
                      METALAB_INTER_OP_THREADS="1")
    from metalab.core.engine.checkpoints import checkpoint_step
    from metalab.core.contract.manager import make_plugin_manager
    from metalab.core.services import Services
    from metalab.core.settings import load_settings

    svc = Services(settings=load_settings(), registry=make_plugin_manager(distributions={"metalab"}, strict=False))
    config = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": args.steps,
              "checkpoint_every": args.checkpoint_every, "log_every": 5, "val_every": 50, "val_episodes": 5,
              "test_episodes": 20, "algorithm_params": {"meta_batch_size": 2, "inner_steps": 1}, "seed": args.seed}
    lost: list[int] = []
    messages: list[str] = []
    unrecoverable: list[str] = []
    damaged = 0
    capped = False
    for index in range(args.runs):
        run_id = svc.submit(svc.resolve(config))
        for _ in range(args.kills):
            if time.monotonic() - started > args.timeout:
                capped = True
                break
            target = rng.randint(1, args.steps - 1)
            run = _wait(lambda: (r := svc.store.get_run(run_id)).status in ("running", "completed", "failed")
                        and (r.step >= target or r.status != "running") and r, timeout=600)
            if run is None or run.status != "running":
                break
            _kill(run.pid)
            reached = svc.store.get_run(run_id).step
            checkpoints = sorted(svc.store.run_dir(run_id).glob("checkpoint*.npz"), key=lambda p: p.stat().st_mtime)
            if checkpoints and rng.random() < args.damage:
                _damage(checkpoints[-1], rng.choice(["truncate", "empty", "random"]), rng)
                damaged += 1
            run = svc.store.get_run(run_id)
            messages.append(run.error or "")
            # What the resume restarts from: the newest checkpoint that passes its checks (0 with none).
            restart = checkpoint_step(svc.store.run_dir(run_id), total_steps=args.steps, config=run.config) or 0
            lost.append(max(reached - restart, 0))
            svc.relaunch(run_id)
        run = _wait(lambda: (r := svc.store.get_run(run_id)).status not in ("queued", "running") and r, timeout=900)
        if run is None or run.status != "completed":
            unrecoverable.append(run_id)
            messages.append((run.error or "") if run else "timed out")
        print(f"run {index + 1}/{args.runs} {run_id}: {run.status if run else 'timed out'}", flush=True)

    # Damaged stores: the CLI must refuse each with a message, exit 2, and no traceback.
    store_cases = 0
    for how in ("random", "truncate", "empty"):
        home = work / f"store-{how}"
        home.mkdir()
        shutil.copy(svc.store.path, home / "runs.sqlite")
        _damage(home / "runs.sqlite", how, rng)
        proc = subprocess.run([sys.executable, "-m", "metalab.core.cli", "runs", "list"], capture_output=True,
                              text=True, env=dict(os.environ, METALAB_HOME=str(home)), timeout=120)
        messages.append(proc.stderr.strip())
        store_cases += 1
        if proc.returncode != 2:
            unrecoverable.append(f"store-{how} (exit {proc.returncode})")

    with_traceback = [m for m in messages if _has_traceback(m)]
    command = "python benchmarks/faults.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\ncommand: {command}\ncommit: {_commit()}  cpu: {_cpu_flags()}  seed: {args.seed}")
    print(f"kills: {len(lost)} ({damaged} with the newest checkpoint damaged); checkpoint interval "
          f"{args.checkpoint_every} steps")
    if lost:
        print(f"steps lost per kill: median {statistics.median(lost):g}, max {max(lost)} "
              f"(interval {args.checkpoint_every}; a damaged newest checkpoint may cost a second interval)")
    print(f"damaged stores refused by the CLI: {store_cases - sum(1 for u in unrecoverable if u.startswith('store-'))}"
          f" of {store_cases}")
    print(f"runs unrecoverable: {len([u for u in unrecoverable if not u.startswith('store-')])} of {args.runs}")
    print(f"messages: {len(messages)}, with a traceback or pickle hint: {len(with_traceback)}")
    if capped:
        print("NOTE: the --timeout cap was hit; the figures above cover the kills made before it.")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if not unrecoverable and not with_traceback else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Scale figures of issue 17 (point 6): sweep throughput with 1 and 2 Ray workers, what the sweep adds to each
trial, and the meta-iterations/s of one run on 2 devices against 1.

Three measurements, each through the product path and each with fixed steps and seeds:

**Sweep throughput.** The same small sweep (ProtoNet on Omniglot's first small background set, ``--steps`` per
trial, one trial per seed ``--seed`` .. ``--seed + --trials - 1``) runs as ``metalab sweep ... --json`` in a fresh
``METALAB_HOME`` once per ``--concurrency`` value C, with ``--max-concurrent C --num-cpus C`` (a local Ray cluster
of C CPUs, one trial per CPU) and ``--scheduler none``: every trial trains its steps and meta-tests (ASHA, the
default, stops trailing trials, even at the last step when its grace period is the steps: Ray's ASHA has a rung
there, so the work would differ between runs), and Ray Tune reuses a trial's worker for the next (it does not under
ASHA, where each trial starts a new worker and imports TensorFlow again). Throughput = trials / wall time of the
whole command (Python's start, Ray's start, every trial, Ray's stop) x 3600, in trials per hour; ``steady`` also
gives trials per hour from the first trial's run starting to the last one's ending.

**The sweep's overhead per trial.** Each trial's run records its phases (loading, compiling, training, validating,
meta-testing, report: the runner's ``_Phases``, what ``metalab train`` prints as its time). A trial's *own time*
is its first phase's start to its last phase's end. At concurrency 1 the trials run back to back, so the command's
wall time splits exactly into: *start-up* (the command's launch to the first run's start: Python, the CLI, Ray's
start, the first Ray worker and its TensorFlow import), for each later trial the *gap* between the previous run's
end and its run's start (Ray Tune's bookkeeping, the trial's report and checkpoint, the next trial's scheduling,
resolving its config, opening its scratch store: what every further trial costs), the runs' own times, and the
*shutdown* (the last run's end to the command's exit). The figures printed:

- ``overhead per trial`` (concurrency 1): the gap before each trial's run, the first trial's being the start-up;
  mean (= (wall - shutdown - sum of own times) / trials) and max (the first trial);
- ``between trials`` (concurrency 1): the gaps of trials 2..K alone, mean and max: what one more trial adds,
  checked against the issue's goal of under 2 s;
- ``amortized``: (wall - sum of own times) / trials at concurrency 1, everything included;
- ``as Tune sees it`` (every concurrency): each trial's span in the sweep's store (the driver records ``started``
  when Ray Tune starts the trial, its worker already up, and ``finished`` when Tune reports it complete) minus its
  own time, mean and max.

**Devices.** One ``metalab.maml`` run (second order, Omniglot 5-way 1-shot, meta-batch ``--meta-batch-size``,
``--device-steps`` steps) with ``devices=1`` and with ``devices=2`` (``--devices``), each in a fresh process (the
devices are fixed before the backend starts), alternating, ``--rounds`` times. Meta-iterations/s = (steps - 1) /
the seconds of its ``training`` phases: the first step (the ``compiling`` phase, the trace) is excluded, and so are
validation and loading. Without accelerators the ``devices=N`` run splits the CPU into N logical devices
(``METALAB_CPU_DEVICES=N``): they share the same cores, so a ratio over 1 here is about how TensorFlow schedules the
work, not a speed-up claim. With GPUs (``--devices 1 all --cpu-devices 0`` on the device machine, JAX) they are the
GPUs.

Every figure is printed with the exact command, the commit, the steps, the seed, the CPU (model and vector
instruction sets), the load average and the date, and ends in a ``RESULT {json}`` line; a last ``RESULT`` line
carries the provenance (as the other benchmarks). ``--max-minutes`` only caps each sweep command or training run:
one that reaches it is stopped and its figure marked ``capped: not a result`` (exit status 3). ``--plan`` prints the
commands and a predicted time without starting Ray or a backend.

Example:
    .venv/bin/python benchmarks/scale.py --plan
    .venv/bin/python benchmarks/scale.py                      # both parts, about 6 minutes on 2 cores
    .venv/bin/python benchmarks/scale.py --parts devices --rounds 2
    # a machine with several GPUs (JAX): see benchmarks/scale_device.sh
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402  (no TensorFlow, Keras or Ray import)
    CAPPED, EXIT_CAPPED, REPO, add_common_args, cpu_model, print_provenance, print_result, provenance,
    result_status)
from reproduce import parse_results  # noqa: E402  (the RESULT lines, read as every benchmark's are)

#: Where named figures are registered; this script's go under ``timings`` (reproduce.py's ``figures`` are
#: accuracies with 95% intervals).
REGISTRY = HERE / "figures.json"
#: The issue's goal for what the sweep adds to each trial, in seconds.
GOAL_OVERHEAD_S = 2.0
#: The sweep's trial: ProtoNet, 5-way 1-shot 5-query episodes from Omniglot's first small background set; a short
#: validation and meta-test so the trial is a whole run (train, validate, meta-test, report) as a user's is.
SWEEP_SETTINGS = {"split": "minimal1", "ways": 5, "shots": 1, "queries": 5, "val_episodes": 10,
                  "test_episodes": 50}
#: Predicted seconds on this project's 2-core CPU (measured 2026-12-04): a sweep's fixed cost, one trial's run, one
#: devices run (its trace included).
PLAN_SWEEP_FIXED_S, PLAN_TRIAL_S, PLAN_DEVICES_RUN_S = 25.0, 10.0, 40.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=("sweep", "devices"), default=["sweep", "devices"],
                        help="What to measure (default both).")
    parser.add_argument("--trials", type=int, default=4, help="Trials per sweep: one per seed (default 4).")
    parser.add_argument("--steps", type=int, default=30, help="Meta-training steps of every sweep trial (30).")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2],
                        help="Ray workers (--max-concurrent and --num-cpus) of each sweep (default 1 2).")
    parser.add_argument("--device-steps", type=int, default=12, help="Steps of each devices run (12).")
    parser.add_argument("--devices", nargs="+", default=["1", "2"],
                        help="The devices values compared, the first as the reference (default 1 2; on GPUs 1 all).")
    parser.add_argument("--meta-batch-size", type=int, default=8,
                        help="Tasks per meta-batch of the devices runs (8; must split evenly across the devices).")
    parser.add_argument("--cpu-devices", type=int, default=2,
                        help="METALAB_CPU_DEVICES of the devices!=1 runs: logical CPU devices (2; 0 on a GPU "
                             "machine, where the runs use the GPUs).")
    parser.add_argument("--rounds", type=int, default=1,
                        help="Alternating rounds of the devices runs (each value once per round; default 1).")
    parser.add_argument("--plan", action="store_true",
                        help="Print the commands and the predicted time, start nothing, and exit.")
    parser.add_argument("--record", type=Path, default=None, metavar="LOG",
                        help="Add the figures of a finished run's output (its RESULT lines) to the timings of "
                             "benchmarks/figures.json, replacing those of the same name; a capped run is refused.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one devices run, in its own process
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.trials < 1 or args.steps < 1 or args.device_steps < 2 or args.rounds < 1:
        parser.error(f"expected --trials, --steps and --rounds of at least 1 and --device-steps of at least 2 (the "
                     f"first step is excluded). Received: --trials={args.trials} --steps={args.steps} "
                     f"--device-steps={args.device_steps} --rounds={args.rounds}")
    if any(c < 1 for c in args.concurrency):
        parser.error(f"expected concurrency values of at least 1. Received: --concurrency={args.concurrency}")
    return args


# ---------------------------------------------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------------------------------------------


def sweep_command(args: argparse.Namespace, concurrency: int) -> list[str]:
    """The ``metalab sweep`` argv (after the interpreter) of one throughput measurement."""
    command = ["-m", "metalab.core.cli", "sweep", "-d", "metalab.omniglot", "-a", "metalab.protonet",
               "--steps", str(args.steps)]
    for name, value in {**SWEEP_SETTINGS, "val_every": args.steps}.items():
        command += ["--set", f"{name}={value}"]
    command += ["--seeds", f"{args.seed}-{args.seed + args.trials - 1}", "--max-concurrent", str(concurrency),
                "--num-cpus", str(concurrency), "--scheduler", "none", "--json"]
    return command


def devices_config(args: argparse.Namespace, devices: str) -> dict[str, Any]:
    """The run config (validated by ``Services.resolve``) of one devices run."""
    steps = args.device_steps
    return {
        "dataset": "metalab.omniglot", "algorithm": "metalab.maml", "backbone": "metalab.conv4",
        "dataset_params": {"split": "minimal1"},
        "algorithm_params": {"meta_batch_size": args.meta_batch_size, "first_order": False},
        "ways": 5, "shots": 1, "steps": steps, "seed": args.seed, "devices": devices,
        # One short validation at the last step (outside the timed training phases); no meta-test.
        "val_every": steps, "val_episodes": 4, "checkpoint_every": steps, "log_every": steps, "eval_at_end": False,
    }


def devices_child_command(args: argparse.Namespace, devices: str) -> tuple[list[str], dict[str, str]]:
    """The argv (after the interpreter) and extra environment of one devices run in its own process."""
    env = {"METALAB_CPU_DEVICES": str(args.cpu_devices)} if devices != "1" and args.cpu_devices > 1 else {}
    script = Path(__file__).resolve()
    argv = [str(script.relative_to(REPO)) if script.is_relative_to(REPO) else str(script), "--child", devices,
            "--device-steps", str(args.device_steps), "--meta-batch-size", str(args.meta_batch_size),
            "--seed", str(args.seed), "--data-dir", str(args.data_dir)]
    if args.max_minutes is not None:
        argv += ["--max-minutes", str(args.max_minutes)]
    return argv, env


def shown(argv: list[str], env: dict[str, str] | None = None) -> str:
    """A command as one would type it from the repository root (``.venv/bin/python`` for this interpreter)."""
    prefix = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
    return " ".join([*prefix, ".venv/bin/python", *(shlex.quote(a) for a in argv)])


def print_plan(args: argparse.Namespace) -> None:
    total = 0.0
    print(f"Plan (fixed steps, seeds {args.seed}..{args.seed + args.trials - 1}); predicted times are this "
          f"project's 2-core CPU's:")
    if "sweep" in args.parts:
        for c in args.concurrency:
            # Two trials at once on 2 cores each run slower: about 1.4x the throughput of one, not 2x.
            predicted = PLAN_SWEEP_FIXED_S + PLAN_TRIAL_S * args.trials * args.steps / 30 / min(c, 2) ** 0.5
            total += predicted
            print(f"- sweep throughput at concurrency {c} ({args.trials} trials of {args.steps} steps, no "
                  f"scheduler), predicted {predicted:.0f} s, in a fresh METALAB_HOME: "
                  f"{shown(sweep_command(args, c), {'METALAB_HOME': '<fresh>'})}")
    if "devices" in args.parts:
        for r in range(args.rounds):
            for d in args.devices:
                argv, env = devices_child_command(args, d)
                predicted = PLAN_DEVICES_RUN_S * args.device_steps / 12 * args.meta_batch_size / 8
                total += predicted
                print(f"- devices={d}, round {r + 1}: {args.device_steps} steps of second-order MAML, meta-batch "
                      f"{args.meta_batch_size}, predicted {predicted:.0f} s: {shown(argv, env)}")
    print(f"Predicted total {total:.0f} s ({total / 60:.1f} min) on 2 cores; nothing was run.")


# ---------------------------------------------------------------------------------------------------------------
# What the figures are, from the runs' recorded times (pure: tested without Ray)
# ---------------------------------------------------------------------------------------------------------------


def sweep_figures(launch: float, exit_: float, trials: list[dict[str, float]], concurrency: int) -> dict[str, Any]:
    """The throughput and overhead figures of one sweep (see the module docstring for each definition).

    Args:
        launch, exit_: Wall-clock times (``time.time()``) of the command's launch and exit.
        trials: Per trial ``own_start``/``own_end`` (its run's first phase's start, last phase's end) and
            ``started``/``finished`` (its run's span in the sweep's store).
        concurrency: Trials at once.

    Returns:
        ``wall_s``, ``trials``, ``trials_per_hour``, ``steady_trials_per_hour``, ``own_s``, ``tune_overhead_s``
        (span - own, per trial) and at concurrency 1 ``startup_s``, ``shutdown_s``, ``gap_s`` (per trial, the
        first being the start-up), ``between_s`` (gaps of trials 2..K), ``amortized_s``.
    """
    rows = sorted(trials, key=lambda t: t["own_start"])
    wall = exit_ - launch
    own = [t["own_end"] - t["own_start"] for t in rows]
    first, last = rows[0]["own_start"], max(t["own_end"] for t in rows)
    out: dict[str, Any] = {
        "concurrency": concurrency, "wall_s": wall, "trials": len(rows), "trials_per_hour": 3600 * len(rows) / wall,
        "steady_trials_per_hour": 3600 * len(rows) / (last - first), "own_s": own,
        "tune_overhead_s": [(t["finished"] - t["started"]) - o for t, o in zip(rows, own)],
    }
    if concurrency == 1:
        ends = [launch] + [t["own_end"] for t in rows[:-1]]
        gaps = [t["own_start"] - end for t, end in zip(rows, ends)]
        out.update(startup_s=gaps[0], shutdown_s=exit_ - last, gap_s=gaps, between_s=gaps[1:],
                   amortized_s=(wall - sum(own)) / len(rows))
    return out


def iterations_per_s(phases: list[dict[str, Any]], steps: int) -> dict[str, float]:
    """Meta-iterations/s of a run from its phases: (steps - 1) / the seconds of its ``training`` phases (the first
    step is the ``compiling`` phase, excluded)."""
    training = sum(p["finished"] - p["started"] for p in phases if p["name"] == "training")
    compiling = sum(p["finished"] - p["started"] for p in phases if p["name"] == "compiling")
    return {"iters_per_s": (steps - 1) / training, "training_s": training, "first_step_s": compiling}


def _stats(values: list[float]) -> str:
    if not values:
        return "n/a (one trial)"
    return f"mean {statistics.fmean(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


def _goal(value: float) -> str:
    return f"goal < {GOAL_OVERHEAD_S:g} s: {'met' if value < GOAL_OVERHEAD_S else 'NOT met'}"


# ---------------------------------------------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------------------------------------------


def _context(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """What goes with every figure: command, steps, seed, the CPU and the load average now."""
    cpu = cpu_model()
    return {"command": command, "seed": args.seed, "cpu": cpu["model"], "avx2": cpu["avx2"],
            "avx512f": cpu["avx512f"], "cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _load_note(load: list[float]) -> str:
    return f"load average {load}" + (" (a loaded host: over 1)" if load[0] > 1 else "")


def measure_sweep(args: argparse.Namespace, concurrency: int, base: Path, commit: str) -> dict[str, Any]:
    """Runs one sweep command in a fresh METALAB_HOME and returns its figures (or ``capped``)."""
    from metalab.core.settings import Settings
    from metalab.core.store import RunStore

    home = Path(tempfile.mkdtemp(prefix=f"sweep-c{concurrency}-", dir=base))
    argv = sweep_command(args, concurrency)
    command = shown(argv, {"METALAB_HOME": "<fresh>"})
    context = _context(args, command)
    print(f"\n[sweep c={concurrency}] {command}", flush=True)
    print(f"[sweep c={concurrency}] {_load_note(context['load_avg'])} at start", flush=True)
    env = {**os.environ, "METALAB_HOME": str(home), "METALAB_DATA_DIR": str(args.data_dir),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    limit = None if args.max_minutes is None else 60 * args.max_minutes
    launch = time.time()
    with open(home / "sweep.err", "w") as err:
        proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err,
                                text=True)
        try:
            stdout, _ = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            # SIGINT first: the sweep's driver then stops Tune and the Ray cluster it started.
            proc.send_signal(signal.SIGINT)
            try:
                stdout, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, _ = proc.communicate()
            print(f"[sweep c={concurrency}] time cap of {args.max_minutes:g} min reached: {CAPPED}", flush=True)
            return {"benchmark": "scale", "figure": "sweep", "concurrency": concurrency, "capped": True,
                    "result": CAPPED, **context, "commit": commit}
    exit_ = time.time()
    if proc.returncode != 0:
        tail = (home / "sweep.err").read_text()[-4000:]
        raise SystemExit(f"the sweep at concurrency {concurrency} failed (exit {proc.returncode}):\n{tail}")
    book = json.loads(stdout)
    settings = Settings(home=home)
    store = RunStore(settings.store_path, settings.runs_dir)
    trials = []
    for slot, entry in sorted(book["trials"].items(), key=lambda kv: int(kv[0])):
        run = store.get_run(entry["run"])
        phases = store.phases(run.id)
        if entry.get("state") != "completed" or not phases:
            raise SystemExit(f"trial {slot} of the sweep at concurrency {concurrency} did not complete: {entry}")
        trials.append({"slot": int(slot), "run": run.id, "started": run.started, "finished": run.finished,
                       "own_start": phases[0]["started"], "own_end": phases[-1]["finished"],
                       "steps": run.step})
    figures = sweep_figures(launch, exit_, trials, concurrency)
    context["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    rows = sorted(trials, key=lambda t: t["own_start"])
    print(f"[sweep c={concurrency}] trial | run | own time (s) | span in the store - own (s)"
          + (" | gap before its run (s)" if concurrency == 1 else ""), flush=True)
    for i, t in enumerate(rows):
        extra = f" | {figures['gap_s'][i]:.2f}" if concurrency == 1 else ""
        print(f"[sweep c={concurrency}] {t['slot']} | {t['run']} | {figures['own_s'][i]:.2f} | "
              f"{figures['tune_overhead_s'][i]:.2f}{extra}", flush=True)
    print(f"[sweep c={concurrency}] throughput {figures['trials_per_hour']:.0f} trials/hour ({figures['trials']} "
          f"trials of {args.steps} steps in {figures['wall_s']:.1f} s of wall time, Ray's start and stop included); "
          f"steady {figures['steady_trials_per_hour']:.0f} trials/hour (first run's start to last run's end)",
          flush=True)
    print(f"[sweep c={concurrency}] as Tune sees it (span in the store - own time): "
          f"{_stats(figures['tune_overhead_s'])}", flush=True)
    if concurrency == 1:
        print(f"[sweep c=1] start-up {figures['startup_s']:.2f} s (launch to the first run: Python, the CLI, Ray's "
              f"start, the first worker and its TensorFlow import); shutdown {figures['shutdown_s']:.2f} s", flush=True)
        print(f"[sweep c=1] overhead per trial (the gap before each run, the first being the start-up): "
              f"{_stats(figures['gap_s'])}", flush=True)
        print(f"[sweep c=1] between trials (what one more trial adds): {_stats(figures['between_s'])}; "
              + (_goal(max(figures['between_s'])) + " (by the max)" if figures["between_s"] else "n/a"), flush=True)
        print(f"[sweep c=1] amortized over {figures['trials']} trials, everything included: "
              f"{figures['amortized_s']:.2f} s per trial; {_goal(figures['amortized_s'])}", flush=True)
    print(f"[sweep c={concurrency}] {_load_note(context['load_avg_end'])} at end", flush=True)
    return {"benchmark": "scale", "figure": "sweep", "steps": args.steps, "scheduler": "none",
            "capped": False, "result": result_status(False), "commit": commit, **context, **figures,
            "trial_rows": rows}


def measure_devices(args: argparse.Namespace, devices: str, round_: int, commit: str) -> dict[str, Any]:
    """One devices run in its own process (the devices are fixed before the backend starts)."""
    argv, extra = devices_child_command(args, devices)
    command = shown(argv, extra)
    context = _context(args, command)
    print(f"\n[devices={devices} round {round_}] {command}", flush=True)
    print(f"[devices={devices} round {round_}] {_load_note(context['load_avg'])} at start", flush=True)
    env = {**os.environ, **extra, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode not in (0, EXIT_CAPPED) or not lines:
        raise SystemExit(f"the devices={devices} run failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
                         f"{done.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    context["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    mark = f"; {CAPPED}" if result["capped"] else ""
    print(f"[devices={devices} round {round_}] {result['iters_per_s']:.3f} meta-iterations/s ({args.device_steps - 1} "
          f"steps in {result['training_s']:.1f} s of training; first step {result['first_step_s']:.1f} s, excluded) "
          f"on {result['device']}{mark}; {_load_note(context['load_avg_end'])} at end", flush=True)
    return {**result, **context, "round": round_, "commit": commit}


def run_child(args: argparse.Namespace) -> int:
    """One devices run: trains through the service facade in this process, prints its RESULT line."""
    from _common import Environment, make_services, train
    from metalab.core.engine.devices import keras_backend

    env = Environment(args.data_dir, args.home)
    try:
        services = make_services()
        done = train(services, devices_config(args, args.child), label=f"devices={args.child}",
                     max_minutes=args.max_minutes, print_every=max(1, args.device_steps // 3))
        run = services.run(done["run_id"])
        figures = iterations_per_s(services.store.phases(done["run_id"]), done["steps"])
        print_result({"benchmark": "scale", "figure": "devices", "devices": args.child, "device": run.device,
                      "steps": done["steps"], "meta_batch_size": args.meta_batch_size, "capped": done["capped"],
                      "result": result_status(done["capped"]), "backend": keras_backend(), **figures})
        return EXIT_CAPPED if done["capped"] else 0
    finally:
        env.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.record:
        names = record(args.record, REGISTRY)
        print(f"recorded in {REGISTRY.name} (timings): {', '.join(names)}")
        return 0
    if args.child:
        return run_child(args)
    if args.plan:
        print_plan(args)
        return 0
    if not (args.data_dir / "omniglot").is_dir():
        raise SystemExit(f"Expected the Omniglot files in {args.data_dir / 'omniglot'}. "
                         f"Received: --data-dir={str(args.data_dir)!r}")
    prov = provenance(argv)
    print_provenance(prov)
    t0 = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="metalab-scale-")) if args.home is None else args.home.resolve()
    base.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    try:
        if "sweep" in args.parts:
            for c in args.concurrency:
                result = measure_sweep(args, c, base, prov["commit"])
                print_result({k: v for k, v in result.items() if k != "trial_rows"})
                results.append(result)
        if "devices" in args.parts:
            for r in range(1, args.rounds + 1):
                for d in args.devices:
                    result = measure_devices(args, d, r, prov["commit"])
                    print_result(result)
                    results.append(result)
    finally:
        if args.home is None:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
    capped = any(r.get("capped") for r in results)
    summary(args, results)
    from _common import machine_line, machine_note

    note = machine_note()
    print_result({"benchmark": "scale", **prov, "machine_line": machine_line(note), "machine": note,
                  "total_s": round(time.perf_counter() - t0, 1), "capped": capped})
    return EXIT_CAPPED if capped else 0


def summary(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    """The Markdown tables of the figures."""
    sweeps = [r for r in results if r.get("figure") == "sweep" and not r.get("capped")]
    if sweeps:
        print("\n| Ray workers | trials/hour | steady trials/hour | wall (s) | trials x steps | as Tune sees it: mean, "
              "max (s) | load avg at start |")
        print("|---:|---:|---:|---:|---|---|---|")
        for r in sweeps:
            print(f"| {r['concurrency']} | {r['trials_per_hour']:.0f} | {r['steady_trials_per_hour']:.0f} | "
                  f"{r['wall_s']:.1f} | {r['trials']} x {r['steps']} | {statistics.fmean(r['tune_overhead_s']):.2f}, "
                  f"{max(r['tune_overhead_s']):.2f} | {r['load_avg'][0]} |")
        for r in sweeps:
            if r["concurrency"] == 1:
                between = r["between_s"]
                print(f"\nOverhead per trial at concurrency 1: {_stats(r['gap_s'])} (the first is the start-up, "
                      f"{r['startup_s']:.2f} s); between trials {_stats(between)}; amortized "
                      f"{r['amortized_s']:.2f} s per trial; goal < {GOAL_OVERHEAD_S:g} s between trials: "
                      f"{'met' if between and max(between) < GOAL_OVERHEAD_S else 'NOT met'}.")
    runs = [r for r in results if r.get("figure") == "devices" and not r.get("capped")]
    if runs:
        print("\n| devices | round | device(s) | meta-iterations/s | training (s) | first step (s) | load avg |")
        print("|---|---:|---|---:|---:|---:|---|")
        for r in runs:
            print(f"| {r['devices']} | {r['round']} | {r['device']} | {r['iters_per_s']:.3f} | "
                  f"{r['training_s']:.1f} | {r['first_step_s']:.1f} | {r['load_avg'][0]} |")
        ref = args.devices[0]
        base = statistics.median(r["iters_per_s"] for r in runs if r["devices"] == ref) if any(
            r["devices"] == ref for r in runs) else None
        for d in args.devices[1:]:
            mine = [r["iters_per_s"] for r in runs if r["devices"] == d]
            if base and mine:
                ratio = statistics.median(mine) / base
                cpu = all("CPU" in str(r["device"]) for r in runs)
                print(f"\ndevices={d} against devices={ref}: {ratio:.2f}x (medians over rounds)." + (
                    " Logical CPU devices share the same cores: this is not a speed-up claim." if cpu else ""))
                print_result({"benchmark": "scale", "figure": "devices-ratio", "devices": d, "reference": ref,
                              "ratio": ratio, "steps": args.device_steps, "seed": args.seed})


# ---------------------------------------------------------------------------------------------------------------
# The registry: figures.json's "timings"
# ---------------------------------------------------------------------------------------------------------------


def timings_of_log(text: str) -> list[dict[str, Any]]:
    """Registry entries (figures.json ``timings``) for the figures of one run of this script.

    Each carries the script's command (``command``; ``part_command`` is the sweep or training command measured),
    the commit, the steps, the seed, the machine, the value and its unit, the date (UTC) and the load average
    at the part's start and end (``loaded``: the 1-minute average was over 1 at either). The devices figures are
    medians over the rounds.

    Raises:
        ValueError: No final RESULT line with the provenance, or the run was capped.
    """
    results = parse_results(text)
    final = next((r for r in reversed(results) if "command" in r and "machine_line" in r), None)
    if final is None:
        raise ValueError("no final RESULT line with command and commit: was the run complete?")
    if final.get("capped") or any(r.get("capped") for r in results):
        raise ValueError(f"a part of this run is capped ({CAPPED})")
    where = "gpu" if " no GPU" not in final["machine_line"] else "cpu"
    common = {"command": final["command"], "commit": final["commit"], "machine": final["machine_line"]}
    entries: list[dict[str, Any]] = []

    def add(name: str, title: str, value: float, unit: str, rows: list[dict[str, Any]], steps: int,
            select: dict[str, Any], metric: str) -> None:
        loads = [x for r in rows for x in (r["load_avg"][0], r.get("load_avg_end", [0])[0])]
        entries.append({"name": f"scale-{name}-{where}", "title": title, **common, "part_command": rows[0]["command"],
                        "steps": steps, "seed": rows[0]["seed"], "value": round(value, 4), "unit": unit,
                        "date": rows[0]["date"][:16] + "Z", "load_avg": [min(loads), max(loads)],
                        "loaded": max(loads) > 1, "select": select, "metric": metric,
                        "result": "result"})

    for r in (r for r in results if r.get("figure") == "sweep"):
        c = r["concurrency"]
        what = f"{r['trials']} ProtoNet trials of {r['steps']} steps, scheduler {r['scheduler']}"
        select = {"benchmark": "scale", "figure": "sweep", "concurrency": c, "scheduler": r["scheduler"]}
        sweep = "sweep" if r["scheduler"] == "none" else f"sweep-{r['scheduler']}"
        add(f"{sweep}-c{c}-trials-per-hour", f"Sweep throughput with {c} Ray worker(s) ({what}), whole command",
            r["trials_per_hour"], "trials/h", [r], r["steps"], select, "trials_per_hour")
        if c == 1 and r["between_s"]:
            add(f"{sweep}-overhead-between-trials", f"Sweep overhead per further trial at concurrency 1: mean gap "
                f"between one run's end and the next one's start ({what})", statistics.fmean(r["between_s"]), "s",
                [r], r["steps"], select, "between_s")
            add(f"{sweep}-overhead-amortized", f"Sweep overhead per trial at concurrency 1, start-up and shutdown "
                f"included: (wall - own times) / trials ({what})", r["amortized_s"], "s", [r], r["steps"], select,
                "amortized_s")
    runs = [r for r in results if r.get("figure") == "devices"]
    for d in dict.fromkeys(r["devices"] for r in runs):
        mine = [r for r in runs if r["devices"] == d]
        add(f"devices-{d}-iters-per-s", f"Second-order MAML, Omniglot 5-way 1-shot, meta-batch "
            f"{mine[0]['meta_batch_size']}, devices={d} ({mine[0]['device']}): meta-iterations/s, first step "
            f"excluded, median of {len(mine)} run(s)", statistics.median(r["iters_per_s"] for r in mine), "it/s",
            mine, mine[0]["steps"], {"benchmark": "scale", "figure": "devices", "devices": d}, "iters_per_s")
    for r in (r for r in results if r.get("figure") == "devices-ratio"):
        rows = [x for x in runs if x["devices"] in (r["devices"], r["reference"])]
        add(f"devices-{r['devices']}-vs-{r['reference']}", f"meta-iterations/s of devices={r['devices']} over "
            f"devices={r['reference']} (medians)", r["ratio"], "x", rows, r["steps"],
            {"benchmark": "scale", "figure": "devices-ratio", "devices": r["devices"]}, "ratio")
    return entries


def record(log: Path, registry: Path) -> list[str]:
    """Adds (or replaces, by name) the timings of a finished run's output in the registry; returns their names."""
    entries = timings_of_log(log.read_text())
    data = json.loads(registry.read_text()) if registry.exists() else {"figures": []}
    names = {e["name"] for e in entries}
    data["timings"] = [f for f in data.get("timings", []) if f["name"] not in names] + entries
    registry.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return [e["name"] for e in entries]


if __name__ == "__main__":
    raise SystemExit(main())

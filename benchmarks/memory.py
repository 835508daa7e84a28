"""Peak memory of a second-order MAML train step against metalab's analytic estimate (issue 5, point 5).

Run from the repository root with the project's virtual environment::

    python benchmarks/memory.py                         # the default settings, each in its own subprocess
    python benchmarks/memory.py --settings 4x1 32x1 8x5 --steps 3

Each setting ``TxK`` is second-order MAML, 5-way 1-shot with 5 queries per class, conv-4 (64 filters) on random
28x28x1 images, meta-batch ``T`` and ``K`` inner steps (``TxKfo``: first order), built through the plugins
(registry, ``TaskSpec``, conv4 backbone) and stepped through the runner's compiled train step with the training
worker's thread setting. In its own subprocess, after two warm-up steps (the first compiles), each measured step
resets TensorFlow's allocator statistics and reads their peak: the bytes of live tensors at the step's high-water
mark, weights and optimizer slots included (``TF_CPU_ALLOCATOR_USE_BFC=true`` makes the CPU allocator keep exact
statistics). The estimate is ``metalab.core.engine.memory.estimate_for_session``'s ``step_bytes``, computed from the
model's layer shapes before any step runs. Peak RSS over the post-build baseline (compile included) is printed too,
for context: on CPU the compiled graph of the unrolled tasks costs more than the step's tensors.

On TensorFlow MAML runs its tasks in a window (``functional.mean_task_gradients``: a task starts when the one
``task_window`` places before it is over, by default the inter-op threads), so the estimate counts that many tasks
in flight; ``--param task_window=32`` takes the window away (the executor's own schedule, estimated by the
all-tasks bound). With ``KERAS_BACKEND=jax`` the measured figure is XLA's buffer assignment for the compiled step
(arguments + outputs + temporaries, the same every step), against the all-tasks estimate; on a GPU the device
allocator's peak is printed beside it. ``--param vectorize_tasks=on`` measures the vectorized (``jax.vmap``) step.

``--inter-op N`` / ``--intra-op N`` set the worker's thread pools (``METALAB_INTER_OP_THREADS`` /
``METALAB_INTRA_OP_THREADS``) for every setting; the estimate then counts ``N`` tasks in flight.

``--trace`` runs one more step under TensorFlow's profiler: the allocator records each allocation with the op that
made it, the step's graph says which task each op works for (``mean_task_gradients`` builds task ``t``'s ops under
the name scope ``task{t}``), and replaying the records to the peak gives what each task held there (the tasks in
flight, what the others hold in parameter-sized units, tensors shared by several tasks or made by the graph
optimizer, and tensors from before the step). The profiler slows every op, which can change the executor's
schedule (without the task window it parked fewer tasks, see MEMORY.md), so its peak is not one of the measured
ones.

Every setting ends with ``RESULT {json}``; the last line is ``VERDICT {json}`` (all within 25% or not).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from inspect import getclosurevars
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_SETTINGS = ["1x1", "2x1", "4x1", "8x1", "16x1", "32x1", "4x2", "8x2", "16x2", "32x2", "4x3", "1x5", "2x5",
                    "4x5", "8x5", "4x1fo", "16x1fo", "32x1fo"]
TOLERANCE = 0.25


def parse_setting(text: str) -> tuple[int, int, bool]:
    """``"8x5"`` -> ``(8, 5, False)``; ``"32x1fo"`` -> ``(32, 1, True)``."""
    match = re.fullmatch(r"(\d+)x(\d+)(fo)?", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise argparse.ArgumentTypeError(
            f"A setting is META_BATCHxINNER_STEPS, optionally followed by 'fo' (first order), e.g. 8x5. "
            f"Received: {text!r}")
    return int(match.group(1)), int(match.group(2)), bool(match.group(3))


def _status_bytes(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) * 1024


def _task_labels(graph: Any) -> dict[str, int | None]:
    """The task each op of the step's graph works for, or ``None`` for ops shared by several tasks (or none).

    ``functional.mean_task_gradients`` builds task ``t``'s forward and backward ops under the name scope
    ``task{t}``; the running sum of the gradients and the optimizer's update are outside every task.
    """
    labels: dict[str, int | None] = {}
    for op in graph.get_operations():
        match = re.search(r"(?:^|/)task(\d+)/", op.name)
        labels[op.name] = int(match.group(1)) if match else None
    return labels


def _traced_peak(run_step: Callable[[], None], labels: dict[str, int | None], tf: Any) -> dict[str, Any]:
    """Runs one step under TensorFlow's profiler and says which task's ops made the tensors live at the peak.

    The CPU allocator (BFC, see the module docstring) records every allocation and free with the op that made it
    and the bytes in use after it; replaying them gives the live tensors at the step's high-water mark.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            run_step()
        finally:
            tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(Path(logdir).rglob("*.xplane.pb")).read_bytes())
    events = []
    for plane in space.planes:
        names = {k: v.name for k, v in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                kind = plane.event_metadata[event.metadata_id].name
                if kind not in ("MemoryAllocation", "MemoryDeallocation"):
                    continue
                stats = {}
                for stat in event.stats:
                    value = getattr(stat, stat.WhichOneof("value"))
                    if stat.HasField("ref_value"):  # a string stored once in the plane's metadata
                        value = names.get(value, value)
                    stats[names.get(stat.metadata_id)] = value
                events.append((line.timestamp_ns * 1000 + event.offset_ps, kind == "MemoryAllocation", stats))
    events.sort(key=lambda e: e[0])
    live: dict[Any, tuple[int, str]] = {}
    peak, at_peak = -1, {}
    for _, allocation, stats in events:
        if allocation:
            live[stats.get("addr")] = (int(stats.get("allocation_bytes", 0)), str(stats.get("tf_op", "")))
        else:
            live.pop(stats.get("addr"), None)
        in_use = int(stats.get("bytes_allocated", -1))
        if in_use > peak:
            peak, at_peak = in_use, dict(live)
    held: dict[int | None, int] = {}
    for size, op in at_peak.values():
        task = labels.get(op)  # ops the graph optimizer made (not in the traced graph) count as shared
        held[task] = held.get(task, 0) + size
    shared = held.pop(None, 0)
    return {"peak_bytes": peak, "task_bytes": {int(t): n for t, n in sorted(held.items())}, "shared_bytes": shared,
            "before_step_bytes": peak - shared - sum(held.values())}


def measure(meta_batch: int, inner_steps: int, first_order: bool, steps: int, trace: bool = False,
            algorithm_params: dict[str, Any] | None = None, algorithm_name: str = "maml",
            episode: tuple[int, int, int] = (5, 1, 5)) -> dict[str, Any]:
    """Builds the setting, estimates, then measures ``steps`` warm train steps in this process.

    With ``trace``, one more step runs under the profiler and the result says which tasks held what at its peak.
    On Keras's JAX backend the measured figure is XLA's buffer assignment for the step (see ``_measure_jax``).
    """
    import numpy as np

    from metalab.core.engine.config import RunConfig
    from metalab.core.engine.devices import configure_threads, thread_counts
    from metalab.core.engine.runner import compile_train_step
    from metalab.core.engine.session import Session
    from metalab.core.settings import load_settings

    intra, inter = thread_counts(load_settings(), meta_batch)
    configure_threads(intra, inter)
    import keras

    on_jax = keras.backend.backend() == "jax"
    if not on_jax:
        import tensorflow as tf

    from metalab.core.engine import functional
    from metalab.core.engine import memory
    from metalab.core.contract.specs import TaskBatch, TaskSpec
    from metalab.core.contract.manager import make_plugin_manager

    registry = make_plugin_manager(distributions={"metalab"})
    keras.utils.set_random_seed(0)
    backbone = registry.backbone("metalab.conv4")
    backbone_params = backbone.params()
    shape = (28, 28, 1)
    ways, shots, queries = episode
    task = TaskSpec(kind="classification", input_shape=shape, output_dim=ways, ways=ways, shots=shots,
                    queries=queries, total_steps=1000, make_backbone=lambda: backbone.factory(backbone_params, shape))
    params = dict(meta_batch_size=meta_batch, outer_lr=1e-3, **(algorithm_params or {}))
    if algorithm_name != "protonet":  # MAML and ANIL: the paper's Omniglot inner step size
        params.update(inner_lr=0.4, inner_steps=inner_steps, first_order=first_order)
    spec = registry.algorithm(f"metalab.{algorithm_name}")
    algorithm = spec.factory(spec.params(**params), task)
    optimizer = algorithm.make_optimizer()
    optimizer.build(algorithm.trainable_variables)
    config = RunConfig(dataset="metalab.omniglot", algorithm=f"metalab.{algorithm_name}", ways=ways, shots=shots,
                       queries=queries, algorithm_params=params)
    session = Session(config=config, dataset=None, algorithm=algorithm, task=task)
    post_build = _status_bytes("VmRSS")
    est = memory.estimate_for_session(session, registry=registry, concurrency=inter or os.cpu_count(),
                                      baseline_bytes=0)
    # The backbone's layer order, so that a figure says which conv-4 it measured.
    layers = [layer["kind"] for layer in est.pop("layers", [])]

    rng = np.random.default_rng(0)

    def batch() -> TaskBatch:
        t = meta_batch
        return TaskBatch(rng.random((t, ways * shots, *shape), dtype=np.float32),
                         np.tile(np.repeat(np.arange(ways, dtype=np.int32), shots), (t, 1)),
                         rng.random((t, ways * queries, *shape), dtype=np.float32),
                         np.tile(np.repeat(np.arange(ways, dtype=np.int32), queries), (t, 1)))

    step = compile_train_step(algorithm, optimizer)
    common = {
        "setting": f"{meta_batch}x{inner_steps}" + ("fo" if first_order else ""),
        "meta_batch": meta_batch, "inner_steps": inner_steps, "first_order": first_order,
        "algorithm": algorithm_name, "episode": list(episode),
        "algorithm_params": algorithm_params or {}, "estimate_bytes": int(est["step_bytes"]), "estimate": est,
        "layers": layers, "threads": {"intra_op": intra, "inter_op": inter}, "rss_post_build_mb": round(post_build / 2**20, 1),
        "keras": keras.__version__, "backend": keras.backend.backend(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    if on_jax:
        return {**common, **_measure_jax(step, batch, est, steps, post_build)}
    t0 = time.perf_counter()
    float(functional.to_numpy(step(batch())["loss"]))
    compile_s = time.perf_counter() - t0
    after_compile = _status_bytes("VmRSS")
    float(functional.to_numpy(step(batch())["loss"]))
    peaks, before = [], []
    for _ in range(steps):
        b = batch()
        tf.config.experimental.reset_memory_stats("CPU:0")
        before.append(tf.config.experimental.get_memory_info("CPU:0")["current"])
        float(functional.to_numpy(step(b)["loss"]))
        peaks.append(tf.config.experimental.get_memory_info("CPU:0")["peak"])
    measured = int(statistics.median(peaks))
    traced = None
    if trace:
        b = batch()
        # The runner's step wraps one tf.function; its graph names the ops the allocator records.
        compiled = getclosurevars(step).nonlocals["compiled"]
        labels = _task_labels(compiled.get_concrete_function(*b.as_tuple()).graph)
        tf.config.experimental.reset_memory_stats("CPU:0")
        traced = _traced_peak(lambda: float(functional.to_numpy(step(b)["loss"])), labels, tf)
        # A task in flight holds at least half its kept activations; the others have not started or have finished.
        cut = est["per_task_activation_bytes"] / 2
        held = traced["task_bytes"]
        others = [n for n in held.values() if n < cut] + [0] * (meta_batch - len(held))
        traced.update(in_flight=sorted((n for n in held.values() if n >= cut), reverse=True),
                      others_parameter_units=round(sum(others) / max(1, len(others)) / est["parameter_bytes"], 2)
                      if others else None)
    return {
        **common, "measured_peak_bytes": measured, "measured_peaks": peaks, "live_before_step_bytes": before,
        "ratio": round(est["step_bytes"] / measured, 3) if measured else None,
        "compile_s": round(compile_s, 1),
        "rss_compile_increase_mb": round((after_compile - post_build) / 2**20, 1),
        "rss_peak_increase_mb": round((_status_bytes("VmHWM") - post_build) / 2**20, 1),
        "trace": traced, "tensorflow": tf.__version__,
    }


def _measure_jax(step: Callable[..., Any], batch: Callable[[], Any], est: dict[str, Any], steps: int,
                 post_build: int) -> dict[str, Any]:
    """The step's memory on Keras's JAX backend: XLA's buffer assignment, and the device's own peak where known.

    XLA plans a compiled step's buffers before it runs: the arguments (variables and the batch), the outputs and
    one block of temporaries. Their sum (``memory_analysis``'s ``peak_bytes``) is what a call holds at most, and
    it is the same from step to step: that is the measured figure. On a GPU the device allocator's peak over the
    process (compilation and autotuning included, so an upper figure) is reported beside it. ``steps`` warm steps
    run after the first (compiling) one; with 0 only the first runs (the vectorized step is slow on CPUs).
    """
    import jax

    from metalab.core.engine import functional

    compiled = getclosurevars(step).nonlocals["compiled"]
    b = batch()
    t0 = time.perf_counter()
    float(functional.to_numpy(step(b)["loss"]))
    compile_s = time.perf_counter() - t0
    for _ in range(steps):
        float(functional.to_numpy(step(batch())["loss"]))
    analysis = compiled.memory_analysis(*b.as_tuple())
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    measured = analysis["peak_bytes"]
    return {
        "measured_peak_bytes": measured, "measured_peaks": [measured], "xla": analysis,
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
        "device_peak_bytes": stats.get("peak_bytes_in_use"), "device_in_use_bytes": stats.get("bytes_in_use"),
        "ratio": round(est["step_bytes"] / measured, 3) if measured else None,
        "compile_s": round(compile_s, 1),
        "rss_peak_increase_mb": round((_status_bytes("VmHWM") - post_build) / 2**20, 1),
        "jax": jax.__version__, "trace": None,
    }


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def parse_episode(text: str) -> tuple[int, int, int]:
    """``"5x5x15"`` -> ``(5, 5, 15)`` (ways, shots, queries per class)."""
    match = re.fullmatch(r"(\d+)x(\d+)x(\d+)", text)
    if not match or min(int(g) for g in match.groups()) < 1:
        raise argparse.ArgumentTypeError(f"An episode is WAYSxSHOTSxQUERIES, e.g. 5x5x15. Received: {text!r}")
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def parse_param(text: str) -> tuple[str, Any]:
    """``"task_window=32"`` -> ``("task_window", 32)`` (the value as JSON, else a string)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"A parameter is NAME=VALUE, e.g. task_window=32. Received: {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def run_setting(text: str, steps: int, threads: dict[str, str] | None = None,
                trace: bool = False, params: list[str] | None = None, algorithm: str = "maml",
                episode: str = "5x1x5") -> dict[str, Any] | None:
    """Runs one setting in a fresh interpreter (exact allocator statistics on) and returns its RESULT."""
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "3", **(threads or {})}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--inprocess", text, "--steps", str(steps),
           "--algorithm", algorithm, "--episode", episode]
    cmd += ["--trace"] if trace else []
    for param in params or []:
        cmd += ["--param", param]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"{text} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, metavar="TxK[fo]",
                        help=f"Meta-batch x inner steps, 'fo' for first order (default: {' '.join(DEFAULT_SETTINGS)}).")
    parser.add_argument("--steps", type=int, default=3, help="Measured steps per setting (after two warm-up steps).")
    parser.add_argument("--inter-op", type=int, default=0, metavar="N",
                        help="Inter-op threads of the worker (default 0: the worker's own choice, one per core).")
    parser.add_argument("--intra-op", type=int, default=0, metavar="N",
                        help="Intra-op threads of the worker (default 0: the worker's own choice).")
    parser.add_argument("--trace", action="store_true",
                        help="Run one more step under TensorFlow's profiler and print the tasks in flight at its "
                             "peak and what the other tasks hold.")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="A MAML parameter for every setting (VALUE as JSON, else a string), e.g. "
                             "task_window=32 (no window) or vectorize_tasks=on (JAX). Repeatable.")
    parser.add_argument("--algorithm", default="maml", choices=["maml", "anil", "protonet"],
                        help="The algorithm stepped (default maml). For anil K is the head's inner steps; protonet "
                             "has no inner loop (use K=1) and T episodes per step.")
    parser.add_argument("--episode", default="5x1x5", type=parse_episode, metavar="WAYSxSHOTSxQUERIES",
                        help="Episode shape (default 5x1x5, MAML's Omniglot 5-way 1-shot; ProtoNet's: 5x5x15).")
    parser.add_argument("--inprocess", metavar="TxK", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        params = dict(parse_param(p) for p in args.param)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.inprocess:
        result = measure(*parse_setting(args.inprocess), steps=args.steps, trace=args.trace, algorithm_params=params,
                         algorithm_name=args.algorithm, episode=args.episode)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    for text in args.settings:
        try:
            parse_setting(text)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
    threads = {name: str(n) for name, n in (("METALAB_INTER_OP_THREADS", args.inter_op),
                                             ("METALAB_INTRA_OP_THREADS", args.intra_op)) if n}
    ways, shots, queries = args.episode
    what = {"maml": "MAML", "anil": "ANIL", "protonet": "ProtoNet"}[args.algorithm]
    print(f"{what} {ways}-way {shots}-shot, {queries} queries, conv-4 64 filters, 28x28x1 (TxK: meta-batch x inner "
          f"steps, fo: first order); {os.cpu_count()} CPUs; tolerance "
          f"{TOLERANCE:.0%}; load average {os.getloadavg()[0]:.1f}"
          + (f"; {' '.join(f'{k}={v}' for k, v in threads.items())}" if threads else ""), flush=True)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    print(f"Keras backend: {backend}" + (" (measured: XLA's buffer assignment of the step)" if backend == "jax" else "")
          + (f"; algorithm parameters {' '.join(args.param)}" if args.param else ""), flush=True)
    print(f"{'setting':>8} {'estimate':>10} {'measured':>10} {'ratio':>6}  {'peaks':<28} {'in flight':>9} "
          f"{'all alive':>10} {'compile RSS / device peak':>26}", flush=True)
    results, outside = [], []
    for text in args.settings:
        r = run_setting(text, args.steps, threads, args.trace, args.param, args.algorithm,
                        "x".join(map(str, args.episode)))
        if r is None:
            outside.append(text)
            continue
        if not results:
            print("model: " + " ".join(r["layers"]), flush=True)
        results.append(r)
        ok = r["ratio"] is not None and abs(r["ratio"] - 1) <= TOLERANCE
        if not ok:
            outside.append(r["setting"])
        peaks = ", ".join(f"{p / 2**20:.0f}" for p in r["measured_peaks"])
        print(f"{r['setting']:>8} {_mb(r['estimate_bytes']):>10} {_mb(r['measured_peak_bytes']):>10} "
              f"{r['ratio']:>6} {'' if ok else '!'} [{peaks}] MB {r['estimate']['tasks_alive']:>4} of "
              f"{r['meta_batch']:<3} {_mb(r['estimate']['all_tasks_bytes']):>10} "
              + (f"{r['rss_compile_increase_mb']:>8.0f} MB RSS" if "rss_compile_increase_mb" in r else
                 f"{_mb(r['device_peak_bytes'])} device" if r.get("device_peak_bytes") else "-"), flush=True)
        if r.get("trace"):
            t = r["trace"]
            print(f"{'':>8} traced step: {_mb(t['peak_bytes'])} peak, {len(t['in_flight'])} in flight "
                  f"[{', '.join(f'{n / 2**20:.0f}' for n in t['in_flight'])}] MB, "
                  + ("no others" if t["others_parameter_units"] is None else
                     f"the others {t['others_parameter_units']} x parameters each")
                  + f", {_mb(t['shared_bytes'])} shared, "
                  f"{_mb(t['before_step_bytes'])} from before the step", flush=True)
        print("RESULT " + json.dumps(r), flush=True)
    verdict = {"within": not outside, "tolerance": TOLERANCE, "settings": len(args.settings), "outside": outside,
               "ratios": {r["setting"]: r["ratio"] for r in results}, "threads": threads or "worker default"}
    print(("All settings within 25% of the measured peak." if not outside else
           f"Outside 25% (or failed): {', '.join(outside)}."), flush=True)
    print("VERDICT " + json.dumps(verdict), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

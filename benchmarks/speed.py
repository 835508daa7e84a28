"""Meta-training speed of metalab against a plain PyTorch reference, workload by workload (issue 5).

Run from the repository root with the project's virtual environment::

    python benchmarks/speed.py                                  # every workload, metalab and torch alternately
    python benchmarks/speed.py --workload maml2 --impl both --rounds 3
    python benchmarks/speed.py --workload protonet --impl metalab --iters 50
    python benchmarks/speed.py --workload maml2_first_step --rounds 2   # trace + compile + first step, both sides
    python benchmarks/speed.py --workload maml_eval --impl both         # meta-testing 600 episodes

metalab's side goes through the product: the algorithm is built by its plugin (registry, ``TaskSpec`` with the
conv4 backbone plugin) and trained by the runner's step (``runner.compile_train_step``: ``meta_gradients`` then
``optimizer.apply``, compiled once, fed NumPy arrays, one metric read back per step), on TensorFlow or, with
``--backend jax``, on Keras's JAX backend. The torch side is
``benchmarks/reference_torch``. Each (workload, impl) measurement runs in its own subprocess so that peak RSS and
thread pools are its own; with ``--impl both`` the two alternate (A B, B A, ...) for ``--rounds`` rounds and the
ratio of medians is printed. Every measurement ends with one line ``RESULT {json}``; a comparison adds
``RATIO {json}``.

Every measurement also times its first step (``first_step_s``: on metalab's side tracing, graph optimisation and
the step itself; the model is built before), and a comparison prints both sides' medians of it. The
``*_first_step`` workloads compare that figure alone (lower is better). The ``*_eval`` workloads time meta-testing:
600 episodes scored through the runner's evaluation (``evaluation.evaluate_batch``: compiled chunks of
``EVAL_CHUNK`` episodes, as ``metalab evaluate`` does), against the reference's loop over the same episodes.

The machine's other load changes the figures: the load average is printed before and after each measurement.
Every figure carries the CPU's model and instruction sets (``machine.cpu``: AVX2, AVX-512) and any cap on the
vector instructions the libraries may use (``machine.isa_cap``): this project's hosts differ there (issue 22).

``--max-isa avx2`` caps both sides at AVX2 on a host that has AVX-512: oneDNN (``ONEDNN_MAX_CPU_ISA``, used by
TensorFlow and torch), torch's own kernels (``ATEN_CPU_CAPABILITY``) and XLA on JAX (``--xla_cpu_max_isa``). It
runs the AVX2 code paths, not an AVX2 host: another CPU's cores, caches and clocks are not emulated, so such a
figure is labelled with its cap and never stands for an AVX2 host's row.

``--op-profile STEPS`` (metalab on TensorFlow) traces that many more steps after the timed ones with
``tf.profiler`` and prints each op type's time a step (``--op-profile-by name``: each op's), and how long 0, 1 or 2
of TensorFlow's executor threads were busy; ``op_profile`` in the ``RESULT``.

With ``--peak`` each training workload's figure is also held against this host's measured matmul and convolution
peak (``peak.py``): the time its counted work would take at peak, as a share of the measured step, and the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: The workloads of issue 5. Random 1x28x28 inputs, conv-4 with 64 filters, Adam 1e-3 unless said otherwise.
WORKLOADS: dict[str, dict[str, Any]] = {
    "maml2": dict(algorithm="maml", ways=5, shots=1, queries=5, meta_batch=32, inner_lr=0.4, inner_steps=1,
                  first_order=False, outer_lr=1e-3, unit="it/s"),
    "maml1": dict(algorithm="maml", ways=5, shots=1, queries=5, meta_batch=32, inner_lr=0.4, inner_steps=1,
                  first_order=True, outer_lr=1e-3, unit="it/s"),
    "maml2_5steps": dict(algorithm="maml", ways=5, shots=1, queries=5, meta_batch=32, inner_lr=0.4, inner_steps=5,
                         first_order=False, outer_lr=1e-3, unit="it/s"),
    # Reptile: the paper's Omniglot inner loop (Adam with beta1=0, lr 1e-3, 5 steps) and the plugin's meta-batch 5.
    "reptile": dict(algorithm="reptile", ways=5, shots=5, queries=5, meta_batch=5, inner_lr=1e-3, inner_steps=5,
                    unit="it/s"),
    # ANIL: MAML's 5w1s setting with only the head adapting, second order through the head as in the paper; the
    # head starts at zero (the plugin's default, zero_head) on both sides.
    "anil": dict(algorithm="anil", ways=5, shots=1, queries=5, meta_batch=32, inner_lr=0.4, inner_steps=1,
                 first_order=False, outer_lr=1e-3, zero_head=True, unit="it/s"),
    "protonet": dict(algorithm="protonet", ways=5, shots=5, queries=15, meta_batch=1, outer_lr=1e-3,
                     unit="episodes/s"),
    "protonet20": dict(algorithm="protonet", ways=20, shots=5, queries=15, meta_batch=1, outer_lr=1e-3,
                       unit="episodes/s"),
    # maml2's first step alone (trace + compile + step); lower is better. Issue 22: ~60 s unrolled on 2 AVX2 cores.
    "maml2_first_step": dict(algorithm="maml", ways=5, shots=1, queries=5, meta_batch=32, inner_lr=0.4, inner_steps=1,
                             first_order=False, outer_lr=1e-3, unit="s", measure="first_step"),
    # Meta-testing 600 Omniglot-shaped 5-way 1-shot episodes (15 queries per class, the evaluation's default
    # episode): MAML adapts 3 steps (eval_inner_steps) and scores the queries after each step (the adaptation
    # curve, on both sides), transductive batch norm; ProtoNet uses the running moments (its default, inductive).
    "maml_eval": dict(algorithm="maml", ways=5, shots=1, queries=15, meta_batch=32, inner_lr=0.4, inner_steps=1,
                      first_order=False, outer_lr=1e-3, eval_inner_steps=3, episodes=600, unit="episodes/s",
                      measure="evaluate"),
    "protonet_eval": dict(algorithm="protonet", ways=5, shots=1, queries=15, meta_batch=1, outer_lr=1e-3,
                          episodes=600, unit="episodes/s", measure="evaluate"),
    # Second-order MAML fed by the real data path: Omniglot zips -> dataset plugin -> EpisodeSampler -> step.
    "omniglot_pipeline": dict(algorithm="maml", ways=5, shots=1, queries=5, meta_batch=32, inner_lr=0.4,
                              inner_steps=1, first_order=False, outer_lr=1e-3, unit="it/s", data="omniglot"),
}
IMAGE_SHAPE = (28, 28, 1)
DEFAULT_ITERS = {"anil": 15, "maml2": 10, "maml1": 15, "maml2_5steps": 4, "reptile": 15, "protonet": 60,
                 "protonet20": 20,
                 "omniglot_pipeline": 10, "maml2_first_step": 1, "maml_eval": 1, "protonet_eval": 2}


# -- measurement (shared by both implementations) ----------------------------------------------------------


def random_batches(w: dict[str, Any], count: int = 4, seed: int = 0, tasks: int | None = None) -> list[tuple]:
    """Returns ``count`` batches of random images with episode labels, as the sampler's NumPy arrays.

    Each batch holds ``tasks`` episodes (default: the workload's meta-batch).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    t, n, k, q = tasks or w["meta_batch"], w["ways"], w["shots"], w["queries"]
    out = []
    for _ in range(count):
        sx = rng.random((t, n * k, *IMAGE_SHAPE), dtype=np.float32)
        qx = rng.random((t, n * q, *IMAGE_SHAPE), dtype=np.float32)
        sy = np.tile(np.repeat(np.arange(n, dtype=np.int32), k), (t, 1))
        qy = np.tile(np.repeat(np.arange(n, dtype=np.int32), q), (t, 1))
        out.append((sx, sy, qx, qy))
    return out


def measure(step: Callable[[], dict], warmup: int, iters: int, unit_per_iter: float) -> dict[str, Any]:
    """Times ``step`` (which must block until its result is ready): first call, warm-up, then ``iters`` calls."""
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        step()
    times = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    rates = sorted(unit_per_iter / x for x in times)
    return {
        "median_rate": round(statistics.median(rates), 4),
        "min_rate": round(rates[0], 4),
        "max_rate": round(rates[-1], 4),
        "median_step_s": round(statistics.median(times), 6),
        "cpu_s_per_iter": round(cpu / iters, 4),
        "cpu_util": round(cpu / wall, 2),
        "first_step_s": round(first, 2),
        "iters": iters,
        "warmup": warmup,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


#: The environment variables that cap the vector instructions each library uses, set by ``--max-isa``.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "XLA_FLAGS")


def isa_cap_environment(max_isa: str) -> dict[str, str]:
    """The variables that keep oneDNN, torch's kernels and XLA to ``max_isa`` (``"avx2"``)."""
    flags = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), f"--xla_cpu_max_isa={max_isa.upper()}") if f)
    return {"ONEDNN_MAX_CPU_ISA": max_isa.upper(), "DNNL_MAX_CPU_ISA": max_isa.upper(),
            "ATEN_CPU_CAPABILITY": max_isa.lower(), "XLA_FLAGS": flags}


def isa_cap() -> dict[str, str] | None:
    """The caps on vector instructions in this process's environment (``None`` when the libraries use the CPU's
    best). ``XLA_FLAGS`` counts only for its ``--xla_cpu_max_isa``."""
    found = {k: os.environ[k] for k in ISA_CAP_VARIABLES[:3] if os.environ.get(k)}
    xla = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.startswith("--xla_cpu_max_isa")]
    if xla:
        found["XLA_FLAGS"] = " ".join(xla)
    return found or None


def machine(impl: str) -> dict[str, Any]:
    from _common import cpu_model
    from metalab.core.engine.devices import installed_versions  # no TensorFlow import: safe in the torch process too

    note: dict[str, Any] = {"cpus": os.cpu_count(), "cpu": cpu_model(), "isa_cap": isa_cap(),
                            "python": platform.python_version(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    if impl == "metalab":
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        note["backend"] = backend
        note.update(installed_versions(("jax", "jaxlib", "keras", "numpy") if backend == "jax"
                                       else ("tensorflow", "keras", "numpy")))
    else:
        note.update(installed_versions(("torch", "numpy")))
    return note


# -- metalab ---------------------------------------------------------------------------------------------


def run_metalab(name: str, w: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from metalab.core.engine.devices import configure_threads, set_matmul_precision, thread_counts
    from metalab.core.engine.runner import compile_train_step, make_optimizer
    from metalab.core.settings import load_settings

    # The training worker's thread pools (devices.thread_counts) unless --intra/--inter say otherwise;
    # --library-threads keeps TensorFlow's defaults. (On JAX there are no pools to set.)
    intra, inter = (0, 0) if args.library_threads else thread_counts(load_settings(), w.get("meta_batch", 1))
    configure_threads(args.intra if args.intra is not None else intra, args.inter if args.inter is not None else inter)
    import keras

    from metalab.core.engine import functional
    from metalab.core.contract.specs import TaskBatch, TaskSpec
    from metalab.core.contract.manager import make_plugin_manager

    set_matmul_precision(args.precision)  # float32: exact; tf32: TensorFloat-32 on GPUs that have it (as a run)
    if args.precision.startswith("mixed_"):
        keras.mixed_precision.set_global_policy(args.precision)
    registry = make_plugin_manager(distributions={"metalab"})
    t_setup = time.perf_counter()
    sampler = None
    if w.get("data") == "omniglot":
        from metalab.core.engine.config import RunConfig
        from metalab.core.engine.session import build_session
        from metalab.core.engine.sampling import make_sampler

        config = RunConfig(dataset="metalab.omniglot", algorithm="metalab.maml", backbone="metalab.conv4",
                           backbone_params=backbone_overrides(args),
                           ways=w["ways"], shots=w["shots"], queries=w["queries"], seed=0,
                           algorithm_params={**_algorithm_params(w), **args.param})
        session = build_session(registry, config)
        algorithm = session.algorithm
        sampler = make_sampler(session.dataset, "train", w["ways"], w["shots"], w["queries"], 0)
    else:
        keras.utils.set_random_seed(0)
        backbone = registry.backbone("metalab.conv4")
        backbone_params = backbone.params(**backbone_overrides(args))
        task = TaskSpec(kind="classification", input_shape=IMAGE_SHAPE, output_dim=w["ways"], ways=w["ways"],
                        shots=w["shots"], queries=w["queries"], total_steps=100_000,
                        make_backbone=lambda: backbone.factory(backbone_params, IMAGE_SHAPE))
        spec = registry.algorithm(f"metalab.{w['algorithm']}")
        algorithm = spec.factory(spec.params(**{**_algorithm_params(w), **args.param}), task)
    setup_s = time.perf_counter() - t_setup
    if w.get("measure") == "evaluate":
        return _finish_metalab(args, measure_metalab_evaluation(algorithm, w, args), setup_s)
    optimizer = make_optimizer(algorithm, args.precision)  # loss-scaled for mixed_float16, as in a run
    optimizer.build(algorithm.trainable_variables)

    # The runner's own train step (meta-gradients, then the optimizer's update, compiled once).
    train_step = compile_train_step(algorithm, optimizer, jit_compile=args.jit)

    def step_fn(sx, sy, qx, qy):
        return train_step(TaskBatch(sx, sy, qx, qy))
    if sampler is not None:
        sample_times: list[float] = []

        def step():
            t = time.perf_counter()
            batch = sampler.sample_batch(algorithm.meta_batch_size)
            sample_times.append(time.perf_counter() - t)
            metrics = step_fn(*batch.as_tuple())
            return {k: float(functional.to_numpy(v)) for k, v in metrics.items()}
    else:
        batches = random_batches(w)
        counter = iter(range(10**9))

        def step():
            metrics = step_fn(*batches[next(counter) % len(batches)])
            return {k: float(functional.to_numpy(v)) for k, v in metrics.items()}

    result = measure(step, args.warmup, args.iters, _units_per_iter(w))
    if args.op_profile:
        result["op_profile"] = op_profile(step, args.op_profile, by=args.op_profile_by)
    if sampler is not None:
        timed = sample_times[-args.iters:]
        result["sampler_s_per_batch"] = round(statistics.median(timed), 4)
        result["sampler_share_of_step"] = round(statistics.median(timed) / result["median_step_s"], 4)
    return _finish_metalab(args, result, setup_s)


def measure_metalab_evaluation(algorithm: Any, w: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Times the runner's meta-test scoring of ``w["episodes"]`` random episodes (one pass per iteration)."""
    from types import SimpleNamespace

    from metalab.core.contract.specs import TaskBatch
    from metalab.core.engine.evaluation import EVAL_CHUNK, compile_evaluate, evaluate_batch

    batch = TaskBatch(*random_batches(w, count=1, tasks=w["episodes"])[0])
    session = SimpleNamespace(algorithm=algorithm, task=algorithm.task)  # what evaluate_batch reads of a session
    evaluate_fn = compile_evaluate(algorithm)  # one compiled graph, reused by every pass (as one evaluation)
    scores: list[float] = []

    def step() -> None:
        scores.append(evaluate_batch(session, batch, evaluate_fn)["accuracy"])

    # The first pass (tracing included) is the only warm-up: a pass is 600 episodes.
    result = measure(step, 1, args.iters, float(w["episodes"]))
    result.update(episodes=w["episodes"], eval_chunk=EVAL_CHUNK, accuracy=round(scores[-1], 4))
    return result


def op_profile(step: Callable[[], Any], steps: int, by: str = "type", top: int = 15) -> dict[str, Any]:
    """TensorFlow's own op times over ``steps`` calls of ``step`` (``tf.profiler``), per step.

    Returns ``{"steps", "span_ms", "threads_busy_ms", "ops"}``: ``span_ms`` is the time from the first op to the last
    per step; ``threads_busy_ms`` maps a number of TensorFlow's executor threads (``tf_Compute``) to the time per step
    that exactly that many were running an op (a oneDNN or Eigen kernel may still split its work over the intra-op
    threads); ``ops`` lists the ``top`` op types (or op names, ``by="name"``) by their time per step, summed over
    the executor threads, with their calls per step.
    """
    import collections
    import glob
    import shutil
    import tempfile

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = tempfile.mkdtemp(prefix="metalab-ops-")
    try:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            step()
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    times: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    edges: list[tuple[float, int]] = []
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            spans = []
            for event in line.events:
                name = names.get(event.metadata_id, "")
                start = line.timestamp_ns + event.offset_ps / 1e3
                spans.append((start, start + event.duration_ps / 1e3))  # the executor's own events count as busy
                if ":" not in name.replace("::", ""):  # an op's event is "name:Type"; the executor's are not
                    continue
                key = name.rsplit(":", 1)[-1] if by == "type" else name
                times[key] += event.duration_ps / 1e3
                calls[key] += 1
            spans.sort()
            merged: list[list[float]] = []
            for start, end in spans:  # one thread's busy intervals (nested events merged)
                if merged and start <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], end)
                else:
                    merged.append([start, end])
            edges += [(start, 1) for start, _ in merged] + [(end, -1) for _, end in merged]
    edges.sort(key=lambda edge: (edge[0], -edge[1]))  # at a tie a start first: the count never goes below 0
    busy: collections.Counter = collections.Counter()
    running, last = 0, edges[0][0] if edges else 0.0
    for at, change in edges:
        busy[running] += at - last
        running, last = running + change, at
    per_step = 1e6 * steps  # ns -> ms per step
    return {
        "steps": steps,
        "span_ms": round((edges[-1][0] - edges[0][0]) / per_step, 2) if edges else 0.0,
        "threads_busy_ms": {str(k): round(v / per_step, 2) for k, v in sorted(busy.items())},
        "ops": [{"op": key, "ms": round(ms / per_step, 2), "calls": round(calls[key] / steps, 1)}
                for key, ms in times.most_common(top)],
    }


def _finish_metalab(args: argparse.Namespace, result: dict[str, Any], setup_s: float) -> dict[str, Any]:
    """Adds the setup time, backend, threads and device to a metalab measurement."""
    import keras

    from metalab.core.engine.devices import onednn_enabled

    result["setup_s"] = round(setup_s, 2)
    result["backend"] = keras.backend.backend()
    if result["backend"] == "tensorflow":
        import tensorflow as tf

        result["threads"] = {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                             "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                             "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
                             "onednn": onednn_enabled()}
        gpus = tf.config.list_physical_devices("GPU")
        result["device"] = ", ".join(tf.config.experimental.get_device_details(g).get("device_name", g.name)
                                     for g in gpus) or "CPU"
    else:
        import jax

        result["threads"] = {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "default")}
        result["device"] = ", ".join(sorted({d.device_kind for d in jax.devices()}))
        stats = jax.devices()[0].memory_stats() or {}  # None on CPU; the allocator's figures on GPUs
        if "peak_bytes_in_use" in stats:
            result["device_peak_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    result["conv_bias"] = conv_bias(args)
    # On JAX every step is compiled by XLA; --jit matters on TensorFlow only.
    result["jit_compile"] = bool(args.jit) or result["backend"] == "jax"
    result["precision"] = args.precision
    if args.param:
        result["algorithm_params"] = args.param
    return result


def _algorithm_params(w: dict[str, Any]) -> dict[str, Any]:
    if w["algorithm"] == "maml":
        extra = {"eval_inner_steps": w["eval_inner_steps"]} if "eval_inner_steps" in w else {}
        return dict(inner_lr=w["inner_lr"], inner_steps=w["inner_steps"], first_order=w["first_order"],
                    meta_batch_size=w["meta_batch"], outer_lr=w["outer_lr"], **extra)
    if w["algorithm"] == "anil":
        return dict(inner_lr=w["inner_lr"], inner_steps=w["inner_steps"], first_order=w["first_order"],
                    meta_batch_size=w["meta_batch"], outer_lr=w["outer_lr"], zero_head=w["zero_head"])
    if w["algorithm"] == "reptile":
        return dict(inner_optimizer="adam", inner_lr=w["inner_lr"], inner_steps=w["inner_steps"],
                    meta_batch_size=w["meta_batch"])
    return dict(outer_lr=w["outer_lr"], meta_batch_size=w["meta_batch"], lr_decay_every=0)


def conv_bias(args: argparse.Namespace) -> bool:
    """Whether both sides' convolutions have a bias: the conv4 plugin's default unless ``--conv-bias`` says."""
    if args.conv_bias is not None:
        return args.conv_bias == "on"
    # The registration module imports no TensorFlow, so the torch side can read the default too.
    from metalab.plugins.backbones import Conv4Params

    return bool(Conv4Params().conv_bias)


def backbone_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The conv4 parameters the benchmark sets (only ``conv_bias``; the rest are the plugin's defaults)."""
    return {"conv_bias": conv_bias(args)}


def _units_per_iter(w: dict[str, Any]) -> float:
    # ProtoNet's unit is episodes: a step with meta-batch T trains on T episodes; an evaluation pass scores
    # w["episodes"].
    if w.get("measure") == "evaluate":
        return float(w["episodes"])
    return float(w["meta_batch"]) if w["unit"] == "episodes/s" else 1.0


# -- torch -----------------------------------------------------------------------------------------------


def run_torch(name: str, w: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.intra is not None:
        torch.set_num_threads(args.intra)
    if args.inter is not None:
        torch.set_num_interop_threads(args.inter)
    sys.path.insert(0, str(HERE))
    from reference_torch import Conv4, make_evaluate, make_step

    torch.manual_seed(0)
    device = torch.device(args.torch_device)
    net = Conv4(head=0 if w["algorithm"] == "protonet" else w["ways"], conv_bias=conv_bias(args), device=device)
    if w.get("zero_head"):
        with torch.no_grad():
            net.params["head.weight"].zero_()
            net.params["head.bias"].zero_()
    if w.get("measure") == "evaluate":
        evaluate = make_evaluate(w, net)
        batch = random_batches(w, count=1, tasks=w["episodes"])[0]
        scores: list[float] = []

        def step():
            scores.append(float(evaluate(*batch).mean()))
    else:
        train = make_step(w, net)
        batches = random_batches(w)
        counter = iter(range(10**9))

        def step():
            return train(*batches[next(counter) % len(batches)])

    evaluating = w.get("measure") == "evaluate"  # as metalab's side: the first 600-episode pass is the warm-up
    result = measure(step, 1 if evaluating else args.warmup, args.iters, _units_per_iter(w))
    if evaluating:
        result.update(episodes=w["episodes"], accuracy=round(scores[-1], 4))
    result["threads"] = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(),
                         "mkldnn": bool(torch.backends.mkldnn.is_available())}
    result["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if device.type == "cuda":
        result["device_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    result["conv_bias"] = conv_bias(args)
    return result


# -- driver ----------------------------------------------------------------------------------------------


def run_one(name: str, impl: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measures one workload with one implementation in this process; prints and returns its RESULT."""
    w = WORKLOADS[name]
    if impl == "torch" and w.get("data"):
        result = {"workload": name, "impl": impl, "skipped": "the torch reference has no Omniglot loader; the data "
                  "path is metalab's own (compare with maml2 for the cost of real data)"}
    else:
        before = machine(impl)
        result = (run_metalab if impl == "metalab" else run_torch)(name, w, args)
        result = {"workload": name, "impl": impl, "unit": w["unit"], **result, "machine": before,
                  "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
        if w.get("measure") == "first_step":
            figure = (f"first step {result['first_step_s']} s (trace + compile + step), then {result['median_step_s']} "
                      f"s a step")
        else:
            figure = (f"{result['median_rate']} {w['unit']} (median of {result['iters']}; range {result['min_rate']}-"
                      f"{result['max_rate']}), first step {result['first_step_s']} s")
        print(f"{name} [{impl}]: {figure}, cpu {result['cpu_s_per_iter']} s/iter, peak RSS {result['peak_rss_mb']} MB, "
              f"threads {result['threads']}, load {before['loadavg']} -> {result['loadavg_after']}", flush=True)
    if "op_profile" in result:
        profile = result["op_profile"]
        print(f"{name} [{impl}] op profile over {profile['steps']} steps: ops span {profile['span_ms']} ms a step; "
              f"executor threads busy (count: ms) {profile['threads_busy_ms']}", flush=True)
        for op in profile["ops"]:
            print(f"  {op['op'][:100]:100s} {op['ms']:8.2f} ms  x{op['calls']:g}", flush=True)
    print("RESULT " + json.dumps(result), flush=True)
    return result


def echoed_result(stdout: str) -> dict[str, Any] | None:
    """Prints a measurement process's output and returns its (last) ``RESULT`` object, if any."""
    result = None
    for line in stdout.splitlines():
        print(line, flush=True)
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    return result


def subprocess_result(name: str, impl: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """Runs one measurement in a fresh interpreter and returns its RESULT (its output is echoed)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--workload", name, "--impl", impl, "--inprocess",
           "--iters", str(args.iters or DEFAULT_ITERS.get(name, 10)), "--warmup", str(args.warmup),
           "--precision", args.precision, "--torch-device", args.torch_device]
    for key, value in args.param.items():
        cmd += ["--param", f"{key}={json.dumps(value)}"]
    for flag in ("intra", "inter"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag}", str(getattr(args, flag))]
    if args.jit:
        cmd.append("--jit")
    if args.conv_bias is not None:
        cmd += ["--conv-bias", args.conv_bias]
    if args.library_threads:
        cmd.append("--library-threads")
    if args.op_profile and impl == "metalab":
        cmd += ["--op-profile", str(args.op_profile), "--op-profile-by", args.op_profile_by]

    env = dict(os.environ)
    if args.max_isa:
        env.update(isa_cap_environment(args.max_isa))
    if impl == "metalab":
        env["KERAS_BACKEND"] = args.backend  # Keras picks its backend once, at import
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    result = echoed_result(proc.stdout)
    if proc.returncode != 0:
        print(f"{name} [{impl}] failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
    return result


def parse_params(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """``["vectorize_tasks=on", "inner_steps=5"]`` -> ``{"vectorize_tasks": "on", "inner_steps": 5}`` (JSON, else text)."""
    params: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            parser.error(f"--param takes NAME=VALUE. Received: --param {item!r}")
        try:
            params[name] = json.loads(text)
        except json.JSONDecodeError:
            params[name] = text
    return params


def _limit_workloads(names: list[str]) -> list[str]:
    # A training step's work is what peak.py counts: not a first step's tracing, an evaluation or the data path.
    return [n for n in names if not WORKLOADS[n].get("measure") and not WORKLOADS[n].get("data")]


def physical_limit(names: list[str], impls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """This host's peaks per implementation and the counted work of each training workload, from ``peak.py`` run
    in processes of its own (before the timed workloads, so its threads do not share the cores with them)."""
    found: dict[str, Any] = {"peak": {}, "work": {}}
    bias = "on" if conv_bias(args) else "off"
    for impl in impls:
        for line in _peak_lines(["--impl", impl, "--workload", names[0], "--conv-bias", bias]):
            if line.startswith("PEAK "):
                record = json.loads(line[5:])
                found["peak"][record.pop("impl")] = record
    for name in _limit_workloads(names):
        for line in _peak_lines(["--impl", impls[0], "--workload", name, "--conv-bias", bias], peaks=False):
            if line.startswith("WORK "):
                found["work"][name] = json.loads(line[5:])
    return found


def _peak_lines(options: list[str], peaks: bool = True) -> list[str]:
    code = ("import sys, peak; sys.exit(peak.main(sys.argv[1:]))" if peaks else
            # The work alone: the same count as peak.main's, without timing the peaks again.
            "import sys, json, argparse, speed, peak\n"
            "a = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
            "w = speed.WORKLOADS[a['--workload']]\n"
            "f = peak.workload_flops(w, speed.random_batches(w), conv_bias=a['--conv-bias'] == 'on')\n"
            "print('WORK ' + json.dumps({'workload': a['--workload'], 'conv_flops': f['conv'], "
            "'matmul_flops': f['matmul']}))")
    proc = subprocess.run([sys.executable, "-c", code, *options], cwd=HERE, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)])}, timeout=900)
    if proc.returncode:
        print(f"peak.py {' '.join(options)} failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
    return proc.stdout.splitlines()


def print_limits(name: str, rates: dict[str, list[float]], limits: dict[str, Any]) -> None:
    """Each implementation's share of this host's peak on ``name`` (``LIMIT`` lines), and where the rest goes."""
    import peak

    work = limits["work"].get(name)
    for impl, values in rates.items():
        if not work or not values or impl not in limits["peak"]:
            continue
        steps_per_s = statistics.median(values) / _units_per_iter(WORKLOADS[name])
        line = peak.limit_line(name, impl, work, limits["peak"][impl], steps_per_s)
        print(f"{name} [{impl}]: {line['gflop_per_step']} GFLOP a step at {line['steps_per_s']} steps/s = "
              f"{line['gflops_reached']} GFLOP/s; at this host's peak (matmul {line['peak']['matmul_gflops']}, conv "
              f"{line['peak']['conv_gflops']} GFLOP/s) its convolutions and products would take {line['bound_s']} s "
              f"of the step's {line['step_s']} s: {100 * line['share_of_peak']:.1f}% of peak; the other "
              f"{line['rest_s']} s go to element-wise ops, batch norm, pooling, the optimizer, the framework and "
              "the kernels' own shortfall.", flush=True)
        print("LIMIT " + json.dumps(line), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="all", choices=["all", *WORKLOADS])
    parser.add_argument("--impl", default="both", choices=["metalab", "torch", "both"])
    parser.add_argument("--iters", type=int, default=None, help="Timed iterations (default: per workload).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed iterations, the first (compile) included.")
    parser.add_argument("--rounds", type=int, default=1, help="With --impl both: alternating rounds per workload.")
    parser.add_argument("--intra", type=int, default=None, help="Intra-op threads (default: the library's).")
    parser.add_argument("--inter", type=int, default=None, help="Inter-op threads (default: the library's).")
    parser.add_argument("--library-threads", action="store_true",
                        help="metalab: keep TensorFlow's default thread pools instead of the training worker's.")
    parser.add_argument("--jit", action="store_true", help="metalab: compile the step with XLA (jit_compile).")
    parser.add_argument("--precision", default="float32",
                        choices=["float32", "tf32", "mixed_bfloat16", "mixed_float16"],
                        help="metalab: Keras dtype policy (mixed_float16 with dynamic loss scaling, as in a run).")
    parser.add_argument("--conv-bias", default=None, choices=["on", "off"],
                        help="Both sides: convolutions with or without a bias (default: the conv4 plugin's "
                             "conv_bias). Batch norm cancels the bias, so the network's function is the same.")
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"),
                        choices=["tensorflow", "jax"],
                        help="metalab: the Keras backend (default: $KERAS_BACKEND, else tensorflow).")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="metalab: an algorithm parameter over the workload's (VALUE as JSON, else a string), "
                             "e.g. --param vectorize_tasks=on. Repeatable.")
    parser.add_argument("--torch-device", default="cpu",
                        help="torch: the device the reference runs on (cpu, cuda, cuda:1, ...).")
    parser.add_argument("--peak", action="store_true",
                        help="Also print each training workload's share of this host's measured matmul/conv peak "
                             "(benchmarks/peak.py, run first in its own processes) and where the rest goes.")
    parser.add_argument("--max-isa", default=None, choices=["avx2"],
                        help="Both sides: keep oneDNN, torch's kernels and XLA to these vector instructions on a host "
                             "that has more (the AVX2 code paths on an AVX-512 host, not an AVX2 host).")
    parser.add_argument("--op-profile", type=int, default=0, metavar="STEPS",
                        help="metalab on TensorFlow: after the timed steps, trace this many more with tf.profiler and "
                             "print each op type's time a step (summed over the executor threads) and how many "
                             "executor threads were busy; the traced steps are not in the figures.")
    parser.add_argument("--op-profile-by", default="type", choices=["type", "name"],
                        help="With --op-profile: add up op times by op type (default) or list single ops by name.")
    parser.add_argument("--inprocess", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.param = parse_params(parser, args.param)
    if args.inprocess and args.impl == "metalab":
        os.environ["KERAS_BACKEND"] = args.backend  # before anything imports keras
        from metalab.core.engine.devices import configure_cpu_kernels

        configure_cpu_kernels()  # what every metalab worker does first: oneDNN's kernels on any x86-64 CPU

    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    if args.inprocess:
        args.iters = args.iters or DEFAULT_ITERS.get(names[0], 10)
        run_one(names[0], args.impl, args)
        return 0
    impls = ["metalab", "torch"] if args.impl == "both" else [args.impl]
    from _common import cpu_model

    cpu = cpu_model()
    sets = ", ".join(name for name, key in (("AVX2", "avx2"), ("AVX-512", "avx512f")) if cpu[key]) or "no AVX2"
    cap = (", ".join(f"{k}={v}" for k, v in isa_cap_environment(args.max_isa).items()) if args.max_isa else "")
    print(f"[machine] {os.cpu_count()} CPUs, {cpu['model']} ({sets}); "
          + (f"capped at {args.max_isa.upper()} ({cap})" if args.max_isa
             else "libraries use the CPU's best instructions"), flush=True)
    limits = physical_limit(names, impls, args) if args.peak else None
    for name in names:
        rates: dict[str, list[float]] = {i: [] for i in impls}
        firsts: dict[str, list[float]] = {i: [] for i in impls}
        for r in range(args.rounds):
            for impl in (impls if r % 2 == 0 else impls[::-1]):
                result = subprocess_result(name, impl, args)
                if result and "median_rate" in result:
                    rates[impl].append(result["median_rate"])
                    firsts[impl].append(result["first_step_s"])
        if len(impls) == 2 and firsts["metalab"] and firsts["torch"]:
            m, t = statistics.median(firsts["metalab"]), statistics.median(firsts["torch"])
            first = {"workload": name, "metalab_first_step_s": firsts["metalab"], "torch_first_step_s": firsts["torch"],
                     "first_step_metalab_over_torch": round(m / t, 3), "cpu": cpu, "max_isa": args.max_isa}
            print(f"{name} first step (trace + compile + step; lower is better): metalab {m} s vs torch {t} s "
                  f"-> {m / t:.2f}x torch's", flush=True)
            print("FIRST_STEP " + json.dumps(first), flush=True)
        if limits is not None:
            print_limits(name, rates, limits)
        if WORKLOADS[name].get("measure") == "first_step":
            continue  # the first step is this workload's figure; its one timed step is not a rate worth a ratio
        if len(impls) == 2 and rates["metalab"] and rates["torch"]:
            m, t = statistics.median(rates["metalab"]), statistics.median(rates["torch"])
            ratio = {"workload": name, "ratio_metalab_over_torch": round(m / t, 3), "metalab_rates": rates["metalab"],
                     "torch_rates": rates["torch"], "unit": WORKLOADS[name]["unit"],
                     "loadavg": [round(x, 2) for x in os.getloadavg()], "cpu": cpu, "max_isa": args.max_isa}
            print(f"{name}: metalab {m} vs torch {t} {WORKLOADS[name]['unit']} -> {m / t:.2f}x", flush=True)
            print("RATIO " + json.dumps(ratio), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The physical limit (issue 22 point 4): this host's measured matmul and convolution peak, and each workload's work.

A step's useful work is counted once, on the reference: PyTorch's ``FlopCounterMode`` records the floating-point
operations of every matrix product and convolution (forward, backward and, for second-order MAML, the backward of
the backward) that one step of ``benchmarks/reference_torch`` runs. Both implementations do that same
mathematics (metalab folds its first batch norm, which saves work), so ``work / step time / peak`` is the share of
the host's peak a step reaches; element-wise ops, pooling, batch norm, the optimizer and Python are the rest.

The peak is measured here, not taken from a datasheet: the best of several timed large float32 products, and of a
64-to-64-channel 3x3 convolution on conv-4's 14x14 maps (its forward), in TensorFlow (metalab's default backend)
and in torch, each with its default threads.

    .venv/bin/python benchmarks/peak.py                       # the peaks, then every workload's work per step
    .venv/bin/python benchmarks/peak.py --workload protonet   # one workload's work

``speed.py --peak`` runs this script's peaks and work counts in processes of their own, then prints each
training workload's share of the peak with :func:`limit_line`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

#: Shapes of the probes: a square product large enough to reach the kernels' steady rate on a CPU, and a conv-4
#: middle block's convolution (64 images, 14x14, 64 to 64 channels, 3x3, same padding).
MATMUL_N = 1024
CONV_SHAPE = (64, 14, 14, 64)


def _best_rate(run: Callable[[], Any], flops: float, repeats: int, min_seconds: float) -> float:
    """GFLOP/s of the fastest of ``repeats`` timed batches of calls (each batch at least ``min_seconds``)."""
    run()  # warm-up: kernel selection, allocation
    best = 0.0
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            run()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = max(best, flops * calls / elapsed / 1e9)
    return best


def _conv_flops() -> float:
    n, h, w, c = CONV_SHAPE
    return 2.0 * n * h * w * c * c * 9


def tensorflow_peaks(repeats: int = 5, min_seconds: float = 0.3) -> dict[str, float]:
    """TensorFlow's float32 matmul and conv GFLOP/s on this host (its default thread pools, and oneDNN's kernels as
    metalab's workers choose them: ``configure_cpu_kernels``)."""
    from metalab.core.engine.devices import configure_cpu_kernels

    configure_cpu_kernels()
    import tensorflow as tf

    a = tf.random.normal([MATMUL_N, MATMUL_N], seed=1)
    b = tf.random.normal([MATMUL_N, MATMUL_N], seed=2)
    x = tf.random.normal(CONV_SHAPE, seed=3)
    k = tf.random.normal([3, 3, CONV_SHAPE[3], CONV_SHAPE[3]], seed=4)
    matmul = tf.function(lambda: tf.linalg.matmul(a, b))
    conv = tf.function(lambda: tf.nn.conv2d(x, k, 1, "SAME"))
    return {
        "matmul_gflops": round(_best_rate(lambda: matmul().numpy(), 2.0 * MATMUL_N ** 3, repeats, min_seconds), 1),
        "conv_gflops": round(_best_rate(lambda: conv().numpy(), _conv_flops(), repeats, min_seconds), 1),
    }


def torch_peaks(repeats: int = 5, min_seconds: float = 0.3) -> dict[str, float]:
    """torch's float32 matmul and conv GFLOP/s on this host (its default threads)."""
    import torch

    gen = torch.Generator().manual_seed(1)
    a = torch.randn(MATMUL_N, MATMUL_N, generator=gen)
    b = torch.randn(MATMUL_N, MATMUL_N, generator=gen)
    n, h, w, c = CONV_SHAPE
    x = torch.randn(n, c, h, w, generator=gen)
    k = torch.randn(c, c, 3, 3, generator=gen)
    with torch.no_grad():
        return {
            "matmul_gflops": round(_best_rate(lambda: a @ b, 2.0 * MATMUL_N ** 3, repeats, min_seconds), 1),
            "conv_gflops": round(_best_rate(lambda: torch.nn.functional.conv2d(x, k, padding=1), _conv_flops(),
                                            repeats, min_seconds), 1),
        }


def peaks(impl: str) -> dict[str, float]:
    """The host's measured peaks in ``impl``'s library (``"metalab"``: TensorFlow; ``"torch"``)."""
    return tensorflow_peaks() if impl == "metalab" else torch_peaks()


def workload_flops(workload: dict[str, Any], batches: list[tuple], conv_bias: bool = False) -> dict[str, float]:
    """Floating-point operations of one step of ``workload`` on the reference, by kind of operation.

    Args:
        workload: One of ``speed.WORKLOADS``.
        batches: ``speed.random_batches(workload)``; the first is stepped on.
        conv_bias: Both sides' convolutions with a bias (``speed.py --conv-bias``).

    Returns:
        ``{"total": flops, "conv": ..., "matmul": ...}`` (matmul: every matrix product, the head's included).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from reference_torch import Conv4, make_step

    torch.manual_seed(0)
    net = Conv4(head=0 if workload["algorithm"] == "protonet" else workload["ways"], conv_bias=conv_bias)
    step = make_step(workload, net)
    counter = FlopCounterMode(display=False)
    with counter:
        step(*batches[0])
    by_op: dict[str, float] = {}
    for op, count in counter.get_flop_counts().get("Global", {}).items():
        by_op[str(op)] = float(count)
    conv = sum(v for k, v in by_op.items() if "conv" in k)
    total = float(counter.get_total_flops())
    return {"total": total, "conv": conv, "matmul": total - conv}


def share(flops: float, rate: float, peak_gflops: float) -> float:
    """The share (0-1) of ``peak_gflops`` that ``rate`` steps per second of ``flops`` each reach."""
    return flops * rate / (peak_gflops * 1e9) if peak_gflops > 0 else float("nan")


def limit_line(name: str, impl: str, work: dict[str, float], peak: dict[str, float], steps_per_s: float) -> dict:
    """How close a measured step comes to this host's peak, and where the rest of its time goes.

    The step's convolutions at the conv peak and its matrix products at the matmul peak would take
    ``bound_s``; the measured step takes ``1 / steps_per_s``. ``share_of_peak`` is their ratio: the part of the
    step the kernels that do the counted work would need at full speed; the rest is everything else (element-wise
    ops, batch norm, pooling, the optimizer, the framework and its scheduling, and the kernels' own inefficiency).
    """
    step_s = 1.0 / steps_per_s
    conv_s = work["conv_flops"] / (peak["conv_gflops"] * 1e9)
    matmul_s = work["matmul_flops"] / (peak["matmul_gflops"] * 1e9)
    bound = conv_s + matmul_s
    return {"workload": name, "impl": impl, "gflop_per_step": round((work["conv_flops"] + work["matmul_flops"]) / 1e9, 3),
            "steps_per_s": round(steps_per_s, 4), "step_s": round(step_s, 4),
            "gflops_reached": round((work["conv_flops"] + work["matmul_flops"]) * steps_per_s / 1e9, 2),
            "peak": peak, "bound_s": round(bound, 4), "conv_bound_s": round(conv_s, 4),
            "matmul_bound_s": round(matmul_s, 4), "share_of_peak": round(bound / step_s, 4),
            "rest_s": round(step_s - bound, 4)}


def main(argv: list[str] | None = None) -> int:
    import speed  # the workloads and their batches

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="all", choices=["all", *speed.WORKLOADS])
    parser.add_argument("--impl", default="both", choices=["metalab", "torch", "both"])
    parser.add_argument("--conv-bias", default="off", choices=["on", "off"],
                        help="Count the work of convolutions with a bias (speed.py --conv-bias).")
    args = parser.parse_args(argv)
    from _common import cpu_model

    print(f"host: {cpu_model()}")
    for impl in (["metalab", "torch"] if args.impl == "both" else [args.impl]):
        print("PEAK " + json.dumps({"impl": impl, **peaks(impl)}))
    names = [n for n in speed.WORKLOADS if n != "omniglot_pipeline"] if args.workload == "all" else [args.workload]
    for name in names:
        w = speed.WORKLOADS[name]
        flops = workload_flops(w, speed.random_batches(w), conv_bias=args.conv_bias == "on")
        print("WORK " + json.dumps({"workload": name, "gflop_per_step": round(flops["total"] / 1e9, 3),
                                    "conv_share": round(flops["conv"] / flops["total"], 3),
                                    "conv_flops": flops["conv"], "matmul_flops": flops["matmul"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

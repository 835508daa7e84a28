"""speed.py --peak (issue 22 point 4): a step's share of this host's measured peak, and what is left for the rest."""

from __future__ import annotations

import importlib

import pytest

from tests.core.test_benchmarks_scripts import BENCHMARKS


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module


def test_the_share_of_peak_is_the_kernels_time_at_peak_over_the_measured_step(bench):
    peak = bench("peak")
    work = {"conv_flops": 2e9, "matmul_flops": 1e9}
    line = peak.limit_line("w", "metalab", work, {"conv_gflops": 100.0, "matmul_gflops": 50.0}, steps_per_s=5.0)
    # 2 GFLOP of convolution at 100 GFLOP/s and 1 GFLOP of products at 50: 0.04 s of a 0.2 s step.
    assert line["conv_bound_s"] == pytest.approx(0.02) and line["matmul_bound_s"] == pytest.approx(0.02)
    assert line["share_of_peak"] == pytest.approx(0.2) and line["rest_s"] == pytest.approx(0.16)
    assert line["gflops_reached"] == pytest.approx(15.0)


def test_only_training_steps_are_held_against_the_peak(bench, capsys):
    speed = bench("speed")
    # A first step is tracing, an evaluation does no backward pass, the data path's work is not the reference's.
    assert speed._limit_workloads(["maml2", "maml2_first_step", "protonet_eval", "omniglot_pipeline", "protonet"]) \
        == ["maml2", "protonet"]
    limits = {"peak": {"metalab": {"conv_gflops": 100.0, "matmul_gflops": 50.0}},
              "work": {"protonet": {"conv_flops": 4e9, "matmul_flops": 0.0}}}
    speed.print_limits("protonet", {"metalab": [8.0, 10.0, 12.0], "torch": [9.0]}, limits)
    out = capsys.readouterr().out
    # The median rate (10 episodes/s, one episode a step) against 0.04 s at peak: 40%; torch has no peak measured.
    assert "40.0% of peak" in out and "[torch]" not in out


def test_every_figure_names_the_cpus_instruction_sets_and_any_cap_on_them(bench, monkeypatch):
    speed = bench("speed")
    for name in speed.ISA_CAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    note = speed.machine("torch")
    assert (note["cpu"]["avx2"], note["cpu"]["avx512f"]) == ("avx2" in flags, "avx512f" in flags)
    assert note["isa_cap"] is None
    # --max-isa avx2 caps oneDNN, torch's kernels and XLA, keeping XLA flags already set.
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    env = speed.isa_cap_environment("avx2")
    assert env == {"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                   "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_cpu_max_isa=AVX2"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert speed.machine("torch")["isa_cap"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2",
                                                 "ATEN_CPU_CAPABILITY": "avx2", "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}


def test_kernels_adds_up_onednn_primitives_per_kind_pass_and_shape_in_both_verbose_formats(bench):
    kernels = bench("kernels")
    shape = "mb100_ic64oc64_ih14oh14kh3sh1dh0ph1_iw14ow14kw3sw1dw0pw1"
    lines = [
        "onednn_verbose,v1,info,oneDNN v3.7.1 (commit x)",
        f"onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,jit:avx2,backward_weights,src:f32,,,{shape},0.5",
        f"onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,backward_weights,src:f32::blocked:acdb::f0,,"
        f"alg:convolution_direct,{shape},7.5",
        f"onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,backward_weights,src:f32::blocked:acdb::f0,,"
        f"alg:convolution_direct,{shape},8.5",
        f"dnnl_verbose,exec,cpu,convolution,gemm:jit,backward_weights,src_f32::blocked:abcd:f0,,,{shape},4.0",
        "onednn_verbose,v1,primitive,exec,cpu,pooling,jit:avx2,forward_training,src:f32,,alg:pooling_max,"
        "mb100ic64_ih28oh14kh2sh2dh0ph0_iw28ow14kw2sw2dw0pw0,1.25",
        "some other output line",
    ]
    found = kernels.parse_verbose(lines)
    conv = found[("convolution", "backward_weights", shape)]
    # Creation is not execution; an implementation that changed between calls is listed with both names.
    assert conv == {"impl": "jit:avx2|gemm:jit", "ms": 20.0, "calls": 3}
    pool = found[("pooling", "forward_training", "mb100ic64_ih28oh14kh2sh2dh0ph0_iw28ow14kw2sw2dw0pw0")]
    assert pool["ms"] == 1.25 and pool["calls"] == 1
    for entry in found.values():
        entry["ms_per_step"] = entry["ms"] / 2
    torch_side = {("convolution", "backward_weights", shape): {"impl": "jit:avx2", "ms": 15.0, "calls": 2,
                                                                "ms_per_step": 7.5}}
    result = {"median_step_s": 0.05, "cpu_s_per_iter": 0.09}
    lines = kernels.table({"metalab": {"kernels": found, "result": result},
                           "torch": {"kernels": torch_side, "result": result}}, top=5)
    row = next(line for line in lines if "backward_weights" in line)
    assert "jit:avx2|gemm:jit | 10.00" in row and "jit:avx2 | 7.50" in row and row.endswith("**no** |")
    assert "| convolution | 10.00 | 7.50 |" in lines and "| pooling | 0.62 | 0.00 |" in lines


def test_op_profile_counts_each_op_per_step_and_how_many_executor_threads_were_busy(bench):
    import tensorflow as tf

    speed = bench("speed")
    a = tf.random.stateless_normal((256, 256), seed=(1, 2))
    b = tf.random.stateless_normal((256, 256), seed=(3, 4))

    @tf.function
    def step(a, b):
        # Two independent chains of three matmuls (arguments, so nothing is folded): the executor may run them at once.
        left, right = a, b
        for _ in range(3):
            left, right = tf.matmul(left, a), tf.matmul(b, right)
        return tf.reduce_sum(left) + tf.reduce_sum(right)

    step(a, b)
    profile = speed.op_profile(lambda: step(a, b).numpy(), steps=4)
    ops = {op["op"]: op for op in profile["ops"]}
    matmul = next(op for name, op in ops.items() if "MatMul" in name)
    assert matmul["calls"] == 6 and matmul["ms"] > 0
    assert not any("::" in name for name in ops)  # the executor's own events are not ops
    busy = profile["threads_busy_ms"]
    assert all(int(count) >= 0 for count in busy) and set(busy) - {"0"}
    # Each stretch of a step is counted once, under the number of threads busy then.
    assert sum(busy.values()) == pytest.approx(profile["span_ms"], rel=0.05, abs=0.05)
    by_name = speed.op_profile(lambda: step(a, b).numpy(), steps=2, by="name")
    assert sum(op["calls"] for op in by_name["ops"] if "MatMul" in op["op"]) == 6
    assert all(op["calls"] == 1 for op in by_name["ops"] if "MatMul" in op["op"])

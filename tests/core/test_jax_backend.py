"""metalab on Keras's JAX backend: the same meta-gradients and training as on TensorFlow, the CLI end to end.

The test session runs on TensorFlow and Keras fixes its backend once per process, so every JAX side runs in a
subprocess with ``KERAS_BACKEND=jax``; where both sides compute the same thing, the TensorFlow side runs here and
the two are compared through ``.npz`` files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax", reason="JAX is not installed (the optional jax extra): the JAX backend cannot be tested")

import keras  # noqa: E402

from metalab.core.engine import functional  # noqa: E402
from tests.support.processes import run_on_backend  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_jax(code: str, tmp_path: Path, *, x64: bool = False, args: tuple[str, ...] = (), timeout: float = 300,
            module: str | None = None) -> str:
    """Runs ``code`` (or ``python -m module``) under ``KERAS_BACKEND=jax``; returns stdout, failing with stderr."""
    done = run_on_backend(code, tmp_path, "jax", x64=x64, args=args, module=module, timeout=timeout)
    assert done.returncode == 0, f"JAX side failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout


# -- second-order meta-gradients -----------------------------------------------------------------------------

# Builds the small float64 conv MAML of the MAML tests and its batch; shared by both sides.
MAML_SETUP = """
import numpy as np, keras
from metalab.core.contract.specs import TaskBatch, TaskSpec
from metalab.plugins.backbones import CONV4, Conv4Params
from metalab.plugins.maml import SPEC, MAMLParams


def conv_maml(per_step_bn, vectorize_tasks="auto"):
    keras.utils.set_random_seed(0)
    task = TaskSpec("classification", (4, 4, 1), 3, 3, 2, 3, 10,
                    lambda: CONV4.factory(Conv4Params(filters=3, blocks=1, conv_bias=True), (4, 4, 1)))
    return SPEC.factory(MAMLParams(inner_lr=0.4, inner_steps=2, per_step_bn=per_step_bn,
                                   vectorize_tasks=vectorize_tasks), task)


def conv_batch():
    rng = np.random.default_rng(0)
    return TaskBatch(rng.normal(size=(2, 6, 4, 4, 1)), np.tile([0, 1, 2] * 2, (2, 1)),
                     rng.normal(size=(2, 9, 4, 4, 1)), np.tile([0, 1, 2] * 3, (2, 1)))
"""

MAML_JAX_SIDE = MAML_SETUP + """
import sys
from metalab.core.engine import functional

assert keras.backend.backend() == "jax"
keras.config.set_floatx("float64")
keras.config.set_dtype_policy("float64")
# "vectorized": the shared-BN MAML with its tasks batched by jax.vmap, from the same weights as "shared".
for name in ("shared", "per_step", "vectorized"):
    algorithm = conv_maml(name == "per_step", vectorize_tasks="on" if name == "vectorized" else "off")
    saved = np.load(f"{sys.argv[1]}/{name.replace('vectorized', 'shared')}.weights.npz")
    for i, variable in enumerate(algorithm.variables):
        variable.assign(saved[f"v{i}"])
    # Compiled as a training step compiles it (jax.jit through functional.compile): what runs in training, and
    # one XLA compile instead of one per primitive of an eager call (13 s against 3.5 s here).
    step = functional.compile(lambda *arrays: algorithm.meta_gradients(TaskBatch(*arrays)),
                              variables=algorithm.variables)
    batch = conv_batch()
    grads, metrics = step(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    np.savez(f"{sys.argv[1]}/{name}.jax.npz", loss=functional.to_numpy(metrics["loss"]),
             dtype=str(grads[0].dtype), **{f"g{i}": functional.to_numpy(g) for i, g in enumerate(grads)},
             **{f"s{i}": functional.to_numpy(v) for i, v in enumerate(algorithm.model.non_trainable_variables)})
"""


@pytest.mark.integration
def test_second_order_maml_meta_gradient_on_jax_equals_tensorflow(float64, tmp_path):
    namespace: dict = {}
    exec(MAML_SETUP, namespace)  # the very code the JAX side runs
    expected = {}
    for name in ("shared", "per_step"):
        algorithm = namespace["conv_maml"](name == "per_step")
        np.savez(tmp_path / f"{name}.weights.npz", **{f"v{i}": v.numpy() for i, v in enumerate(algorithm.variables)})
        grads, metrics = algorithm.meta_gradients(namespace["conv_batch"]())
        expected[name] = (functional.to_numpy(metrics["loss"]), [functional.to_numpy(g) for g in grads],
                          [v.numpy() for v in algorithm.model.non_trainable_variables], algorithm.trainable_variables)

    run_jax(MAML_JAX_SIDE, tmp_path, x64=True, args=(str(tmp_path),))
    expected["vectorized"] = expected["shared"]  # vmap over the tasks: the same meta-gradient as unrolled
    for name, (loss, grads, state, variables) in expected.items():
        got = np.load(tmp_path / f"{name}.jax.npz")
        assert str(got["dtype"]) == "float64"
        # Float64 throughout on both backends (losses are means by functional.mean, which Keras's JAX ops.mean
        # would take in float32: 2e-8 apart then). A first-order or stopped-BN meta-gradient is off by >1e-2.
        np.testing.assert_allclose(got["loss"], loss, rtol=1e-12)
        for i, g in enumerate(grads):
            scale = max(float(np.abs(g).max()), 1e-3)
            assert np.abs(got[f"g{i}"] - g).max() <= 1e-12 * scale, (name, variables[i].path)
        conv_bias = next(i for i, v in enumerate(variables) if v.path.endswith("conv0/bias"))
        # Batch norm cancels a per-channel shift to every order: exact BN second derivatives leave round-off only.
        assert np.abs(got[f"g{conv_bias}"]).max() < 1e-12
        for i, s in enumerate(state):  # per-step BN: the running statistics moved the same way
            np.testing.assert_allclose(got[f"s{i}"], s, rtol=1e-12, atol=1e-15)


@pytest.mark.integration
def test_batch_norm_second_order_gradient_on_jax_matches_finite_differences(tmp_path):
    # All in float64 with losses made of sums (Keras's JAX means stop at float32): one MAML step through
    # MetaBatchNorm (per-step sets too), differentiated by nested jax.value_and_grad.
    out = run_jax("""
        import json, jax, numpy as np, keras
        from keras import ops
        from metalab.core.engine import functional
        from metalab.core.engine.layers import MetaBatchNorm, batch_norm_step

        keras.config.set_floatx("float64")
        keras.config.set_dtype_policy("float64")
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        sx, qx = rng.normal(size=(6, 4, 4, 1)), rng.normal(size=(9, 4, 4, 1))
        sy, qy = np.eye(3)[[0, 1, 2] * 2], np.eye(3)[[0, 1, 2] * 3]
        report = {}
        for steps in (1, 2):
            model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(3, 3, padding="same"),
                                      MetaBatchNorm(steps=steps), keras.layers.MaxPooling2D(2), keras.layers.ReLU(),
                                      keras.layers.Flatten(), keras.layers.Dense(3)])
            fmodel = functional.FunctionalModel(model)

            def loss(w, x, y):
                return -ops.sum(y * ops.log_softmax(fmodel(w, x), axis=-1)) / x.shape[0]

            def meta(theta):
                with batch_norm_step(0):
                    _, g = functional.value_and_grad(loss, theta, sx, sy)
                with batch_norm_step(1):
                    return loss([t - 0.4 * gi for t, gi in zip(theta, g)], qx, qy)

            theta = [np.asarray(v) for v in fmodel.params()]
            # Compiled once each (jax.jit), not one XLA compile per primitive of every eager call.
            value, grads = jax.jit(lambda th: functional.value_and_grad(meta, th))(theta)
            meta = jax.jit(meta)
            grads = functional.to_numpy(grads)
            errors = []
            for _ in range(3):
                d = [rng.normal(size=t.shape) for t in theta]
                eps = 1e-6
                numeric = (float(meta([t + eps * x for t, x in zip(theta, d)]))
                           - float(meta([t - eps * x for t, x in zip(theta, d)]))) / (2 * eps)
                analytic = sum(float(np.sum(g * x)) for g, x in zip(grads, d))
                errors.append(abs(numeric - analytic) / abs(numeric))
            report[steps] = {"dtype": str(value.dtype), "errors": errors, "bias": float(np.abs(grads[1]).max())}
        print(json.dumps(report))
    """, tmp_path, x64=True)
    report = json.loads(out.strip().splitlines()[-1])
    for steps, row in report.items():
        assert row["dtype"] == "float64", steps
        assert max(row["errors"]) < 1e-8, (steps, row)  # measured ~1e-10; a stop-gradient in the variance: ~0.2
        assert row["bias"] < 1e-12, (steps, row)


# -- the runner's compiled steps: the same training on both backends -------------------------------------------

TRAJECTORY_SETUP = """
import numpy as np, keras
from metalab.core.engine import functional
from metalab.core.contract.specs import TaskBatch, TaskSpec
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.engine.evaluation import compile_evaluate
from metalab.core.engine.runner import compile_train_step
from metalab.plugins.backbones import CONV4, Conv4Params

CASES = {
    "maml_per_step_bn": ("metalab.maml", dict(per_step_bn=True, inner_steps=2, transductive=False, meta_batch_size=2,
                                              outer_lr=0.01)),
    "maml_first_order": ("metalab.maml", dict(first_order=True, meta_batch_size=2, outer_lr=0.01)),
    "protonet": ("metalab.protonet", dict()),
    "anil": ("metalab.anil", dict(meta_batch_size=2)),
    "reptile": ("metalab.reptile", dict(meta_batch_size=2, inner_steps=3)),
}


def build(name):
    registry = make_plugin_manager(distributions={"metalab"}, strict=False)
    algorithm_id, params = CASES[name]
    spec = registry.algorithm(algorithm_id)
    keras.utils.set_random_seed(0)
    task = TaskSpec("classification", (8, 8, 1), 3, 3, 2, 3, 10,
                    lambda: CONV4.factory(Conv4Params(filters=4, blocks=2, bn_momentum=0.9), (8, 8, 1)))
    return spec.factory(spec.params(**params), task)


def batches(tasks, count):
    rng = np.random.default_rng(0)
    return [TaskBatch(rng.normal(size=(tasks, 6, 8, 8, 1)).astype("float32"), np.tile([0, 1, 2] * 2, (tasks, 1)),
                      rng.normal(size=(tasks, 9, 8, 8, 1)).astype("float32"), np.tile([0, 1, 2] * 3, (tasks, 1)))
            for _ in range(count)]


def train_and_score(algorithm, steps=3):
    optimizer = algorithm.make_optimizer()
    optimizer.build(algorithm.trainable_variables)
    step = compile_train_step(algorithm, optimizer)
    losses = [float(functional.to_numpy(step(b)["loss"])) for b in batches(algorithm.meta_batch_size, steps)]
    scores = functional.to_numpy(compile_evaluate(algorithm)(*batches(4, 1)[0].as_tuple()))
    return {"losses": np.array(losses), "eval_loss": scores["loss"], "eval_accuracy": scores["accuracy"],
            **{f"v{i}": v.numpy() for i, v in enumerate(algorithm.variables)}}
"""

TRAJECTORY_JAX_SIDE = TRAJECTORY_SETUP + """
import sys

for name in sys.argv[2:]:
    algorithm = build(name)
    saved = np.load(f"{sys.argv[1]}/{name}.init.npz")
    for i, variable in enumerate(algorithm.variables):
        variable.assign(saved[f"v{i}"])
    np.savez(f"{sys.argv[1]}/{name}.jax.npz", **train_and_score(algorithm))
"""


def _check_same_training(tmp_path: Path, names: tuple[str, ...]) -> None:
    """Three compiled meta-training steps and one compiled evaluation from the same weights (conv-4 with batch
    norm) on both backends: weights, running statistics, optimizer state, losses and scores agree."""
    namespace: dict = {}
    exec(TRAJECTORY_SETUP, namespace)
    expected = {}
    for name in names:
        algorithm = namespace["build"](name)
        np.savez(tmp_path / f"{name}.init.npz", **{f"v{i}": v.numpy() for i, v in enumerate(algorithm.variables)})
        expected[name] = namespace["train_and_score"](algorithm)

    run_jax(TRAJECTORY_JAX_SIDE, tmp_path, args=(str(tmp_path), *names))
    for name, tf_side in expected.items():
        jax_side = np.load(tmp_path / f"{name}.jax.npz")
        init = np.load(tmp_path / f"{name}.init.npz")
        assert not np.allclose(init["v0"], tf_side["v0"]), name  # training moved the weights
        for key, value in tf_side.items():
            scale = max(float(np.abs(value).max()), 1e-3)
            # Measured: at most 2e-6 of the scale (float32 round-off in another order of operations).
            assert np.abs(jax_side[key] - value).max() <= 1e-4 * scale, (name, key, jax_side[key], value)


@pytest.mark.slow
def test_maml_with_per_step_batch_norm_and_protonet_train_the_same_on_jax_as_on_tensorflow(tmp_path):
    # MAML++'s per-step running statistics, inductive evaluation; ProtoNet's running moments and LR schedule.
    _check_same_training(tmp_path, ("maml_per_step_bn", "protonet"))


@pytest.mark.slow
def test_first_order_maml_anil_and_reptile_train_the_same_on_jax_as_on_tensorflow(tmp_path):
    _check_same_training(tmp_path, ("maml_first_order", "anil", "reptile"))


# -- learning, through the real runner --------------------------------------------------------------------------


@pytest.mark.slow
def test_maml_and_protonet_learn_on_jax(tmp_path):
    out = run_jax("""
        import json, sys
        from pathlib import Path
        import keras
        from metalab.core.authoring import testing
        from metalab.core.contract.manager import make_plugin_manager

        assert keras.backend.backend() == "jax"
        registry = make_plugin_manager(distributions={"metalab"}, strict=False)
        home = Path(sys.argv[1])
        # check_learns asserts the loss falls and the meta-test score beats the untrained model / chance.
        # 300 steps left MAML's MSE at 0.69995 of the untrained model's on seed 0 (the bar is 0.7; 0.785 and 0.846
        # on seeds 1-2); 1000 steps: 0.411 / 0.421 / 0.512, 12 s more (29 s against 17 s here).
        maml = testing.check_learns("metalab.maml", home / "maml", registry=registry, kind="regression", steps=1000)
        conv = {"backbone": "metalab.conv4", "backbone_params": {"filters": 8, "blocks": 2}}
        protonet = testing.check_learns("metalab.protonet", home / "protonet", registry=registry,
                                        kind="classification", task=conv, margin=0.3)
        print(json.dumps({"maml": [maml.before["mse"], maml.after["mse"]],
                          "protonet": [protonet.before["accuracy"], protonet.after["accuracy"]]}))
    """, tmp_path, args=(str(tmp_path),))
    scores = json.loads(out.strip().splitlines()[-1])
    assert scores["maml"][1] < 0.7 * scores["maml"][0]
    assert scores["protonet"][1] > 1 / 3 + 0.3


@pytest.mark.integration
def test_float16_loss_scaled_step_on_jax_skips_an_overflow_then_trains(tmp_path):
    # On JAX the loss-scale optimizer's update goes through stateless_apply inside the compiled step.
    out = run_jax("""
        import json
        import numpy as np, keras
        from metalab.core.engine import functional
        from metalab.core.contract.specs import TaskBatch, TaskSpec
        from metalab.core.contract.manager import make_plugin_manager
        from metalab.core.engine.devices import dtype_policy
        from metalab.core.engine.runner import compile_train_step, make_optimizer
        from metalab.plugins.backbones import CONV4, Conv4Params

        registry = make_plugin_manager(distributions={"metalab"}, strict=False)
        spec = registry.algorithm("metalab.protonet")
        keras.utils.set_random_seed(0)
        task = TaskSpec("classification", (8, 8, 1), 3, 3, 2, 3, 10,
                        lambda: CONV4.factory(Conv4Params(filters=4, blocks=2), (8, 8, 1)))
        with dtype_policy("mixed_float16"):
            algorithm = spec.factory(spec.params(), task)
        rng = np.random.default_rng(0)
        batch = TaskBatch(rng.normal(size=(1, 6, 8, 8, 1)).astype("float32"), np.tile([0, 1, 2] * 2, (1, 1)),
                          rng.normal(size=(1, 9, 8, 8, 1)).astype("float32"), np.tile([0, 1, 2] * 3, (1, 1)))
        weights = lambda: [np.array(v.numpy()) for v in algorithm.trainable_variables]
        before = weights()
        optimizer = keras.optimizers.LossScaleOptimizer(algorithm.make_optimizer(), initial_scale=2.0**70)
        compile_train_step(algorithm, optimizer)(batch)
        skipped = all(np.array_equal(a, b) for a, b in zip(before, weights()))
        overflow_scale = float(optimizer.dynamic_scale.numpy())
        optimizer = make_optimizer(algorithm, "mixed_float16")
        step = compile_train_step(algorithm, optimizer)
        losses = [float(functional.to_numpy(step(batch)["loss"])) for _ in range(6)]
        print(json.dumps({"dtype": algorithm.model.compute_dtype, "skipped": skipped,
                          "overflow_scale": overflow_scale, "losses": losses,
                          "scale": float(optimizer.dynamic_scale.numpy())}))
    """, tmp_path)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["dtype"] == "float16"
    assert report["skipped"] and report["overflow_scale"] == 2.0**69
    assert all(np.isfinite(report["losses"])) and report["losses"][-1] < report["losses"][0]
    assert 2.0**12 <= report["scale"] <= 2.0**15


@pytest.mark.slow
def test_auto_vectorized_tasks_on_an_accelerator_give_the_unrolled_meta_gradients(tmp_path):
    # "auto" vmaps the meta-batch's tasks when JAX computes on a GPU or TPU. No accelerator here, so the platform
    # check is made to answer "gpu": MAML's and ANIL's meta-gradients must equal the unrolled ones (float64).
    out = run_jax(TRAJECTORY_SETUP + """
import json, jax
from metalab.core.engine import functional

keras.config.set_floatx("float64")
keras.config.set_dtype_policy("float64")
CASES["maml_auto"] = ("metalab.maml", dict(meta_batch_size=3, outer_lr=0.01))  # vectorize_tasks: the default
report = {}
for name in ("maml_auto", "anil"):
    grads = {}
    for platform in ("cpu", "gpu"):
        functional._jax_platform = lambda platform=platform: platform
        algorithm = build(name)
        batch = batches(3, 1)[0]
        jaxpr = str(jax.make_jaxpr(lambda: algorithm.meta_gradients(batch)[0])())
        grads[platform] = ([functional.to_numpy(g) for g in algorithm.meta_gradients(batch)[0]],
                           jaxpr.count("feature_group_count=3") + jaxpr.count("batch_group_count=3"),
                           jaxpr.count("conv_general_dilated"))
    (a, grouped_cpu, convs_cpu), (b, grouped_gpu, convs_gpu) = grads["cpu"], grads["gpu"]
    report[name] = {"diff": max(float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12)) for x, y in zip(a, b)),
                    "convs": [convs_cpu, convs_gpu], "grouped": [grouped_cpu, grouped_gpu]}
print(json.dumps(report))
""", tmp_path, x64=True)
    report = json.loads(out.strip().splitlines()[-1])
    for name, row in report.items():
        assert row["diff"] < 1e-10, (name, row)  # measured 1e-14: the same arithmetic, batched
        # Vectorized, the graph holds one copy of each convolution instead of one per task.
        assert row["convs"][1] < row["convs"][0], (name, row)
    assert report["maml_auto"]["grouped"][1] > 0  # per-task fast weights: grouped convolutions


@pytest.mark.integration
def test_run_precision_sets_jax_matmul_precision(tmp_path):
    # JAX computes float32 matrix products and convolutions in TensorFloat-32 on GPUs by default (an H100 moved
    # the second-order MAML meta-gradient by 7%): float32 runs ask for full float32, tf32 runs for TF32.
    out = run_jax("""
        import jax
        from metalab.core.engine.devices import set_matmul_precision
        got = []
        for precision in ("float32", "tf32", "mixed_bfloat16", "float32"):
            set_matmul_precision(precision)
            got.append(str(jax.config.jax_default_matmul_precision))
        print(",".join(got))
    """, tmp_path)
    assert out.strip().splitlines()[-1] == "highest,tensorfloat32,None,highest"


@pytest.mark.slow
def test_on_jax_the_memory_estimate_counts_every_task_and_xla_reports_its_plan(tmp_path):
    # XLA plans the whole step (no task window on JAX): the estimate is the all-tasks figure whatever the threads;
    # a compiled function reports XLA's buffer assignment, which memory.py compares with the estimate.
    out = run_jax("""
        import json
        import numpy as np
        from keras import ops
        from metalab.core.engine import functional
        from metalab.core.engine import memory
        from metalab.core.engine.config import resolve_config
        from metalab.core.contract.manager import make_plugin_manager
        from metalab.core.engine.session import build_session

        registry = make_plugin_manager(distributions={"metalab"})
        config = resolve_config(registry, {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "shots": 5,
                                           "queries": 5, "algorithm_params": {"meta_batch_size": 6,
                                                                              "task_window": 2}})
        e = memory.estimate_for_session(build_session(registry, config), registry=registry, concurrency=2)
        f = functional.compile(lambda x: ops.sum(ops.tanh(x @ ops.transpose(x))))
        x = np.ones((256, 64), "float32")
        try:
            f.memory_analysis(x)
            refused = ""
        except ValueError as exc:
            refused = str(exc)
        f(x)
        plan = f.memory_analysis(x)
        from metalab.core.engine.probe import estimate
        probe = estimate({**config.model_dump(mode="json"), "steps": 5}, registry=registry, steps=2, max_seconds=5)
        print(json.dumps({"alive": e["tasks_alive"], "step": e["step_bytes"], "all": e["all_tasks_bytes"],
                          "plan": plan, "refused": refused, "probe_plan": probe["memory"]["xla_plan_bytes"],
                          "weights": probe["weights"]}))
    """, tmp_path)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["alive"] == 6 and got["step"] == got["all"]
    plan = got["plan"]
    assert plan["argument"] == 256 * 64 * 4 and plan["output"] == 4 and plan["temp"] >= 0
    assert plan["peak_bytes"] == plan["argument"] + plan["output"] - plan["alias"] + plan["temp"]
    assert "needs a call with arguments of the same structure first" in got["refused"]
    # The probe (the Train page's Estimate) reports the compiled step's plan: at least the weights and Adam's slots.
    assert got["probe_plan"] > 3 * 4 * got["weights"]


# -- the command line -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_trains_and_evaluates_a_run_on_jax(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("METALAB_HOME", str(home))
    train = run_jax("", tmp_path, module="metalab.core.cli", args=(
        "train", "-d", "metalab.sinusoid", "-a", "metalab.maml", "--steps", "6", "--seed", "3",
        "--set", "meta_batch_size=2", "--set", "test_episodes=8", "--set", "val_every=3",
        "--set", "eval_inner_steps=2", "--json"))
    summary = json.loads(train)
    run_id = summary["id"]
    assert summary["status"] == "completed", summary["error"]
    assert summary["evaluation"]["episodes"] == 8

    from metalab.core.engine.checkpoints import checkpoint_path
    from metalab.core.engine.evaluation import evaluate_run
    from metalab.core.store import RunStore
    from metalab.core.contract.manager import make_plugin_manager

    store = RunStore(home / "runs.sqlite")
    run = store.get_run(run_id)
    assert run.versions["backend"] == "jax" and "jax" in run.versions and "tensorflow" not in run.versions
    assert run.device == "/device:CPU:0"
    assert checkpoint_path(store, run_id).is_file()

    evaluated = json.loads(run_jax("", tmp_path, module="metalab.core.cli",
                                   args=("eval", run_id, "--episodes", "10", "--json")))
    assert evaluated["episodes"] == 10 and evaluated["mse"] > 0 and len(evaluated["curve"]) == 3

    # The checkpoint holds plain arrays: TensorFlow scores the JAX-trained weights the same.
    here = evaluate_run(store, run_id, make_plugin_manager(distributions={"metalab"}, strict=False), episodes=10,
                        record=False)
    np.testing.assert_allclose(here["mse"], evaluated["mse"], rtol=1e-4)


def test_library_versions_name_the_backend_here():
    from metalab.core.engine.devices import library_versions

    versions = library_versions()
    assert versions["backend"] == keras.backend.backend() == "tensorflow"
    assert "tensorflow" in versions or "tensorflow-cpu" in versions
    # Which kernels computed the run: as TF_ENABLE_ONEDNN_OPTS said when TensorFlow loaded (tests/conftest.py
    # chooses 1 on x86-64 Linux unless the shell set it).
    import os

    switch = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    expected = {"1": "on", "0": "off"}.get(switch)
    if expected:
        assert versions["tensorflow_onednn"] == expected
    else:
        assert versions["tensorflow_onednn"] in ("on", "off", "unknown")

"""The one training loop end to end on the embedded sinusoid: store, metrics, checkpoints, cancel, resume, eval."""

import numpy as np
import pytest

from metalab.core.engine.config import resolve_config
from metalab.core.contract.specs import AlgorithmSpec, Params, hookimpl
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.engine.checkpoints import checkpoint_path
from metalab.core.engine.evaluation import evaluate_run
from metalab.core.engine.runner import RunCancelled, train_run
from metalab.core.store import RunStore

TINY = {
    "dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 12, "val_every": 6, "val_episodes": 8,
    "test_episodes": 16, "checkpoint_every": 5, "log_every": 3,
    "algorithm_params": {"meta_batch_size": 2, "eval_inner_steps": 2},
}


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs.sqlite")


def test_a_run_completes_and_records_everything(builtin_registry, store):
    config = resolve_config(builtin_registry, TINY)
    run_id = store.create_run(config.model_dump())
    seen = []
    status = train_run(store, run_id, builtin_registry, progress=lambda s, t, m: seen.append(s))
    run = store.get_run(run_id)
    assert status == "completed", run.traceback
    assert run.status == "completed" and run.step == 12 and run.finished is not None
    assert seen == list(range(1, 13))
    metrics = store.metrics(run_id)
    assert [s for s, _ in metrics["train/loss"]] == [3, 6, 9, 12]
    assert [s for s, _ in metrics["val/mse"]] == [6, 12]
    assert "tensorflow" in run.versions or "tensorflow-cpu" in run.versions
    evaluation = store.evaluations(run_id)[0]
    assert evaluation["episodes"] == 16 and evaluation["mse"] > 0 and evaluation["ci95"] > 0
    assert len(evaluation["curve"]) == 3  # before adaptation and after each of 2 inner steps
    assert checkpoint_path(store, run_id).exists()
    # Its phases, in order, end to end, with the episodes each evaluation went through (tests/core/test_phases.py).
    phases = store.phases(run_id)
    assert [p["name"] for p in phases] == ["loading", "compiling", "training", "validating", "training",
                                           "validating", "training", "meta-testing", "report"]
    for before, after in zip(phases, phases[1:]):
        assert before["finished"] is not None and before["started"] <= before["finished"] == after["started"]
    assert run.started <= phases[0]["started"] and phases[-1]["started"] <= phases[-1]["finished"] <= run.finished
    assert [(p["done"], p["total"], p["detail"]) for p in phases if p["name"] != "training" and p["total"]] == [
        (8, 8, "step 6"), (8, 8, "step 12"), (16, 16, "test")]


def test_cancel_keeps_a_checkpoint_and_resume_finishes(builtin_registry, store):
    config = resolve_config(builtin_registry, TINY)
    run_id = store.create_run(config.model_dump())

    def interrupt(step, total, metrics):
        if step == 7:
            raise RunCancelled("test")

    assert train_run(store, run_id, builtin_registry, progress=interrupt) == "cancelled"
    run = store.get_run(run_id)
    assert run.status == "cancelled" and run.step == 7
    assert train_run(store, run_id, builtin_registry) == "completed"
    assert store.get_run(run_id).step == 12
    steps = [s for s, _ in store.metrics(run_id)["train/loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 12


def test_cancel_requested_through_the_store_stops_the_run(builtin_registry, store):
    config = resolve_config(builtin_registry, {**TINY, "steps": 500})
    run_id = store.create_run(config.model_dump())
    store.request_cancel(run_id)
    # A fresh start clears an old request; a request during training stops it.
    assert train_run(store, run_id, builtin_registry,
                     progress=lambda s, t, m: s == 3 and store.request_cancel(run_id)) == "cancelled"
    assert store.get_run(run_id).step < 500


def test_evaluate_run_is_reproducible(builtin_registry, store):
    config = resolve_config(builtin_registry, {**TINY, "eval_at_end": False})
    run_id = store.create_run(config.model_dump())
    assert train_run(store, run_id, builtin_registry) == "completed"
    first = evaluate_run(store, run_id, builtin_registry, episodes=10)
    second = evaluate_run(store, run_id, builtin_registry, episodes=10)
    assert first["mse"] == pytest.approx(second["mse"], rel=1e-6)
    assert len(store.evaluations(run_id)) == 2


def test_evaluate_without_checkpoint_is_a_clear_error(builtin_registry, store):
    config = resolve_config(builtin_registry, TINY)
    run_id = store.create_run(config.model_dump())
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        evaluate_run(store, run_id, builtin_registry)


class _ExplodingAlgorithm:
    METALAB_PLUGIN_API = "1.0"

    class P(Params):
        pass

    @staticmethod
    def _boom(params, task):
        raise RuntimeError("the factory exploded on purpose")

    @hookimpl
    def metalab_register_algorithms(self):
        return [AlgorithmSpec(id="boom.algo", title="Boom", description="Fails.", params=self.P, factory=self._boom)]


def test_a_failing_run_is_recorded_with_its_traceback(store):
    registry = make_plugin_manager(distributions={"metalab"}, plugins=[("boom", _ExplodingAlgorithm())], strict=False)
    config = resolve_config(registry, {**TINY, "algorithm": "boom.algo", "algorithm_params": {}})
    run_id = store.create_run(config.model_dump())
    assert train_run(store, run_id, registry) == "failed"
    run = store.get_run(run_id)
    assert run.status == "failed"
    assert "exploded on purpose" in run.error and "Traceback" in run.traceback


def test_thread_counts_split_tasks_across_cores_and_honour_overrides():
    from metalab.core.engine.devices import thread_counts
    from metalab.core.settings import Settings

    plain = Settings()
    assert thread_counts(plain, 32, cpus=2) == (1, 2)   # many tasks: one op per core, side by side
    assert thread_counts(plain, 1, cpus=2) == (0, 0)    # one episode: TensorFlow's defaults split each op
    assert thread_counts(plain, 32, cpus=1) == (0, 0)
    assert thread_counts(Settings(intra_op_threads=2, inter_op_threads=1), 32, cpus=2) == (2, 1)


# -- precision and XLA options (issue 5, point 4) -------------------------------------------------------------


def test_mixed_bfloat16_run_computes_in_bfloat16_keeps_float32_weights_and_learns(tmp_path):
    from metalab.core.contract.manager import make_plugin_manager
    from metalab.core.engine.session import build_session
    from metalab.core.authoring.testing import check_learns, tiny_config

    registry = make_plugin_manager(distributions={"metalab"}, strict=False)
    # MAML's Omniglot inner step (0.4) overshoots on the tiny digits MLP once meta-trained: the meta-test accuracy
    # then ended below the untrained model's (0.43-0.52 over seeds against 0.63-0.74; more steps did not help:
    # 0.48 at 150 and 0.47 at 300), so whether it cleared chance + 0.15 = 0.483 came down to the host's round-off
    # (0.478 on AVX2, above on AVX-512). With an inner step of 0.1 meta-training lifts it above the untrained
    # model on every seed tried, 0.637-0.698 over seeds 0-7 on an AVX2 host (0.675 for seed 0 used here).
    params = {"inner_lr": 0.1}
    config = tiny_config(registry, "metalab.maml", "classification", algorithm_params=params,
                         task={"precision": "mixed_bfloat16"})
    model = build_session(registry, config).algorithm.model
    assert model.compute_dtype == "bfloat16" and model.get_layer("head").compute_dtype == "float32"
    assert {v.dtype for v in model.trainable_variables} == {"float32"}
    import keras

    assert keras.config.dtype_policy().name == "float32"  # the policy applied to the build only
    check_learns("metalab.maml", tmp_path, registry=registry, algorithm_params=params,
                 task={"precision": "mixed_bfloat16"})


def test_float32_runs_turn_tensorfloat32_off_and_tf32_runs_turn_it_on():
    # On GPUs with TensorFloat-32 units TensorFlow uses them for float32 by default; an H100 then moved the
    # second-order MAML meta-gradient by 7%. float32 runs must be exact; tf32 asks for the fast units.
    import tensorflow as tf

    from metalab.core.contract.manager import make_plugin_manager
    from metalab.core.engine.session import build_session
    from metalab.core.authoring.testing import tiny_config

    registry = make_plugin_manager(distributions={"metalab"}, strict=False)
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    try:
        for precision, enabled in (("tf32", True), ("float32", False), ("mixed_bfloat16", True), ("tf32", True)):
            config = tiny_config(registry, "metalab.protonet", "classification", task={"precision": precision})
            session = build_session(registry, config)
            assert tf.config.experimental.tensor_float_32_execution_enabled() is enabled, precision
            assert session.algorithm.model.compute_dtype == ("bfloat16" if precision == "mixed_bfloat16"
                                                             else "float32")
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(before)


def test_xla_compiled_run_learns(tmp_path):
    from metalab.core.authoring.testing import check_learns

    check_learns("metalab.protonet", tmp_path, task={"jit_compile": True})


def test_unknown_precision_is_refused_naming_the_field():
    from metalab.core.engine.config import ConfigError, resolve_config
    from metalab.core.contract.manager import make_plugin_manager

    registry = make_plugin_manager(distributions={"metalab"}, strict=False)
    with pytest.raises(ConfigError, match="precision.*float16"):
        resolve_config(registry, {"dataset": "metalab.digits", "algorithm": "metalab.protonet", "precision": "float16"})

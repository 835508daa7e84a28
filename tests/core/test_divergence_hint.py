"""A run that diverges fails with advice naming its own algorithm's learning rates, not another algorithm's."""

from __future__ import annotations

import dataclasses

import pytest

from metalab.api import hookimpl, testing
from metalab.core.contract.manager import make_plugin_manager


def _diverging_protonet(params, task):
    from metalab.plugins.protonet.algorithm import ProtoNet

    class Diverging(ProtoNet):
        def meta_gradients(self, batch):
            grads, metrics = super().meta_gradients(batch)
            return grads, {**metrics, "loss": metrics["loss"] * float("nan")}

    return Diverging(params, task)


class _DivergingPlugin:
    METALAB_PLUGIN_API = "1.4"

    def __init__(self, protonet, factory=_diverging_protonet):
        self.protonet, self.factory = protonet, factory

    @hookimpl
    def metalab_register_algorithms(self):
        return [dataclasses.replace(self.protonet, id="nan.protonet", factory=self.factory)]


def test_a_diverged_run_names_its_algorithms_learning_rates(builtin_registry, tmp_path):
    plugin = _DivergingPlugin(builtin_registry.algorithm("metalab.protonet"))
    registry = make_plugin_manager(distributions={"metalab"}, plugins=[("nan", plugin)], strict=False)
    config = testing.tiny_config(registry, "nan.protonet", "classification", steps=3)
    with pytest.raises(AssertionError) as info:
        testing.run_tiny(registry, config, tmp_path, evaluate_before=False)
    message = str(info.value)
    assert "Training diverged: loss became nan at step 1" in message
    assert "lower the learning rates of nan.protonet (outer_lr=0.001; --set outer_lr=...)" in message
    assert "inner_lr" not in message  # ProtoNet has no inner loop: MAML's rates are no advice here


def _evaluation_diverges(params, task):
    from metalab.plugins.protonet.algorithm import ProtoNet

    class EvaluationDiverges(ProtoNet):  # training stays finite; adapting at evaluation time does not
        def evaluate(self, *args, **kwargs):
            out = super().evaluate(*args, **kwargs)
            return {**out, "loss": out["loss"] * float("nan")}

    return EvaluationDiverges(params, task)


def test_a_validation_that_diverges_fails_the_run_with_advice_and_no_nan_in_the_store(builtin_registry, tmp_path):
    plugin = _DivergingPlugin(builtin_registry.algorithm("metalab.protonet"), _evaluation_diverges)
    registry = make_plugin_manager(distributions={"metalab"}, plugins=[("nan", plugin)], strict=False)
    config = testing.tiny_config(registry, "nan.protonet", "classification", steps=3)
    with pytest.raises(AssertionError) as info:
        testing.run_tiny(registry, config, tmp_path, evaluate_before=False)
    message = str(info.value)
    assert "Validation diverged: its loss became nan at step" in message, message
    assert "NOT NULL" not in message and "lower the learning rates of nan.protonet" in message


def test_the_store_refuses_a_metric_that_is_not_finite_and_writes_nothing(tmp_path):
    from metalab.core.store import RunStore

    store = RunStore(tmp_path / "runs.db")
    run_id = store.create_run({"dataset": "d", "algorithm": "a", "steps": 3})
    with pytest.raises(ValueError, match=r"Metric val/loss of step 2 is nan; the store keeps finite numbers only"):
        store.log_metrics(run_id, 2, {"val/accuracy": 0.5, "val/loss": float("nan")})
    assert store.metrics(run_id) == {}

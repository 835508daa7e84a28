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

    def __init__(self, protonet):
        self.protonet = protonet

    @hookimpl
    def metalab_register_algorithms(self):
        return [dataclasses.replace(self.protonet, id="nan.protonet", factory=_diverging_protonet)]


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

"""The analytic step-memory estimate: what each layer keeps, and how the total grows with tasks and inner steps."""

from __future__ import annotations

import keras
import pytest

from metalab.core.engine import memory
from metalab.core.engine.config import resolve_config
from metalab.core.engine.memory import LayerProfile, activation_profile, estimate_step_memory
from metalab.core.engine.session import build_session


def tiny_conv_model() -> keras.Model:
    """Two conv blocks on 8x8x1, then a 3-way head: small enough to build in milliseconds."""
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.Sequential([
            keras.layers.Conv2D(4, 3, padding="same"), keras.layers.BatchNormalization(), keras.layers.ReLU(),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(4, 3, padding="same"), keras.layers.BatchNormalization(), keras.layers.ReLU(),
            keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
        ]),
        keras.layers.Dense(3),
    ])


@pytest.fixture(scope="module")
def profile() -> list[LayerProfile]:
    return activation_profile(tiny_conv_model())


def estimate(profile, **overrides):
    args = dict(method="maml", parameters=1000, support_size=3, query_size=15, meta_batch=4, inner_steps=1,
                first_order=False, baseline_bytes=0)
    return estimate_step_memory(profile, **{**args, **overrides})


def test_profile_walks_nested_models_and_knows_what_each_layer_keeps(profile):
    kinds = [p.kind for p in profile]
    assert kinds == ["Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D"] * 2 + ["Flatten", "Dense"]
    conv, bn, relu, pool = profile[:4]
    assert conv.input_elements == 64 and conv.output_elements == 8 * 8 * 4 and pool.output_elements == 4 * 4 * 4
    assert conv.keeps_input and conv.keeps_output_grad and not conv.keeps_output
    assert bn.keeps_input and bn.keeps_output_grad
    assert relu.keeps_output and not relu.keeps_input and not relu.keeps_output_grad
    assert pool.keeps_input and pool.keeps_output and not pool.keeps_output_grad
    flatten = profile[-2]
    assert not (flatten.keeps_input or flatten.keeps_output or flatten.keeps_output_grad)
    assert all(p.modelled for p in profile)


def test_forward_keeps_each_tensor_once(profile):
    # Block 1 keeps conv out (256), relu out (256), pool out (64); block 2: 64, 64, 16; flatten is a view of
    # the pool output (already counted); the logits are not needed by any gradient here.
    e = estimate(profile, query_size=1, support_size=1, meta_batch=1, first_order=True)
    assert e["query_pass_bytes"] == 4 * (256 + 256 + 64 + 64 + 64 + 16)
    # Second order also keeps the gradients arriving at conv, BN and dense outputs.
    e2 = estimate(profile, query_size=1, support_size=1, meta_batch=1)
    assert e2["support_pass_bytes"] - e2["query_pass_bytes"] == 4 * (256 + 256 + 64 + 64 + 3)


def test_grows_linearly_in_meta_batch(profile):
    steps = [estimate(profile, meta_batch=t)["step_bytes"] for t in (1, 2, 3, 8)]
    per_task = steps[1] - steps[0]
    assert per_task > 0 and steps[2] - steps[1] == per_task and steps[3] - steps[0] == 7 * per_task
    e = estimate(profile, meta_batch=1)
    assert per_task == e["per_task_activation_bytes"] + e["batch_bytes"]


def test_grows_with_inner_steps_in_second_order_only(profile):
    second = [estimate(profile, inner_steps=k)["per_task_activation_bytes"] for k in (1, 2, 5)]
    step = second[1] - second[0]
    assert step > 0 and second[2] - second[0] == 4 * step
    first = [estimate(profile, inner_steps=k, first_order=True)["per_task_activation_bytes"] for k in (1, 5)]
    assert first[0] == first[1]


def test_first_order_is_smaller_than_second_order(profile):
    for k in (1, 3):
        fo = estimate(profile, inner_steps=k, first_order=True)
        so = estimate(profile, inner_steps=k)
        assert fo["second_order"] is False and so["second_order"] is True
        assert fo["step_bytes"] < so["step_bytes"] and fo["total_bytes"] < so["total_bytes"]


def test_concurrency_sets_the_tasks_in_flight_and_finished_tasks_hold_nothing(profile):
    e = estimate(profile, meta_batch=32, concurrency=2)
    per_task, param = e["per_task_activation_bytes"], e["parameter_bytes"]
    assert e["tasks_alive"] == 2 and e["activation_bytes"] == 2 * per_task
    # The finished tasks' gradients are in the running sum: the meta-gradient and the update, nothing more.
    assert "pending_gradient_bytes" not in e and e["gradient_bytes"] == 2 * param
    # Each task in flight has its own backward pass: twice the single task's gradients in flight.
    assert e["transient_bytes"] == 2 * estimate(profile, meta_batch=1, concurrency=2)["transient_bytes"]
    parts = ("parameter_bytes", "optimizer_bytes", "gradient_bytes", "batch_bytes", "transient_bytes",
             "activation_bytes")
    assert e["step_bytes"] == sum(e[k] for k in parts)
    assert e["all_tasks_bytes"] > e["step_bytes"]
    # Beyond the window, a task more costs its inputs only.
    more = estimate(profile, meta_batch=33, concurrency=2)
    assert more["step_bytes"] - e["step_bytes"] == e["batch_bytes"] // 32
    # More threads than tasks: all in flight, and the step is the all-tasks figure.
    few = estimate(profile, meta_batch=2, concurrency=4)
    assert few["tasks_alive"] == 2
    assert few["all_tasks_bytes"] == few["step_bytes"]
    assert few["transient_bytes"] == 2 * estimate(profile, meta_batch=2)["transient_bytes"]
    assert estimate(profile, meta_batch=5, concurrency=1)["tasks_alive"] == 1
    # ANIL and ProtoNet push the whole batch through the backbone at once: no window.
    anil = estimate(profile, method="anil", meta_batch=32, concurrency=2)
    assert anil["tasks_alive"] == 32


def test_without_concurrency_every_task_is_alive_and_the_step_is_the_bound(profile):
    e = estimate(profile, meta_batch=32)
    assert e["tasks_alive"] == 32
    assert e["step_bytes"] == e["all_tasks_bytes"]
    # With threads, the bound counts every task alive and the backward passes that run at once.
    two = estimate(profile, meta_batch=32, concurrency=2)
    assert two["all_tasks_bytes"] == e["all_tasks_bytes"] + e["transient_bytes"]


def test_first_order_keeps_the_larger_of_the_query_and_support_passes(profile):
    # The support pass is freed before the query pass starts, so the two never add up.
    e = estimate(profile, first_order=True, support_size=3, query_size=15)
    assert e["per_task_activation_bytes"] == e["query_pass_bytes"] + 2 * e["parameter_bytes"]
    big_support = estimate(profile, first_order=True, support_size=40, query_size=15)
    assert big_support["per_task_activation_bytes"] == big_support["support_pass_bytes"] + 2 * 4 * 1000


def test_gradients_in_flight_walk_the_backward_pass_to_first_order(profile):
    # First order, walking back from the head: at the first ReLU the pass still holds the first conv's output and
    # the ReLU's output (256 each) and the gradients at the ReLU's output and input (256 each): 1024 elements per
    # example against 720 kept by the forward pass, so 304 more for each of the 15 queries.
    fo = estimate(profile, first_order=True, query_size=15, support_size=3)
    assert fo["transient_bytes"] == 15 * 4 * (1024 - 720)
    # Second order keeps the support passes, and a task holds the widest layer's two gradients on top.
    so = estimate(profile, query_size=15, support_size=3)
    assert so["transient_bytes"] == 2 * 15 * 4 * 256


def test_total_adds_the_baseline_and_parameters_add_weights_and_slots(profile):
    e = estimate(profile, baseline_bytes=10**9)
    assert e["total_bytes"] == e["step_bytes"] + 10**9
    assert e["optimizer_bytes"] == 2 * e["parameter_bytes"] == 2 * 4 * 1000


def test_a_folded_batch_norm_keeps_nothing_and_the_max_pool_keeps_the_convolution_output():
    from metalab.core.engine.layers import FoldingSequential, MetaBatchNorm

    def net(cls):
        layers = [keras.Input((8, 8, 1))]
        for i in range(2):  # 20 filters: the first block (3x3x1 patches) folds, the second (3x3x20) does not
            layers += [keras.layers.Conv2D(20, 3, padding="same"), MetaBatchNorm(name=f"bn{i}"),
                       keras.layers.MaxPooling2D(2), keras.layers.ReLU()]
        return keras.Sequential([cls(layers + [keras.layers.Flatten()]), keras.layers.Dense(3)])

    folded, plain = activation_profile(net(FoldingSequential)), activation_profile(net(keras.Sequential))
    assert [p.kind for p in folded][:3] == ["Conv2D", "MetaBatchNorm (folded)", "MaxPooling2D"]
    assert folded[5].kind == "MetaBatchNorm" and plain[1].kind == "MetaBatchNorm"
    bn = folded[1]
    assert not (bn.keeps_input or bn.keeps_output or bn.keeps_output_grad) and bn.modelled
    # Kept (first block): conv out 8x8x20 = 1280 (the pool's input, through the folded norm), pool out 320,
    # relu out 320; second block: conv out 320, bn out 320, pool out 80, relu out 80. Unfolded, the first
    # norm's output (1280) is kept too.
    one = dict(query_size=1, support_size=1, meta_batch=1, first_order=True)
    assert estimate(folded, **one)["query_pass_bytes"] == 4 * 2720
    assert estimate(plain, **one)["query_pass_bytes"] == 4 * (2720 + 1280)
    # A second-order task's gradients in flight: where the arriving and the sent gradient are largest together.
    # Unfolded, the first norm's (1280 + 1280); folded, the first max-pool's (320 + 1280: the norm is a view, and
    # the first convolution sends no gradient to the data).
    two = dict(query_size=1, support_size=1, meta_batch=1, concurrency=1)
    assert estimate(plain, **two)["transient_bytes"] == 4 * 2560
    assert estimate(folded, **two)["transient_bytes"] == 4 * 1600


@pytest.mark.parametrize("bad, message", [
    (dict(meta_batch=0), "meta_batch to be an integer >= 1. Received: meta_batch=0"),
    (dict(inner_steps=0), "inner_steps to be an integer >= 1. Received: inner_steps=0"),
    (dict(query_size=2.5), "query_size to be an integer >= 1. Received: query_size=2.5"),
    (dict(method="reptile"), "Received: method='reptile'"),
])
def test_bad_input_is_a_clear_error(profile, bad, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        estimate(profile, **bad)


def test_empty_profile_and_unknown_shapes_are_errors():
    with pytest.raises(ValueError, match="Received: profile=\\[\\]"):
        estimate([])
    with pytest.raises(ValueError, match="fully known example shape"):
        activation_profile(tiny_conv_model(), (None, 8, 1))


def test_unknown_layer_kinds_count_conservatively_and_are_named():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(7), keras.layers.Activation("tanh")])
    prof = activation_profile(model)
    assert [p.kind for p in prof] == ["Dense", "Activation"] and not prof[1].modelled
    e = estimate(prof, query_size=1, support_size=1, meta_batch=1, first_order=True)
    assert e["unmodelled_layers"] == ["Activation"]
    assert e["query_pass_bytes"] == 4 * (7 + 7)


def test_estimate_for_a_built_session(builtin_registry):
    config = resolve_config(builtin_registry, {
        "dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "shots": 5, "queries": 5,
        "algorithm_params": {"meta_batch_size": 6, "inner_steps": 2}})
    e = memory.estimate_for_session(build_session(builtin_registry, config), registry=builtin_registry, concurrency=1,
                                    baseline_bytes=7)
    assert e["modelled"] is True and e["second_order"] is True and e["parameters"] == 1761
    assert e["meta_batch"] == 6 and e["inner_steps"] == 2 and e["tasks_alive"] == 1 and e["baseline_bytes"] == 7
    assert [layer["kind"] for layer in e["layers"]] == ["Flatten", "Dense", "Dense", "Dense"]
    # MAML's own task_window comes before the threads; a window as wide as the meta-batch, with more tasks than
    # threads, leaves the schedule to the executor: every task counts (the bound).
    windowed = resolve_config(builtin_registry, {**config.model_dump(), "algorithm_params": {
        **config.algorithm_params, "task_window": 3}})
    assert memory.estimate_for_session(build_session(builtin_registry, windowed), registry=builtin_registry,
                                       concurrency=1)["tasks_alive"] == 3
    unlimited = resolve_config(builtin_registry, {**config.model_dump(), "algorithm_params": {
        **config.algorithm_params, "task_window": 6}})
    e = memory.estimate_for_session(build_session(builtin_registry, unlimited), registry=builtin_registry,
                                    concurrency=2)
    assert e["tasks_alive"] == 6 and e["step_bytes"] == e["all_tasks_bytes"]
    assert memory.estimate_for_session(build_session(builtin_registry, config), registry=builtin_registry,
                                       concurrency=8)["tasks_alive"] == 6


def test_algorithms_it_does_not_cover_say_so(builtin_registry):
    config = resolve_config(builtin_registry, {"dataset": "metalab.sinusoid", "algorithm": "metalab.reptile"})
    e = memory.estimate_for_session(build_session(builtin_registry, config), registry=builtin_registry)
    assert e["modelled"] is False and "does not model metalab.reptile" in e["reason"]


def test_each_algorithm_plugin_names_its_own_memory_model(builtin_registry):
    from metalab.core.contract.specs import MEMORY_MODELS

    assert {i: memory.method_of(builtin_registry, i) for i in ("metalab.maml", "metalab.metasgd", "metalab.anil",
                                                              "metalab.protonet", "metalab.reptile")} == {
        "metalab.maml": "maml", "metalab.metasgd": "maml", "metalab.anil": "anil", "metalab.protonet": "protonet",
        "metalab.reptile": None}
    assert memory.method_of(builtin_registry, "nothing.loaded") is None
    # Every model the contract offers is one the estimator computes.
    for model in MEMORY_MODELS:
        assert estimate(activation_profile(tiny_conv_model()), method=model)["method"] == model


def test_a_third_party_algorithm_is_estimated_by_the_model_its_spec_names(builtin_registry):
    import types

    from metalab.core.contract.manager import make_plugin_manager
    from metalab.core.contract.specs import AlgorithmSpec, Params, hookimpl

    maml = builtin_registry.algorithm("metalab.maml")
    spec = AlgorithmSpec(id="thirdparty.proto", title="Proto", description="d", params=Params,
                         factory=lambda params, task: None, memory_model="protonet")
    plugin = types.SimpleNamespace(METALAB_PLUGIN_API="1.4",
                                   metalab_register_algorithms=hookimpl(lambda: [spec]))
    registry = make_plugin_manager(entry_points=False, strict=True, plugins=[("thirdparty", plugin)])
    assert memory.method_of(registry, "thirdparty.proto") == "protonet"
    with pytest.raises(ValueError, match=r"memory_model must be None or one of maml, anil, protonet\. "
                                         r"Received: memory_model='lstm'"):
        AlgorithmSpec(id="thirdparty.x", title="X", description="d", params=Params, factory=maml.factory,
                      memory_model="lstm").validate()

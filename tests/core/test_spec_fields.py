"""Spec fields through which a plugin carries its own knowledge (plugin API 1.4): the recommended presets."""

from __future__ import annotations

import dataclasses

import pytest


def test_presets_reach_the_train_form_and_the_cli_from_the_dataset_spec(tmp_path, builtin_registry):
    from metalab.core.services import Services
    from metalab.core.settings import load_settings

    services = Services(settings=load_settings(home=tmp_path, disable_plugins=""), registry=builtin_registry)
    # An algorithm's own entry goes over the dataset's entry for every algorithm.
    assert services.recommended_values("metalab.sinusoid", "metalab.maml") == {
        "shots": 10, "queries": 10, "steps": 4000, "val_every": 500, "log_every": 50, "checkpoint_every": 1000,
        "algorithm.inner_lr": 0.01, "algorithm.meta_batch_size": 10, "algorithm.eval_inner_steps": 10}
    assert services.recommended_values("metalab.sinusoid", "metalab.protonet") == {
        "shots": 10, "queries": 10, "steps": 2000, "val_every": 250, "log_every": 50, "checkpoint_every": 500}
    assert services.recommended_values("metalab.omniglot", "metalab.maml") == {"ways": 5, "shots": 1, "queries": 15}
    # The catalog hands out copies: a page editing its row leaves the spec alone.
    sinusoid = services.catalog()["datasets"]["metalab.sinusoid"]
    sinusoid["presets"]["*"]["steps"] = 1
    assert builtin_registry.dataset("metalab.sinusoid").presets["*"]["steps"] == 2000


@pytest.mark.parametrize("presets", [
    {"metalab.maml": [("steps", 10)]},
    {3: {"steps": 10}},
    {"*": {1: 2}},
    [("*", {})],
])
def test_malformed_presets_are_refused(builtin_registry, presets):
    spec = dataclasses.replace(builtin_registry.dataset("metalab.digits"), presets=presets)
    with pytest.raises(ValueError, match=r"presets must map algorithm ids \(or '\*'\) to dicts of run fields and "
                                         r"qualified parameters\. Received: presets="):
        spec.validate()

"""The conformance kit's entry points for plugin authors: check_algorithm with parameters, and the paper's defaults."""

from __future__ import annotations

from metalab.api import testing
from metalab.core.authoring import testing as kit


def test_check_algorithm_hands_its_parameters_and_task_to_every_check(builtin_registry, tmp_path, monkeypatch):
    calls = []
    for name in ("check_learns", "check_resume", "check_deterministic"):
        monkeypatch.setattr(kit, name, lambda algorithm_id, home, _name=name, **kwargs: calls.append((_name, kwargs)))
    params, task = {"inner_lr": 0.1, "first_order": True}, {"backbone_params": {"hidden": [16]}}
    testing.check_algorithm("metalab.maml", tmp_path, registry=builtin_registry, algorithm_params=params, task=task)
    # Both of MAML's kinds, all three checks, each with the same parameters and task.
    assert [(name, kwargs["kind"]) for name, kwargs in calls] == [
        (name, kind) for kind in ("classification", "regression")
        for name in ("check_learns", "check_resume", "check_deterministic")]
    assert all(kwargs["algorithm_params"] == params and kwargs["task"] == task for _, kwargs in calls)


def test_paper_defaults_lift_the_kits_caps(builtin_registry):
    defaults = testing.paper_defaults(builtin_registry, "metalab.maml")
    assert defaults == builtin_registry.algorithm("metalab.maml").params().model_dump()
    capped = testing.tiny_config(builtin_registry, "metalab.maml", "classification")
    papers = testing.tiny_config(builtin_registry, "metalab.maml", "classification", algorithm_params=defaults)
    assert (capped.algorithm_params["meta_batch_size"], capped.algorithm_params["eval_inner_steps"]) == (4, 3)
    assert papers.algorithm_params["meta_batch_size"] == 32  # Finn et al.'s meta-batch, not the kit's 4


def test_an_algorithm_learns_with_its_papers_defaults(builtin_registry, tmp_path):
    defaults = testing.paper_defaults(builtin_registry, "metalab.protonet")
    result = testing.check_learns("metalab.protonet", tmp_path, registry=builtin_registry, algorithm_params=defaults)
    assert result.status == "completed" and result.after["accuracy"] > 1 / 3 + 0.15

"""Run configs are validated once, at the edge, with messages that name the field and the value."""

import pytest

from metalab.core.config import ConfigError, parse_assignments, resolve_config


def test_defaults_come_from_the_dataset_and_plugins(builtin_registry):
    config = resolve_config(builtin_registry, {"dataset": "metalab.omniglot", "algorithm": "metalab.maml"})
    assert config.backbone == "metalab.conv4"
    assert (config.ways, config.shots, config.queries) == (5, 1, 15)
    assert config.algorithm_params["inner_lr"] == 0.4
    assert config.algorithm_params["first_order"] is False


def test_unqualified_and_qualified_assignments(builtin_registry):
    config = resolve_config(
        builtin_registry,
        {"dataset": "metalab.omniglot", "algorithm": "metalab.maml"},
        parse_assignments(["inner_lr=0.1", "ways=20", "dataset.rotations=false", "first_order=true"]),
    )
    assert config.algorithm_params["inner_lr"] == 0.1
    assert config.ways == 20
    assert config.dataset_params["rotations"] is False
    assert config.algorithm_params["first_order"] is True


def test_out_of_range_value_names_field_range_and_value(builtin_registry):
    with pytest.raises(ConfigError) as info:
        resolve_config(builtin_registry, {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml"},
                       {"inner_lr": -1})
    message = str(info.value)
    assert "algorithm.inner_lr" in message and "-1" in message and "allowed" in message


def test_unknown_parameter_lists_known_ones(builtin_registry):
    with pytest.raises(ConfigError, match="Unknown parameter 'inner_rl'"):
        resolve_config(builtin_registry, {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml"}, {"inner_rl": 1})


def test_unknown_plugin_id(builtin_registry):
    with pytest.raises(ConfigError, match="metalab.mamlx"):
        resolve_config(builtin_registry, {"dataset": "metalab.sinusoid", "algorithm": "metalab.mamlx"})


def test_algorithm_must_support_the_dataset_kind(builtin_registry):
    with pytest.raises(ConfigError, match="supports classification"):
        resolve_config(builtin_registry, {"dataset": "metalab.sinusoid", "algorithm": "metalab.protonet"})


def test_run_field_errors_name_the_field(builtin_registry):
    with pytest.raises(ConfigError, match=r"steps.*Received: steps=0"):
        resolve_config(builtin_registry, {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 0})


def test_set_needs_name_equals_value():
    with pytest.raises(ConfigError, match="name=value"):
        parse_assignments(["inner_lr"])
    assert parse_assignments(["a=1", "b=x", "c=[1,2]"]) == {"a": 1, "b": "x", "c": [1, 2]}

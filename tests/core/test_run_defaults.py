"""One source of run defaults: the dataset's recommended values, and cadences that scale with the steps."""

import pytest

from metalab.core.engine.config import (
    CADENCE_FIELDS,
    RunConfig,
    config_warnings,
    recommended_values,
    resolve_config,
    scaled_cadence,
)

SINUSOID_MAML = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml"}


def test_recommended_values_layer_episode_paper_defaults_then_presets(builtin_registry):
    sinusoid = builtin_registry.dataset("metalab.sinusoid")
    assert recommended_values(sinusoid, "metalab.maml") == {
        "shots": 10, "queries": 10, "steps": 4000, "val_every": 500, "log_every": 50, "checkpoint_every": 1000,
        "algorithm.inner_lr": 0.01, "algorithm.meta_batch_size": 10, "algorithm.eval_inner_steps": 10}
    # Reptile's paper settings on sinusoid come from algorithm_defaults, which the Train form used to skip.
    reptile = recommended_values(sinusoid, "metalab.reptile")
    assert reptile["algorithm.inner_lr"] == 0.02 and reptile["algorithm.inner_optimizer"] == "sgd"
    omniglot = recommended_values(builtin_registry.dataset("metalab.omniglot"), "metalab.maml")
    assert (omniglot["ways"], omniglot["shots"], omniglot["queries"]) == (5, 1, 15)
    # A copy: editing it leaves the spec alone.
    recommended_values(sinusoid, "metalab.maml")["steps"] = 1
    assert sinusoid.presets["metalab.maml"]["steps"] == 4000


def test_recommended_resolution_starts_from_the_presets_and_the_users_values_win(builtin_registry):
    config = resolve_config(builtin_registry, dict(SINUSOID_MAML), recommended=True)
    assert (config.steps, config.val_every, config.checkpoint_every, config.log_every) == (4000, 500, 1000, 50)
    assert config.algorithm_params["meta_batch_size"] == 10
    mine = resolve_config(builtin_registry, dict(SINUSOID_MAML), {"meta_batch_size": 3, "run.steps": 8000},
                          recommended=True)
    assert mine.algorithm_params["meta_batch_size"] == 3 and mine.steps == 8000
    assert mine.val_every == 500  # a longer run keeps the recommended cadence
    # Without recommended=True: RunConfig's and the plugins' defaults, as before (the papers' meta-batch 25).
    plain = resolve_config(builtin_registry, dict(SINUSOID_MAML))
    assert plain.steps == 1000 and plain.algorithm_params["meta_batch_size"] == 25
    assert (plain.val_every, plain.checkpoint_every, plain.log_every) == (100, 100, 10)


@pytest.mark.parametrize("recommended", [True, False])
def test_300_steps_scale_every_cadence_within_the_run(builtin_registry, recommended):
    """The reviewer's run: Steps set to 300 kept val_every=500 and checkpoint_every=1000 (no validation curve and
    no checkpoint before the end)."""
    config = resolve_config(builtin_registry, {**SINUSOID_MAML, "steps": 300}, recommended=recommended)
    for name in CADENCE_FIELDS:
        assert 1 <= getattr(config, name) <= 300, (name, getattr(config, name))
    if recommended:  # 500, 1000 and 50 recommended for 4,000 steps, in proportion
        assert (config.val_every, config.checkpoint_every, config.log_every) == (37, 75, 3)
    assert config_warnings(config) == []


def test_an_explicit_cadence_is_kept_and_one_above_the_steps_warns(builtin_registry):
    config = resolve_config(builtin_registry, {**SINUSOID_MAML, "steps": 300}, {"val_every": 500}, recommended=True)
    assert config.val_every == 500 and config.checkpoint_every == 75
    (warning,) = config_warnings(config)
    assert warning.startswith("val_every: 500 is more than the run's 300 steps, so the run validates only once")
    assert warning.endswith("Received: val_every=500, steps=300")
    config = resolve_config(builtin_registry, {**SINUSOID_MAML, "steps": 300, "checkpoint_every": 1000,
                                               "log_every": 301})
    assert [w.split(":")[0] for w in config_warnings(config)] == ["checkpoint_every", "log_every"]
    assert "checkpoint_every: 1000 is more than the run's 300 steps" in config_warnings(config)[0]
    # Equal to the steps is the last step: no warning (the conformance kit validates once, at the end).
    assert config_warnings(resolve_config(builtin_registry, {**SINUSOID_MAML, "steps": 300, "val_every": 300})) == []


def test_a_run_config_made_directly_scales_the_base_cadences():
    config = RunConfig(dataset="x", algorithm="y", steps=50)
    assert (config.val_every, config.checkpoint_every, config.log_every) == (5, 5, 1)
    assert RunConfig(dataset="x", algorithm="y").val_every == 100
    assert RunConfig(dataset="x", algorithm="y", steps=50, val_every=7).val_every == 7


@pytest.mark.parametrize("every, at_steps, steps, expected", [
    (500, 4000, 300, 37), (500, 4000, 4000, 500), (500, 4000, 100_000, 500), (100, 1000, 5, 1), (10, 1000, 1, 1),
])
def test_scaled_cadence(every, at_steps, steps, expected):
    assert scaled_cadence(every, at_steps, steps) == expected


def test_cadence_help_says_how_it_scales():
    for name in CADENCE_FIELDS:
        help_text = RunConfig.model_fields[name].description
        assert "Empty: scales with the steps" in help_text and "warn" in help_text

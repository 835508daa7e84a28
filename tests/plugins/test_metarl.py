"""Meta-reinforcement learning: the environment task kind, 2D navigation, rollouts, MAML-RL and its report."""

from __future__ import annotations

import numpy as np
import pytest

from metalab.api import EnvironmentTaskFamily
from metalab.core.authoring import testing
from metalab.core.contract.manager import PluginContractError, check_factory_result
from metalab.core.engine.config import ConfigError, resolve_config
from metalab.core.engine.rollouts import Rollouts, fixed_environment_tasks, linear_baseline_advantages
from metalab.core.reports import figures
from metalab.core.services import Services
from metalab.core.settings import load_settings
from metalab.plugins.metarl import NAV2D, make_nav2d
from metalab.plugins.metarl.navigation import Navigation2DEnv


def test_navigation_follows_the_papers_task():
    env = Navigation2DEnv((0.3, -0.2))
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [0.0, 0.0]
    # Velocity commands are clipped to 0.1 per coordinate; the reward is minus the distance to the goal.
    obs, reward, terminated, truncated, _ = env.step(np.array([5.0, -5.0]))
    assert obs == pytest.approx([0.1, -0.1]) and reward == pytest.approx(-np.hypot(0.2, 0.1))
    assert not terminated and not truncated
    obs, reward, terminated, _, _ = env.step(np.array([0.1, -0.1]))
    obs, reward, terminated, _, _ = env.step(np.array([0.1, 0.0]))
    assert obs == pytest.approx([0.3, -0.2]) and terminated  # within 0.01 of the goal
    squared = Navigation2DEnv((0.3, -0.2), reward="squared_distance")
    squared.reset(seed=0)
    assert squared.step(np.array([0.1, -0.1]))[1] == pytest.approx(-(0.2**2 + 0.1**2))
    short = Navigation2DEnv((0.4, 0.4), horizon=2)
    short.reset(seed=0)
    assert not short.step(np.zeros(2))[3] and short.step(np.zeros(2))[3]  # truncated at the horizon


def test_the_family_follows_the_contract_and_splits_draw_separate_goals():
    family = make_nav2d({})
    assert isinstance(family, EnvironmentTaskFamily)
    assert check_factory_result(NAV2D, family) is family
    train = fixed_environment_tasks(family, "train", 20, seed=0).tasks
    test = fixed_environment_tasks(family, "test", 20, seed=0).tasks
    assert fixed_environment_tasks(family, "test", 20, seed=0).tasks == test  # fixed per seed and split
    assert not set(train) & set(test)
    assert all(-0.5 <= v <= 0.5 for goal in train + test for v in goal)


def test_a_factory_result_missing_the_environment_members_is_refused_by_name():
    class Broken:
        kind = "environment"
        input_shape = (2,)
        action_kind = "continuous"
        action_dim = 2

    with pytest.raises(PluginContractError) as info:
        check_factory_result(NAV2D, Broken())
    assert "missing: horizon, sample_tasks, make_env, describe_task" in str(info.value)
    bad = make_nav2d({})
    bad.action_kind = "jumpy"
    with pytest.raises(PluginContractError, match="action_kind is 'continuous' or 'discrete'"):
        check_factory_result(NAV2D, bad)
    # An environment algorithm needs gather and adaptation_returns, not evaluate.
    from metalab.plugins.metarl import MAML_RL

    class Episodic:
        meta_batch_size, trainable_variables, variables = 2, [], []

        def meta_gradients(self, batch):
            return [], {}

        def evaluate(self, batch):
            return {}

    with pytest.raises(PluginContractError, match="missing or not callable: gather, adaptation_returns"):
        check_factory_result(MAML_RL, Episodic())


def test_rollouts_run_every_task_in_lock_step_and_follow_the_seed():
    family = make_nav2d({"horizon": 30})
    tasks = [(0.05, 0.0), (-0.4, 0.4)]

    def toward_goal(rng):
        goals = np.array(tasks, np.float32)[:, None, :]
        return lambda obs: np.clip(goals - obs, -0.1, 0.1) + 0.01 * rng.normal(size=obs.shape).astype(np.float32)

    rng = np.random.default_rng(3)
    traj = Rollouts(family, rng).run(tasks, toward_goal(rng), episodes=3)
    assert traj.observations.shape == (2, 3, 30, 2) and traj.actions.shape == (2, 3, 30, 2)
    # The near goal is reached in one step and its episodes end there: the mask stops, rewards after it are 0.
    assert traj.mask[0].sum(axis=-1).max() <= 2 and traj.mask[1].sum(axis=-1).min() >= 4
    assert np.all(traj.rewards[traj.mask == 0] == 0)
    assert traj.returns()[0] > traj.returns()[1]
    rng = np.random.default_rng(3)
    again = Rollouts(family, rng).run(tasks, toward_goal(rng), episodes=3)
    np.testing.assert_array_equal(again.observations, traj.observations)
    with pytest.raises(ValueError, match=r"actions of shape \(2, 3, 2\)"):
        Rollouts(family, rng).run(tasks, lambda obs: np.zeros((2, 2)), episodes=3)


def test_advantages_are_normalised_per_task_over_the_steps_taken():
    family = make_nav2d({"horizon": 20})
    rng = np.random.default_rng(0)
    traj = Rollouts(family, rng).run([(0.3, 0.3), (-0.2, 0.1)], lambda o: rng.normal(0, 0.1, o.shape), episodes=4)
    adv = linear_baseline_advantages(traj, 0.99)
    for task in range(2):
        taken = adv[task][traj.mask[task] > 0]
        assert abs(taken.mean()) < 1e-5 and taken.std() == pytest.approx(1.0, abs=1e-3)
    assert np.all(adv[traj.mask == 0] == 0)


def test_an_algorithm_that_does_not_take_environments_is_refused_before_a_run(builtin_registry):
    with pytest.raises(ConfigError) as info:
        resolve_config(builtin_registry, {"dataset": "metalab.nav2d", "algorithm": "metalab.maml"})
    message = str(info.value)
    assert "supports classification, regression tasks" in message and "'metalab.nav2d' is environment" in message
    assert "algorithms for environment tasks: metalab.maml_rl, metalab.pretrained_policy." in message
    config = resolve_config(builtin_registry, {"dataset": "metalab.nav2d", "algorithm": "metalab.maml_rl"},
                            recommended=True)
    assert (config.ways, config.shots, config.queries, config.backbone) == (1, 20, 20, "metalab.mlp")
    assert config.backbone_params == {"hidden": [100, 100]} and config.test_episodes == 40


def test_maml_rl_report_compares_the_baseline_and_a_random_initialisation(builtin_registry, tmp_path, monkeypatch):
    """A MAML-RL run and a pretrained-policy run on the same tiny navigation tasks: the MAML run's report draws its
    returns after each adaptation step beside the baseline's and an untrained policy's, and its trajectories."""
    monkeypatch.setenv("METALAB_HOME", str(tmp_path))
    params = {"init_std": 0.3, "eval_steps": 2}
    configs = [testing.tiny_config(builtin_registry, algorithm, "environment", steps=6, algorithm_params=params)
               for algorithm in ("metalab.pretrained_policy", "metalab.maml_rl")]
    runs = [testing.run_tiny(builtin_registry, config, tmp_path, evaluate_before=False).run_id for config in configs]
    services = Services(settings=load_settings(disable_plugins=""), registry=builtin_registry)
    report = services.run_report(runs[1])
    evaluation = report["evaluations"][0]
    assert evaluation["episodes"] == 40 and len(evaluation["curve"]) == 3
    assert evaluation["return"] == pytest.approx(evaluation["curve"][-1])
    assert evaluation["return_before"] == pytest.approx(evaluation["curve"][0])
    assert [c["id"] for c in report["comparisons"]] == [runs[0]]
    assert report["comparisons"][0]["label"].startswith("Pretrained policy (RL baseline)")
    data = report["report_data"]
    random = data["adaptation"]["curves"]["random initialisation"]
    assert len(random["curve"]) == 3 and data["adaptation"]["tasks"] == 10
    rows = data["trajectories"]
    assert len(rows) == 2 and len(rows[0]["paths"]) == 3 and rows[0]["task"].startswith("goal (")
    drawn = dict(figures.report_figures(report))
    lines = [trace.name for trace in drawn["Average return before and after each adaptation step"].data
             if trace.mode == "lines+markers"]
    assert lines[0].startswith("this run (40 test tasks)") and lines[1].startswith("Pretrained policy")
    assert lines[2] == "random initialisation (10 test tasks)"
    assert "Trajectories before and after adaptation" in drawn
    import json

    from typer.testing import CliRunner

    from metalab.core.cli import _list_cell, app

    row = next(r for r in services.runs_table().rows if r["id"] == runs[1])
    assert row["metric"] == "average return" and row["score"] == pytest.approx(evaluation["return"])
    assert _list_cell(row, "score").endswith(" return")
    # RL Predict from the CLI: one test task, the returns and paths of one adaptation; bad input named.
    done = CliRunner().invoke(app, ["predict", runs[1], "--task", "3", "--steps", "1", "--json"])
    assert done.exit_code == 0, done.output
    found = json.loads(done.output[done.output.index("{"):])
    assert (found["index"], found["tasks"], found["steps"], len(found["returns"])) == (3, 40, 1, 2)
    assert len(found["trajectories"]["paths"]) == 2 and found["task"].startswith("goal (")
    refused = CliRunner().invoke(app, ["predict", runs[1], "--task", "40"])
    assert refused.exit_code != 0 and "numbered 0 to 39. Received: task=40" in " ".join(refused.output.split())
    refused = CliRunner().invoke(app, ["predict", runs[1], "--support", "x", "--query", "y"])
    assert refused.exit_code != 0 and "adapts to a test task (--task N)" in " ".join(refused.output.split())


def test_the_maml_rl_meta_gradient_is_exact_to_second_order(float64):
    """The outer gradient differentiates through the inner policy-gradient step: it matches finite differences of
    the outer surrogate to 1e-8 (float64) and differs from the first-order one."""
    import keras

    from metalab.api import TaskSpec
    from metalab.core.engine import functional
    from metalab.plugins.metarl import MAMLRLParams
    from metalab.plugins.metarl.algorithm import MAMLRL
    from tests.support.finite_differences import directional_errors

    keras.utils.set_random_seed(0)
    task = TaskSpec(kind="environment", input_shape=(2,), output_dim=2, ways=1, shots=3, queries=3, total_steps=1,
                    make_backbone=lambda: keras.Sequential([keras.Input((2,)), keras.layers.Dense(8, activation="tanh")]),
                    action_kind="continuous", horizon=6)
    family, rng = make_nav2d({"horizon": 6}), np.random.default_rng(0)
    exact, first = (MAMLRL(MAMLRLParams(meta_batch_size=2, init_std=0.5, inner_lr=0.5, first_order=f), task)
                    for f in (False, True))
    first.model.set_weights(exact.model.get_weights())
    batch = exact.gather(family.sample_tasks("train", 2, rng), Rollouts(family, rng))
    variables = exact.trainable_variables
    theta = [functional.to_numpy(v) for v in variables]

    def outer_loss(weights):
        for variable, value in zip(variables, weights):
            variable.assign(value)
        return float(functional.to_numpy(exact.meta_gradients(batch)[1]["loss"]))

    grads = [functional.to_numpy(g) for g in exact.meta_gradients(batch)[0]]
    assert max(directional_errors(outer_loss, theta, grads)) < 1e-8
    for variable, value in zip(variables, theta):
        variable.assign(value)
    approximate = [functional.to_numpy(g) for g in first.meta_gradients(batch)[0]]
    assert max(float(np.abs(a - b).max()) for a, b in zip(grads, approximate)) > 1e-4

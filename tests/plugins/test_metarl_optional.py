"""The meta-RL datasets of optional packages: HalfCheetah-Vel/-Dir (mujoco) and Meta-World ML1 (metaworld).

Where a package is missing, its factory must say which extra to install; where it is installed, the real
environments are checked against the papers' rewards and the contract.
"""

from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys

import numpy as np
import pytest

from metalab.api import EnvironmentTaskFamily
from metalab.core.contract.manager import check_factory_result
from metalab.core.engine.rollouts import Rollouts, fixed_environment_tasks
from metalab.plugins.metarl.optional_specs import (HALFCHEETAH_DIR, HALFCHEETAH_VEL, METAWORLD_ML1,
                                                   METAWORLD_ML1_ENV_NAMES, SPECS)

HAS_MUJOCO = importlib.util.find_spec("mujoco") is not None
HAS_METAWORLD = importlib.util.find_spec("metaworld") is not None

# (spec, the module whose absence the factory reports, the extra)
OPTIONAL = [(HALFCHEETAH_VEL, "mujoco", "mujoco"), (HALFCHEETAH_DIR, "mujoco", "mujoco"),
            (METAWORLD_ML1, "metaworld", "metaworld")]
INSTALLED = {"mujoco": HAS_MUJOCO, "metaworld": HAS_METAWORLD and HAS_MUJOCO}


def _assert_names_the_extra(message: str, spec, extra: str) -> None:
    assert spec.id in message
    assert f"pip install 'metalab[{extra}]'" in message
    assert "/" not in message.replace("errors.pydantic.dev/", "")  # no paths of this machine


def test_listing_the_specs_imports_no_optional_package():
    code = ("import sys; import metalab.plugins.metarl.optional_specs as s; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mujoco', 'metaworld', 'keras', 'tensorflow')"
            " or m.startswith('gymnasium.envs.mujoco')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
    assert [s.id for s in SPECS] == ["metalab.halfcheetah_vel", "metalab.halfcheetah_dir", "metalab.metaworld_ml1"]
    assert all(s.kind == "environment" and s.default_backbone == "metalab.mlp" for s in SPECS)
    for spec in SPECS:
        spec.validate()  # as the plugin manager checks them when the plugin registers


@pytest.mark.parametrize(("spec", "module", "extra"), [
    pytest.param(*p, id=p[0].id, marks=pytest.mark.skipif(INSTALLED[p[1]], reason=f"{p[1]} is installed here"))
    for p in OPTIONAL])
def test_a_missing_package_is_named_with_its_extra(spec, module, extra):
    # Runs where the package is really absent (CI installs no extras).
    with pytest.raises(ImportError) as info:
        spec.factory(spec.params(), None)
    _assert_names_the_extra(str(info.value), spec, extra)


@pytest.mark.parametrize(("spec", "module", "extra"), OPTIONAL, ids=[s.id for s, _, _ in OPTIONAL])
def test_a_package_that_does_not_import_is_reported_the_same_way(spec, module, extra, monkeypatch):
    # None in sys.modules makes Python's own import of the module fail as for an absent package, so this runs
    # wherever the package is installed too.
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError) as info:
        spec.factory(spec.params(), None)
    assert "not installed" in str(info.value) and repr(module) in str(info.value)
    _assert_names_the_extra(str(info.value), spec, extra)
    assert info.value.__suppress_context__  # a short message, not a chain of import tracebacks


# --- HalfCheetah, with mujoco installed --------------------------------------------------------------------------

needs_mujoco = pytest.mark.skipif(not HAS_MUJOCO, reason="the optional package mujoco is not installed")


def _step_with_velocity(env, action):
    """One step, with the forward velocity measured from the simulator's root position (not the env's info)."""
    data, dt = env.unwrapped.data, env.unwrapped.dt
    before = float(data.qpos[0])
    obs, reward, terminated, truncated, _ = env.step(action)
    return reward, (float(data.qpos[0]) - before) / dt, terminated, truncated


@needs_mujoco
def test_halfcheetah_rewards_follow_the_papers_formulas_and_set_task_repoints_the_goal():
    vel = HALFCHEETAH_VEL.factory(HALFCHEETAH_VEL.params(), None)
    direction = HALFCHEETAH_DIR.factory(HALFCHEETAH_DIR.params(), None)
    for family in (vel, direction):
        assert isinstance(family, EnvironmentTaskFamily) and check_factory_result(HALFCHEETAH_VEL, family) is family
        assert (family.input_shape, family.action_kind, family.action_dim, family.horizon) == \
            ((17,), "continuous", 6, 200)
    actions = np.random.default_rng(0).uniform(-2, 2, size=(30, 6))  # beyond the bounds: the cost clips them
    ctrl = 0.05 * np.sum(np.clip(actions, -1, 1) ** 2, axis=1)
    assert not np.allclose(ctrl, 0.05 * np.sum(actions**2, axis=1))

    def run(family, env, task):
        family.set_task(env, task)
        env.reset(seed=3)
        return np.array([_step_with_velocity(env, a)[:2] for a in actions])

    env = vel.make_env(0.5)
    for goal in (0.0, 2.0, 1.3):  # one environment, re-pointed each time
        rewards, speeds = run(vel, env, goal).T
        assert np.abs(speeds).max() > 0.1  # it moved, so the goal matters
        np.testing.assert_allclose(rewards, -np.abs(speeds - goal) - ctrl, rtol=1e-6, atol=1e-6)
    env = direction.make_env(1.0)
    forward, backward = run(direction, env, 1.0), run(direction, env, -1.0)
    np.testing.assert_allclose(forward[:, 1], backward[:, 1])  # the same seed and actions: the same motion
    np.testing.assert_allclose(forward[:, 0], forward[:, 1] - ctrl, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(backward[:, 0], -backward[:, 1] - ctrl, rtol=1e-6, atol=1e-6)


@needs_mujoco
def test_halfcheetah_tasks_follow_the_rng_and_the_splits_differ():
    vel = HALFCHEETAH_VEL.factory({"horizon": 5}, None)
    direction = HALFCHEETAH_DIR.factory({}, None)
    draw = vel.sample_tasks("train", 50, np.random.default_rng(7))
    assert draw == vel.sample_tasks("train", 50, np.random.default_rng(7))
    assert all(0.0 <= v <= 2.0 for v in draw) and len(set(draw)) == 50
    train = fixed_environment_tasks(vel, "train", 20, seed=0).tasks
    assert not set(train) & set(fixed_environment_tasks(vel, "test", 20, seed=0).tasks)
    directions = direction.sample_tasks("train", 400, np.random.default_rng(0))
    assert set(directions) == {-1.0, 1.0} and 150 < directions.count(1.0) < 250
    assert direction.describe_task(-1.0) == "run backward" and vel.describe_task(1.234) == "target velocity 1.23"
    env = vel.make_env(1.0)
    env.reset(seed=0)
    assert [env.step(np.zeros(6))[3] for _ in range(5)] == [False] * 4 + [True]  # truncated at the horizon
    traj = Rollouts(vel, np.random.default_rng(0)).run(train[:2], lambda obs: np.zeros((*obs.shape[:2], 6)), 2)
    assert traj.observations.shape == (2, 2, 5, 17) and traj.mask.sum() == 20


# --- Meta-World ML1, with metaworld installed --------------------------------------------------------------------

needs_metaworld = pytest.mark.skipif(not HAS_METAWORLD, reason="the optional package metaworld is not installed")


@pytest.fixture(scope="module")
def ml1():
    return METAWORLD_ML1.factory({"env_name": "reach-v3", "task_seed": 0}, None)


@needs_metaworld
def test_the_listed_environment_names_are_the_installed_metaworlds():
    import metaworld

    assert list(METAWORLD_ML1_ENV_NAMES) == list(metaworld.ML1.ENV_NAMES)


@needs_metaworld
def test_ml1_splits_are_its_train_goals_and_two_halves_of_its_test_goals(ml1):
    import metaworld

    assert check_factory_result(METAWORLD_ML1, ml1) is ml1
    assert (ml1.input_shape, ml1.action_kind, ml1.action_dim, ml1.horizon) == ((39,), "continuous", 4, 500)
    benchmark = metaworld.ML1("reach-v3", seed=0)

    def goals(split, n):
        tasks = ml1.sample_tasks(split, n, np.random.default_rng(1))
        return {tuple(np.round(pickle.loads(ml1.ml1_task(t).data)["rand_vec"], 8)) for t in tasks}

    def vecs(tasks):
        return {tuple(np.round(pickle.loads(t.data)["rand_vec"], 8)) for t in tasks}

    assert goals("train", 50) == vecs(benchmark.train_tasks)  # all 50, each once
    assert goals("val", 25) | goals("test", 25) == vecs(benchmark.test_tasks)
    assert not goals("val", 25) & goals("test", 25)
    assert ml1.sample_tasks("val", 8, np.random.default_rng(4)) == ml1.sample_tasks("val", 8, np.random.default_rng(4))
    assert ml1.sample_tasks("val", 8, np.random.default_rng(4)) != ml1.sample_tasks("val", 8, np.random.default_rng(5))
    repeated = ml1.sample_tasks("test", 30, np.random.default_rng(0))
    assert len(set(repeated)) == 25  # every test goal before any repeats
    assert ml1.describe_task(("test", 3)) == "reach-v3 test goal 3"


@needs_metaworld
def test_ml1_set_task_repoints_the_goal_and_the_horizon_truncates(ml1):
    from metalab.plugins.metarl.metaworld_tasks import MetaWorldML1Family

    actions = np.random.default_rng(0).uniform(-1, 1, size=(10, 4))

    def rewards(env):
        env.reset(seed=0)
        return [env.step(a)[1] for a in actions]

    a, b = ("train", 0), ("test", 0)
    fresh = rewards(ml1.make_env(b))
    env = ml1.make_env(a)
    before = rewards(env)
    ml1.set_task(env, b)
    assert rewards(env) == pytest.approx(fresh) and before != pytest.approx(fresh)
    short = MetaWorldML1Family(ml1.benchmark, "reach-v3", horizon=5)
    env = short.make_env(a)
    env.reset(seed=0)
    assert [env.step(np.zeros(4))[3] for _ in range(5)] == [False] * 4 + [True]



# --- the families train through the product's runner -------------------------------------------------------------


@pytest.mark.parametrize(("dataset", "params", "needs"), [
    ("metalab.halfcheetah_dir", {"horizon": 15}, "mujoco"),
    ("metalab.metaworld_ml1", {"env_name": "reach-v3", "horizon": 15}, "metaworld"),
])
def test_maml_rl_trains_and_is_meta_tested_on_the_optional_families(dataset, params, needs, builtin_registry,
                                                                     tmp_path):
    """A short MAML-RL run on each optional family, through the runner: it completes, checkpoints and records a
    return curve over its fixed test tasks (the same path as metalab.nav2d, on real MuJoCo physics)."""
    if not INSTALLED[needs]:
        pytest.skip(f"the optional package {needs} is not installed")
    from metalab.core.authoring import testing

    config = testing.tiny_config(builtin_registry, "metalab.maml_rl", "environment", steps=2,
                                 algorithm_params={"meta_batch_size": 2, "eval_steps": 1},
                                 task={"dataset": dataset, "dataset_params": params, "shots": 2, "queries": 2})
    config = config.model_copy(update={"test_episodes": 3, "val_episodes": 2})
    result = testing.run_tiny(builtin_registry, config, tmp_path, evaluate_before=False)
    after = result.after
    assert after["episodes"] == 3 and len(after["curve"]) == 2 and np.isfinite(after["return"])
    assert after["return_before"] == pytest.approx(after["curve"][0])


def test_a_run_on_a_family_whose_package_is_missing_fails_with_the_extra_and_no_traceback(builtin_registry,
                                                                                          tmp_path, monkeypatch):
    from metalab.core.authoring import testing
    from metalab.core.engine.runner import train_run
    from metalab.core.store import RunStore

    config = testing.tiny_config(builtin_registry, "metalab.maml_rl", "environment", steps=2,
                                 task={"dataset": "metalab.halfcheetah_vel", "dataset_params": {"horizon": 5}})
    monkeypatch.setitem(sys.modules, "mujoco", None)  # Python's own import then fails as for an absent package
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run(config.model_dump())
    assert train_run(store, run_id, builtin_registry) == "failed"
    run = store.get_run(run_id)
    assert "metalab[mujoco]" in run.error and "metalab.halfcheetah_vel" in run.error
    assert run.traceback is None

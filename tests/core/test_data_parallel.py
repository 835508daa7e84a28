"""One run across devices (``--set devices=N``): the same meta-gradients as one device, on TensorFlow and JAX.

Devices must be set up before the backend starts, and Keras fixes its backend once per process, so every run on
two (logical CPU) devices happens in a fresh subprocess.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from metalab.core.engine.config import ConfigError, RunConfig, parse_assignments, resolve_config
from metalab.core.engine.parallel import device_count
from tests.support.processes import run_on_backend

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_side(code: str, tmp_path: Path, backend: str, *, x64: bool = False, args: tuple[str, ...] = (),
             module: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs ``code`` (or ``python -m module``) in a fresh process on Keras backend ``backend``."""
    return run_on_backend(code, tmp_path, backend, x64=x64, args=args, module=module, env=env)


# -- the setting --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, stored", [(1, 1), (4, 4), ("2", 2), ("all", "all"), (" ALL ", "all")])
def test_devices_takes_a_count_or_all(value, stored):
    assert RunConfig(dataset="x.y", algorithm="x.z", devices=value).devices == stored
    assert RunConfig(dataset="x.y", algorithm="x.z").devices == 1


@pytest.mark.parametrize("value", [0, -2, "two", True, 1.5, ""])
def test_a_bad_devices_value_is_refused_naming_field_and_value(builtin_registry, value):
    raw = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml"}
    with pytest.raises(ConfigError) as err:
        resolve_config(builtin_registry, raw, {"devices": value})
    message = str(err.value)
    assert message.startswith("devices:") and "'all' or a whole number of devices" in message
    assert message.endswith(f"Received: devices={value!r}")


def test_a_meta_batch_the_devices_cannot_split_evenly_is_refused(builtin_registry):
    raw = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml"}
    with pytest.raises(ConfigError, match=r"multiple of 3\. Received: devices=3, meta_batch_size=4$"):
        resolve_config(builtin_registry, raw, parse_assignments(["devices=3", "meta_batch_size=4"]))
    config = resolve_config(builtin_registry, raw, parse_assignments(["devices=2", "meta_batch_size=4"]))
    assert config.devices == 2


def test_device_count_says_how_many_devices_there_are():
    here = ["CPU:0", "CPU:1"]
    assert device_count("all", here) == 2 and device_count(1, here) == 1
    with pytest.raises(ConfigError) as err:
        device_count(3, here)
    assert "this machine has 2" in str(err.value) and "(CPU:0, CPU:1)" in str(err.value)
    assert str(err.value).endswith("Received: devices=3")
    with pytest.raises(ConfigError, match="split evenly across the 2 devices"):
        device_count("all", here, meta_batch_size=5)
    with pytest.raises(ConfigError, match="supervised mini-batches"):
        device_count(2, here, meta_batch_size=4, batch_kind="supervised")


# -- one step on two devices against one --------------------------------------------------------------------

# One step of the runner's compiled train step (SGD at rate 1, so a step moves each weight by exactly minus its
# meta-gradient) for second-order MAML on a small conv-4 with batch norm and for ProtoNet, in float64, on one and
# on two logical CPU devices from the same weights. Prints the comparisons as JSON.
STEP_SIDE = """
import json, sys
import numpy as np, keras
from metalab.core.engine.parallel import DataParallel, configure_cpu_devices, make_data_parallel
assert configure_cpu_devices(2)  # before the backend starts
from metalab.core.contract.specs import TaskBatch, TaskSpec
from metalab.core.engine import functional
from metalab.core.engine.config import ConfigError
from metalab.core.engine.runner import compile_train_step
from metalab.plugins.backbones import CONV4, Conv4Params
from metalab.plugins.maml import SPEC as MAML
from metalab.plugins.protonet import SPEC as PROTONET

keras.config.set_floatx("float64")
keras.config.set_dtype_policy("float64")
task = TaskSpec("classification", (4, 4, 1), 3, 3, 2, 3, 10,
                lambda: CONV4.factory(Conv4Params(filters=3, blocks=1, conv_bias=True), (4, 4, 1)))
rng = np.random.default_rng(0)
labels = lambda n: np.tile(np.arange(3, dtype="int32"), (4, n))
batch = TaskBatch(rng.normal(size=(4, 6, 4, 4, 1)), labels(2), rng.normal(size=(4, 9, 4, 4, 1)), labels(3))
PARAMS = {"maml": MAML.params(inner_lr=0.4, inner_steps=1, meta_batch_size=4),
          "protonet": PROTONET.params(meta_batch_size=4)}


def build(name, parallel):
    keras.utils.set_random_seed(0)
    with parallel.scope() if parallel else keras.name_scope(name):
        algorithm = (MAML if name == "maml" else PROTONET).factory(PARAMS[name], task)
        optimizer = keras.optimizers.SGD(learning_rate=1.0)
        optimizer.build(algorithm.trainable_variables)
    return algorithm, optimizer


out = {"devices": [], "too_many": None}
try:
    make_data_parallel(3)
except ConfigError as exc:
    out["too_many"] = str(exc)
for name in PARAMS:
    runs = {}
    for devices in (1, 2):
        parallel = make_data_parallel(devices)
        if parallel is not None:
            out["devices"] = parallel.devices
        algorithm, optimizer = build(name, parallel)
        before = [keras.ops.convert_to_numpy(v) for v in algorithm.variables]
        metrics = compile_train_step(algorithm, optimizer, parallel=parallel)(batch)
        runs[devices] = (algorithm, before, [keras.ops.convert_to_numpy(v) for v in algorithm.variables],
                         float(functional.to_numpy(metrics["loss"])))
    (algorithm, b1, a1, loss1), (_, b2, a2, loss2) = runs[1], runs[2]
    trainable = [i for i, v in enumerate(algorithm.variables) if v.trainable]
    state = [i for i, v in enumerate(algorithm.variables) if not v.trainable]
    result = {"same_start": all(np.array_equal(x, y) for x, y in zip(b1, b2)), "loss": [loss1, loss2],
              "dtype": str(algorithm.variables[0].dtype),
              # The meta-gradient of each weight on one device and on two (SGD at rate 1: before - after).
              "grads": [[(b1[i] - a1[i]).tolist(), (b2[i] - a2[i]).tolist()] for i in trainable],
              "state_moved": any(not np.array_equal(b2[i], a2[i]) for i in state)}
    if result["state_moved"]:
        # Running statistics on two devices: each device's moving averages over its own two tasks, from the same
        # start, averaged. Computed here on one device, half-batch by half-batch.
        reference, _ = build(name, None)
        grads_of = functional.compile(lambda *a: reference.meta_gradients(TaskBatch(*a)),
                                      variables=reference.variables)
        start = [keras.ops.convert_to_numpy(reference.variables[i]) for i in state]
        halves = []
        for half in (slice(0, 2), slice(2, 4)):
            for i, value in zip(state, start):
                reference.variables[i].assign(value)
            grads_of(*(np.asarray(a)[half] for a in batch.as_tuple()))
            halves.append([keras.ops.convert_to_numpy(reference.variables[i]) for i in state])
        expected = [(x + y) / 2 for x, y in zip(*halves)]
        result["state_error"] = max(float(np.abs(a2[i] - e).max()) for i, e in zip(state, expected))
        result["state_one_device_gap"] = max(float(np.abs(a2[i] - a1[i]).max()) for i in state)
    out[name] = result
if len(sys.argv) > 1:
    # A short run through the ordinary runner, as `metalab train` starts it (in this process: one backend start).
    from typer.testing import CliRunner
    from metalab.core.cli import app

    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    done = CliRunner().invoke(app, ["train", "-d", "metalab.sinusoid", "-a", "metalab.maml", "--steps", "3",
                                    "--set", "devices=2", "--set", "meta_batch_size=4", "--set", "val_episodes=4",
                                    "--set", "eval_at_end=false"])
    out["cli"] = {"exit_code": done.exit_code, "output": done.output[-3000:]}
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", ["tensorflow", pytest.param("jax", marks=pytest.mark.integration)])
def test_two_devices_give_the_one_device_meta_gradients_and_train(tmp_path, backend):
    if backend == "jax":
        pytest.importorskip("jax", reason="JAX is not installed (the optional jax extra)")
    home = tmp_path / "home"
    # On TensorFlow the side also trains a run through `metalab train` with devices=2 (METALAB_CPU_DEVICES: the
    # process set-up of every training process splits the CPU; here the side has split it already).
    done = run_side(STEP_SIDE, tmp_path, backend, x64=True, args=("cli",) if backend == "tensorflow" else (),
                    env={"METALAB_HOME": str(home), "METALAB_CPU_DEVICES": "2", "COLUMNS": "200"})
    assert done.returncode == 0, f"{backend} side failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["devices"] == ["CPU:0", "CPU:1"]
    assert "this machine has 2" in out["too_many"] and out["too_many"].endswith("Received: devices=3")
    for name in ("maml", "protonet"):
        result = out[name]
        assert result["same_start"] and result["dtype"] == "float64"
        # float64 throughout: the two sides differ only in the order of the sums (mean over 4 tasks against the
        # mean of two means of 2), round-off of about 1e-16 relative; a missing or doubled share is off by 0.5-1.
        assert abs(result["loss"][0] - result["loss"][1]) <= 1e-12 * abs(result["loss"][0])
        scale = max(abs(g) for one, _ in result["grads"] for g in _flat(one))
        assert scale > 1e-3  # a real step
        for one, two in result["grads"]:
            assert max(abs(a - b) for a, b in zip(_flat(one), _flat(two))) <= 1e-12 * scale, name
    # MAML keeps no running statistics; ProtoNet's moved, as the mean of each device's own moving averages.
    assert not out["maml"]["state_moved"] and out["protonet"]["state_moved"]
    assert out["protonet"]["state_error"] < 1e-12
    assert out["protonet"]["state_one_device_gap"] > 1e-6  # threaded through 2 tasks per device, not 4
    if backend == "tensorflow":
        assert out["cli"]["exit_code"] == 0, out["cli"]["output"]
        from metalab.core.settings import Settings
        from metalab.core.store import RunStore

        settings = Settings(home=home)
        [run] = RunStore(settings.store_path, settings.runs_dir).list_runs()
        assert run.status == "completed" and run.step == 3 and run.config["devices"] == 2
        assert run.device == "/device:CPU:0,/device:CPU:1"


def _flat(values):
    if isinstance(values, list):
        for value in values:
            yield from _flat(value)
    else:
        yield values


def test_a_run_asking_for_more_devices_than_there_are_fails_with_the_count_and_no_traceback(builtin_registry,
                                                                                            tmp_path):
    from metalab.core.engine.runner import train_run
    from metalab.core.store import RunStore

    store = RunStore(tmp_path / "runs.sqlite", tmp_path / "runs")
    raw = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 2}
    config = resolve_config(builtin_registry, raw, parse_assignments(["devices=64", "meta_batch_size=64"]))
    run_id = store.create_run(config.model_dump())
    assert train_run(store, run_id, builtin_registry) == "failed"
    run = store.get_run(run_id)
    assert run.error.startswith("ConfigError: devices: 64 devices asked for, but this machine has ")
    assert run.error.endswith("Received: devices=64") and run.traceback is None


def test_assigned_variables_are_combined_by_their_aggregation():
    import keras
    import numpy as np

    from metalab.core.engine.parallel import _combine

    start, values = np.float32(5.0), [np.float32(6.0), np.float32(8.0)]
    for aggregation, expected in (("none", 7.0), ("mean", 7.0), ("sum", 9.0), ("only_first_replica", 6.0)):
        variable = keras.Variable(5.0, dtype="float32", trainable=False, aggregation=aggregation)
        got = _combine(variable, keras.ops.convert_to_tensor(start), [keras.ops.convert_to_tensor(v) for v in values])
        assert float(keras.ops.convert_to_numpy(got)) == expected, aggregation
    counter = keras.Variable(3, dtype="int64", trainable=False)  # not a float: the first device's value
    ints = [keras.ops.convert_to_tensor(np.int64(v)) for v in (4, 9)]
    assert int(keras.ops.convert_to_numpy(_combine(counter, ints[0], ints))) == 4

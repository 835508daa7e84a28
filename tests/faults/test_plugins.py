"""Plugins cannot end or stall the host: exits, odd BaseExceptions, slow imports and hooks, and bad factory results."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest

from metalab.core.contract import manager as plugin_manager
from metalab.core.contract.specs import (
    PLUGIN_API_VERSION,
    AlgorithmSpec,
    BackboneSpec,
    ClassificationDataset,
    ClassSplit,
    DatasetSpec,
    Params,
    hookimpl,
)
from metalab.core.contract.manager import (
    DEFAULT_IMPORT_TIMEOUT,
    PluginContractError,
    check_factory_result,
    make_plugin_manager,
    normalize_namespace,
    plugin_import_timeout,
)
from metalab.core.settings import load_settings

TESTPLUGINS = "metalab-testplugins"


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_testplugins = pytest.mark.skipif(
    not _installed(TESTPLUGINS),
    reason=f"{TESTPLUGINS} is not installed; run `pip install --no-deps -e tests/thirdparty/metalab-testplugins`.",
)


def settings():
    return load_settings(disable_plugins="", strict_plugins=False)


def record(registry, name):
    matches = [r for r in registry.plugins if r.name == name]
    assert len(matches) == 1, registry.plugins
    return matches[0]


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """``write(dist_name, {ep_name: module_source}) -> {ep_name: module_name}``: a distribution on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    prefix = f"faultplug_{uuid.uuid4().hex[:8]}"
    created: list[str] = []

    def write(dist_name: str, modules: dict[str, str]) -> dict[str, str]:
        info = site / f"{normalize_namespace(dist_name)}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
        lines, names = ["[metalab]"], {}
        for ep_name, source in modules.items():
            module_name = f"{prefix}_{ep_name}"
            (site / f"{module_name}.py").write_text(textwrap.dedent(source))
            lines.append(f"{ep_name} = {module_name}")
            names[ep_name] = module_name
            created.append(module_name)
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        return names

    monkeypatch.syspath_prepend(str(site))
    yield write
    for name in created:
        sys.modules.pop(name, None)


GOOD_MODULE = """
    from metalab.core.contract.specs import DatasetSpec, Params, hookimpl

    METALAB_PLUGIN_API = "1.0"

    class P(Params):
        pass

    @hookimpl
    def metalab_register_datasets():
        return [DatasetSpec(id="metalab_faults.good", title="T", description="D", params=P,
                            factory=lambda *a: None, kind="regression")]
    """


class Custom(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt."""


# ---------------------------------------------------------------------------------------------------------
# Exits and other BaseExceptions: the plugin's failure, never the host's end (KeyboardInterrupt excepted).


@needs_testplugins
def test_sys_exit_at_import_fails_only_that_plugin():
    registry = make_plugin_manager(distributions={TESTPLUGINS}, settings=settings())
    exited = record(registry, "exit_at_import")
    assert exited.status == "failed"
    assert exited.error == "Import of 'metalab_testplugins.exit_at_import' failed: SystemExit: 3"
    assert (exited.package, exited.version) == (TESTPLUGINS, importlib.metadata.version(TESTPLUGINS))
    assert "sys.exit(3)" in exited.traceback and "SystemExit: 3" in exited.traceback
    assert isinstance(exited.seconds, float)
    assert record(registry, "lines").status == "loaded"


@pytest.mark.parametrize("raise_line, shown", [
    ("raise SystemExit(3)", "SystemExit: 3"),
    ("raise SystemExit('bye')", "SystemExit: bye"),
    ("raise GeneratorExit()", "GeneratorExit"),
    ("class Custom(BaseException): pass\nraise Custom('odd')", "Custom: odd"),
])
@pytest.mark.parametrize("timeout", [2.0, 0])  # in a thread, and inline when the budget is off
def test_any_base_exception_at_import_is_recorded(fake_distribution, raise_line, shown, timeout):
    names = fake_distribution("metalab-faults", {"bad": raise_line + "\n", "good": GOOD_MODULE})
    registry = make_plugin_manager(distributions={"metalab-faults"}, settings=settings(), import_timeout=timeout)
    bad = record(registry, "bad")
    assert bad.status == "failed"
    assert bad.error == f"Import of {names['bad']!r} failed: {shown}"
    assert bad.package == "metalab-faults" and bad.version == "1.0"
    assert "Traceback" in bad.traceback and names["bad"] in bad.traceback
    assert record(registry, "good").status == "loaded"
    assert list(registry.datasets) == ["metalab_faults.good"]


@pytest.mark.parametrize("timeout", [2.0, 0])
def test_keyboard_interrupt_at_import_still_stops_the_host(fake_distribution, timeout):
    fake_distribution("metalab-faults", {"ctrl_c": "raise KeyboardInterrupt\n"})
    with pytest.raises(KeyboardInterrupt):
        make_plugin_manager(distributions={"metalab-faults"}, settings=settings(), import_timeout=timeout)


class HookRaises:
    METALAB_PLUGIN_API = PLUGIN_API_VERSION

    def __init__(self, exc: BaseException):
        self.exc = exc

    @hookimpl
    def metalab_register_algorithms(self):
        raise self.exc


class TinyParams(Params):
    pass


def _dataset_spec(spec_id: str, kind: str = "regression", factory=None, **extra) -> DatasetSpec:
    return DatasetSpec(id=spec_id, title="T", description="D", params=TinyParams,
                       factory=factory or (lambda *a: None), kind=kind, **extra)


class GoodPlugin:
    METALAB_PLUGIN_API = PLUGIN_API_VERSION

    @hookimpl
    def metalab_register_datasets(self):
        return [_dataset_spec("good.d")]


@pytest.mark.parametrize("exc, shown", [
    (SystemExit(4), "SystemExit: 4"),
    (GeneratorExit(), "GeneratorExit"),
    (Custom("in a hook"), "Custom: in a hook"),
])
@pytest.mark.parametrize("timeout", [2.0, 0])
def test_any_base_exception_in_a_registration_hook_is_recorded(exc, shown, timeout):
    registry = make_plugin_manager(entry_points=False, settings=settings(), import_timeout=timeout,
                                   plugins=[("hooky", HookRaises(exc)), ("good", GoodPlugin())])
    hooky = record(registry, "hooky")
    assert hooky.status == "failed"
    assert hooky.error == f"Hook metalab_register_algorithms raised {shown}"
    assert "Traceback" in hooky.traceback
    assert registry.pm.get_plugin("hooky") is None
    assert list(registry.datasets) == ["good.d"]


@pytest.mark.parametrize("timeout", [2.0, 0])
def test_keyboard_interrupt_in_a_hook_still_stops_the_host(timeout):
    with pytest.raises(KeyboardInterrupt):
        make_plugin_manager(entry_points=False, settings=settings(), import_timeout=timeout,
                            plugins=[("ctrl_c", HookRaises(KeyboardInterrupt()))])


# ---------------------------------------------------------------------------------------------------------
# Slow imports and hooks: timed, and skipped past the budget while the host goes on.


def test_slow_import_is_skipped_after_the_budget_and_the_host_goes_on(fake_distribution, monkeypatch):
    names = fake_distribution("metalab-faults", {
        "sleepy": "import time\ntime.sleep(4)\n" + textwrap.dedent(GOOD_MODULE).replace("good", "late"),
        "good": GOOD_MODULE,
    })
    monkeypatch.setenv("METALAB_PLUGIN_IMPORT_TIMEOUT", "1")
    start = time.perf_counter()
    registry = make_plugin_manager(distributions={"metalab-faults"}, settings=settings())
    elapsed = time.perf_counter() - start
    assert elapsed < 3.9, f"the loader waited for the slow import ({elapsed:.1f} s)"
    sleepy = record(registry, "sleepy")
    assert sleepy.status == "failed"
    assert sleepy.error.startswith(f"Import of {names['sleepy']!r} took longer than 1 s; it is skipped")
    assert sleepy.error.endswith("Received: METALAB_PLUGIN_IMPORT_TIMEOUT=1")
    assert "time.sleep(4)" in sleepy.traceback  # where the import was when its time ran out
    assert 1.0 <= sleepy.seconds < 3.5
    assert record(registry, "good").status == "loaded"
    assert registry.slow_plugins(threshold=0.9) == [sleepy]

    # A second load does not wait for the same stalled import again.
    again = make_plugin_manager(distributions={"metalab-faults"}, settings=settings())
    assert "is still running" in record(again, "sleepy").error
    assert record(again, "sleepy").seconds < 0.5

    # When the import finishes at last, the registries that gave up on it stay as they were.
    thread, _ = plugin_manager._STALLED_IMPORTS[names["sleepy"]]
    thread.join(10)
    assert names["sleepy"] in sys.modules
    assert "metalab_faults.late" not in registry.datasets and registry.pm.get_plugin("sleepy") is None
    # A later load in the same process finds the module imported and loads it.
    later = make_plugin_manager(distributions={"metalab-faults"}, settings=settings())
    assert record(later, "sleepy").status == "loaded" and "metalab_faults.late" in later.datasets
    assert names["sleepy"] not in plugin_manager._STALLED_IMPORTS


class SlowHook:
    METALAB_PLUGIN_API = PLUGIN_API_VERSION

    @hookimpl
    def metalab_register_datasets(self):
        time.sleep(2)
        return [_dataset_spec("slowhook.d")]


def test_slow_registration_hook_fails_its_plugin_after_the_budget():
    registry = make_plugin_manager(entry_points=False, settings=settings(), import_timeout=0.3,
                                   plugins=[("slowhook", SlowHook()), ("good", GoodPlugin())])
    slow = record(registry, "slowhook")
    assert 0.3 <= slow.seconds < 1.5
    assert slow.status == "failed"
    assert slow.error.startswith("Hook metalab_register_datasets took longer than 0.3 s")
    assert "time.sleep(2)" in slow.traceback
    assert registry.pm.get_plugin("slowhook") is None and "slowhook.d" not in registry.datasets
    assert list(registry.datasets) == ["good.d"]


def test_every_plugin_is_timed_and_disabled_ones_are_not():
    registry = make_plugin_manager(entry_points=False, settings=load_settings(disable_plugins="off"),
                                   plugins=[("good", GoodPlugin()), ("off", GoodPlugin())])
    assert isinstance(record(registry, "good").seconds, float) and record(registry, "good").seconds < 1
    assert record(registry, "off").seconds is None
    rows = registry.describe()
    assert {row["plugin"]: row["seconds"] for row in rows} == {"good": record(registry, "good").seconds,
                                                                "off": None}
    assert registry.slow_plugins() == []
    assert registry.slow_plugins(threshold=0) == [record(registry, "good")]


@needs_testplugins
def test_cli_lists_plugins_promptly_despite_an_exit_and_a_stalled_import():
    # The reviewer's case: `metalab plugins list` ended with exit 3, or stalled for the whole sleep.
    env = {**os.environ, "METALAB_PLUGIN_IMPORT_TIMEOUT": "1", "METALAB_TESTPLUGINS_IMPORT_SLEEP": "60",
           "METALAB_DISABLE_PLUGINS": "", "METALAB_STRICT_PLUGINS": "0"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "metalab.core.cli", "plugins", "list", "--json"],
                         capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    assert elapsed < 45, f"the CLI stalled on the slow import ({elapsed:.0f} s)"
    rows = {row["plugin"]: row for row in json.loads(out.stdout) if row["kind"] == "plugin"}
    assert rows["exit_at_import"]["error"].endswith("SystemExit: 3")
    assert "took longer than 1 s" in rows["slow_import"]["error"]
    assert any(row["id"] == "metalab.maml" for row in json.loads(out.stdout))


@pytest.mark.parametrize("value, expected", [
    (None, DEFAULT_IMPORT_TIMEOUT), ("", DEFAULT_IMPORT_TIMEOUT), ("2.5", 2.5), ("0", 0.0),
    ("abc", DEFAULT_IMPORT_TIMEOUT), ("-1", DEFAULT_IMPORT_TIMEOUT), ("inf", DEFAULT_IMPORT_TIMEOUT),
    ("nan", DEFAULT_IMPORT_TIMEOUT),
])
def test_import_timeout_from_the_environment(monkeypatch, caplog, value, expected):
    if value is None:
        monkeypatch.delenv("METALAB_PLUGIN_IMPORT_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("METALAB_PLUGIN_IMPORT_TIMEOUT", value)
    with caplog.at_level(logging.WARNING, logger="metalab.core.contract.manager"):
        assert plugin_import_timeout(settings()) == expected
    if value in ("abc", "-1", "inf", "nan"):
        assert f"Received: METALAB_PLUGIN_IMPORT_TIMEOUT={value!r}" in caplog.text


def test_import_timeout_argument_is_checked():
    with pytest.raises(ValueError, match="Received: import_timeout=-1"):
        make_plugin_manager(entry_points=False, settings=settings(), import_timeout=-1)


# ---------------------------------------------------------------------------------------------------------
# Factory results are checked where they enter core.


@needs_testplugins
def test_dataset_factory_returning_a_string_names_the_plugin_and_the_type():
    registry = make_plugin_manager(distributions={TESTPLUGINS}, settings=settings())
    spec = registry.dataset("metalab_testplugins.string_dataset")
    with pytest.raises(PluginContractError) as info:
        registry.check_factory_result(spec, spec.factory(spec.params(), None))
    message = str(info.value)
    version = importlib.metadata.version(TESTPLUGINS)
    assert message == (
        "The dataset factory of 'metalab_testplugins.string_dataset' (plugin 'factory_returns_string' "
        f"({TESTPLUGINS} {version}), factory metalab_testplugins.bad_factories.make_string_dataset) must return a "
        "ClassificationDataset (the spec declares kind='classification'). Received: str 'not a dataset'"
    )
    error = info.value
    assert (error.kind, error.spec_id, error.plugin, error.received) == (
        "dataset", "metalab_testplugins.string_dataset", "factory_returns_string", "str")
    # Callers that report unusable datasets catch ValueError; type checks catch TypeError.
    assert isinstance(error, ValueError) and isinstance(error, TypeError)


@needs_testplugins
def test_algorithm_factory_returning_a_string_names_the_plugin_and_the_missing_members():
    registry = make_plugin_manager(distributions={TESTPLUGINS}, settings=settings())
    spec = registry.algorithm("metalab_testplugins.string_algorithm")
    with pytest.raises(PluginContractError, match=r"plugin 'factory_returns_string'") as info:
        check_factory_result(spec, spec.factory(spec.params(), None), registry=registry)
    message = str(info.value)
    assert "missing or not callable: meta_gradients, evaluate, trainable_variables, variables, meta_batch_size" \
        in message
    assert message.endswith("Received: str 'not an algorithm'")


@needs_testplugins
def test_good_regression_family_passes():
    registry = make_plugin_manager(distributions={TESTPLUGINS}, settings=settings())
    spec = registry.dataset("metalab_testplugins.lines")
    family = spec.factory(spec.params(), None)
    assert registry.check_factory_result(spec, family) is family


def _classification() -> ClassificationDataset:
    split = ClassSplit(images=np.zeros((4, 2, 2, 1), np.uint8), labels=np.array([0, 0, 1, 1]), class_names=["a", "b"])
    return ClassificationDataset(splits={"train": split, "val": split, "test": split}, input_shape=(2, 2, 1))


class Family:
    kind = "regression"
    input_shape = (1,)
    output_dim = 1

    def sample_task(self, rng):
        return 0

    def sample_points(self, task, n, rng):
        return np.zeros((n, 1)), np.zeros((n, 1))

    def evaluate(self, task, x):
        return x


def test_dataset_kind_and_result_must_agree():
    classification = _dataset_spec("fault.c", kind="classification")
    regression = _dataset_spec("fault.r", kind="regression")
    dataset = _classification()
    assert check_factory_result(classification, dataset) is dataset
    with pytest.raises(PluginContractError, match="returned a regression task family, but the spec declares "
                                                  "kind='classification'"):
        check_factory_result(classification, Family())
    with pytest.raises(PluginContractError, match="returned a ClassificationDataset, but the spec declares "
                                                  "kind='regression'"):
        check_factory_result(regression, dataset)
    assert isinstance(check_factory_result(regression, Family()), Family)

    class Partial:
        kind = "regression"
        input_shape = (1,)

    with pytest.raises(PluginContractError, match="missing: output_dim, sample_task, sample_points, evaluate"):
        check_factory_result(regression, Partial())
    # Without a registry, the factory's module and name say where to look.
    with pytest.raises(PluginContractError, match=r"\(factory tests\.faults\.test_plugins\._dataset_spec\."
                                                  r"<locals>\.<lambda>\) must return"):
        check_factory_result(classification, None)


class FakeAlgorithm:
    meta_batch_size = 4

    def __init__(self):
        self._variables = []

    @property
    def trainable_variables(self):
        raise AssertionError("checking must not run properties")

    @property
    def variables(self):
        return self._variables

    def meta_gradients(self, batch):
        return [], {}

    def evaluate(self, batch):
        return {}


def test_algorithm_result_is_checked_against_the_protocol():
    spec = AlgorithmSpec(id="fault.a", title="A", description="D", params=TinyParams, factory=lambda *a: None)
    algorithm = FakeAlgorithm()
    assert check_factory_result(spec, algorithm) is algorithm
    algorithm.meta_batch_size = 0
    with pytest.raises(PluginContractError, match="meta_batch_size is an integer >= 1, not meta_batch_size=0"):
        check_factory_result(spec, algorithm)
    algorithm.meta_batch_size = 2
    algorithm.evaluate = "not callable"
    with pytest.raises(PluginContractError, match="missing or not callable: evaluate\\."):
        check_factory_result(spec, algorithm)


def test_backbone_result_must_be_a_callable_model():
    spec = BackboneSpec(id="fault.b", title="B", description="D", params=TinyParams, factory=lambda *a: None)
    with pytest.raises(PluginContractError, match="must return a model"):
        check_factory_result(spec, None)
    model = lambda x: x  # noqa: E731 - any callable stands in for a keras.Model here
    assert check_factory_result(spec, model) is model
    with pytest.raises(TypeError, match="Received: spec of type str"):
        check_factory_result("fault.b", model)

"""Tests for the plugin manager factory: discovery, isolation of broken plugins, validation and the registry."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
import uuid

import pytest
from pydantic import Field

from metalab.core.contract import hookspecs
from metalab.core.contract.specs import (
    PLUGIN_API_VERSION,
    AlgorithmSpec,
    BackboneSpec,
    DatasetSpec,
    Params,
    hookimpl,
)
from metalab.core.contract.manager import (
    PluginLoadError,
    PluginRecord,
    PluginRegistry,
    UnknownPluginError,
    make_plugin_manager,
    normalize_namespace,
)
from metalab.core.settings import load_settings

TESTPLUGINS = "metalab-testplugins"
#: The plugins of metalab-testplugins that fail whenever they load (slow_import fails only when told to sleep).
ALWAYS_FAILING = ("broken_import", "bad_spec", "future_api", "exit_at_import")


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_testplugins = pytest.mark.skipif(
    not _installed(TESTPLUGINS),
    reason=(
        f"{TESTPLUGINS} is not installed; run "
        "`pip install --no-deps -e tests/thirdparty/metalab-testplugins` to test entry-point discovery."
    ),
)


# ---------------------------------------------------------------------------------------------------------
# Small in-test plugins, registered directly through `plugins=`.


class TinyParams(Params):
    size: int = Field(3, ge=1, le=10, description="A size.")


def _factory(*args, **kwargs):
    raise NotImplementedError("registration tests never build anything")


def algorithm(id: str) -> AlgorithmSpec:
    return AlgorithmSpec(id=id, title=f"Algorithm {id}", description="A test algorithm.", params=TinyParams,
                         factory=_factory, paper="Someone et al. 2017")


def dataset(id: str) -> DatasetSpec:
    return DatasetSpec(id=id, title=f"Dataset {id}", description="A test dataset.", params=TinyParams,
                       factory=_factory, kind="regression")


def backbone(id: str) -> BackboneSpec:
    return BackboneSpec(id=id, title=f"Backbone {id}", description="A test backbone.", params=TinyParams,
                        factory=_factory)


class SpecPlugin:
    """A plugin object returning the given specs from all three registration hooks."""

    def __init__(self, algorithms=(), datasets=(), backbones=(), api: object = PLUGIN_API_VERSION):
        if api is not None:
            self.METALAB_PLUGIN_API = api
        self._algorithms, self._datasets, self._backbones = list(algorithms), list(datasets), list(backbones)

    @hookimpl
    def metalab_register_algorithms(self):
        return self._algorithms

    @hookimpl
    def metalab_register_datasets(self):
        return self._datasets

    @hookimpl
    def metalab_register_backbones(self):
        return self._backbones


class DatasetsOnlyPlugin:
    METALAB_PLUGIN_API = "1.0"

    def __init__(self, *ids):
        self._ids = ids

    @hookimpl
    def metalab_register_datasets(self):
        return [dataset(i) for i in self._ids]


def make(*plugins, **kwargs) -> PluginRegistry:
    """A registry of only the given directly registered plugins, independent of the shell's settings."""
    kwargs.setdefault("settings", load_settings(disable_plugins="", strict_plugins=False))
    return make_plugin_manager(entry_points=False, plugins=plugins, **kwargs)


def load_testplugins() -> PluginRegistry:
    return make_plugin_manager(distributions={TESTPLUGINS}, settings=load_settings(disable_plugins=""), strict=False)


def record(registry: PluginRegistry, name: str) -> PluginRecord:
    matches = [r for r in registry.plugins if r.name == name]
    assert len(matches) == 1, f"expected one record named {name!r}, got {registry.plugins!r}"
    return matches[0]


# ---------------------------------------------------------------------------------------------------------
# A throwaway distribution on sys.path: real entry points without pip, for what needs several plugins of one
# distribution (a shared namespace).


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """Returns ``write(dist_name, version, {ep_name: module_source})``, which puts a distribution on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    prefix = f"fakeplug_{uuid.uuid4().hex[:8]}"
    created: list[str] = []

    def write(dist_name: str, version: str, modules: dict[str, str]) -> dict[str, str]:
        info = site / f"{normalize_namespace(dist_name)}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
        lines = ["[metalab]"]
        module_names = {}
        for ep_name, source in modules.items():
            module_name = f"{prefix}_{normalize_namespace(dist_name)}_{ep_name}"
            (site / f"{module_name}.py").write_text(textwrap.dedent(source))
            lines.append(f"{ep_name} = {module_name}")
            module_names[ep_name] = module_name
            created.append(module_name)
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        return module_names

    monkeypatch.syspath_prepend(str(site))
    yield write
    for name in created:
        sys.modules.pop(name, None)


def _module_source(kind: str, spec_id: str, api: str = "1.0") -> str:
    spec_class = {"algorithms": "AlgorithmSpec", "datasets": "DatasetSpec", "backbones": "BackboneSpec"}[kind]
    return f"""
        from metalab.core.contract.specs import {spec_class}, Params, hookimpl

        METALAB_PLUGIN_API = {api!r}

        class P(Params):
            pass

        @hookimpl
        def metalab_register_{kind}():
            return [{spec_class}(id={spec_id!r}, title="T", description="D", params=P, factory=lambda *a: None)]
        """


# ---------------------------------------------------------------------------------------------------------
# Built-ins (registered through the `metalab` distribution's entry points).


def test_builtins_register_through_entry_points(builtin_registry):
    assert "metalab.maml" in builtin_registry.algorithms
    assert "metalab.omniglot" in builtin_registry.datasets
    assert "metalab.conv4" in builtin_registry.backbones
    assert builtin_registry.failures == []
    declared = {ep.name for ep in importlib.metadata.entry_points(group="metalab") if ep.dist.name == "metalab"}
    assert {r.name for r in builtin_registry.plugins} == declared
    for r in builtin_registry.plugins:
        assert (r.status, r.package, r.namespace) == ("loaded", "metalab", "metalab")
        assert r.module.startswith("metalab.plugins.")
        assert r.version == importlib.metadata.version("metalab")
    assert builtin_registry.plugin_of("metalab.maml").name == "maml"


def test_builtin_ids_are_metalab_and_default_backbones_exist(builtin_registry):
    for table in (builtin_registry.algorithms, builtin_registry.datasets, builtin_registry.backbones):
        assert all(spec_id.startswith("metalab.") for spec_id in table)
    for spec in builtin_registry.datasets.values():
        if spec.default_backbone is not None:
            assert spec.default_backbone in builtin_registry.backbones, spec.id


def test_loading_every_plugin_imports_no_deep_learning_framework():
    # A subprocess: this test process may already hold TensorFlow from other tests.
    code = (
        "import sys\n"
        "from metalab.core.contract.manager import make_plugin_manager\n"
        "make_plugin_manager(strict=False)\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'torch', 'jax') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------------------
# The installed third-party test package.


@needs_testplugins
def test_third_party_plugin_discovered_with_package_and_version():
    registry = load_testplugins()
    lines = record(registry, "lines")
    assert lines.status == "loaded"
    assert lines.package == TESTPLUGINS
    assert lines.version == importlib.metadata.version(TESTPLUGINS)
    assert lines.namespace == "metalab_testplugins"
    assert lines.module == "metalab_testplugins.lines"
    assert lines.api_version == "1.0"
    assert lines.hooks == ["metalab_register_datasets"]
    spec = registry.dataset("metalab_testplugins.lines")
    assert spec.kind == "regression"
    assert registry.plugin_of("metalab_testplugins.lines") is lines
    # Only the plugins that loaded keep their hooks on the manager (factory_returns_string registers cleanly).
    assert sorted(registry.pm.hook.metalab_register_datasets(), key=lambda specs: specs[0].id) == [
        [spec], [registry.dataset("metalab_testplugins.string_dataset")]]
    assert registry.pm.hook.metalab_register_algorithms() == [[registry.algorithm("metalab_testplugins.string_algorithm")]]


@needs_testplugins
def test_each_broken_third_party_plugin_is_recorded_while_the_rest_load():
    registry = make_plugin_manager(settings=load_settings(disable_plugins=""), strict=False)
    failed = {r.name: r for r in registry.failures}
    assert set(ALWAYS_FAILING) <= set(failed)
    assert record(registry, "lines").status == "loaded"

    broken = failed["broken_import"]
    assert broken.package == TESTPLUGINS and broken.version == importlib.metadata.version(TESTPLUGINS)
    assert "a_module_that_does_not_exist_xyz" in broken.error
    assert "ModuleNotFoundError" in broken.error
    assert "Traceback" in broken.traceback and "broken_import" in broken.traceback

    bad = failed["bad_spec"]
    assert "Not An Id" in bad.error and "AlgorithmSpec" in bad.error
    assert "ValueError" in bad.traceback
    assert registry.pm.get_plugin("bad_spec") is None

    future = failed["future_api"]
    assert future.error.endswith("Received: METALAB_PLUGIN_API='2.0'")
    assert "targets plugin API 2.0" in future.error and "supports 1.x" in future.error
    assert future.api_version is None
    assert "metalab_testplugins.future" not in registry.datasets

    for r in failed.values():
        assert "\n" not in r.error
    assert not any(r.name == "bad_spec" for r in map(registry.plugin_of, registry.algorithms))


@needs_testplugins
def test_unknown_id_from_a_failed_plugin_points_at_it():
    registry = load_testplugins()
    with pytest.raises(UnknownPluginError) as info:
        registry.dataset("metalab_testplugins.future")
    message = str(info.value)
    assert "Known: metalab_testplugins.lines, metalab_testplugins.string_dataset." in message
    # The failure itself is named, not only the plugin: a worker's log may be all the user sees.
    assert "future_api (failed): Plugin targets plugin API 2.0" in message
    assert "exit_at_import (failed): Import of 'metalab_testplugins.exit_at_import' failed: SystemExit: 3" in message
    assert message.endswith("Received: dataset='metalab_testplugins.future'")


@needs_testplugins
@pytest.mark.parametrize("blocked", ["lines", "lines,something_else"])
def test_disabled_by_entry_point_name(monkeypatch, blocked):
    monkeypatch.setenv("METALAB_DISABLE_PLUGINS", blocked)
    monkeypatch.delenv("METALAB_STRICT_PLUGINS", raising=False)
    registry = make_plugin_manager(distributions={TESTPLUGINS})
    lines = record(registry, "lines")
    assert lines.status == "disabled"
    assert lines.package == TESTPLUGINS
    assert "metalab_testplugins.lines" not in registry.datasets
    assert lines not in registry.failures
    assert record(registry, "broken_import").status == "failed"


@needs_testplugins
@pytest.mark.parametrize("blocked", ["metalab-testplugins", "metalab_testplugins", "Metalab-TestPlugins"])
def test_disabled_by_distribution_name(monkeypatch, blocked):
    monkeypatch.setenv("METALAB_DISABLE_PLUGINS", f" {blocked} ")
    registry = make_plugin_manager(distributions={TESTPLUGINS}, strict=True)  # nothing left to fail
    assert {r.name for r in registry.plugins} == {"lines", *ALWAYS_FAILING, "slow_import", "factory_returns_string"}
    assert all(r.status == "disabled" and r.package == TESTPLUGINS for r in registry.plugins)
    assert registry.datasets == {}
    # A disabled plugin is never imported, so a broken import cannot fail.
    assert registry.failures == []


@needs_testplugins
def test_strict_mode_raises_listing_every_failure():
    with pytest.raises(PluginLoadError) as info:
        make_plugin_manager(distributions={TESTPLUGINS}, settings=load_settings(disable_plugins=""), strict=True)
    message = str(info.value)
    for name in ALWAYS_FAILING:
        assert f"- {name} ({TESTPLUGINS} " in message
    assert "- lines" not in message
    assert {r.name for r in info.value.failures} == set(ALWAYS_FAILING)


@needs_testplugins
def test_strict_mode_from_environment(monkeypatch):
    monkeypatch.setenv("METALAB_STRICT_PLUGINS", "1")
    monkeypatch.delenv("METALAB_DISABLE_PLUGINS", raising=False)
    with pytest.raises(PluginLoadError, match="broken_import"):
        make_plugin_manager(distributions={TESTPLUGINS})
    # The argument wins over the environment.
    assert make_plugin_manager(distributions={TESTPLUGINS}, strict=False).failures


@needs_testplugins
def test_distributions_filter_and_entry_points_off():
    only_builtins = make_plugin_manager(distributions={"metalab"}, settings=load_settings(disable_plugins=""),
                                        strict=False)
    assert all(r.package == "metalab" for r in only_builtins.plugins)
    nothing = make_plugin_manager(entry_points=False, settings=load_settings(disable_plugins=""))
    assert nothing.plugins == [] and nothing.algorithms == {} and nothing.describe() == []


# ---------------------------------------------------------------------------------------------------------
# Entry points of a throwaway distribution.


def test_namespace_is_the_normalized_distribution_name(fake_distribution):
    fake_distribution("Metalab.Fake-Thing", "2.5.0", {"good": _module_source("datasets", "metalab_fake_thing.d")})
    registry = make_plugin_manager(distributions={"metalab-fake-thing"}, settings=load_settings(disable_plugins=""),
                                   strict=True)
    good = record(registry, "good")
    assert (good.status, good.namespace, good.version) == ("loaded", "metalab_fake_thing", "2.5.0")
    assert good.package == "Metalab.Fake-Thing"
    assert list(registry.datasets) == ["metalab_fake_thing.d"]


def test_duplicate_id_across_plugins_fails_the_later_one_naming_both(fake_distribution):
    fake_distribution("metalab-dup", "1.0", {
        "first": _module_source("algorithms", "metalab_dup.same"),
        "second": _module_source("algorithms", "metalab_dup.same"),
        "third": _module_source("algorithms", "metalab_dup.other"),
    })
    registry = make_plugin_manager(distributions={"metalab-dup"}, settings=load_settings(disable_plugins=""),
                                   strict=False)
    assert record(registry, "first").status == "loaded"
    second = record(registry, "second")
    assert second.status == "failed"
    assert "'first'" in second.error and "'second'" in second.error and "metalab_dup.same" in second.error
    assert registry.plugin_of("metalab_dup.same").name == "first"
    assert record(registry, "third").status == "loaded"
    assert sorted(registry.algorithms) == ["metalab_dup.other", "metalab_dup.same"]


def test_same_id_in_different_kinds_is_allowed(fake_distribution):
    fake_distribution("metalab-kinds", "1.0", {
        "a": _module_source("algorithms", "metalab_kinds.x"),
        "b": _module_source("backbones", "metalab_kinds.x"),
    })
    registry = make_plugin_manager(distributions={"metalab-kinds"}, settings=load_settings(disable_plugins=""),
                                   strict=True)
    assert registry.plugin_of("metalab_kinds.x").name == "a"
    assert registry.plugin_of("metalab_kinds.x", kind="backbone").name == "b"
    with pytest.raises(ValueError, match="Received: kind='model'"):
        registry.plugin_of("metalab_kinds.x", kind="model")


def test_raising_import_fails_only_its_plugin(fake_distribution):
    names = fake_distribution("metalab-crash", "0.1", {
        "crash": "raise RuntimeError('boom at import')\n",
        "ok": _module_source("datasets", "metalab_crash.ok"),
    })
    registry = make_plugin_manager(distributions={"metalab-crash"}, settings=load_settings(disable_plugins=""),
                                   strict=False)
    crash = record(registry, "crash")
    assert crash.status == "failed" and "RuntimeError: boom at import" in crash.error
    assert crash.module == names["crash"]
    assert record(registry, "ok").status == "loaded"


# ---------------------------------------------------------------------------------------------------------
# Validation, with directly registered plugins.


def test_direct_plugins_load_with_name_as_namespace():
    registry = make(("alpha", SpecPlugin(algorithms=[algorithm("alpha.a")], datasets=[dataset("alpha.d")],
                                         backbones=[backbone("alpha.b")])))
    alpha = record(registry, "alpha")
    assert (alpha.status, alpha.namespace, alpha.package, alpha.version) == ("loaded", "alpha", None, None)
    assert alpha.module == f"{__name__}.SpecPlugin"
    assert alpha.hooks == sorted(["metalab_register_algorithms", "metalab_register_datasets",
                                  "metalab_register_backbones"])
    assert registry.algorithm("alpha.a").title == "Algorithm alpha.a"
    assert registry.dataset("alpha.d").kind == "regression"
    assert registry.backbone("alpha.b").id == "alpha.b"


def test_direct_plugin_may_be_a_module(tmp_path, monkeypatch):
    name = f"plugmod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(_module_source("datasets", f"{name}.d")))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    try:
        registry = make((name, module), strict=True)
    finally:
        sys.modules.pop(name, None)
    assert record(registry, name).module == name
    assert list(registry.datasets) == [f"{name}.d"]


def test_wrong_namespace_rejected():
    registry = make(("alpha", SpecPlugin(algorithms=[algorithm("beta.a")])), ("gamma", DatasetsOnlyPlugin("gamma.d")))
    alpha = record(registry, "alpha")
    assert alpha.status == "failed"
    assert "Spec id 'beta.a' must start with 'alpha.' (the plugin's namespace)" in alpha.error
    assert alpha.error.endswith("Received: id='beta.a'")
    assert registry.algorithms == {}
    assert list(registry.datasets) == ["gamma.d"]


def test_one_invalid_spec_fails_the_whole_plugin():
    plugin = SpecPlugin(algorithms=[algorithm("alpha.fine")], datasets=[dataset("alpha.fine"), dataset("alpha.Bad")])
    registry = make(("alpha", plugin), ("gamma", DatasetsOnlyPlugin("gamma.d")))
    alpha = record(registry, "alpha")
    assert alpha.status == "failed" and "alpha.Bad" in alpha.error and "DatasetSpec" in alpha.error
    assert alpha.traceback and "ValueError" in alpha.traceback
    assert registry.algorithms == {} and list(registry.datasets) == ["gamma.d"]
    assert registry.pm.get_plugin("alpha") is None
    assert registry.pm.get_plugin("gamma") is not None


def test_duplicate_id_within_one_plugin_rejected():
    registry = make(("alpha", DatasetsOnlyPlugin("alpha.d", "alpha.d")))
    assert "returns dataset 'alpha.d' twice" in record(registry, "alpha").error


@pytest.mark.parametrize(
    "result, expected",
    [
        (None, "must return a list of AlgorithmSpec. Received: NoneType"),
        (algorithm("alpha.a"), "must return a list of AlgorithmSpec. Received: AlgorithmSpec"),
        ([dataset("alpha.d")], "must return AlgorithmSpec objects. Received: DatasetSpec"),
        (["alpha.a"], "must return AlgorithmSpec objects. Received: str"),
    ],
)
def test_hook_result_must_be_a_list_of_the_right_spec_type(result, expected):
    class Plugin:
        METALAB_PLUGIN_API = "1.0"

        @hookimpl
        def metalab_register_algorithms(self):
            return result

    registry = make(("alpha", Plugin()))
    assert expected in record(registry, "alpha").error


def test_params_without_json_schema_rejected():
    class Opaque:
        pass

    class OpaqueParams(Params):
        model_config = {"arbitrary_types_allowed": True, "extra": "forbid", "frozen": True}
        thing: Opaque = Field(default_factory=Opaque)

    spec = AlgorithmSpec(id="alpha.a", title="A", description="D", params=OpaqueParams, factory=_factory)
    registry = make(("alpha", SpecPlugin(algorithms=[spec])))
    error = record(registry, "alpha").error
    assert "invalid AlgorithmSpec" in error and "parameter 'thing' has a type with no JSON schema" in error
    assert error.endswith("Received: thing: Opaque")


def test_raising_hook_fails_only_its_plugin():
    class Raising(SpecPlugin):
        @hookimpl
        def metalab_register_algorithms(self):
            raise RuntimeError("cannot list algorithms today")

    registry = make(("alpha", Raising(datasets=[dataset("alpha.d")])), ("gamma", DatasetsOnlyPlugin("gamma.d")))
    alpha = record(registry, "alpha")
    assert alpha.status == "failed"
    assert alpha.error == "Hook metalab_register_algorithms raised RuntimeError: cannot list algorithms today"
    assert "cannot list algorithms today" in alpha.traceback and "Traceback" in alpha.traceback
    assert "alpha.d" not in registry.datasets  # its good hook's specs go too
    assert record(registry, "gamma").status == "loaded" and "gamma.d" in registry.datasets


def test_misspelled_hook_caught_by_check_pending():
    class Misspelled:
        METALAB_PLUGIN_API = "1.0"

        @hookimpl
        def metalab_register_algorithm(self):
            return [algorithm("alpha.a")]

        @hookimpl
        def metalab_register_datasets(self):
            return [dataset("alpha.d")]

    registry = make(("alpha", Misspelled()), ("gamma", DatasetsOnlyPlugin("gamma.d")))
    alpha = record(registry, "alpha")
    assert alpha.status == "failed"
    assert alpha.error.startswith("Unknown hook 'metalab_register_algorithm' (misspelled?); metalab's hooks are ")
    assert "metalab_register_algorithms" in alpha.error
    assert alpha.error.endswith("Received: hook=metalab_register_algorithm")
    assert registry.pm.get_plugin("alpha") is None
    assert list(registry.datasets) == ["gamma.d"]
    registry.pm.check_pending()  # what remains is consistent


def test_hookimpl_with_unknown_argument_rejected_at_registration():
    class WrongSignature:
        METALAB_PLUGIN_API = "1.0"

        @hookimpl
        def metalab_register_datasets(self, registry):
            return []

    registry = make(("alpha", WrongSignature()), ("gamma", DatasetsOnlyPlugin("gamma.d")))
    alpha = record(registry, "alpha")
    # The plugin, the hook, the argument the hook does not pass and what metalab passes: not pluggy's own text.
    assert alpha.status == "failed" and alpha.error == (
        "Hook metalab_register_datasets of plugin 'alpha' takes 'registry', which the hook does not pass; metalab "
        "calls it with no arguments. Received: metalab_register_datasets(registry)"
    )
    assert "PluginValidationError" in alpha.traceback
    assert alpha.hooks == []
    assert list(registry.datasets) == ["gamma.d"]


@pytest.mark.parametrize("api", ["1.0", "1.7", "1.10"])
def test_same_major_api_loads(api):
    registry = make(("alpha", SpecPlugin(datasets=[dataset("alpha.d")], api=api)), strict=True)
    assert record(registry, "alpha").api_version == api


@pytest.mark.parametrize(
    "api, expected",
    [
        (None, "does not declare the plugin API version"),
        ("2.0", "targets plugin API 2.0; this metalab supports 1.x. Received: METALAB_PLUGIN_API='2.0'"),
        ("0.9", "targets plugin API 0.9; this metalab supports 1.x"),
        ("1", "must be a string 'MAJOR.MINOR'"),
        (1.0, "must be a string 'MAJOR.MINOR'"),
        ("v1.0", "Received: METALAB_PLUGIN_API='v1.0'"),
    ],
)
def test_api_version_checked(api, expected):
    registry = make(("alpha", SpecPlugin(datasets=[dataset("alpha.d")], api=api)),
                    ("gamma", DatasetsOnlyPlugin("gamma.d")))
    alpha = record(registry, "alpha")
    assert alpha.status == "failed" and expected in alpha.error
    assert alpha.hooks == [] and registry.pm.get_plugin("alpha") is None
    assert list(registry.datasets) == ["gamma.d"]


def test_plugin_name_taken_or_object_registered_twice():
    shared = DatasetsOnlyPlugin("alpha.d")
    registry = make(("alpha", shared), ("alpha", DatasetsOnlyPlugin("alpha.e")), ("beta", shared))
    records = registry.plugins
    assert [r.status for r in records] == ["loaded", "failed", "failed"]
    assert records[1].error.startswith("Plugin name 'alpha' is already taken by a loaded plugin")
    assert records[2].error.startswith("The same plugin object is already loaded as 'alpha'")
    assert registry.plugin_of("alpha.d") is records[0]
    assert list(registry.datasets) == ["alpha.d"]


def test_none_plugin_and_malformed_pairs():
    registry = make(("alpha", None))
    assert record(registry, "alpha").status == "failed"
    with pytest.raises(TypeError, match="pairs"):
        make_plugin_manager(entry_points=False, plugins=[DatasetsOnlyPlugin("x.d")])


def test_direct_plugin_disabled_by_name(monkeypatch):
    monkeypatch.setenv("METALAB_DISABLE_PLUGINS", "alpha")
    registry = make_plugin_manager(entry_points=False, plugins=[("alpha", DatasetsOnlyPlugin("alpha.d")),
                                                                ("gamma", DatasetsOnlyPlugin("gamma.d"))])
    assert record(registry, "alpha").status == "disabled"
    assert list(registry.datasets) == ["gamma.d"] and registry.failures == []


def test_strict_mode_with_direct_plugins():
    with pytest.raises(PluginLoadError) as info:
        make(("alpha", SpecPlugin(api="2.0")), ("beta", SpecPlugin(algorithms=[algorithm("x.y")])),
             ("gamma", DatasetsOnlyPlugin("gamma.d")), strict=True)
    message = str(info.value)
    assert message.startswith("2 metalab plugin(s) failed to load")
    assert "- alpha (registered directly" in message and "- beta (registered directly" in message
    assert "gamma" not in message
    assert "METALAB_DISABLE_PLUGINS" in message


# ---------------------------------------------------------------------------------------------------------
# The registry.


def test_unknown_id_error_names_known_ids():
    registry = make(("alpha", SpecPlugin(algorithms=[algorithm("alpha.b"), algorithm("alpha.a")])))
    with pytest.raises(UnknownPluginError) as info:
        registry.algorithm("alpha.zzz")
    assert str(info.value) == "Unknown algorithm 'alpha.zzz'. Known: alpha.a, alpha.b. Received: algorithm='alpha.zzz'"
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert info.value.known == ["alpha.a", "alpha.b"] and info.value.kind == "algorithm"
    with pytest.raises(UnknownPluginError, match=r"Unknown backbone 'alpha.a'. Known: \(none\)"):
        registry.backbone("alpha.a")
    with pytest.raises(UnknownPluginError, match="Unknown dataset"):
        registry.dataset(None)
    with pytest.raises(UnknownPluginError, match=r"Unknown spec 'nope.x'. Known: alpha.a, alpha.b. Received: spec="):
        registry.plugin_of("nope.x")


def test_specs_sorted_by_id():
    registry = make(("zeta", DatasetsOnlyPlugin("zeta.b", "zeta.a")), ("alpha", DatasetsOnlyPlugin("alpha.c")))
    assert list(registry.datasets) == ["alpha.c", "zeta.a", "zeta.b"]


def test_describe_rows():
    registry = make(
        ("alpha", SpecPlugin(algorithms=[algorithm("alpha.a")], datasets=[dataset("alpha.d")],
                             backbones=[backbone("alpha.b")])),
        ("broken", SpecPlugin(api="2.0")),
    )
    rows = registry.describe()
    keys = {"id", "kind", "title", "description", "paper", "plugin", "package", "version", "status", "error",
            "traceback", "params", "seconds"}
    assert all(set(row) == keys for row in rows)
    assert all(isinstance(row["seconds"], float) and 0 <= row["seconds"] < 10 for row in rows)
    by_kind = {row["kind"]: row for row in rows}
    assert set(by_kind) == {"algorithm", "dataset", "backbone", "plugin"}
    algo = by_kind["algorithm"]
    assert (algo["id"], algo["plugin"], algo["status"], algo["error"]) == ("alpha.a", "alpha", "loaded", None)
    assert algo["paper"] == "Someone et al. 2017"
    assert algo["params"]["properties"]["size"]["default"] == 3
    assert algo["params"]["properties"]["size"]["maximum"] == 10
    failed = by_kind["plugin"]
    assert (failed["id"], failed["title"], failed["plugin"], failed["status"]) == (None, "broken", "broken", "failed")
    assert "2.0" in failed["error"]
    json.dumps(rows)  # the CLI prints these as JSON


def test_two_managers_are_independent():
    shared = DatasetsOnlyPlugin("alpha.d")
    first = make(("alpha", shared))
    second = make(("alpha", shared), ("beta", DatasetsOnlyPlugin("beta.d")))
    third = make()
    assert first.pm is not second.pm
    assert list(first.datasets) == ["alpha.d"]
    assert list(second.datasets) == ["alpha.d", "beta.d"]
    assert third.datasets == {} and third.plugins == []
    assert first.pm.get_plugin("beta") is None
    assert len(first.pm.hook.metalab_register_datasets()) == 1
    assert len(second.pm.hook.metalab_register_datasets()) == 2


def test_hookspecs_are_the_registries_contract():
    registry = make()
    spec_names = {name for name in dir(hookspecs) if name.startswith("metalab_")}
    for name in spec_names:
        assert getattr(registry.pm.hook, name).has_spec()
    assert registry.pm.project_name == "metalab"


# ---------------------------------------------------------------------------------------------------------
# Parameter models, factory strings and task kinds, checked where a spec enters core.


def test_a_default_outside_its_own_range_fails_the_plugin_when_it_loads():
    class OutOfRange(Params):
        lr: float = Field(-0.5, gt=0, le=1, description="A rate whose default is below its own range.")

    spec = AlgorithmSpec(id="alpha.a", title="A", description="D", params=OutOfRange, factory=_factory)
    registry = make(("alpha", SpecPlugin(algorithms=[spec])), ("gamma", DatasetsOnlyPlugin("gamma.d")))
    alpha = record(registry, "alpha")
    assert alpha.status == "failed" and "alpha.a" not in registry.algorithms
    assert "AlgorithmSpec 'alpha.a': the default of parameter 'lr' is outside its own range (allowed: > 0, <= 1)" in (
        alpha.error)
    assert alpha.error.endswith("Received: lr=-0.5")
    assert "gamma.d" in registry.datasets


def test_a_choice_default_outside_its_choices_fails_naming_the_choices():
    from typing import Literal

    class BadChoice(Params):
        mode: Literal["fast", "exact"] = Field("slow", description="How to run.")

    registry = make(("alpha", SpecPlugin(backbones=[BackboneSpec(id="alpha.b", title="B", description="D",
                                                                  params=BadChoice, factory=_factory)])))
    error = record(registry, "alpha").error
    assert "BackboneSpec 'alpha.b': the default of parameter 'mode'" in error and "'fast' or 'exact'" in error
    assert error.endswith("Received: mode='slow'")


def test_a_callable_parameter_names_the_spec_the_field_and_the_fix():
    from typing import Callable

    class WithCallable(Params):
        transform: Callable[[float], float] = Field(abs, description="Applied to every input.")

    spec = DatasetSpec(id="alpha.d", title="D", description="D", params=WithCallable, factory=_factory,
                       kind="regression")
    error = record(make(("alpha", SpecPlugin(datasets=[spec]))), "alpha").error
    assert "Cannot generate a JsonSchema" not in error
    assert "DatasetSpec 'alpha.d': parameter 'transform' has a type with no JSON schema" in error
    assert "give it a JSON type" in error and "build the object from it inside the factory" in error


def test_a_factory_string_is_imported_on_first_call_only(tmp_path, monkeypatch):
    module = f"lazy_impl_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent("""
        CALLS = []

        class Impl:
            def __init__(self, params, task):
                CALLS.append((params, task))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = AlgorithmSpec(id="alpha.a", title="A", description="D", params=TinyParams, factory=f"{module}:Impl",
                         task_kinds=("regression",))
    registry = make(("alpha", SpecPlugin(algorithms=[spec])), strict=True)
    assert module not in sys.modules  # registration found the module without importing it
    task = type("Task", (), {"kind": "regression"})()
    built = registry.algorithm("alpha.a").factory(TinyParams(), task)
    assert type(built).__name__ == "Impl" and sys.modules[module].CALLS == [(TinyParams(), task)]


def test_a_factory_string_that_does_not_resolve_names_the_spec_and_the_string():
    from metalab.core.contract.factories import FactoryResolutionError

    spec = AlgorithmSpec(id="alpha.a", title="A", description="D", params=TinyParams,
                         factory="metalab.core.contract.manager:NoSuchFactory")
    spec.validate()  # the module exists; the attribute is only looked up when a run builds the algorithm
    task = type("Task", (), {"kind": "classification"})()
    with pytest.raises(FactoryResolutionError) as info:
        spec.factory(TinyParams(), task)
    assert str(info.value) == (
        "AlgorithmSpec 'alpha.a': its factory 'metalab.core.contract.manager:NoSuchFactory' does not resolve: "
        "'metalab.core.contract.manager' has no attribute 'NoSuchFactory'. Give 'package.module:Attribute' naming "
        "a class or function of an installed module. Received: factory='metalab.core.contract.manager:NoSuchFactory'"
    )


@pytest.mark.parametrize("factory, expected", [
    ("no_colon_here", "must be callable or a 'package.module:Attribute' string"),
    ("metalab_no_such_module_xyz.impl:Impl", "which is not installed"),  # fixed: xdist workers must collect the same ids
    (42, "must be callable"),
])
def test_a_malformed_or_missing_factory_fails_the_plugin_at_load(factory, expected):
    spec = AlgorithmSpec(id="alpha.a", title="A", description="D", params=TinyParams, factory=factory)
    error = record(make(("alpha", SpecPlugin(algorithms=[spec]))), "alpha").error
    assert expected in error and error.endswith(f"Received: factory={factory!r}")


def test_an_algorithm_factory_refuses_a_task_kind_its_spec_does_not_declare():
    calls = []
    spec = AlgorithmSpec(id="alpha.a", title="A", description="D", params=TinyParams,
                         factory=lambda params, task: calls.append(task) or "built", task_kinds=("classification",))
    with pytest.raises(ValueError, match=r"supports classification tasks .* not regression. "
                                         r"Received: task.kind='regression'"):
        spec.factory(TinyParams(), type("Task", (), {"kind": "regression"})())
    assert calls == []  # refused before the implementation ran
    assert spec.factory(TinyParams(), type("Task", (), {"kind": "classification"})()) == "built"


def test_a_task_asking_for_feature_maps_of_a_flat_backbone_is_refused(builtin_registry):
    from metalab.core.contract.manager import backbone_maker

    mlp = builtin_registry.backbone("metalab.mlp")
    make_backbone = backbone_maker(mlp, mlp.params(), (8, 8, 1), registry=builtin_registry)
    with pytest.raises(ValueError, match=r"'metalab.mlp' gives flat feature vectors only .*\(metalab.conv4\)\. "
                                         r"Received: feature_maps=True"):
        make_backbone(feature_maps=True)


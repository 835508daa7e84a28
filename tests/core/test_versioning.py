"""The plugin API version rule as metalab's version moves on: older minors of the same major keep loading.

tests/core/test_plugin_manager.py checks plugins against today's host version (1.0). These tests move the host
forward (as a later metalab would) to check what docs/plugins.md promises plugin authors: a plugin written for
1.0 loads under 1.3, and a plugin of another major is refused with a message naming the supported versions.
"""

from __future__ import annotations

import pytest
from pydantic import Field

from metalab.core.contract import manager as plugin_manager
from metalab.core.contract.specs import PLUGIN_API_VERSION, DatasetSpec, Params, hookimpl
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.settings import load_settings


class _NoParams(Params):
    size: int = Field(1, ge=1, description="Unused.")


def _factory(params, context):
    raise NotImplementedError("versioning tests never build a dataset")


class _Plugin:
    """A plugin object targeting plugin API ``api`` that provides the dataset ``<name>.d``."""

    def __init__(self, name: str, api: str):
        self.name = name
        self.METALAB_PLUGIN_API = api

    @hookimpl
    def metalab_register_datasets(self):
        return [DatasetSpec(id=f"{self.name}.d", title="D", description="A dataset.", params=_NoParams,
                            factory=_factory, kind="regression")]


def _load(*plugins: _Plugin):
    return make_plugin_manager(
        entry_points=False, plugins=[(p.name, p) for p in plugins], settings=load_settings(disable_plugins=""),
        strict=False,
    )


def _record(registry, name):
    return next(r for r in registry.plugins if r.name == name)


@pytest.fixture
def host(monkeypatch):
    """Sets the plugin API version this metalab provides, as a later release would."""

    def set_version(version: str) -> None:
        monkeypatch.setattr(plugin_manager, "PLUGIN_API_VERSION", version)

    return set_version


def test_current_version_is_major_dot_minor():
    major, minor = PLUGIN_API_VERSION.split(".")
    assert major.isdigit() and minor.isdigit()


@pytest.mark.parametrize("older", ["1.0", "1.2"])
def test_plugin_for_an_older_minor_loads_on_a_newer_host(host, older):
    host("1.3")
    registry = _load(_Plugin("old", older), _Plugin("same", "1.3"))
    assert (_record(registry, "old").status, _record(registry, "old").api_version) == ("loaded", older)
    assert list(registry.datasets) == ["old.d", "same.d"]


@pytest.mark.parametrize("host_version, plugin_api, supported", [("1.3", "2.0", "1.x"), ("2.0", "1.0", "2.x")])
def test_other_major_refused_naming_the_supported_versions(host, host_version, plugin_api, supported):
    host(host_version)
    registry = _load(_Plugin("other", plugin_api), _Plugin("fine", host_version))
    other = _record(registry, "other")
    assert other.status == "failed" and other.api_version is None
    assert f"targets plugin API {plugin_api}; this metalab supports {supported}." in other.error
    assert other.error.endswith(f"Received: METALAB_PLUGIN_API={plugin_api!r}")
    # The refused plugin takes nothing with it.
    assert list(registry.datasets) == ["fine.d"]


def test_missing_version_message_names_the_version_to_declare(host):
    host("1.3")

    class Undeclared:
        @hookimpl
        def metalab_register_datasets(self):
            return []

    registry = make_plugin_manager(entry_points=False, plugins=[("undeclared", Undeclared())],
                                   settings=load_settings(disable_plugins=""), strict=False)
    error = _record(registry, "undeclared").error
    assert "add METALAB_PLUGIN_API = '1.3'" in error and "supports 1.x" in error

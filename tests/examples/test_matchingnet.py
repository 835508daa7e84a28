"""The worked example plugin (examples/metalab-matchingnet) installs, lists like any plugin and passes the conformance suite.

Skipped when the example is not installed; install it with
``pip install --no-deps -e examples/metalab-matchingnet``. Its own unit tests live beside it
(``examples/metalab-matchingnet/tests``) and run from that folder.
"""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from metalab.core.authoring import testing
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.settings import load_settings

DISTRIBUTION = "metalab-matchingnet"
ALGORITHM = "metalab_matchingnet.matchingnet"

try:
    importlib.metadata.distribution(DISTRIBUTION)
except importlib.metadata.PackageNotFoundError:
    pytest.skip(
        f"{DISTRIBUTION} is not installed; run `pip install --no-deps -e examples/metalab-matchingnet`.",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def registry():
    return make_plugin_manager(
        distributions={"metalab", DISTRIBUTION}, settings=load_settings(disable_plugins=""), strict=True
    )


def test_listed_with_package_version_and_parameter_schema(monkeypatch):
    # What `metalab plugins list` and the dashboard's Plugins page show: a fresh manager over every installed plugin.
    monkeypatch.delenv("METALAB_DISABLE_PLUGINS", raising=False)
    rows = {row["id"]: row for row in make_plugin_manager(strict=False).describe() if row["id"]}
    row = rows[ALGORITHM]
    assert (row["kind"], row["title"], row["status"]) == ("algorithm", "Matching Networks", "loaded")
    assert (row["package"], row["version"]) == (DISTRIBUTION, importlib.metadata.version(DISTRIBUTION))
    assert "Vinyals" in row["paper"]
    properties = row["params"]["properties"]
    assert properties["fce"]["default"] is False and properties["processing_steps"]["minimum"] == 1
    json.dumps(row)  # the dashboard and `--json` need it serialisable


@pytest.mark.parametrize("fce", [False, True], ids=["plain", "fce"])
def test_learns(registry, tmp_path, fce):
    testing.check_learns(ALGORITHM, tmp_path, registry=registry, algorithm_params={"fce": fce})


@pytest.mark.slow
def test_resumes_exactly_with_full_context_embeddings(registry, tmp_path):
    testing.check_resume(ALGORITHM, tmp_path, registry=registry, algorithm_params={"fce": True})


@pytest.mark.slow
def test_deterministic_with_full_context_embeddings(registry, tmp_path):
    testing.check_deterministic(ALGORITHM, tmp_path, registry=registry, algorithm_params={"fce": True})

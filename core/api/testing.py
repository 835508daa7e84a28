"""The conformance kit for plugin authors: check that an algorithm learns, resumes exactly and is deterministic.

From a plugin's own tests (pytest finds the fixtures below through metalab's ``pytest11`` entry point)::

    from metalab.api.testing import check_algorithm

    def test_conforms(metalab_registry, tmp_path):
        check_algorithm("myplugin.myalgo", tmp_path, registry=metalab_registry)

``metalab_registry`` loads metalab's built-ins and the distribution under test only (set its name with
``registry_for``); each check trains through the real runner on the embedded datasets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from metalab.core.authoring.testing import (  # noqa: F401 - the kit's public names
    ConformanceResult,
    algorithm_ids,
    blob_batch,
    check_algorithm,
    check_deterministic,
    check_learns,
    check_resume,
    evaluate_compiled,
    paper_defaults,
    run_tiny,
    sinusoid_batch,
    supported_kinds,
    tiny_config,
    tiny_tasks,
    train_steps,
)

__all__ = [
    "ConformanceResult", "algorithm_ids", "blob_batch", "check_algorithm", "check_deterministic", "check_learns",
    "check_resume", "evaluate_compiled", "paper_defaults", "run_tiny", "sinusoid_batch", "supported_kinds",
    "tiny_config", "tiny_tasks", "train_steps", "registry_for", "metalab_registry",
]


def registry_for(*distributions: str, include_builtins: bool = True) -> Any:
    """A fresh plugin registry holding only the named distributions (and metalab's built-ins by default).

    Other installed plugins, broken or not, stay out; a plugin of ``distributions`` that fails to load is an
    error naming it (strict mode), so a test sees the real failure.

    Args:
        distributions: The pip distribution names to load, e.g. ``"metalab-matchingnet"``.
        include_builtins: Also load metalab's built-in plugins (the embedded datasets, the MLP backbone).
    """
    from metalab.core.contract.manager import make_plugin_manager
    from metalab.core.settings import load_settings

    names = set(distributions) | ({"metalab"} if include_builtins else set())
    return make_plugin_manager(distributions=names, settings=load_settings(disable_plugins=""), strict=False)


def _fixture(scope: str = "session") -> Any:
    try:
        import pytest
    except ImportError:  # the kit works without pytest; only the fixture needs it
        return lambda fn: fn
    return pytest.fixture(scope=scope)


@_fixture("module")
def metalab_registry(request: Any) -> Any:
    """A registry of metalab's built-ins plus the distribution(s) a test module names.

    A module sets ``METALAB_DISTRIBUTIONS = ("my-distribution",)``; without it every installed plugin loads.
    """
    names: Iterable[str] | None = getattr(request.module, "METALAB_DISTRIBUTIONS", None)
    if names is None:
        from metalab.core.contract.manager import make_plugin_manager

        return make_plugin_manager(strict=False)
    return registry_for(*names)

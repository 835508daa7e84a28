"""docs/plugins.md is checked against the code: a hook, spec field or conformance helper missing from it fails here."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from metalab.core.contract import hookspecs
from metalab.core.contract import specs as plugin_api
from metalab.core.authoring import testing
from metalab.core.contract.manager import ENTRY_POINT_GROUP, PluginRecord

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC_PATH = REPO_ROOT / "docs" / "plugins.md"
DOC = DOC_PATH.read_text(encoding="utf-8")

_HEADING = re.compile(r"^(#{1,6})\s+(.*)$", re.MULTILINE)

SPEC_DATACLASSES = [
    plugin_api.AlgorithmSpec,
    plugin_api.DatasetSpec,
    plugin_api.BackboneSpec,
    plugin_api.ReportPanel,
    plugin_api.PublishedResult,
    plugin_api.TaskSpec,
    plugin_api.TaskBatch,
    plugin_api.Benchmark,
    plugin_api.LoadedRun,
    plugin_api.DataContext,
    plugin_api.ClassificationDataset,
    plugin_api.ClassSplit,
    PluginRecord,
]
PROTOCOLS = [plugin_api.Algorithm, plugin_api.RegressionTaskFamily]
CONFORMANCE_CHECKS = ["check_learns", "check_resume", "check_deterministic", "check_algorithm"]


def _hooks() -> list[str]:
    return sorted(
        name for name, obj in vars(hookspecs).items() if inspect.isfunction(obj) and hasattr(obj, "metalab_spec")
    )


def _headings() -> list[tuple[int, int, int, str]]:
    """``(start, end, level, title)`` of every Markdown heading outside fenced code blocks."""
    found, offset, fenced = [], 0, False
    for line in DOC.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := _HEADING.match(line.rstrip("\n"))):
            found.append((offset, offset + len(line), len(match.group(1)), match.group(2).strip()))
        offset += len(line)
    return found


def section(title: str) -> str:
    """The text under the heading ``title`` (or one naming it in backticks), subsections included."""
    headings = _headings()
    for i, (_, end, level, text) in enumerate(headings):
        if text == title or f"`{title}`" in text:
            stop = next((start for start, _, lvl, _ in headings[i + 1:] if lvl <= level), len(DOC))
            return DOC[end:stop]
    raise AssertionError(f"docs/plugins.md has no section headed {title!r} (or `{title}`)")


def _docstring_entry(doc: str, label: str) -> str:
    """The text following ``label:`` in a Google-style docstring (same line or the next non-empty one)."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(f"{label}:"):
            rest = line.split(":", 1)[1].strip()
            if rest:
                return rest
            return next(following.strip() for following in lines[i + 1:] if following.strip())
    raise AssertionError(f"docstring has no {label!r} entry")


def test_doc_exists_and_names_every_hook():
    assert _hooks(), "hookspecs declares no hooks?"
    for name in _hooks():
        assert f"`{name}`" in DOC


@pytest.mark.parametrize("name", _hooks())
def test_hook_reference_matches_hookspecs(name):
    hook = getattr(hookspecs, name)
    doc = inspect.getdoc(hook)
    body = section(name)
    since = _docstring_entry(doc, "Since")
    assert f"Since:** {since}" in body, f"{name}: the hook reference must say 'Since: {since}' as hookspecs does"
    returns = _docstring_entry(doc, "Returns")
    assert f"`{returns}`" in body, f"{name}: the hook reference must give its return shape `{returns}`"
    parameters = list(inspect.signature(hook).parameters)
    if parameters:
        for parameter in parameters:
            assert f"`{parameter}`" in body, f"{name}: argument {parameter!r} is not documented"
    else:
        assert "**Arguments:** none" in body, f"{name}: say that it takes no arguments"
    assert f"def {name}(" in body, f"{name}: show the signature"


@pytest.mark.parametrize("cls", SPEC_DATACLASSES, ids=lambda c: c.__name__)
def test_every_field_of_every_spec_type_is_documented(cls):
    body = section(cls.__name__)
    missing = [f.name for f in dataclasses.fields(cls) if f"`{f.name}`" not in body]
    assert not missing, f"docs/plugins.md, section `{cls.__name__}`: fields not documented: {missing}"


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda c: c.__name__)
def test_every_member_of_every_protocol_is_documented(protocol):
    body = section(protocol.__name__)
    members = set(getattr(protocol, "__annotations__", {})) | {
        name for name in vars(protocol) if not name.startswith("_")
    }
    missing = sorted(m for m in members if f"`{m}`" not in body and f"`{m}(" not in body)
    assert not missing, f"docs/plugins.md, section `{protocol.__name__}`: members not documented: {missing}"


def test_params_base_class_documented():
    assert "extra=\"forbid\"" in section("Params")


def test_functional_seam_documented():
    # Read __all__ without importing the module (it imports TensorFlow).
    tree = ast.parse((REPO_ROOT / "core" / "engine" / "functional.py").read_text(encoding="utf-8"))
    names = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
    )
    body = section("Algorithm")
    missing = [name for name in names if f"`{name}" not in body]
    assert not missing, f"docs/plugins.md, section `Algorithm`: metalab.core.engine.functional names missing: {missing}"


@pytest.mark.parametrize("name", CONFORMANCE_CHECKS)
def test_conformance_checks_documented_with_their_signatures(name):
    body = section("Testing a plugin: the conformance kit")
    row = next((line for line in body.splitlines() if line.startswith(f"| `{name}(")), None)
    assert row is not None, f"the conformance kit table has no row for {name}"
    for parameter in inspect.signature(getattr(testing, name)).parameters.values():
        assert parameter.name in row, f"{name}: parameter {parameter.name!r} missing from its documented signature"
        if parameter.default is not inspect.Parameter.empty:
            assert f"{parameter.name}={parameter.default!r}" in row, f"{name}: default of {parameter.name} differs"


def test_conformance_tiny_tasks_documented(builtin_registry):
    body = section("Testing a plugin: the conformance kit")
    tasks = testing.tiny_tasks(builtin_registry)
    assert set(tasks) == {"classification", "regression", "environment"}
    for kind, tiny in tasks.items():
        assert f"`{tiny['dataset']}`" in body and f"`{tiny['backbone']}`" in body
        assert str(tiny["backbone_params"]["hidden"]).replace(" ", "") in body.replace(" ", "")


def test_entry_point_group_namespacing_and_environment_variables():
    assert f"[project.entry-points.{ENTRY_POINT_GROUP}]" in DOC
    assert f"group\n`{ENTRY_POINT_GROUP}`" in DOC or f"group `{ENTRY_POINT_GROUP}`" in DOC
    assert "normalized distribution name" in DOC
    failures = section("Failures, disabling and strict mode")
    for text in ("METALAB_DISABLE_PLUGINS", "METALAB_STRICT_PLUGINS", "metalab plugins list", "Plugins page"):
        assert text in failures


def test_changelog_covers_the_current_version_and_every_since():
    assert f"### {plugin_api.PLUGIN_API_VERSION}" in section("Changelog of the plugin API")
    assert section(plugin_api.PLUGIN_API_VERSION).strip(), f"no changelog entry for {plugin_api.PLUGIN_API_VERSION}"
    versions = {_docstring_entry(inspect.getdoc(getattr(hookspecs, n)), "Since").split()[-1] for n in _hooks()}
    for version in versions:
        body = section(version)
        hooks_then = [n for n in _hooks() if _docstring_entry(inspect.getdoc(getattr(hookspecs, n)), "Since").endswith(version)]
        for name in hooks_then:
            assert f"`{name}`" in body, f"changelog {version} does not list hook {name}"
    assert f"today `{plugin_api.PLUGIN_API_VERSION}`" in section("Versioning")


def test_relative_links_resolve():
    for target in re.findall(r"\]\((?!https?:|#)([^)]+)\)", DOC):
        assert (DOC_PATH.parent / target.split("#")[0]).exists(), f"broken link in docs/plugins.md: {target}"

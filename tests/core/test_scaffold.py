"""`metalab new-plugin` writes packages that pip-install, load through their entry point and pass their own tests."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import tomllib

import pytest
from typer.testing import CliRunner

from metalab.core.cli import app
from metalab.core.contract.specs import PLUGIN_API_VERSION
from metalab.core.contract.manager import make_plugin_manager, normalize_namespace
from metalab.core.authoring.scaffold import KINDS, new_plugin, plugin_names, render_plugin


@pytest.mark.parametrize(
    "name, distribution, module, spec_id, class_name",
    [
        ("myalgo", "metalab-myalgo", "metalab_myalgo", "metalab_myalgo.myalgo", "Myalgo"),
        ("my-algo", "metalab-my-algo", "metalab_my_algo", "metalab_my_algo.my_algo", "MyAlgo"),
        ("my_algo2", "metalab-my-algo2", "metalab_my_algo2", "metalab_my_algo2.my_algo2", "MyAlgo2"),
        ("metalab-foo", "metalab-foo", "metalab_foo", "metalab_foo.foo", "Foo"),
    ],
)
def test_plugin_names(name, distribution, module, spec_id, class_name):
    names = plugin_names(name)
    assert (names.distribution, names.module, names.spec_id, names.class_name) == (
        distribution, module, spec_id, class_name
    )
    # The loader's rule: the spec id prefix is the normalized distribution name.
    assert spec_id.split(".")[0] == normalize_namespace(distribution)


@pytest.mark.parametrize("name", ["", "My", "1abc", "a b", "a--b", "abc-", "ab.c", "metalab-"])
def test_bad_names_refused(name):
    with pytest.raises(ValueError, match="Received: name="):
        plugin_names(name)


def test_bad_kind_refused():
    with pytest.raises(ValueError, match="Received: kind='model'"):
        render_plugin("foo", "model")


@pytest.mark.parametrize("kind", KINDS)
def test_rendered_package_is_complete_and_valid(kind):
    files = render_plugin("foo-bar", kind)
    impl = "algorithm" if kind == "algorithm" else "data"
    assert set(files) == {
        "pyproject.toml", "README.md", ".gitignore", "src/metalab_foo_bar/__init__.py",
        f"src/metalab_foo_bar/{impl}.py", "tests/test_foo_bar.py",
    }
    project = tomllib.loads(files["pyproject.toml"])
    assert project["project"]["name"] == "metalab-foo-bar"
    assert project["project"]["entry-points"]["metalab"] == {"foo_bar": "metalab_foo_bar"}
    for path, text in files.items():
        assert "$" not in text, f"unfilled placeholder in {path}"
        if path.endswith(".py"):
            ast.parse(text, filename=path)
    init = files["src/metalab_foo_bar/__init__.py"]
    assert f'METALAB_PLUGIN_API = "{PLUGIN_API_VERSION}"' in init
    assert 'id="metalab_foo_bar.foo_bar"' in init
    # Registration stays free of deep-learning imports; the implementation is imported inside the factory.
    top_level = [node for node in ast.parse(init).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not any("keras" in ast.dump(node) or "tensorflow" in ast.dump(node) for node in top_level)
    assert "from metalab.api import testing" in files["tests/test_foo_bar.py"]
    # The spec names its implementation as a string, so registration needs no shim importing it.
    assert f'factory="metalab_foo_bar.{impl}:' in init and "def _make" not in init
    # Like the built-ins, the package is written against the public API only.
    for path, text in files.items():
        if path.endswith(".py"):
            imported = {node.module for node in ast.walk(ast.parse(text))
                        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("metalab")}
            assert all(m == "metalab.api" or m.startswith("metalab.api.") for m in imported), (path, imported)


def test_the_generated_algorithm_derives_from_the_api_base_class():
    implementation = render_plugin("foo", "algorithm")["src/metalab_foo/algorithm.py"]
    assert "from metalab.api.algorithms import MetaAlgorithm" in implementation
    assert "class Foo(MetaAlgorithm):" in implementation
    # What the base class gives is not written again.
    for repeated in ("def trainable_variables", "def variables", "def make_optimizer", "task.kind !="):
        assert repeated not in implementation


@pytest.mark.parametrize("kind", KINDS)
def test_the_readme_says_to_install_the_test_extra_with_pytest(kind):
    files = render_plugin("foo", kind)
    project = tomllib.loads(files["pyproject.toml"])
    assert any(requirement.startswith("pytest") for requirement in project["project"]["optional-dependencies"]["test"])
    assert 'pip install -e ".[test]"' in files["README.md"] and "pytest" in files["README.md"]
    assert "pip install -e .[test]" in files["tests/test_foo.py"]


def test_templates_are_files_shipped_as_package_data():
    import fnmatch
    from pathlib import Path

    from metalab.core.authoring.scaffold import TEMPLATES, template_text

    root = Path(__file__).resolve().parents[2]
    folder = root / "core" / "authoring" / "templates"
    on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    used = sorted({source for files in TEMPLATES.values() for sources in files.values() for source in sources})
    assert on_disk == used  # every template is used, every used template exists
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "metalab.core.authoring"]
    for name in on_disk:
        assert any(fnmatch.fnmatch(f"templates/{name}", pattern) for pattern in globs), f"{name} would not install"
        assert template_text(name) == (folder / name).read_text(encoding="utf-8")


def _declared_api(text: str) -> str:
    import re

    match = re.search(r'^METALAB_PLUGIN_API = "(\d+\.\d+)"', text, re.MULTILINE)
    assert match, "no METALAB_PLUGIN_API declaration"
    return match.group(1)


@pytest.mark.parametrize("kind", KINDS)
def test_the_template_targets_the_current_plugin_api(kind):
    assert _declared_api(render_plugin("foo", kind)["src/metalab_foo/__init__.py"]) == PLUGIN_API_VERSION


def test_the_docs_example_targets_the_current_plugin_api():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = docs.split("## How metalab finds a plugin", 1)[1].split("\n## ", 1)[0]
    assert _declared_api(section) == PLUGIN_API_VERSION


def test_existing_folder_is_never_overwritten(tmp_path):
    root = new_plugin("foo", dest=tmp_path)
    (root / "README.md").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        new_plugin("foo", kind="dataset", dest=tmp_path)
    assert (root / "README.md").read_text() == "mine"


def test_cli_reports_errors_without_a_traceback(tmp_path):
    result = CliRunner().invoke(app, ["new-plugin", "Bad Name", "--dest", str(tmp_path)])
    # Rich wraps long lines; compare the words.
    assert result.exit_code == 2 and "Received: name='Bad Name'" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def forget_generated_modules():
    yield
    for module in [m for m in sys.modules if m.startswith(("metalab_scaffold", "_generated_tests_"))]:
        del sys.modules[module]


def _load_tests(path):
    spec = importlib.util.spec_from_file_location(f"_generated_tests_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_plugins_install_list_and_train(tmp_path, monkeypatch, forget_generated_modules):
    packages = {}
    for name, kind in (("scaffold-algo", "algorithm"), ("scaffold-data", "dataset")):
        result = CliRunner().invoke(app, ["new-plugin", name, "--kind", kind, "--dest", str(tmp_path / "src")])
        assert result.exit_code == 0, result.output
        packages[kind] = tmp_path / "src" / f"metalab-{name}"

    # A real (non-editable) pip install builds each wheel from its pyproject. It goes into a folder of its own put
    # on sys.path, not into the shared environment, so a test killed half-way leaves nothing installed behind.
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), *map(str, packages.values())],
        check=True, capture_output=True, text=True,
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("METALAB_DISABLE_PLUGINS", raising=False)

    registry = make_plugin_manager(strict=False)
    records = {r.package: r for r in registry.plugins if r.package in ("metalab-scaffold-algo", "metalab-scaffold-data")}
    assert {p: (r.status, r.version, r.api_version) for p, r in records.items()} == {
        "metalab-scaffold-algo": ("loaded", "0.1.0", PLUGIN_API_VERSION),
        "metalab-scaffold-data": ("loaded", "0.1.0", PLUGIN_API_VERSION),
    }
    listed = {row["id"]: row for row in registry.describe() if row["id"]}
    assert listed["metalab_scaffold_algo.scaffold_algo"]["kind"] == "algorithm"
    assert listed["metalab_scaffold_data.scaffold_data"]["kind"] == "dataset"

    # The packages' own tests, as generated: the conformance check trains the algorithm and a run on the dataset.
    algorithm_tests = _load_tests(packages["algorithm"] / "tests" / "test_scaffold_algo.py")
    algorithm_tests.test_learns(algorithm_tests.make_registry(), tmp_path / "learns")
    dataset_tests = _load_tests(packages["dataset"] / "tests" / "test_scaffold_data.py")
    dataset_tests.test_splits_have_disjoint_classes_and_the_declared_shape()
    dataset_tests.test_an_algorithm_learns_on_it(tmp_path / "dataset_run")

"""The layers stay apart: core never imports streamlit; the dashboard never imports TensorFlow or Keras; plugins
and examples import only metalab's public API (``metalab.api``)."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imported_modules(folder: Path) -> dict[str, set[str]]:
    found = {}
    for path in folder.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(REPO))] = names
    return found


def test_core_never_imports_streamlit():
    offenders = {p: n for p, n in _imported_modules(REPO / "core").items() if any(m.split(".")[0] == "streamlit" for m in n)}
    assert offenders == {}


def test_core_never_imports_builtin_plugins_by_name():
    offenders = {p: n for p, n in _imported_modules(REPO / "core").items() if any(m.startswith("metalab.plugins") for m in n)}
    assert offenders == {}


def test_dashboard_never_imports_tensorflow_or_keras_even_transitively():
    code = (
        "import sys, runpy\n"
        "import metalab.dashboard.app, metalab.dashboard.pages\n"
        "from metalab.core.services import Services\n"
        "Services().plugins()\n"
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"dashboard process imported: {out.stdout.strip()}"


def test_cli_help_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from metalab.core.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _metalab_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "metalab")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "metalab":
            found.add(node.module)
    return found


def test_plugins_and_examples_import_only_the_public_api():
    """Built-in plugins, the example plugin and the third-party test plugins are written against ``metalab.api``
    alone, so core can be refactored without breaking any of them."""
    folders = [REPO / "plugins", REPO / "examples", REPO / "tests" / "thirdparty" / "metalab-testplugins" / "src"]
    offenders = {}
    for folder in folders:
        for path in folder.rglob("*.py"):
            if path.parts[-2] == "tests" and folder.name == "examples":
                continue  # an example's own tests may reach further (they test it as a user would)
            bad = {m for m in _metalab_imports(path) if not (m == "metalab.api" or m.startswith("metalab.api."))}
            # A built-in plugin's own modules are its business.
            bad = {m for m in bad if not m.startswith("metalab.plugins.")}
            if bad:
                offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert offenders == {}


def test_api_names_nothing_it_does_not_define():
    """Every name in ``metalab.api``'s ``__all__`` (and its submodules') exists, so ``from metalab.api import *``
    and the docs' names hold."""
    code = (
        "import importlib\n"
        "for name in ['metalab.api', 'metalab.api.functional', 'metalab.api.layers', 'metalab.api.episodic',\n"
        "             'metalab.api.data', 'metalab.api.testing']:\n"
        "    module = importlib.import_module(name)\n"
        "    missing = [n for n in module.__all__ if not hasattr(module, n)]\n"
        "    assert not missing, (name, missing)\n"
        "import sys\n"
        "print('metalab.core.api' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"

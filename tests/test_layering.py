"""The layers stay apart: core never imports streamlit; the dashboard never imports TensorFlow or Keras."""

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

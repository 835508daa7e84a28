"""The layers stay apart: core never imports streamlit; the dashboard never imports TensorFlow or Keras; plugins
and examples import only metalab's public API (``metalab.api``)."""

import ast
import re
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
        "             'metalab.api.data', 'metalab.api.testing', 'metalab.api.algorithms']:\n"
        "    module = importlib.import_module(name)\n"
        "    missing = [n for n in module.__all__ if not hasattr(module, n)]\n"
        "    assert not missing, (name, missing)\n"
        "import sys\n"
        "print('metalab.core.api' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _core_module_name(path: Path) -> str:
    """The import name of a file under ``core/``: ``core/api`` is installed as ``metalab.api``, the rest as
    ``metalab.core``."""
    parts = list(path.relative_to(REPO / "core").with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[:1] == ["api"]:
        return ".".join(["metalab", *parts])
    return ".".join(["metalab", "core", *parts])


def _under_type_checking(tree: ast.AST) -> set[int]:
    """Ids of the import nodes inside ``if TYPE_CHECKING:`` blocks (never run, so never part of a cycle)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return skipped


def _core_import_graph() -> dict[str, set[str]]:
    """Which core modules each core module imports, at module level and inside functions alike."""
    files = {_core_module_name(path): path for path in (REPO / "core").rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        skipped = _under_type_checking(tree)
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from package import module` imports the module; `from module import name` the module only.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or ``None`` when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_cycle_finder_finds_a_cycle_and_passes_a_tree():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_core_has_no_import_cycles():
    """No core module imports (at module level or inside a function) one that imports it back, however far round:
    the layers of docs/ARCHITECTURE.md hold only if their modules form a tree."""
    graph = _core_import_graph()
    # The graph is real: the loop imports the evaluation, which imports the session, which imports the contract.
    assert "metalab.core.engine.evaluation" in graph["metalab.core.engine.runner"]
    assert "metalab.core.engine.session" in graph["metalab.core.engine.evaluation"]
    assert "metalab.core.contract.specs" in graph["metalab.api"]
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle in core: " + " -> ".join(cycle)


#: Where core and the dashboard may still name a built-in plugin, and why (each entry must still be needed).
_BUILTIN_IDS_ALLOWED = {
    # The pair the Train form opens on: the app's choice of a first run (it falls back to the first loaded).
    "dashboard/train.py": {"metalab.sinusoid", "metalab.maml"},
    # The upload flow reads an uploaded folder through the image-folder dataset and proposes a metric learner;
    # Browse opens on the embedded digits.
    "dashboard/datasets.py": {"metalab.imagefolder", "metalab.protonet", "metalab.digits"},
}


def _builtin_ids(registry) -> set[str]:
    """Every id the built-in plugins register: from their loaded specs, and from ``id="metalab.*"`` in their source
    (so a built-in that failed to load still counts)."""
    ids = set(registry.algorithms) | set(registry.datasets) | set(registry.backbones)
    for path in (REPO / "plugins").rglob("*.py"):
        ids |= set(re.findall(r"""\bid\s*=\s*["'](metalab\.[a-z0-9_]+)["']""", path.read_text(encoding="utf-8")))
    return {i for i in ids if i.startswith("metalab.")}


def test_core_names_no_builtin_plugin(builtin_registry):
    """Built-in plugins carry their own knowledge (published results, batch-norm modes, memory models, presets,
    tiny tasks) in their specs, so core and the dashboard read it through the registry and name none of them."""
    ids = _builtin_ids(builtin_registry)
    assert {"metalab.maml", "metalab.omniglot", "metalab.conv4"} <= ids and len(ids) > 20
    pattern = re.compile(r"(?<![\w.])(" + "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True))
                         + r")(?!\w)")
    hits: dict[str, set[str]] = {}
    lines: list[str] = []
    for folder in ("core", "dashboard"):
        for path in sorted((REPO / folder).rglob("*.py")):
            name = str(path.relative_to(REPO))
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                for found in pattern.findall(line):
                    hits.setdefault(name, set()).add(found)
                    if found not in _BUILTIN_IDS_ALLOWED.get(name, set()):
                        lines.append(f"{name}:{number}: {found}: {line.strip()}")
    assert not lines, "core or the dashboard names built-in plugins:\n" + "\n".join(lines)
    stale = {name: allowed - hits.get(name, set()) for name, allowed in _BUILTIN_IDS_ALLOWED.items()
             if allowed - hits.get(name, set())}
    assert not stale, f"allowed ids no longer named there (drop them from _BUILTIN_IDS_ALLOWED): {stale}"

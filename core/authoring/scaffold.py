"""Writes a new, ready-to-install metalab plugin package (``metalab new-plugin NAME``).

The package holds a ``pyproject.toml`` declaring the plugin in the ``metalab`` entry-point group, a registration
module with one spec, the spec's implementation (imported lazily), a test that runs metalab's conformance suite
and a README. It installs with ``pip install -e "metalab-NAME[test]"`` and its tests pass as generated. The files
are rendered from the templates in ``templates/`` (package data), with ``string.Template`` placeholders.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from metalab.core.contract.specs import PLUGIN_API_VERSION

__all__ = ["KINDS", "TEMPLATES", "PluginNames", "plugin_names", "render_plugin", "new_plugin", "template_text"]

#: The kinds of plugin the scaffold can write.
KINDS = ("algorithm", "dataset")

#: Per kind, each file of the package (its path, with placeholders) and the template it is rendered from, relative
#: to ``templates/``. A README is the common part followed by the kind's own.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "algorithm": {
        "pyproject.toml": ("common/pyproject.toml.tmpl",),
        ".gitignore": ("common/gitignore.tmpl",),
        "README.md": ("common/README.md.tmpl", "algorithm/README.md.tmpl"),
        "src/$module/__init__.py": ("algorithm/__init__.py.tmpl",),
        "src/$module/algorithm.py": ("algorithm/algorithm.py.tmpl",),
        "tests/test_$name.py": ("algorithm/test.py.tmpl",),
    },
    "dataset": {
        "pyproject.toml": ("common/pyproject.toml.tmpl",),
        ".gitignore": ("common/gitignore.tmpl",),
        "README.md": ("common/README.md.tmpl", "dataset/README.md.tmpl"),
        "src/$module/__init__.py": ("dataset/__init__.py.tmpl",),
        "src/$module/data.py": ("dataset/data.py.tmpl",),
        "tests/test_$name.py": ("dataset/test.py.tmpl",),
    },
}

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


@dataclass(frozen=True)
class PluginNames:
    """Every name derived from the short name a user gives.

    Attributes:
        name: The short name with ``-`` as ``_`` (``"my_algo"``); also the entry-point and spec name.
        distribution: The pip distribution and folder name (``"metalab-my-algo"``).
        module: The import package (``"metalab_my_algo"``), which is also the plugin's namespace.
        spec_id: ``<namespace>.<name>`` (``"metalab_my_algo.my_algo"``).
        class_name: The implementation's class name (``"MyAlgo"``).
        title: A human title for the spec (``"My Algo"``).
    """

    name: str
    distribution: str
    module: str
    spec_id: str
    class_name: str
    title: str


def plugin_names(name: str) -> PluginNames:
    """Derives the distribution, module, namespace and spec id from a short plugin name.

    Args:
        name: Lowercase letters and digits, words joined by ``-`` or ``_``, starting with a letter (``"myalgo"``,
            ``"my-algo"``). A leading ``metalab-`` or ``metalab_`` is dropped, so ``metalab-myalgo`` works too.

    Returns:
        The :class:`PluginNames`.

    Raises:
        ValueError: If the name is not of that form.
    """
    short = name.strip()
    for prefix in ("metalab-", "metalab_"):
        if short.startswith(prefix):
            short = short[len(prefix):]
    if not _NAME_RE.match(short):
        raise ValueError(
            "A plugin name is lowercase letters and digits, words joined by '-' or '_', starting with a letter "
            f"(e.g. 'myalgo' or 'my-algo'). Received: name={name!r}"
        )
    words = re.split(r"[-_]", short)
    snake = "_".join(words)
    module = f"metalab_{snake}"
    return PluginNames(
        name=snake,
        distribution=f"metalab-{'-'.join(words)}",
        module=module,
        spec_id=f"{module}.{snake}",
        class_name="".join(word.capitalize() for word in words),
        title=" ".join(word.capitalize() for word in words),
    )


def template_text(relative: str) -> str:
    """The text of one template, ``relative`` to ``templates/`` (read from the installed package's data)."""
    return resources.files("metalab.core.authoring").joinpath("templates", *relative.split("/")).read_text("utf-8")


def render_plugin(name: str, kind: str = "algorithm") -> dict[str, str]:
    """Returns the files of a new plugin package as ``{relative path: text}``, without writing anything.

    Args:
        name: The short plugin name (see :func:`plugin_names`).
        kind: ``"algorithm"`` (a first-order MAML to build on) or ``"dataset"`` (a procedurally generated
            few-shot image dataset).

    Returns:
        Paths relative to the package folder ``metalab-NAME/``, with their contents. The plugin declares the
        plugin API version of this metalab (:data:`~metalab.core.contract.specs.PLUGIN_API_VERSION`).

    Raises:
        ValueError: If ``name`` or ``kind`` is invalid.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}. Received: kind={kind!r}")
    names = plugin_names(name)
    values = {
        "name": names.name,
        "distribution": names.distribution,
        "module": names.module,
        "spec_id": names.spec_id,
        "cls": names.class_name,
        "title": names.title,
        "api": PLUGIN_API_VERSION,
        "kind": kind,
        "impl": "algorithm" if kind == "algorithm" else "data",
    }
    rendered = {}
    for path, sources in TEMPLATES[kind].items():
        text = "".join(template_text(source) for source in sources)
        rendered[string.Template(path).substitute(values)] = string.Template(text).substitute(values)
    return rendered


def new_plugin(name: str, *, kind: str = "algorithm", dest: str | Path = ".") -> Path:
    """Writes a new plugin package ``metalab-NAME/`` under ``dest``.

    Args:
        name: The short plugin name (see :func:`plugin_names`).
        kind: ``"algorithm"`` or ``"dataset"``.
        dest: The folder to create the package folder in (created if missing).

    Returns:
        The path of the new package folder.

    Raises:
        ValueError: If ``name`` or ``kind`` is invalid.
        FileExistsError: If the package folder already exists (nothing is overwritten).
    """
    files = render_plugin(name, kind)
    root = Path(dest) / plugin_names(name).distribution
    if root.exists():
        raise FileExistsError(
            f"{root} already exists; choose another name or --dest, or remove it. Received: dest={str(dest)!r}"
        )
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root

"""The hookspecs are a versioned contract: every hook is documented and tested (a new hook without both fails)."""

from __future__ import annotations

import inspect
import io
import tokenize
from pathlib import Path

import pytest

from metalab.core.contract import hookspecs

TESTS_DIR = Path(__file__).resolve().parents[1]
PROJECT = "metalab"


def _hookspec_names() -> list[str]:
    # pluggy marks a hookspec function with the attribute "<project>_spec".
    return sorted(
        name
        for name, obj in vars(hookspecs).items()
        if inspect.isfunction(obj) and hasattr(obj, f"{PROJECT}_spec")
    )


def _names_used_in(path: Path) -> set[str]:
    """Identifiers and words inside string literals of a Python file; comments do not count as a test."""
    found: set[str] = set()
    source = path.read_text(encoding="utf-8")
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return found
    for token in tokens:
        if token.type == tokenize.NAME:
            found.add(token.string)
        elif token.type == tokenize.STRING or token.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            found.update(part for part in _split_words(token.string))
    return found


def _split_words(text: str) -> list[str]:
    word, words = [], []
    for char in text:
        if char.isalnum() or char == "_":
            word.append(char)
        elif word:
            words.append("".join(word))
            word = []
    if word:
        words.append("".join(word))
    return words


HOOKS = _hookspec_names()


def test_hookspecs_module_declares_hooks():
    assert "metalab_register_algorithms" in HOOKS
    # Every public function of the module is a hookspec: a forgotten @hookspec would go unnoticed otherwise.
    public = sorted(n for n, o in vars(hookspecs).items() if inspect.isfunction(o) and not n.startswith("_"))
    assert public == HOOKS


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_named_by_convention(name):
    assert name.startswith(f"{PROJECT}_") and name.count("_") >= 2, f"hooks are metalab_<verb>_<noun>: {name}"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert doc.strip(), f"hook {name} has no docstring"
    assert "Returns" in doc, f"hook {name}'s docstring must say what it returns (a 'Returns' section)"
    assert "Since" in doc, f"hook {name}'s docstring must say since which plugin API version it exists ('Since:')"


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_tested(name):
    this_file = Path(__file__).resolve()
    users = [
        path
        for path in sorted(TESTS_DIR.rglob("*.py"))
        if (path.name.startswith("test_") or path.name == "conftest.py")
        and path.resolve() != this_file
        and name in _names_used_in(path)
    ]
    assert users, f"hook {name} appears in no test file under {TESTS_DIR}: add a test that exercises it"

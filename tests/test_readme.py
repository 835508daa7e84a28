"""The README's first screen is checked against the code: the first five minutes, the Python it needs, the
TensorFlow it installs, and the two commands."""

from __future__ import annotations

import csv
import inspect
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
DASHBOARD = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/metalab dashboard"


def _sections() -> list[str]:
    return re.findall(r"^## (.+)$", README, re.MULTILINE)


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_opens_with_the_first_five_minutes():
    assert _sections()[0] == "Your first five minutes"
    first = _section("Your first five minutes")
    assert f"`{DASHBOARD}`" in first
    from metalab.core.cli import dashboard

    port = inspect.signature(dashboard).parameters["port"].default.default
    assert f"http://127.0.0.1:{port}" in first
    for step in ("**Train**", "**Launch**", "**report**"):
        assert step in first


def test_the_readme_states_the_python_the_package_requires():
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    assert requires == ">=3.11"
    assert "Python ≥ 3.11" in _section("Your first five minutes")


def test_the_tensorflow_size_the_readme_states_is_the_installed_one():
    try:
        dist = metadata.distribution("tensorflow-cpu")
    except metadata.PackageNotFoundError:
        pytest.skip("tensorflow-cpu is not installed here (another TensorFlow build is)")
    record = dist.read_text("RECORD") or ""
    installed_mb = sum(int(row[2]) for row in csv.reader(record.splitlines()) if len(row) > 2 and row[2]) / 1e6
    stated = re.search(r"`tensorflow-cpu`\s+([\d.]+)\s+is\s+about\s+([\d,]+)\s+MB\s+installed",
                       _section("Your first five minutes"))
    assert stated, "the first five minutes must state the installed size of tensorflow-cpu"
    assert dist.version.startswith(stated.group(1))
    assert abs(int(stated.group(2).replace(",", "")) - installed_mb) <= 0.1 * installed_mb, installed_mb


def test_the_two_commands_are_kept():
    blocks = re.findall(r"```bash\n(.+?)\n```", _section("The two commands"), re.DOTALL)
    assert blocks[0] == DASHBOARD
    assert blocks[1].startswith('python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]"')
    # Both stages: the unit suite, then the end-to-end tests across real processes.
    assert blocks[1].endswith("&& .venv/bin/python -m pytest && .venv/bin/python -m pytest -m integration")
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert blocks[1] in ci.splitlines()

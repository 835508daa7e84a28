"""metalab.api: the plugin authors' one import (cheap to import, complete, with a pytest fixture for their tests)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_importing_the_api_loads_no_deep_learning_framework():
    code = (
        "import sys, metalab.api, metalab.api.data, metalab.api.testing\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_api_is_the_contract_core_uses():
    # One set of classes: a spec made from metalab.api is the spec core checks (no second copy of the module).
    import metalab.api as api
    from metalab.core.contract import specs

    assert api.AlgorithmSpec is specs.AlgorithmSpec and api.hookimpl is specs.hookimpl
    assert set(specs.__all__) <= set(api.__all__)


def test_default_context_reads_the_settings(monkeypatch, tmp_path):
    from metalab.api.data import default_context

    monkeypatch.setenv("METALAB_DATA_DIR", str(tmp_path))
    assert default_context().data_dir == str(tmp_path)


def test_conformance_fixture_reaches_a_plugin_authors_tests(tmp_path):
    """A plugin author's test module asks for ``metalab_registry`` (metalab's pytest11 entry point provides it)
    and gets the built-ins of the distributions it names."""
    (tmp_path / "test_author.py").write_text(textwrap.dedent('''
        METALAB_DISTRIBUTIONS = ("metalab",)

        def test_registry_has_the_builtins(metalab_registry):
            assert metalab_registry.dataset("metalab.digits").kind == "classification"
            assert all(row["package"] == "metalab" for row in metalab_registry.describe() if row["id"])
    '''))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 passed" in out.stdout

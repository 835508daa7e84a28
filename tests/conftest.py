"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from metalab.core.engine.devices import configure_cpu_kernels

# The kernels metalab's own processes compute with (oneDNN on every x86-64 CPU), chosen before any test loads
# TensorFlow: results checked here are those a run gets, on AVX2-only hosts too.
configure_cpu_kernels()

from metalab.core.contract.manager import PluginRegistry, make_plugin_manager  # noqa: E402
from metalab.core.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def builtin_registry() -> PluginRegistry:
    """A fresh registry of the built-in plugins only, whatever else is installed or disabled in the shell."""
    return make_plugin_manager(distributions={"metalab"}, settings=load_settings(disable_plugins=""), strict=False)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared data folder beside the repository (``<repo>/../shared/data``); skips when it is absent."""
    path = (REPO_ROOT.parent / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"Shared data folder not found (expected {path}, beside the repository).")
    return path


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory) -> Path:
    """One decoded-Omniglot cache per test process: the zips are decoded once, and the tests that load Omniglot
    (the loader's, the benchmarks') reload the arrays."""
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.fixture
def float64():
    """Runs a test with Keras in float64 (gradient checks); Keras caches the global dtype policy on first use, so
    floatx and the policy are set together, and both restored."""
    import keras

    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)


class LoopbackHTTP:
    """A small HTTP server on 127.0.0.1 for download tests (no network): serves bytes, redirects, records paths."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.routes: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # a stuck client never holds the thread for long

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.requests.append(self.path)
                status, body, headers = owner.routes.get(self.path, (404, b"not found", {}))
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def serve(self, path: str, body: bytes) -> str:
        """Serves ``body`` at ``path``; returns its URL."""
        self.routes[path] = (200, body, {"Content-Type": "application/octet-stream"})
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        """Answers ``path`` with a redirect to ``location``; returns the URL of ``path``."""
        self.routes[path] = (status, b"", {"Location": location})
        return self.url(path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def http_server():
    """A :class:`LoopbackHTTP` server for the test, shut down afterwards."""
    server = LoopbackHTTP()
    yield server
    server.close()

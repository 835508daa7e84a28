"""Helpers for browser tests of the dashboard's team mode: a local OIDC provider, the ``[auth]`` secrets that
point Streamlit at it, and the sign-in click-through in Playwright.

Typical use, with the app started as ``streamlit run APP --server.address 127.0.0.1 --server.port PORT
--secrets.files SECRETS``::

    with start_oidc_provider(tmp_path, ["alice@example.org"]) as provider:
        secrets = write_auth_secrets(tmp_path, provider, port)
        ...  # start streamlit with --secrets.files <secrets>, wait for /_stcore/health
        login_in_browser(page, f"http://127.0.0.1:{port}", "alice@example.org")

Streamlit's auth needs ``Authlib>=1.3.2`` and ``httpx`` in the app's environment (``pip install streamlit[auth]``).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PROVIDER_SCRIPT = Path(__file__).with_name("oidc_provider.py")
# Streamlit's signed identity cookie (and its chunks, ``_streamlit_user_1`` ...); present once signed in.
USER_COOKIE = "_streamlit_user"


class Provider:
    """A running ``oidc_provider.py`` process; ``stop()`` (or leaving the ``with`` block) ends it.

    Attributes:
        base_url: ``http://127.0.0.1:<port>``, also the issuer.
        client_id, client_secret: the one client the provider knows.
        users: the e-mail addresses offered on its sign-in page.
        log_path: the provider's stderr (request lines; no codes or tokens).
    """

    def __init__(self, process: subprocess.Popen[bytes], base_url: str, client_id: str, client_secret: str,
                 users: tuple[str, ...], log_path: Path) -> None:
        self.process, self.base_url = process, base_url
        self.client_id, self.client_secret, self.users, self.log_path = client_id, client_secret, users, log_path

    @property
    def server_metadata_url(self) -> str:
        return f"{self.base_url}/.well-known/openid-configuration"

    def stop(self, timeout: float = 10.0) -> None:
        """Sends SIGTERM and waits (the provider exits within about 0.3 s); kills it if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def start_oidc_provider(tmp_path: Path, users: Iterable[str], *, client_id: str = "metalab-test",
                        client_secret: str | None = None, redirect_uris: Iterable[str] = (),
                        timeout: float = 20.0) -> Provider:
    """Starts the test OIDC provider on a free loopback port and returns once it is listening.

    Args:
        tmp_path: a folder for its ready file and log (``oidc-provider.log``).
        users: e-mail addresses that may sign in (one button each on its page; written in lower case).
        client_id: the client id it accepts.
        client_secret: the client secret it accepts; a random one when not given.
        redirect_uris: registered redirect URIs; when empty it accepts any ``http`` loopback URL.
        timeout: seconds to wait for it to listen.

    Returns:
        A `Provider`; use it as a context manager or call ``stop()``.

    Raises:
        RuntimeError: the process exited or did not listen in time (its log is in the message).

    The provider itself has nothing to do with how Streamlit finds its secrets: see `write_auth_secrets`.
    """
    users = tuple(users)
    if not users:
        raise ValueError(f"Expected at least one user e-mail address. Received: users={users!r}")
    tmp_path = Path(tmp_path).resolve()
    tmp_path.mkdir(parents=True, exist_ok=True)
    client_secret = client_secret or secrets.token_urlsafe(24)
    ready = tmp_path / f"oidc-ready-{secrets.token_hex(4)}"
    log_path = tmp_path / "oidc-provider.log"
    # name=value: a random secret may begin with "-", which argparse would take for an option (it failed 1 in 64).
    command = [sys.executable, str(PROVIDER_SCRIPT), "--port=0", f"--users={','.join(users)}",
               f"--client-id={client_id}", f"--client-secret={client_secret}", f"--ready-file={ready}"]
    for uri in redirect_uris:
        command.append(f"--redirect-uri={uri}")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.kill()
                process.wait()
            raise RuntimeError(f"The OIDC provider did not start within {timeout} s (exit code "
                               f"{process.returncode}). Its log:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    return Provider(process, ready.read_text().strip(), client_id, client_secret, users, log_path)


def _toml_string(value: str) -> str:
    # A JSON string of printable ASCII is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=True)


def write_auth_secrets(folder: Path, provider: Provider, app_port: int | None, *, cookie_secret: str | None = None,
                       app_host: str = "127.0.0.1") -> Path:
    """Writes ``<folder>/secrets.toml`` with an ``[auth]`` section for `provider` and returns its path.

    Args:
        folder: where to write it (created if missing).
        provider: the running provider (`start_oidc_provider`).
        app_port: the Streamlit server's port; ``None`` writes ``{port}``, which Streamlit replaces with its own
            ``server.port`` when it reads the file.
        cookie_secret: signs Streamlit's identity cookie; a random one when not given.
        app_host: the host the browser uses for the app. It must be exactly the host of the app URL the browser
            opens (``127.0.0.1`` and ``localhost`` are different sites): the login state rides in a cookie of
            that host, and Streamlit compares the identity cookie's origin with the WebSocket's ``Origin``.

    Returns:
        The path of the secrets file.

    How Streamlit reads it: pass ``--secrets.files <path>`` to ``streamlit run`` (config option ``secrets.files``;
    environment variable ``STREAMLIT_SECRETS_FILES=<path>``, a whitespace-separated list, so the path must not
    contain spaces). Either replaces the default search list, which is ``~/.streamlit/secrets.toml``, then
    ``./.streamlit/secrets.toml`` in the working directory, then ``.streamlit/secrets.toml`` beside the main
    script (later files override earlier ones). Streamlit reads secrets once, lazily, so write the file before
    starting the server. An ``[auth]`` section also turns Streamlit's CORS and XSRF protection on.
    """
    # Absolute, because the server usually runs in another working directory.
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    port = "{port}" if app_port is None else str(int(app_port))
    values = {
        "redirect_uri": f"http://{app_host}:{port}/oauth2callback",
        "cookie_secret": cookie_secret or secrets.token_urlsafe(32),
        "client_id": provider.client_id,
        "client_secret": provider.client_secret,
        "server_metadata_url": provider.server_metadata_url,
    }
    path = folder / "secrets.toml"
    path.write_text("[auth]\n" + "".join(f"{key} = {_toml_string(value)}\n" for key, value in values.items()))
    return path


def login_in_browser(page: Any, app_url: str, email: str, *, login_label: str = "Log in",
                     expect_text: str | None = None, timeout_ms: float = 30_000) -> None:
    """Signs `email` in through the real ``st.login`` flow in a Playwright page and waits until signed in.

    Opens `app_url`, clicks the button labelled `login_label` (whose callback calls ``st.login()``), picks
    `email` on the provider's page, follows the redirect back through ``/oauth2callback``, and waits until
    Streamlit's identity cookie is set and `expect_text` (default: `email`; ``""`` to skip) shows in the app.

    Args:
        page: a Playwright ``Page`` (sync API).
        app_url: the app's base URL, on the host named in ``redirect_uri`` (see `write_auth_secrets`).
        email: one of the provider's users.
        login_label: the accessible name of the app's log-in button.
        expect_text: text the signed-in app shows.
        timeout_ms: the limit for each wait.

    Raises:
        AssertionError: the flow came back without the identity cookie (usually a host mismatch between
            `app_url` and ``redirect_uri``, or the provider refused the client).

    The app's server must read the secrets from `write_auth_secrets` (``--secrets.files <path>`` or
    ``STREAMLIT_SECRETS_FILES``).
    """
    app_origin = "{0.scheme}://{0.netloc}".format(urlsplit(app_url))
    page.goto(app_url)
    page.get_by_role("button", name=login_label).click(timeout=timeout_ms)
    # st.login makes the frontend navigate to /auth/login, which redirects to the provider's /authorize.
    user_button = page.get_by_role("button", name=email, exact=True)
    user_button.wait_for(state="visible", timeout=timeout_ms)
    provider_origin = "{0.scheme}://{0.netloc}".format(urlsplit(page.url))
    user_button.click(timeout=timeout_ms)
    # Back from the provider through /oauth2callback, which always ends in a redirect to the app's base URL.
    page.wait_for_url(lambda url: not url.startswith(provider_origin) and "/oauth2callback" not in url,
                      timeout=timeout_ms)
    names = {cookie["name"] for cookie in page.context.cookies(app_origin)}
    assert page.url.startswith(app_origin) and USER_COOKIE in names, (
        f"Expected to come back signed in to {app_origin} with Streamlit's identity cookie {USER_COOKIE!r} "
        f"(is redirect_uri on the same host as the app URL?). Received: url={page.url}, cookies={sorted(names)}"
    )
    if expect_text is None:
        expect_text = email
    if expect_text:
        page.get_by_text(expect_text).first.wait_for(state="visible", timeout=timeout_ms)


def logout_in_browser(page: Any, *, logout_label: str = "Log out", expect_label: str = "Log in",
                      timeout_ms: float = 30_000) -> None:
    """Clicks the app's button labelled `logout_label` (calling ``st.logout()``) and waits until the
    button `expect_label` shows again and the identity cookie is gone."""
    page.get_by_role("button", name=logout_label).click(timeout=timeout_ms)
    page.get_by_role("button", name=expect_label).wait_for(state="visible", timeout=timeout_ms)
    names = {cookie["name"] for cookie in page.context.cookies()}
    assert USER_COOKIE not in names, (
        f"Expected the identity cookie {USER_COOKIE!r} to be cleared after logging out. "
        f"Received: cookies={sorted(names)}"
    )

"""End to end in a real browser: a shared dashboard (``metalab dashboard --mode demo|team``) refuses crafted
links, keeps each visitor's runs to that visitor, holds its caps, and listens on loopback unless told otherwise.

The server is started the way a user starts it (``python -m metalab.core.cli dashboard``), with METALAB_HOME,
METALAB_DATA_DIR and METALAB_CACHE_DIR in the test's folder. Needs Debian's Chromium and the ``playwright``
package; screenshots go to ``$METALAB_TEST_ARTIFACTS`` (default: a ``screenshots`` folder in the test's folder).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
#: A small run within demo caps; long enough (a few minutes at most on 2 shared cores) to still be active while
#: other sessions look at it, and cancelled by the test.
# Long enough never to finish inside a test: with meta-batch 2 and one inner step the 2,000 steps (demo's cap) once
# ended on an AVX-512 host before the owner's cancel was pressed, and the test waited for a cancel the finished run
# no longer took. 16 tasks of 5 inner steps make each step about 40 times the work; every test that launches the
# run cancels it, or the dashboard's shutdown stops it.
RUN_LINK = ("dataset=metalab.sinusoid&algorithm=metalab.maml&steps=2000&log_every=20&val_every=1000"
            "&checkpoint_every=1000&test_episodes=20&algorithm.meta_batch_size=16&algorithm.inner_steps=5")
HEX64 = re.compile(r"\b[0-9a-fA-F]{64}\b")

from tests.support.processes import end_workers as _end_workers, free_port as _free_port

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]




class Dashboard:
    """A ``metalab dashboard`` process started by a test, its folders and its output."""

    def __init__(self, root: Path, mode: str, env: dict[str, str] | None = None, host: str | None = None,
                 port: int | None = None):
        self.root = root
        self.home, self.data, self.cache = root / "home", root / "data", root / "cache"
        for folder in (self.home, self.data, self.cache):
            folder.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "dashboard.log"
        command = [sys.executable, "-m", "metalab.core.cli", "dashboard", "--mode", mode, "--port", str(self.port)]
        if host is not None:
            command += ["--host", host]
        full_env = dict(os.environ, METALAB_HOME=str(self.home), METALAB_DATA_DIR=str(self.data),
                        METALAB_CACHE_DIR=str(self.cache), METALAB_DASHBOARD_POLL_S="1", COLUMNS="200",
                        STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
                        # Watching the source tree (and .venv) for edits costs CPU the tests need.
                        STREAMLIT_SERVER_FILE_WATCHER_TYPE="none", **(env or {}))
        full_env.pop("METALAB_MODE", None)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(command, cwd=REPO_ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 90.0) -> "Dashboard":
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                pytest.fail(f"metalab dashboard did not start:\n{self.output()}")
            time.sleep(0.3)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def store_rows(self) -> list[dict[str, Any]]:
        path = self.home / "runs.sqlite"
        if not path.exists():
            return []
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
            db.row_factory = sqlite3.Row
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "runs" not in tables:
                return []
            return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY created")]

    def files(self) -> set[str]:
        """Every file and folder under the dashboard's home, data and cache folders (the run store's own
        files and the dashboard's log aside)."""
        found = set()
        for base in (self.home, self.data, self.cache):
            for path in base.rglob("*"):
                if not path.name.startswith("runs.sqlite"):
                    found.add(str(path))
        return found

    def stop(self) -> None:
        # The workers run in sessions of their own: end the ones this dashboard started (their pids are stored).
        _end_workers([int(r["pid"]) for r in self.store_rows()
                      if r.get("status") in ("queued", "running") and r.get("pid")])
        if self.proc.poll() is None:
            self.proc.terminate()  # the CLI passes SIGTERM on to its Streamlit server
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def dashboard(root: Path, mode: str, env: dict[str, str] | None = None, host: str | None = None) -> Iterator[Dashboard]:
    server = Dashboard(root, mode, env, host)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(os.environ.get("METALAB_TEST_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """One demo dashboard for the module, with the demo mode's default caps (one run per visitor at once)."""
    with dashboard(tmp_path_factory.mktemp("demo"), "demo", {"METALAB_MAX_WORKERS": "2"}) as server:
        yield server


def _page(browser, **kwargs):
    context = browser.new_context(viewport={"width": 1400, "height": 2400}, **kwargs)
    page = context.new_page()
    page.set_default_timeout(60_000)
    return context, page


def _settled(page, wait_ms: int = 800) -> str:
    """The page's visible text once Streamlit has stopped running the script."""
    page.locator("[data-testid='stApp']").wait_for()
    deadline = time.time() + 60
    while time.time() < deadline:
        # Streamlit shows a status widget ("Running...") while the script runs.
        if page.locator("[data-testid='stStatusWidget']").count() == 0:
            break
        page.wait_for_timeout(200)
    page.wait_for_timeout(wait_ms)
    return page.inner_text("body")


def _assert_no_leak(text: str, *folders: Path) -> None:
    assert not HEX64.search(text), f"A 64-hex digest is on the page: {HEX64.search(text).group(0)}"
    for folder in folders:
        assert str(folder) not in text, f"A server folder is on the page: {folder}"
    assert "/tmp/" not in text, "A /tmp/ server path is on the page"
    assert "root:x:0:0" not in text  # /etc/passwd's first line


def _nav(page, label: str) -> None:
    """Opens a page through the sidebar (a client-side switch: the browser session, and its demo identity, stay)."""
    page.locator("[data-testid='stSidebarNav']").get_by_role("link", name=label, exact=True).click()


def _launch_from_train(page, server: Dashboard, name: str) -> str:
    page.goto(f"{server.url}/train?{RUN_LINK}&name={name}")
    page.get_by_text("Valid: MAML on Sinusoid regression").wait_for(timeout=240_000)
    page.get_by_role("button", name="Launch").click()
    page.wait_for_url(re.compile(r".*/report\?run=.+"))
    return page.url.split("run=")[1].split("&")[0]


def _cancel_from_live_view(page, server: Dashboard, run_id: str, timeout: float = 120) -> dict[str, Any]:
    """Presses the live view's "Cancel run" until the store has the request (the live view redraws every
    second, so a click can land on a button being replaced), and returns the run's row."""
    deadline = time.time() + timeout
    button = page.get_by_role("button", name="Cancel run")
    while time.time() < deadline:
        row = next(r for r in server.store_rows() if r["id"] == run_id)
        if row["cancel_requested"] or row["status"] == "cancelled":
            return row
        with contextlib.suppress(Exception):
            button.click(timeout=5000)
        page.wait_for_timeout(1500)
    raise AssertionError(f"Run {run_id} was not cancelled from the live view within {timeout} s")


# -- crafted links ---------------------------------------------------------------------------------------------


def test_attack_links_are_refused_and_leave_nothing_on_disk(demo, browser, shots_dir, tmp_path):
    site_packages = tmp_path / "site-packages"  # stands in for the server's site-packages
    site_packages.mkdir()
    before = demo.files()
    digest = "ab" * 32
    context, page = _page(browser)
    try:
        page.goto(f"{demo.url}/datasets?dataset=metalab.mini_imagenet&dataset.url=file:///etc/passwd"
                  f"&dataset.sha256={digest}&dataset.path={site_packages}")
        page.get_by_role("button", name="Load and summarise").click()
        page.get_by_text("The files of metalab.mini_imagenet are missing").wait_for()
        text = _settled(page, 2000)
        page.screenshot(path=str(shots_dir / "sharing-01-datasets-url-attack.png"), full_page=True)
        assert "mini-ImageNet" in text or "mini_imagenet" in text  # the link did select the dataset
        # It failed for lack of files in the data folder, not by fetching anything.
        assert page.locator("[data-testid='stAlert']").count() >= 1
        _assert_no_leak(text, demo.root, site_packages, REPO_ROOT)
        assert digest not in text
        assert list(site_packages.iterdir()) == []
        assert demo.files() == before, f"new files: {sorted(demo.files() - before)}"

        page.goto(f"{demo.url}/datasets?dataset=metalab.imagefolder&dataset.path=/etc")
        page.get_by_text("Your own images").first.wait_for()  # the link did select the dataset
        page.get_by_role("button", name="Load and summarise").click()
        page.get_by_text("The files of metalab.imagefolder are missing").wait_for()
        text = _settled(page, 2000)
        page.screenshot(path=str(shots_dir / "sharing-02-datasets-path-attack.png"), full_page=True)
        etc_names = [n for n in os.listdir("/etc") if len(n) >= 6 and "." in n or n in ("passwd", "hostname")]
        assert not [n for n in etc_names if n in text], "names from /etc are on the page"
        assert "/etc" not in text
        _assert_no_leak(text, demo.root, REPO_ROOT)
        assert demo.files() == before, f"new files: {sorted(demo.files() - before)}"

        page.goto(f"{demo.url}/train?dataset=metalab.imagefolder&dataset.path=/etc&steps=10000000")
        # The first Train page waits for the device list (a worker's TensorFlow import).
        page.get_by_role("button", name="Launch").wait_for(timeout=240_000)
        text = _settled(page, 1500)
        page.screenshot(path=str(shots_dir / "sharing-03-train-path-attack.png"), full_page=True)
        assert "Link parameter ignored: dataset.path" in text
        assert "at most 2,000 steps per run here (METALAB_MAX_STEPS)" in text
        assert "/etc" not in text
        assert not any(v == "/etc" for v in page.locator("input").evaluate_all("els => els.map(e => e.value)"))
        _assert_no_leak(text, demo.root, REPO_ROOT)
        if page.get_by_role("button", name="Launch").is_enabled():
            page.get_by_role("button", name="Launch").click()
            _settled(page, 1500)
        assert "/report" not in page.url
        assert demo.store_rows() == []

        # Steps over the cap, on a dataset that needs no files: the cap is named and Launch makes no run.
        page.goto(f"{demo.url}/train?dataset=metalab.sinusoid&algorithm=metalab.maml&steps=10000000")
        page.get_by_text("METALAB_MAX_STEPS").first.wait_for(timeout=240_000)
        text = _settled(page, 1000)
        page.screenshot(path=str(shots_dir / "sharing-04-train-steps-cap.png"), full_page=True)
        assert "at most 2,000 steps per run" in text
        launch = page.get_by_role("button", name="Launch")
        assert launch.is_disabled()
        launch.click(force=True)
        page.wait_for_timeout(1500)
        assert "/report" not in page.url
        assert demo.store_rows() == []
        assert list(site_packages.iterdir()) == []
        assert demo.files() == before, f"new files: {sorted(demo.files() - before)}"
    finally:
        context.close()


# -- one visitor's runs are that visitor's ----------------------------------------------------------------------


def test_a_visitor_cannot_touch_another_visitors_run_and_caps_hold(demo, browser, shots_dir):
    ctx_a, a = _page(browser)
    ctx_b, b = _page(browser)
    try:
        run_id = _launch_from_train(a, demo, "alice-demo")
        a.get_by_role("button", name="Cancel run").wait_for()  # the owner may cancel
        rows = demo.store_rows()
        assert [r["id"] for r in rows] == [run_id]
        owner = rows[0]["owner"]
        assert owner.startswith("session:")
        a.screenshot(path=str(shots_dir / "sharing-05-owner-live.png"), full_page=True)

        # A second launch by the same session is over max_runs_per_owner (1 in demo).
        _nav(a, "Train")
        a.get_by_role("button", name="Launch").click()
        a.get_by_text("METALAB_MAX_RUNS_PER_OWNER").first.wait_for()
        assert "at most 1 at once" in a.inner_text("body")
        a.screenshot(path=str(shots_dir / "sharing-06-runs-per-owner-cap.png"), full_page=True)
        assert len(demo.store_rows()) == 1

        # Another session sees none of it.
        b.goto(f"{demo.url}/runs")
        b.get_by_text("No runs yet").first.wait_for(timeout=60_000)  # the page has drawn its (empty) table
        text = _settled(b)
        assert run_id not in text and "alice-demo" not in text
        assert "No runs yet" in text
        b.goto(demo.url)
        text = _settled(b)
        assert run_id not in text and "alice-demo" not in text
        b.goto(f"{demo.url}/report?run={run_id}")
        text = _settled(b, 2500)  # past a poll of the live view, were it shown
        b.screenshot(path=str(shots_dir / "sharing-07-other-visitor-report.png"), full_page=True)
        assert "No run with id" in text
        for label in ("Cancel run", "Resume", "Yes, delete"):
            assert b.get_by_role("button", name=label).count() == 0
        b.goto(f"{demo.url}/compare?runs={run_id}")
        text = _settled(b)
        assert "alice-demo" not in text

        after = demo.store_rows()[0]
        assert (after["owner"], after["name"], after["cancel_requested"]) == (owner, "alice-demo", 0)
        assert after["status"] in ("queued", "running")

        # The owner cancels from the live view; the store records it.
        _nav(a, "Home")
        a.get_by_role("link", name=re.compile(run_id)).first.click()
        a.get_by_role("button", name="Cancel run").wait_for()
        assert _cancel_from_live_view(a, demo, run_id)["owner"] == owner
    finally:
        ctx_a.close()
        ctx_b.close()


def test_a_reload_keeps_the_visitors_runs(demo, browser):
    # The visitor's identity comes from its browser's XSRF cookie, which a reload or a new tab keeps.
    context, page = _page(browser)
    try:
        run_id = _launch_from_train(page, demo, "reloaded")
        page.get_by_role("button", name="Cancel run").wait_for()
        page.reload()
        page.get_by_text(re.compile(rf"Run {run_id}|No run with id")).first.wait_for()
        text = _settled(page, 1500)
        assert "No run with id" not in text, "after a reload the visitor no longer sees its own run"
        assert page.get_by_role("button", name="Cancel run").count() == 1
    finally:
        context.close()
        for row in demo.store_rows():  # end the run: its owner's session is gone
            if row["name"] == "reloaded" and row["status"] in ("queued", "running") and row["pid"]:
                with contextlib.suppress(OSError):
                    os.kill(int(row["pid"]), signal.SIGTERM)


# -- team mode: signed-in users --------------------------------------------------------------------------------


def test_team_mode_sign_in_ownership_and_admin(browser, shots_dir, tmp_path):
    from tests.support.team import login_in_browser, start_oidc_provider, write_auth_secrets

    users = ["alice@example.org", "bob@example.org", "carol@example.org"]
    with start_oidc_provider(tmp_path, users) as provider:
        port = _free_port()
        secrets = write_auth_secrets(tmp_path / "secrets", provider, port)
        # The secrets name the app's port (redirect_uri), so the server gets that port.
        server = Dashboard(tmp_path / "team", "team", {"METALAB_SECRETS": str(secrets),
                                                       "METALAB_ADMINS": "carol@example.org"}, port=port)
        server.wait_ready()
        contexts = []
        try:
            def visitor():
                context, page = _page(browser)
                contexts.append(context)
                return page

            anonymous = visitor()
            for path in ("", "/runs", "/train"):
                anonymous.goto(server.url + path)
                anonymous.get_by_role("button", name="Log in").wait_for()
                text = _settled(anonymous)
                assert "sign in" in text.lower()
                assert anonymous.get_by_role("button", name="Launch").count() == 0
                assert "Recent runs" not in text and "Check and launch" not in text
                assert anonymous.locator("[data-testid='stSidebarNav']").count() == 0
            anonymous.screenshot(path=str(shots_dir / "sharing-08-team-sign-in.png"), full_page=True)

            alice = visitor()
            login_in_browser(alice, server.url, "alice@example.org")
            run_id = _launch_from_train(alice, server, "alice-team")
            alice.get_by_role("button", name="Cancel run").wait_for()
            rows = server.store_rows()
            assert [(r["id"], r["owner"]) for r in rows] == [(run_id, "user:alice@example.org")]

            bob = visitor()
            login_in_browser(bob, server.url, "bob@example.org")
            _nav(bob, "Runs")
            bob.get_by_text("1 of 1 runs").wait_for()  # team members see each other's runs
            bob.get_by_text("alice-team").first.wait_for(state="attached")  # a cell of the runs table
            bob.goto(f"{server.url}/report?run={run_id}")
            bob.get_by_text(f"Run {run_id}").first.wait_for()
            text = _settled(bob, 2500)
            bob.screenshot(path=str(shots_dir / "sharing-09-team-other-user.png"), full_page=True)
            if server.store_rows()[0]["status"] in ("queued", "running"):
                # The live view is drawn (its phase may still be "Starting the worker", which names no step) ...
                # It redraws every second: wait for its last line rather than read one moment of a redraw.
                if "polling the run store" not in text:
                    bob.get_by_text("polling the run store", exact=False).first.wait_for(timeout=30_000)
            for label in ("Cancel run", "Resume"):  # ... without the owner's buttons
                assert bob.get_by_role("button", name=label).count() == 0
            assert server.store_rows()[0]["cancel_requested"] == 0

            carol = visitor()
            login_in_browser(carol, server.url, "carol@example.org")
            carol.get_by_text("(admin)").first.wait_for()
            carol.goto(f"{server.url}/report?run={run_id}")
            assert server.store_rows()[0]["status"] in ("queued", "running"), "the run ended too soon to check"
            carol.get_by_role("button", name="Cancel run").wait_for()
            row = _cancel_from_live_view(carol, server, run_id)
            carol.screenshot(path=str(shots_dir / "sharing-10-team-admin-cancel.png"), full_page=True)
            assert row["owner"] == "user:alice@example.org"
        finally:
            for context in contexts:
                context.close()
            server.stop()


# -- where it listens ------------------------------------------------------------------------------------------


def _listeners(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) of the sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            for line in handle.read().splitlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].rsplit(":", 1)
                if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.append(address)
    return found


def test_dashboard_listens_on_loopback_unless_a_host_is_given(tmp_path):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp here")
    with dashboard(tmp_path / "default", "demo") as server:
        assert _listeners(server.port) == ["0100007F"]
        assert f"http://127.0.0.1:{server.port} (this machine only" in server.output()
    with dashboard(tmp_path / "everywhere", "demo", host="0.0.0.0") as server:
        assert "00000000" in _listeners(server.port)
        assert f"listening on 0.0.0.0:{server.port}: anyone who can reach this address can open it" in server.output()

"""Load on a demo dashboard: N browser sessions at once against ``metalab dashboard --mode demo`` on loopback.

Starts the dashboard itself (fresh METALAB_HOME, METALAB_DATA_DIR and METALAB_CACHE_DIR in a temporary folder,
127.0.0.1 only), then drives N Chromium contexts (one Streamlit session, so one demo visitor, each): open Home,
go to Train through the sidebar (a client-side switch: the session and its identity stay), set a small sinusoid
MAML run within the caps, press Launch; a session refused because every worker is busy tries again every few
seconds until it gets one or the time is up; the one that launched opens its report, then tries a second launch
(the per-visitor cap must refuse it while its first run is active).

Page times are from the navigation (or click) to a known element being visible. Beside the browsers, a sampler
reads the run store and the process table twice a second: runs queued or running per owner, and training worker
processes alive. At the end it prints p50/p95 per page and whether every cap held, then a ``RESULT {json}`` line.

    .venv/bin/python benchmarks/load.py --sessions 10 [--timeout 600] [--max-workers 2] [--steps 40]

Needs Debian's Chromium (/usr/bin/chromium) and the ``playwright`` package (the dev extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the shared process helpers live in tests/support
from tests.support.processes import end_workers as _end_workers, free_port as _free_port  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from _common import cpu_model  # noqa: E402  (standard library only at import)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
MAX_SESSIONS = 50
#: Texts of the dashboard's refusals when a cap is reached.
GLOBAL_CAP = "METALAB_MAX_WORKERS"
OWNER_CAP = "METALAB_MAX_RUNS_PER_OWNER"




def cpu_note() -> dict[str, Any]:
    """CPU model, count and the vector instruction sets the figures depend on (``_common.cpu_model``), and the load."""
    return {**cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Server:
    """``python -m metalab.core.cli dashboard --mode demo`` on 127.0.0.1 with its own folders."""

    def __init__(self, root: Path, max_workers: int, port: int):
        self.root, self.port = root, port
        self.home, self.data, self.cache = root / "home", root / "data", root / "cache"
        for folder in (self.home, self.data, self.cache):
            folder.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, METALAB_HOME=str(self.home), METALAB_DATA_DIR=str(self.data),
                   METALAB_CACHE_DIR=str(self.cache), METALAB_MAX_WORKERS=str(max_workers),
                   METALAB_DASHBOARD_POLL_S="2", STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
                   STREAMLIT_SERVER_FILE_WATCHER_TYPE="none")
        env.pop("METALAB_MODE", None)
        self.command = [sys.executable, "-m", "metalab.core.cli", "dashboard", "--mode", "demo", "--port", str(port)]
        self.log = open(root / "dashboard.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.command, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 90) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        return time.monotonic() - start
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        raise SystemExit(f"The dashboard did not start:\n{(self.root / 'dashboard.log').read_text(errors='replace')}")

    def runs(self) -> list[dict[str, Any]]:
        path = self.home / "runs.sqlite"
        if not path.exists():
            return []
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
                db.row_factory = sqlite3.Row
                return [dict(r) for r in db.execute("SELECT id, owner, status, step, total_steps, pid, created, "
                                                    "started, finished FROM runs")]
        except sqlite3.Error:
            return []

    def stop(self) -> None:
        # Workers run in sessions of their own: end those of runs still active (their pids are in the store).
        pids = [int(r["pid"]) for r in self.runs() if r["status"] in ("queued", "running") and r.get("pid")]
        _end_workers(pids)
        if self.proc.poll() is None:
            self.proc.terminate()  # the CLI passes it on to its Streamlit server
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def _children(parent: int) -> list[tuple[int, str]]:
    """``(pid, cmdline)`` of the processes whose parent is ``parent``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(entry), cmd))
    return found


class Sampler(threading.Thread):
    """Samples the store and the process table: active runs per owner, worker and probe processes alive."""

    def __init__(self, server: Server, every: float = 0.5):
        super().__init__(name="sampler", daemon=True)
        self.server, self.every = server, every
        self.stop_event = threading.Event()
        self.max_active = 0
        self.max_active_per_owner = 0
        self.max_workers_alive = 0
        self.max_probes_alive = 0
        self.samples = 0

    def _streamlit_pid(self) -> int | None:
        kids = _children(self.server.proc.pid)
        return kids[0][0] if kids else None

    def run(self) -> None:
        while not self.stop_event.is_set():
            rows = [r for r in self.server.runs() if r["status"] in ("queued", "running")]
            per_owner: dict[str, int] = {}
            for r in rows:
                per_owner[r["owner"]] = per_owner.get(r["owner"], 0) + 1
            self.max_active = max(self.max_active, len(rows))
            self.max_active_per_owner = max([self.max_active_per_owner, *per_owner.values()])
            streamlit = self._streamlit_pid()
            if streamlit is not None:
                kids = _children(streamlit)
                # Worker processes name their job first in the request they take as argument.
                workers = [p for p, cmd in kids if 'metalab.core.worker {"job":"train"' in cmd]
                probes = [p for p, cmd in kids if 'metalab.core.worker {"job":"estimate"' in cmd]
                self.max_workers_alive = max(self.max_workers_alive, len(workers))
                self.max_probes_alive = max(self.max_probes_alive, len(probes))
            self.samples += 1
            self.stop_event.wait(self.every)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[index]


class Session:
    """One visitor: its timings and what happened to its launches."""

    def __init__(self, index: int):
        self.index = index
        self.times: dict[str, list[float]] = {}
        self.run_id: str | None = None
        self.refusals: list[str] = []  # the cap named by each refusal ("" when none was shown)
        self.second_launch: str = "not tried"
        self.second_run: str | None = None
        self.error: str | None = None

    def record(self, page: str, seconds: float) -> None:
        self.times.setdefault(page, []).append(seconds)


async def _visible_text(page) -> str:
    return await page.inner_text("body")


async def _nav(page, label: str) -> None:
    await page.locator("[data-testid='stSidebarNav']").get_by_role("link", name=label, exact=True).click()


async def _launch_attempt(page, session: Session, deadline: float) -> str:
    """Presses Launch once the form is valid; returns "launched", "global", "owner" or "none" (no message)."""
    launch = page.get_by_role("button", name="Launch")
    if await launch.is_disabled():
        text = await _visible_text(page)
        return "global" if GLOBAL_CAP in text else ("owner" if OWNER_CAP in text else "none")
    start = time.monotonic()
    await launch.click()
    outcome = page.wait_for_url("**/report?run=*", timeout=max(1000, (deadline - time.monotonic()) * 1000))
    refusal = page.locator("[data-testid='stAlert']").filter(has_text="METALAB_MAX_")
    done, pending = await asyncio.wait([asyncio.ensure_future(outcome), asyncio.ensure_future(refusal.first.wait_for(
        timeout=max(1000, (deadline - time.monotonic()) * 1000)))], return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    # Collect every outcome (the loser's timeout included), so asyncio reports no unretrieved exception.
    await asyncio.gather(*done, *pending, return_exceptions=True)
    if "report?run=" in page.url:
        session.run_id = page.url.split("run=")[1].split("&")[0]
        await page.get_by_text(f"Run {session.run_id}").first.wait_for()
        session.record("launch → report", time.monotonic() - start)
        return "launched"
    text = await _visible_text(page)
    return "owner" if OWNER_CAP in text else ("global" if GLOBAL_CAP in text else "none")


async def _set_steps(page, steps: int) -> None:
    box = page.get_by_label("Steps", exact=True)
    await box.fill(str(steps))
    await box.press("Enter")


async def _ready_train(page, steps: int) -> None:
    """Waits for the Train page's Launch button and a valid form, setting the steps if the form lost them."""
    await page.get_by_role("button", name="Launch").wait_for()
    valid = page.get_by_text("Valid: MAML on Sinusoid regression")
    try:
        await valid.wait_for(timeout=5000)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError: the form shows the preset's steps
        await _set_steps(page, steps)
        await valid.wait_for()


async def visitor(browser, url: str, session: Session, steps: int, deadline: float, retry_s: float) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 1600})
    page = await context.new_page()
    page.set_default_timeout(180_000)
    try:
        start = time.monotonic()
        await page.goto(url)
        await page.get_by_role("heading", name="metalab").first.wait_for()
        session.record("home (first load)", time.monotonic() - start)

        start = time.monotonic()
        await _nav(page, "Train")
        await page.get_by_role("button", name="Launch").wait_for()
        session.record("train (first visit)", time.monotonic() - start)
        start = time.monotonic()
        await _set_steps(page, steps)
        await page.get_by_text("Valid: MAML on Sinusoid regression").wait_for()
        session.record("train: valid after setting steps", time.monotonic() - start)

        while time.monotonic() < deadline:
            outcome = await _launch_attempt(page, session, deadline)
            print(f"  session {session.index}: launch {outcome}" + (f" {session.run_id}" if session.run_id else ""),
                  flush=True)
            if outcome == "launched":
                break
            session.refusals.append(outcome)
            await asyncio.sleep(retry_s)
            # Back to Train through the sidebar (the form keeps its values), which re-reads who is running.
            start = time.monotonic()
            await _nav(page, "Home")
            await page.get_by_role("heading", name="metalab").first.wait_for()
            session.record("home (revisit)", time.monotonic() - start)
            start = time.monotonic()
            await _nav(page, "Train")
            await _ready_train(page, steps)
            session.record("train (revisit)", time.monotonic() - start)
        if session.run_id is None:
            return
        # The report opened by the launch; now a second launch from this session while its run is active.
        start = time.monotonic()
        await _nav(page, "Train")
        await _ready_train(page, steps)
        session.record("train (revisit)", time.monotonic() - start)
        first_run = session.run_id
        outcome = await _launch_attempt(page, session, min(deadline, time.monotonic() + 120))
        session.second_launch = outcome
        print(f"  session {session.index}: second launch while {first_run} is active: {outcome}", flush=True)
        if outcome == "launched":
            session.second_run = session.run_id
            session.run_id = first_run
        # Open the first run's report from Home (a client-side switch) and time it.
        await _nav(page, "Home")
        await page.get_by_role("heading", name="metalab").first.wait_for()
        start = time.monotonic()
        await page.get_by_role("link", name=first_run).first.click()
        await page.get_by_text(f"Run {first_run}").first.wait_for()
        session.record("report", time.monotonic() - start)
    except Exception as exc:  # noqa: BLE001 - one session's failure is reported, the others go on
        session.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    finally:
        with contextlib.suppress(Exception):
            await context.close()


async def drive(url: str, sessions: list[Session], steps: int, deadline: float, retry_s: float, stagger: float):
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            async def one(s: Session):
                await asyncio.sleep(s.index * stagger)
                remaining = deadline - time.monotonic()
                try:
                    await asyncio.wait_for(visitor(browser, url, s, steps, deadline, retry_s), timeout=remaining)
                except asyncio.TimeoutError:
                    s.error = s.error or "timed out (--timeout)"

            await asyncio.gather(*(one(s) for s in sessions))
        finally:
            await browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10, help=f"Browser sessions at once (1-{MAX_SESSIONS}).")
    parser.add_argument("--timeout", type=float, default=600, help="Cap on the whole benchmark's wall time, s.")
    parser.add_argument("--max-workers", type=int, default=2, help="METALAB_MAX_WORKERS of the dashboard.")
    parser.add_argument("--steps", type=int, default=40, help="Meta-training steps of each run (demo cap: 2000).")
    parser.add_argument("--retry", type=float, default=5.0, help="Seconds between launch attempts when refused.")
    parser.add_argument("--stagger", type=float, default=0.5, help="Seconds between two sessions' starts.")
    parser.add_argument("--keep", type=Path, default=None, help="Keep the dashboard's folders here.")
    args = parser.parse_args()
    if not 1 <= args.sessions <= MAX_SESSIONS:
        parser.error(f"--sessions must be 1-{MAX_SESSIONS}. Received: --sessions={args.sessions}")
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing (apt-get install -y chromium)")

    started = time.monotonic()
    deadline = started + args.timeout
    python = sys.executable
    with contextlib.suppress(ValueError):
        python = str(Path(sys.executable).relative_to(REPO))  # the venv's python, as typed in the repo
    print("command:", shlex.join([python, os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]))
    print("commit:", commit())
    machine = cpu_note()
    print("machine:", json.dumps(machine))
    print("date:", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    print(f"sessions: {args.sessions}, max_workers: {args.max_workers}, steps per run: {args.steps}, "
          f"timeout: {args.timeout:g} s", flush=True)

    root = Path(tempfile.mkdtemp(prefix="metalab-load-")) if args.keep is None else args.keep.resolve()
    root.mkdir(parents=True, exist_ok=True)
    server = Server(root, args.max_workers, _free_port())
    sampler = Sampler(server)
    sessions = [Session(i) for i in range(args.sessions)]
    try:
        print(f"dashboard up in {server.wait_ready():.1f} s on {server.url}", flush=True)
        sampler.start()
        asyncio.run(drive(server.url, sessions, args.steps, deadline - 30, args.retry, args.stagger))
        # Let the last runs finish (within the time left) so the store's final counts mean something.
        while time.monotonic() < deadline - 10 and any(r["status"] in ("queued", "running") for r in server.runs()):
            time.sleep(1)
    finally:
        sampler.stop_event.set()
        sampler.join(timeout=5)
        runs = server.runs()
        server.stop()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    wall = time.monotonic() - started

    pages: dict[str, list[float]] = {}
    for s in sessions:
        for name, values in s.times.items():
            pages.setdefault(name, []).extend(values)
    print("\n| page | n | p50 (s) | p95 (s) | max (s) |\n|---|---:|---:|---:|---:|")
    for name in ("home (first load)", "home (revisit)", "train (first visit)", "train: valid after setting steps", "train (revisit)",
                 "launch → report", "report"):
        values = pages.get(name, [])
        if values:
            print(f"| {name} | {len(values)} | {percentile(values, 50):.2f} | {percentile(values, 95):.2f} | "
                  f"{max(values):.2f} |")
    launched = [s for s in sessions if s.run_id]
    refusals = [r for s in sessions for r in s.refusals]
    silent = refusals.count("none")
    seconds = [s.second_launch for s in launched]
    by_id = {r["id"]: r for r in runs}
    # A second launch is fine only if the session's first run had ended before the second was created.
    early = [s.index for s in launched if s.second_run and not (
        by_id.get(s.run_id, {}).get("finished") and by_id[s.run_id]["finished"] <= by_id[s.second_run]["created"])]
    owners = {}
    for r in runs:
        owners[r["owner"]] = owners.get(r["owner"], 0) + 1
    status_counts: dict[str, int] = {}
    for r in runs:
        status_counts[r["status"]] = status_counts.get(r["status"], 0) + 1
    caps = {
        "runs_per_owner_at_once": {"max_seen": sampler.max_active_per_owner, "cap": 1,
                                   "held": sampler.max_active_per_owner <= 1},
        "runs_active_at_once": {"max_seen": sampler.max_active, "cap": args.max_workers,
                                "held": sampler.max_active <= args.max_workers},
        "worker_processes_alive": {"max_seen": sampler.max_workers_alive, "cap": args.max_workers,
                                   "held": sampler.max_workers_alive <= args.max_workers},
        "refused_launches_named_the_cap": {"refusals": len(refusals), "global": refusals.count("global"),
                                           "owner": refusals.count("owner"), "without_message": silent,
                                           "held": silent == 0},
        "second_launch_by_a_session": {"outcomes": {o: seconds.count(o) for o in sorted(set(seconds))},
                                       "launched_while_first_active": early, "held": not early},
    }
    print(f"\nsessions: {len(sessions)}, launched a run: {len(launched)}, errors: "
          f"{sum(1 for s in sessions if s.error)}; runs in the store: {len(runs)} {status_counts}; "
          f"wall {wall:.0f} s; sampler samples {sampler.samples}; estimate probes alive at most "
          f"{sampler.max_probes_alive}")
    for name, verdict in caps.items():
        print(f"cap {name}: {'held' if verdict['held'] else 'BROKEN'} "
              f"({', '.join(f'{k}={v}' for k, v in verdict.items() if k != 'held')})")
    for s in sessions:
        if s.error:
            print(f"session {s.index}: {s.error}")
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print("RESULT " + json.dumps({
        "benchmark": "dashboard_load", "sessions": len(sessions), "max_workers": args.max_workers,
        "steps": args.steps, "wall_s": round(wall, 1), "commit": commit(), "machine": machine,
        "pages": {k: {"n": len(v), "p50": round(percentile(v, 50), 3), "p95": round(percentile(v, 95), 3)}
                  for k, v in pages.items()},
        "launched": len(launched), "runs": status_counts, "caps": caps,
        "errors": [s.error for s in sessions if s.error],
    }, default=str))
    return 0 if all(v["held"] for v in caps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

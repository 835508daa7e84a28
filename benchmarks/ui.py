"""First useful paint of every dashboard page in Chromium, cold (first visit after the server starts) and warm.

Makes a temporary METALAB_HOME, trains two small finished runs with the CLI (sinusoid + MAML, digits + ProtoNet),
starts ``streamlit run streamlit_app.py`` on 127.0.0.1 over it, then visits each page twice in one Chromium tab
and times from the navigation to the page's own elements being visible (its title and its main widget, named in
the table). Beside the pages it times the slow actions a visitor starts, from the click to the answer: Estimate
on the Train page, Predict on 12 digits images, "Load and summarise" on the Datasets page (digits), and opening
another spec's details on the Plugins page, each twice (the second time is what a warm cache or worker gives).

    .venv/bin/python benchmarks/ui.py [--steps 20] [--page-timeout 120] [--keep DIR]

Prints the command, the commit, the CPU, a Markdown table and a ``RESULT {json}`` line. ``--page-timeout`` only
caps a wait: a page or action that reaches it is printed as ``capped`` (not a figure). On a shared host the
figures are indicative (the load average is printed at the start and the end).
Needs Debian's Chromium (/usr/bin/chromium) and the ``playwright`` package (the dev extra).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support.processes import free_port  # noqa: E402

from metalab.core.cli import SERVE_OPTIONS  # noqa: E402  (the served dashboard's Streamlit options; no TensorFlow)

sys.path.insert(0, str(REPO / "benchmarks"))
from _common import cpu_model, provenance  # noqa: E402  (standard library only at import)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


class Capped(Exception):
    """A wait reached ``--page-timeout``."""


def _metalab() -> list[str]:
    return [sys.executable, "-m", "metalab.core.cli"]


def train_runs(env: dict[str, str], steps: int) -> dict[str, str]:
    """Trains the two runs the pages show with the CLI; returns ``{"sinusoid": id, "digits": id}``."""
    ids = {}
    for name, dataset, algorithm in (("sinusoid", "metalab.sinusoid", "metalab.maml"),
                                     ("digits", "metalab.digits", "metalab.protonet")):
        started = time.monotonic()
        out = subprocess.run([*_metalab(), "train", "-d", dataset, "-a", algorithm, "--steps", str(steps),
                              "--set", "test_episodes=20", "--set", "val_episodes=5", "--name", f"ui-{name}"],
                             cwd=REPO, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"Training the {name} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        listed = subprocess.run([*_metalab(), "runs", "list", "--json"], cwd=REPO, env=env, capture_output=True,
                                text=True, check=True)
        ids[name] = next(r["id"] for r in json.loads(listed.stdout) if r["dataset"] == dataset)
        print(f"trained {name}: run {ids[name]} in {time.monotonic() - started:.1f} s", flush=True)
    return ids


def digits_files(root: Path) -> tuple[Path, list[Path]]:
    """A support zip (5 digit classes, 1 image each) and 12 query PNGs, from scikit-learn's embedded digits."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (np.asarray(data.images) * (255.0 / 16.0)).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for digit in range(5):
            index = int(np.flatnonzero(data.target == digit)[0])
            png = io.BytesIO()
            Image.fromarray(images[index]).resize((32, 32)).save(png, format="PNG")
            zf.writestr(f"digit_{digit}/0.png", png.getvalue())
    support = root / "support.zip"
    support.write_bytes(buffer.getvalue())
    queries = []
    for i in range(12):
        index = int(np.flatnonzero(data.target == i % 5)[1 + i // 5])
        path = root / f"query-{i:02d}.png"
        Image.fromarray(images[index]).resize((32, 32)).save(path)
        queries.append(path)
    return support, queries


class Server:
    """``streamlit run streamlit_app.py`` on 127.0.0.1 over the benchmark's folders, with the options ``metalab
    dashboard`` serves with (no source-file watcher)."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
             "--server.port", str(self.port), "--server.address", "127.0.0.1", *SERVE_OPTIONS],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        started = time.monotonic()
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            if self.proc.poll() is not None or time.monotonic() - started > 120:
                self.stop()
                raise SystemExit("streamlit did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.2)
        self.start_s = time.monotonic() - started

    def stop(self) -> None:
        # The whole process group: the dashboard and any worker it started (probes, the prediction worker).
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, 9)
        self._log.close()


def _wait(locators: list[Any], timeout_s: float) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + timeout_s
    for locator in locators:
        left = max(0.1, deadline - time.monotonic())
        try:
            locator.wait_for(state="visible", timeout=left * 1000)
        except PlaywrightTimeout:
            raise Capped() from None


def timed(action: Callable[[], None]) -> float | None:
    """Seconds ``action`` took, or ``None`` if it was capped."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    started = time.monotonic()
    try:
        action()
    except (Capped, PlaywrightTimeout):
        return None
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="Training steps of each of the two runs.")
    parser.add_argument("--page-timeout", type=float, default=120.0,
                        help="Cap on one wait, s (a page or action that reaches it is printed as capped).")
    parser.add_argument("--keep", type=Path, default=None,
                        help="Keep the benchmark's folders here (with a screenshot of each capped wait).")
    parser.add_argument("--only", nargs="*", default=None,
                        help="Only the pages and actions whose names start with these words (e.g. Predict).")
    args = parser.parse_args()
    prov = provenance()
    cpu = cpu_model()
    print(f"command: {prov['command']}\ncommit: {prov['commit']}\ndate: {prov['date']}", flush=True)
    print(f"machine: {os.cpu_count()} CPUs, {cpu['model']} (AVX2 {cpu['avx2']}, AVX-512 {cpu['avx512f']}); load "
          f"average at start {[round(x, 2) for x in os.getloadavg()]}; other processes share this CPU, so the "
          "figures are indicative upper bounds.", flush=True)
    from playwright.sync_api import sync_playwright

    root = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="metalab-ui-"))
    root.mkdir(parents=True, exist_ok=True)
    data_dir = os.environ.get("METALAB_DATA_DIR") or str(REPO.parent / "shared" / "data")
    env = dict(os.environ, METALAB_HOME=str(root / "home"), METALAB_DATA_DIR=data_dir,
               METALAB_CACHE_DIR=str(root / "cache"), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    runs = train_runs(env, args.steps)
    support_zip, queries = digits_files(root / "images")
    server = Server(env, root / "streamlit.log")
    print(f"dashboard up in {server.start_s:.1f} s at {server.url}", flush=True)
    cap = float(args.page_timeout)
    url = server.url
    rows: list[dict[str, Any]] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.set_default_timeout(cap * 1000)

            def visit(path: str, *wanted: Callable[[], Any]) -> Callable[[], None]:
                def go() -> None:
                    page.goto(f"{url}/{path}", wait_until="commit")
                    _wait([w() for w in wanted], cap)
                return go

            heading = lambda name: (lambda: page.get_by_role("heading", name=name).first)  # noqa: E731
            text = lambda value: (lambda: page.get_by_text(value).first)  # noqa: E731
            testid = lambda tid: (lambda: page.locator(f"[data-testid='{tid}']").first)  # noqa: E731
            button = lambda name: (lambda: page.get_by_role("button", name=name, exact=True).first)  # noqa: E731
            pages = [
                ("Home", "title, Recent runs, a run link", visit("", heading("metalab"), text("Recent runs"),
                                                                 text("ui-digits"))),
                ("Train", "title, Valid: line, Launch", visit("train", heading("Train"), text("Valid: "),
                                                              button("Launch"))),
                ("Runs", "title, runs table", visit("runs", heading("Runs"), testid("stDataFrame"))),
                ("Compare", "title, a chart", visit(f"compare?runs={runs['sinusoid']},{runs['digits']}",
                                                    heading("Compare runs"), testid("stPlotlyChart"))),
                ("Report (digits)", "title, meta-test score, a chart",
                 visit(f"report?run={runs['digits']}", heading(f"Run {runs['digits']}"),
                       text("Meta-test accuracy"), testid("stPlotlyChart"))),
                ("Predict", "title, run box, Predict button", visit("predict", heading("Predict"),
                                                                    text("Finished run"), button("Predict"))),
                ("Datasets (digits)", "title, Load and summarise", visit("datasets?view=browse&dataset=metalab.digits",
                                                                         heading("Datasets"),
                                                                         button("Load and summarise"))),
                ("Plugins", "title, Backbones, failed plugins", visit("plugins", heading("Plugins"),
                                                                      heading("Backbones"),
                                                                      heading("Failed or disabled plugins"))),
            ]
            def chosen(name: str) -> bool:
                return not args.only or any(name.lower().startswith(w.lower()) for w in args.only)

            def shot(name: str, seconds: float | None) -> float | None:
                if seconds is None and args.keep:
                    page.screenshot(path=str(root / f"capped-{name.split()[0].lower()}.png"), full_page=True)
                return seconds

            for name, what, go in pages:
                if not chosen(name):
                    continue
                cold = shot(name, timed(go))
                warm = shot(name, timed(go))
                rows.append({"page": name, "kind": "page", "waited_for": what, "cold_s": cold, "warm_s": warm})
                print(f"{name}: cold {_fmt(cold)}, warm {_fmt(warm)}", flush=True)

            # An action's time runs from its click (clock["start"]), not from the page's load.
            clock: dict[str, float] = {}

            def estimate() -> None:
                visit("train", text("Valid: "), button("Estimate"))()
                clock["start"] = time.monotonic()
                button("Estimate")().click()
                _wait([text("Per step")()], cap)

            def predict() -> None:
                visit("predict", button("Predict"))()
                uploader = lambda label: page.locator("[data-testid='stFileUploader']").filter(  # noqa: E731
                    has_text=label).locator("input[type='file']")
                uploader("Zip with one sub-folder per class").set_input_files(str(support_zip))
                # The upload reruns the page: the second uploader is only set once that rerun has drawn the first's file.
                _wait([text("support.zip")()], cap)
                page.wait_for_timeout(1000)
                uploader("Images to classify").set_input_files([str(q) for q in queries])
                page.wait_for_function("() => [...document.querySelectorAll('button')].some("
                                       "b => b.innerText.trim() === 'Predict' && !b.disabled)", timeout=cap * 1000)
                clock["start"] = time.monotonic()
                button("Predict")().click()
                _wait([text("12 query images, run")().or_(text("Prediction failed")())], cap)
                if text("Prediction failed")().is_visible():
                    print("Predict failed: " + text("Prediction failed")().inner_text(), flush=True)
                    raise Capped()

            def load_digits() -> None:
                visit("datasets?view=browse&dataset=metalab.digits", button("Load and summarise"))()
                clock["start"] = time.monotonic()
                button("Load and summarise")().click()
                _wait([heading("Sample images")()], cap)

            def spec_details() -> None:
                visit("plugins", heading("Failed or disabled plugins"))()
                clock["start"] = time.monotonic()
                box = page.get_by_role("combobox", name="Algorithm, dataset or backbone")
                box.click()
                box.fill("metalab.protonet")
                page.keyboard.press("Enter")
                _wait([text("Prototypical")(), page.get_by_role("cell", name="distance", exact=True).first], cap)

            for name, what, action in (
                ("Estimate (sinusoid MAML)", "click Estimate, until Per step", estimate),
                ("Predict (12 digits images)", "click Predict, until the result (upload excluded)", predict),
                ("Load and summarise (digits)", "click, until Sample images", load_digits),
                ("Plugins, another spec's details", "choose ProtoNet in the box, until its parameter table",
                 spec_details),
            ):
                if not chosen(name):
                    continue
                times = []
                for _ in range(2):
                    seconds = shot(name, timed(action))
                    times.append(None if seconds is None else time.monotonic() - clock["start"])
                rows.append({"page": name, "kind": "action", "waited_for": what, "cold_s": times[0],
                             "warm_s": times[1]})
                print(f"{name}: first {_fmt(times[0])}, second {_fmt(times[1])}", flush=True)
            browser.close()
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nload average at end {[round(x, 2) for x in os.getloadavg()]}\n")
    print("| page or action | cold (first) s | warm (second) s | waited for |")
    print("|---|---:|---:|---|")
    for row in rows:
        print(f"| {row['page']} | {_fmt(row['cold_s'])} | {_fmt(row['warm_s'])} | {row['waited_for']} |")
    print("RESULT " + json.dumps({"benchmark": "ui", **prov, "cpu": cpu, "cpus": os.cpu_count(),
                                  "server_start_s": round(server.start_s, 2), "page_timeout_s": cap,
                                  "rows": rows}, default=str), flush=True)
    return 0


def _fmt(seconds: float | None) -> str:
    return "capped" if seconds is None else f"{seconds:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())

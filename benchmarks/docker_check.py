"""Builds the Docker image and checks that it serves: healthy, non-root, demo mode, a writable /data volume.

Builds the repository's Dockerfile as ``metalab:check``, runs it detached with a fresh named volume on /data and
port 8501 published on a random 127.0.0.1 port, polls ``/_stcore/health`` until it answers ``ok``, then checks the
user's uid (``docker exec id -u``), ``METALAB_MODE`` and that the user can write under /data. It prints build
seconds, seconds to healthy and the image size, then a ``RESULT {json}`` line, and removes the container and volume
(the image stays; ``docker image rm metalab:check`` removes it).

    python benchmarks/docker_check.py [--tag metalab:check] [--health-timeout 180] [--no-build]

Without a ``docker`` command or a daemon that answers it prints ``skipped: docker not available (reason)`` and
exits 0. Exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise CheckFailed(f"`{shlex.join(args)}` exited {proc.returncode}: {_tail(proc.stderr or proc.stdout)}")
    return proc


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


class CheckFailed(RuntimeError):
    """A check of the image failed; the message says which and what was seen."""


def docker_unavailable() -> str | None:
    """Why docker cannot be used here, or ``None`` when its daemon answers."""
    if shutil.which("docker") is None:
        return "no docker command on PATH"
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=20)
    except subprocess.TimeoutExpired:
        return "the docker daemon did not answer `docker info` within 20 s"
    if proc.returncode != 0 or not proc.stdout.strip():
        return "the docker daemon does not answer: " + (_tail(proc.stderr, 1) or f"docker info exited {proc.returncode}")
    return None


def commit() -> str:
    try:
        head = _run(["git", "-C", str(REPO), "rev-parse", "HEAD"], timeout=10).stdout.strip()
        dirty = _run(["git", "-C", str(REPO), "status", "--porcelain"], timeout=10).stdout.strip()
    except (OSError, CheckFailed, subprocess.TimeoutExpired):
        return "unknown (not a git checkout)"
    return head + (" (with uncommitted changes)" if dirty else "")


def wait_healthy(name: str, url: str, timeout: float) -> float:
    """Seconds from now until ``url`` answers ``ok``; raises :class:`CheckFailed` if the container stops or time
    runs out."""
    start = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - start < timeout:
        state = _run(["docker", "inspect", "--format", "{{.State.Status}}", name], check=False).stdout.strip()
        if state not in ("created", "running"):
            logs = _run(["docker", "logs", "--tail", "30", name], check=False)
            raise CheckFailed(f"the container stopped (state {state!r}) before it was healthy; its log:\n"
                              f"{_tail(logs.stdout + logs.stderr, 30)}")
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                body = response.read().decode(errors="replace").strip()
            if body == "ok":
                return time.monotonic() - start
            last = f"answered {body[:80]!r}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1)
    raise CheckFailed(f"{url} did not answer 'ok' within {timeout:.0f} s (last: {last})")


def check(tag: str, health_timeout: float, build: bool) -> dict:
    figures: dict = {"tag": tag}
    if build:
        start = time.monotonic()
        proc = subprocess.run(["docker", "build", "-t", tag, str(REPO)], capture_output=True, text=True,
                              timeout=3600)
        figures["build_s"] = round(time.monotonic() - start, 1)
        if proc.returncode != 0:
            raise CheckFailed(f"docker build failed after {figures['build_s']} s:\n{_tail(proc.stderr + proc.stdout, 40)}")
    size = _run(["docker", "image", "inspect", "--format", "{{.Size}}", tag]).stdout.strip()
    figures["image_mb"] = round(int(size) / 1e6, 1)

    suffix = secrets.token_hex(4)
    name, volume = f"metalab-check-{suffix}", f"metalab-check-{suffix}"
    _run(["docker", "volume", "create", volume])
    try:
        _run(["docker", "run", "-d", "--init", "--name", name, "-p", "127.0.0.1::8501", "-v", f"{volume}:/data", tag])
        port = _run(["docker", "port", name, "8501/tcp"]).stdout.strip().splitlines()[0].rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}/_stcore/health"
        figures["healthy_s"] = round(wait_healthy(name, url, health_timeout), 1)

        uid = _run(["docker", "exec", name, "id", "-u"]).stdout.strip()
        figures["uid"] = int(uid)
        if figures["uid"] == 0:
            raise CheckFailed("the container runs as root (id -u printed 0); expected the metalab user")
        mode = _run(["docker", "exec", name, "printenv", "METALAB_MODE"], check=False).stdout.strip()
        figures["mode"] = mode
        if mode != "demo":
            raise CheckFailed(f"expected METALAB_MODE=demo in the container. Received: METALAB_MODE={mode!r}")
        cmdline = _run(["docker", "exec", name, "cat", "/proc/1/cmdline"], check=False).stdout
        figures["command"] = " ".join(part for part in cmdline.split("\0") if part)
        write = _run(["docker", "exec", name, "sh", "-c", "touch /data/home/.w && rm /data/home/.w"], check=False)
        figures["data_writable"] = write.returncode == 0
        if not figures["data_writable"]:
            raise CheckFailed(f"the container's user cannot write /data/home: {_tail(write.stderr, 3)}")
        health = _run(["docker", "inspect", "--format", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", name],
                      check=False).stdout.strip()
        figures["docker_health"] = health or "none"
    finally:
        _run(["docker", "rm", "-f", name], check=False)
        _run(["docker", "volume", "rm", "-f", volume], check=False)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="metalab:check", help="Image tag to build and run (default metalab:check).")
    parser.add_argument("--health-timeout", type=float, default=180,
                        help="Seconds to wait for /_stcore/health to answer ok (default 180).")
    parser.add_argument("--no-build", action="store_true", help="Run the image already tagged --tag.")
    args = parser.parse_args()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"commit: {commit()}")
    reason = docker_unavailable()
    if reason:
        print(f"skipped: docker not available ({reason})")
        return 0
    try:
        figures = check(args.tag, args.health_timeout, build=not args.no_build)
    except (CheckFailed, subprocess.TimeoutExpired) as exc:
        print(f"FAILED: {exc}")
        return 1
    print("| build s | healthy s | image MB | uid | mode | /data writable | docker health |")
    print("|---:|---:|---:|---:|---|---|---|")
    print(f"| {figures.get('build_s', '-')} | {figures['healthy_s']} | {figures['image_mb']} | {figures['uid']} | "
          f"{figures['mode']} | {figures['data_writable']} | {figures['docker_health']} |")
    print(f"container command: {figures['command']}")
    print("RESULT " + json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A full disk under the run folders, and a store the process may not write: clear states, nothing lost.

ENOSPC is real: the run folders live on a small tmpfs mounted for the test (root only; skipped elsewhere). A
read-only store is real too: the store file is made immutable with ``chattr +i`` (root on ext4; skipped elsewhere).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metalab.core.contract.manager import make_plugin_manager
from metalab.core.services import Services
from metalab.core.settings import load_settings
from tests.faults.helpers import TINY


def _run(command: list[str]) -> bool:
    return subprocess.run(command, capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB tmpfs at ``tmp_path/home/runs`` (the run folders), unmounted afterwards."""
    folder = tmp_path / "home" / "runs"
    folder.mkdir(parents=True)
    if os.geteuid() != 0 or not _run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)]):
        pytest.skip("mounting a tmpfs needs root")
    yield folder
    _run(["umount", "-l", str(folder)])


def test_a_full_disk_fails_the_run_with_its_reason_and_resume_finishes_once_there_is_room(tmp_path, small_disk):
    settings = load_settings(home=tmp_path / "home", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    svc = Services(settings=settings, registry=make_plugin_manager(distributions={"metalab"}, strict=False))
    run_id = svc.create_run(svc.resolve({**TINY, "steps": 60, "checkpoint_every": 20}))
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # leave no room: the first checkpoint cannot be written
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    assert svc.train(run_id) == "failed"
    run = svc.store.get_run(run_id)
    assert "No space left on device" in run.error and "Traceback" not in run.error
    assert run.step == 20  # the store (elsewhere) kept every step's record
    filler.unlink()
    assert svc.train(run_id) == "completed"
    assert svc.store.get_run(run_id).step == 60


@pytest.fixture
def read_only_store(tmp_path: Path):
    """A store with one run whose file is immutable (``chattr +i``) for the test."""
    from metalab.core.store import RunStore

    store = RunStore(tmp_path / "home" / "runs.sqlite")
    run_id = store.create_run({**TINY, "backbone": "metalab.mlp"})
    if os.geteuid() != 0 or not _run(["chattr", "+i", str(store.path)]):
        pytest.skip("chattr +i needs root on a file system that supports it")
    yield store, run_id
    _run(["chattr", "-i", str(store.path)])


def test_a_read_only_store_is_a_clear_error_and_loses_nothing(tmp_path, read_only_store):
    store, run_id = read_only_store
    before = store.path.read_bytes()
    env = dict(os.environ, METALAB_HOME=str(tmp_path / "home"))
    listing = subprocess.run([sys.executable, "-m", "metalab.core.cli", "runs", "list", "--json"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert listing.returncode == 0 and run_id in listing.stdout  # reading still works
    cancel = subprocess.run([sys.executable, "-m", "metalab.core.cli", "runs", "cancel", run_id],
                            capture_output=True, text=True, env=env, timeout=120)
    assert cancel.returncode == 2
    assert "error:" in cancel.stderr and "Traceback" not in cancel.stderr + cancel.stdout
    assert "readonly" in cancel.stderr.replace("-", "").replace(" ", "").lower()
    assert store.path.read_bytes() == before

"""Who may do what, checked where requests enter core: modes, ownership, machine parameters, caps, showcases."""

from __future__ import annotations

import io
import os
import re
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metalab.core.services.access import AccessError, Actor, CapError, Policy
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.services import LaunchLimitError, Services
from metalab.core.settings import MODE_CAPS, load_settings
from metalab.core.store import SCHEMA_VERSION, RunNotFoundError, RunStore

SINUSOID = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 20,
            "algorithm_params": {"meta_batch_size": 2}}


@pytest.fixture(scope="module")
def registry():
    return make_plugin_manager(distributions={"metalab"}, strict=False)


@pytest.fixture
def make(tmp_path, registry):
    """``make(mode, **settings) -> Services`` on fresh folders under ``tmp_path`` (the machine's actor)."""

    def build(mode: str = "demo", **overrides) -> Services:
        settings = load_settings(home=tmp_path / "home", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache",
                                 mode=mode, **overrides)
        (tmp_path / "data").mkdir(exist_ok=True)
        return Services(settings=settings, registry=registry)

    return build


def _zip(classes=("a", "b", "c"), per_class=2, size=8) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in classes:
            for i in range(per_class):
                png = io.BytesIO()
                Image.fromarray(np.full((size, size, 3), i * 40, np.uint8)).save(png, format="PNG")
                zf.writestr(f"{name}/{i}.png", png.getvalue())
    return buffer.getvalue()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# -- modes and caps -----------------------------------------------------------------------------------------


def test_each_mode_has_its_caps_and_the_environment_wins(monkeypatch):
    assert load_settings(mode="private").max_steps == MODE_CAPS["private"]["max_steps"] == 10_000_000
    demo = load_settings(mode="demo")
    assert demo.max_steps == 2_000 and demo.max_runs_per_owner == 1 and demo.max_run_seconds == 600
    assert demo.max_image_pixels == 4_000_000 and demo.worker_memory_mb > 0
    monkeypatch.setenv("METALAB_MODE", "demo")
    monkeypatch.setenv("METALAB_MAX_STEPS", "50")
    assert load_settings().max_steps == 50 and load_settings().max_upload_mb == 20
    monkeypatch.setenv("METALAB_MODE", "public")
    with pytest.raises(ValueError, match="mode"):
        load_settings()


def test_a_run_over_the_step_cap_is_refused_with_the_cap_and_value(make):
    svc = make("demo").for_actor(Actor.visitor("visitor-aaaa"))
    with pytest.raises(CapError, match=r"at most 2,000 steps.*Received: steps=10000000"):
        svc.resolve({**SINUSOID, "steps": 10_000_000})
    assert svc.store.list_runs() == []
    # The machine's own user (the CLI) is not capped.
    assert make("demo").resolve({**SINUSOID, "steps": 5000}).steps == 5000


# -- parameters that touch the machine ----------------------------------------------------------------------


def test_a_server_path_outside_the_data_folder_is_refused_in_every_mode(make, tmp_path):
    import site

    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "a").mkdir()
    for mode in ("private", "demo", "team"):
        svc = make(mode).for_actor(Actor.private_user() if mode == "private" else Actor.visitor("visitor-bbbb"))
        for value in (str(secret), site.getsitepackages()[0], "../secret", "/etc"):
            with pytest.raises(AccessError, match="inside the data folder") as info:
                svc.dataset_summary("metalab.imagefolder", {"path": value})
            assert str(secret.resolve()) not in str(info.value) or value == str(secret)
            with pytest.raises(AccessError):
                svc.resolve({"dataset": "metalab.imagefolder", "algorithm": "metalab.protonet",
                             "dataset_params": {"path": value}})


def test_a_symlink_inside_the_data_folder_that_leaves_it_is_refused(make, tmp_path):
    svc = make("private").for_actor(Actor.private_user())
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "data" / "imagefolder").mkdir(parents=True)
    (tmp_path / "data" / "imagefolder" / "link").symlink_to(outside)
    with pytest.raises(AccessError, match="symlinks included"):
        svc.policy.resolve_data_path(svc.actor, "imagefolder/link", "dataset.path")
    assert svc.policy.resolve_data_path(svc.actor, "imagefolder", "dataset.path") == (tmp_path / "data" / "imagefolder").resolve()


def test_uploads_belong_to_their_owner_and_paths_into_them_too(make):
    base = make("demo")
    alice, bob = base.for_actor(Actor.visitor("alice-token")), base.for_actor(Actor.visitor("bob-token1"))
    info = alice.upload_dataset(_zip(), "mine.zip")
    assert base.store.upload_record("mine")["owner"] == "session:alice-token"
    assert [u["name"] for u in alice.uploads()] == ["mine"] and bob.uploads() == []
    assert alice.dataset_summary("metalab.imagefolder", {"path": info["root"]}, episode=None)["total_classes"] == 3
    with pytest.raises(AccessError):
        bob.dataset_summary("metalab.imagefolder", {"path": info["root"]})
    with pytest.raises(FileNotFoundError):
        bob.delete_upload("mine")
    assert Path(info["path"]).is_dir()
    alice.delete_upload("mine")
    assert not Path(info["path"]).exists() and base.store.upload_record("mine") is None


def test_urls_other_schemes_and_undeclared_downloads_are_refused(make):
    params = {"url": "file:///etc/passwd", "sha256": "0" * 64}
    for mode in ("private", "demo"):
        svc = make(mode).for_actor(Actor.private_user() if mode == "private" else Actor.visitor("visitor-cccc"))
        with pytest.raises(AccessError, match="only https and http"):
            svc.dataset_summary("metalab.mini_imagenet", params)
    demo = make("demo").for_actor(Actor.visitor("visitor-dddd"))
    with pytest.raises(AccessError, match="only the plugin's own download URLs"):
        demo.dataset_summary("metalab.mini_imagenet", {"url": "http://127.0.0.1:9/x.pkl"})
    with pytest.raises(AccessError, match="checksum of your own"):
        demo.dataset_summary("metalab.cifar_fs", {"sha256": "1" * 64})
    assert _files(Path(make("demo").settings.cache_dir)) == []


def test_a_run_reference_names_only_own_or_showcase_runs(make):
    base = make("demo")
    alice, bob = base.for_actor(Actor.visitor("alice-token")), base.for_actor(Actor.visitor("bob-token1"))
    teacher = alice.create_run(alice.resolve({"dataset": "metalab.digits", "algorithm": "metalab.mlp_classifier",
                                              "steps": 5}))
    config = {"dataset": "metalab.digits", "algorithm": "metalab.distill", "steps": 5,
              "algorithm_params": {"teacher_run": teacher}}
    assert alice.resolve(config).algorithm_params["teacher_run"] == teacher
    with pytest.raises(AccessError, match="only your own runs"):
        bob.resolve(config)


# -- ownership ----------------------------------------------------------------------------------------------


def test_visitors_cannot_touch_each_others_runs_and_admins_can(make):
    base = make("team", admins="boss@example.org")
    alice = base.for_actor(Actor.user("alice@example.org", base.settings.admin_ids))
    bob = base.for_actor(Actor.user("bob@example.org", base.settings.admin_ids))
    boss = base.for_actor(Actor.user("Boss@Example.org", base.settings.admin_ids))
    run_id = alice.create_run(alice.resolve(SINUSOID))
    assert base.store.get_run(run_id).owner == "user:alice@example.org"
    assert [r.id for r in bob.runs()] == [run_id]  # a team sees every run
    for action in (bob.cancel, bob.delete_run, bob.relaunch, lambda r: bob.rename_run(r, "x")):
        with pytest.raises(AccessError, match="only its owner or an admin"):
            action(run_id)
    run = base.store.get_run(run_id)
    assert run.status == "queued" and not run.cancel_requested and run.name == ""
    assert boss.actor.admin and boss.can_modify(run) and not bob.can_modify(run)
    boss.rename_run(run_id, "renamed by an admin")
    base.store.update_run(run_id, status="cancelled")  # a live run is deleted only with force
    alice.delete_run(run_id)
    with pytest.raises(RunNotFoundError):
        base.store.get_run(run_id)


def test_demo_visitors_see_only_their_own_runs_and_anonymous_users_own_nothing(make):
    base = make("demo")
    alice, bob = base.for_actor(Actor.visitor("alice-token")), base.for_actor(Actor.visitor("bob-token1"))
    run_id = alice.create_run(alice.resolve(SINUSOID))
    assert [r.id for r in alice.runs()] == [run_id] and bob.runs() == []
    with pytest.raises(RunNotFoundError):
        bob.run(run_id)
    nobody = make("team").for_actor(Actor.anonymous())
    with pytest.raises(AccessError, match="sign in first"):
        nobody.create_run(nobody.resolve(SINUSOID))


def test_per_owner_and_global_run_caps_hold(make):
    base = make("demo", max_workers=2)
    alice, bob, carol = (base.for_actor(Actor.visitor(t)) for t in ("alice-token", "bob-token1", "carol-token"))
    for svc in (alice, bob):
        run_id = svc.create_run(svc.resolve(SINUSOID))
        # Running in a live process (this one): it holds a slot.
        base.store.update_run(run_id, status="running", pid=os.getpid(), host=os.uname().nodename)
        if svc is alice:
            with pytest.raises(LaunchLimitError, match="at most 1 at once"):
                alice._check_capacity()
    with pytest.raises(LaunchLimitError, match="METALAB_MAX_WORKERS=2"):
        carol._check_capacity()
    # An estimate is a worker too: refused with the cap, before any process starts.
    answer = carol.estimate(SINUSOID)
    assert answer["ok"] is False and "METALAB_MAX_WORKERS" in answer["error"]
    assert carol._probes.get(carol.actor.id, 0) == 0


def test_a_queued_run_whose_worker_died_frees_its_slot(make):
    base = make("demo")
    alice = base.for_actor(Actor.visitor("alice-token"))
    run_id = alice.create_run(alice.resolve(SINUSOID))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    base.store.update_run(run_id, pid=dead.pid, host=os.uname().nodename)
    assert base.active_runs() == []
    run = base.store.get_run(run_id)
    assert run.status == "failed" and "before training started" in run.error
    alice._check_capacity()  # the slot is free again


def test_workers_are_niced_and_memory_limited(make):
    from metalab.core.worker import read_reply, worker_command

    svc = make("demo", worker_memory_mb=1536)
    for job in ("train", "estimate", "devices", "predict"):
        assert svc._request(job)["limits"] == {"nice": 10, "memory_mb": 1536}
    # A worker applies them before its job runs; this job reads them back instead of listing the devices.
    code = ("import os, resource, sys\n"
            "import metalab.core.worker as worker\n"
            "worker._HANDLERS['devices'] = lambda request, settings: [os.nice(0), "
            "resource.getrlimit(resource.RLIMIT_AS)[0]]\n"
            "raise SystemExit(worker.main(sys.argv[1:]))\n")
    request = worker_command(svc._request("devices"))[-1]
    out = subprocess.run([sys.executable, "-c", code, request], capture_output=True, text=True, timeout=120)
    reply = read_reply(out.stdout)
    assert reply is not None and reply["ok"] is True, out.stderr
    nice, address_space = reply["result"]
    assert nice >= os.nice(0) + 10 or nice == 19
    assert address_space == 1536 << 20


# -- uploads and images -------------------------------------------------------------------------------------


def test_upload_count_files_and_unpacked_caps_hold_and_leave_nothing(make):
    base = make("demo", max_uploads_per_owner=1, max_archive_files=5)
    alice = base.for_actor(Actor.visitor("alice-token"))
    uploads = Path(base.settings.uploads_dir)
    from metalab.core.data.archives import UnsafeArchiveError

    with pytest.raises(UnsafeArchiveError, match="5"):
        alice.upload_dataset(_zip(per_class=2), "many.zip")  # 6 files
    assert _files(uploads) == [] and base.store.upload_records() == []
    alice.upload_dataset(_zip(classes=("a", "b"), per_class=2), "ok.zip")
    with pytest.raises(CapError, match="METALAB_MAX_UPLOADS_PER_OWNER"):
        alice.upload_dataset(_zip(classes=("a",), per_class=1), "again.zip")
    tight = make("demo", max_unpacked_mb_per_owner=1).for_actor(Actor.visitor("bob-token1"))
    big = io.BytesIO()
    with zipfile.ZipFile(big, "w") as zf:
        zf.writestr("a/noise.bin", np.random.default_rng(0).bytes(1_200_000))
    with pytest.raises(UnsafeArchiveError):
        tight.upload_dataset(big.getvalue(), "big.zip")
    assert [p.parent.name for p in _files(uploads)] == ["a", "a", "b", "b"]  # only alice's upload


def test_a_huge_image_is_refused_from_its_header_before_decoding(make):
    svc = make("demo").for_actor(Actor.visitor("alice-token"))
    png = io.BytesIO()
    Image.new("L", (8000, 8000)).save(png, format="PNG")  # ~80 KB on disk, 64 M pixels decoded
    with pytest.raises(ValueError, match=r"8000x8000 is 64,000,000 pixels, more than the 4,000,000"):
        svc.stage_prediction(queries=[("bomb.png", png.getvalue())])
    assert _files(Path(svc.settings.predictions_dir)) == []


def test_messages_for_visitors_hide_server_paths(make):
    svc = make("demo").for_actor(Actor.visitor("alice-token"))
    data = str(svc.settings.data_dir)
    text = f"missing {data}/omniglot/x.zip; see /usr/lib/python3/site-packages/pkg/mod.py line 3"
    shown = svc.redact(text)
    assert "METALAB_DATA_DIR/omniglot/x.zip" in shown and "site-packages" not in shown and "<server path>" in shown
    assert make("demo").redact(text) == text  # this machine's own user sees it whole


# -- the store ----------------------------------------------------------------------------------------------

#: The runs table of the first release (schema version 0, before owners and uploads), as it created it.
_V0_SCHEMA = """
CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', dataset TEXT NOT NULL, algorithm TEXT NOT NULL,
    backbone TEXT, config TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
    updated REAL, step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER NOT NULL DEFAULT 0, pid INTEGER, host TEXT,
    device TEXT, versions TEXT, error TEXT, traceback TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0);
CREATE TABLE metrics (run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, step INTEGER NOT NULL,
    name TEXT NOT NULL, value REAL NOT NULL, time REAL NOT NULL);
CREATE TABLE evaluations (run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, created REAL NOT NULL,
    split TEXT NOT NULL, episodes INTEGER NOT NULL, result TEXT NOT NULL);
CREATE TABLE artifacts (run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, name TEXT NOT NULL,
    kind TEXT NOT NULL, path TEXT NOT NULL, step INTEGER, created REAL NOT NULL, PRIMARY KEY (run_id, name));
INSERT INTO runs (id, dataset, algorithm, config, status, created) VALUES
    ('20260101-000000-abcdef', 'metalab.sinusoid', 'metalab.maml', '{"dataset": "metalab.sinusoid"}', 'completed', 1);
"""


def test_a_first_release_store_is_migrated_and_its_runs_belong_to_this_machine(tmp_path):
    path = tmp_path / "runs.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(_V0_SCHEMA)
    conn.close()
    store = RunStore(path)
    run = store.get_run("20260101-000000-abcdef")
    assert run.owner == "local" and run.status == "completed"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    assert store.upload_records() == []
    RunStore(path)  # opening again is a no-op


#: A store as schema version 1 (sessions 4-8: owners and uploads, evaluations without their seed) wrote it.
_V1_SCHEMA = _V0_SCHEMA.replace("cancel_requested INTEGER NOT NULL DEFAULT 0);",
                                "cancel_requested INTEGER NOT NULL DEFAULT 0, owner TEXT NOT NULL DEFAULT 'local');") + """
CREATE TABLE uploads (name TEXT PRIMARY KEY, owner TEXT NOT NULL, created REAL NOT NULL,
    archive_bytes INTEGER NOT NULL DEFAULT 0, unpacked_bytes INTEGER NOT NULL DEFAULT 0, files INTEGER NOT NULL DEFAULT 0);
INSERT INTO evaluations (run_id, created, split, episodes, result) VALUES
    ('20260101-000000-abcdef', 2, 'test', 600, '{"mse": 0.5, "ci95": 0.1, "episodes": 600}'),
    ('20260101-000000-abcdef', 3, 'benchmark:lake20', 20, '{"accuracy": 0.9, "ci95": 0.1, "episodes": 20}');
PRAGMA user_version=1;
"""


def test_a_version_one_store_keeps_its_evaluations_and_learns_their_seed(tmp_path):
    path = tmp_path / "runs.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(_V1_SCHEMA)
    conn.close()
    store = RunStore(path)
    bench, test = store.evaluations("20260101-000000-abcdef")
    # Every fixed evaluation before version 2 used seed 2017; a benchmark's fixed tasks have none.
    assert (test["split"], test["episodes"], test["seed"], test["mse"]) == ("test", 600, 2017, 0.5)
    assert (bench["split"], bench["seed"]) == ("benchmark:lake20", None)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    assert store.get_run("20260101-000000-abcdef").owner == "local"


# -- showcases ----------------------------------------------------------------------------------------------


def _completed_run(svc: Services) -> str:
    run_id = svc.create_run(svc.resolve(SINUSOID))
    folder = svc.store.run_dir(run_id)
    folder.mkdir(parents=True)
    np.savez(folder / "checkpoint.npz", w=np.arange(3.0))
    (folder / "report_data.json").write_text('{"kind": "regression"}')
    (folder / "worker.log").write_text("private log")
    svc.store.add_artifact(run_id, "checkpoint", "checkpoint", folder / "checkpoint.npz", step=20)
    svc.store.add_artifact(run_id, "report_data", "json", folder / "report_data.json")
    svc.store.log_metrics(run_id, 20, {"train/loss": 0.5})
    svc.store.add_evaluation(run_id, "test", 600, {"mse": 0.1, "ci95": 0.01}, seed=2017)
    svc.store.update_run(run_id, status="completed", step=20)
    return run_id


def test_a_showcase_bundle_is_served_read_only(make, tmp_path):
    from metalab.core.services.showcase import pack

    source = make("private")
    run_id = _completed_run(source)
    bundle = pack(source.store, [run_id[:15]], tmp_path / "bundle")
    assert sorted(p.name for p in (bundle / "runs" / run_id).iterdir()) == ["checkpoint.npz", "report_data.json"]
    with pytest.raises(ValueError, match="new or empty folder"):
        pack(source.store, [run_id], bundle)

    settings = load_settings(home=tmp_path / "demo-home", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache",
                             mode="demo", showcase_dir=bundle, admins="session:admin-token")
    # Served from a folder nobody may write (as a read-only mount would be), where that can be arranged.
    frozen = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(bundle)], capture_output=True).returncode == 0
    try:
        served = Services(settings=settings, registry=source.registry)
        served.store  # noqa: B018 - installs the showcase
    finally:
        if frozen:
            subprocess.run(["chattr", "-i", str(bundle)], check=True)
    assert served.showcase_error is None
    assert sorted(p.name for p in bundle.iterdir()) == ["runs", "runs.sqlite", "showcase.json"]
    visitor = served.for_actor(Actor.visitor("alice-token"))
    run = visitor.run(run_id)
    assert run.owner == "showcase" and run.status == "completed"
    assert visitor.report_data(run_id) == {"kind": "regression"}
    assert visitor.evaluations(run_id)[0]["mse"] == 0.1 and visitor.metrics(run_id)["train/loss"] == [(20, 0.5)]
    assert visitor.evaluations(run_id)[0]["seed"] == 2017  # the headline's protocol travels with the bundle
    admin = served.for_actor(Actor("session:admin-token", "admin", admin=True))
    for svc in (visitor, admin):
        with pytest.raises(AccessError, match="showcase runs are read-only"):
            svc.delete_run(run_id)
    assert served.store.run_dir(run_id).joinpath("checkpoint.npz").exists()
    # Installing twice keeps one copy.
    Services(settings=settings, registry=source.registry).store
    assert len(served.store.list_runs()) == 1


# -- the wall-time cap --------------------------------------------------------------------------------------


def test_a_run_over_its_wall_time_is_stopped_checkpointed_and_resumable(make):
    svc = make("demo", max_run_seconds=1)
    owner = svc.for_actor(Actor.visitor("alice-token"))
    run_id = owner.create_run(owner.resolve({**SINUSOID, "steps": 2000, "checkpoint_every": 1000}))
    assert svc.train(run_id) == "interrupted"
    run = svc.store.get_run(run_id)
    assert run.status == "interrupted" and 0 < run.step < 2000
    assert re.search(r"wall-time cap of 1 s .* can resume it", run.error)
    assert svc.store.run_dir(run_id).joinpath("checkpoint.npz").exists()
    with pytest.raises(RunNotFoundError):  # in demo mode another visitor's run is not even there
        svc.for_actor(Actor.visitor("bob-token1")).relaunch(run_id)
    assert svc.store.get_run(run_id).status == "interrupted"


def test_policy_on_its_own_refuses_other_owners():
    settings = load_settings(mode="team")
    policy = Policy(settings)
    alice = Actor.user("alice@example.org")
    assert policy.can_modify(alice, "user:alice@example.org")
    assert not policy.can_modify(alice, "user:bob@example.org")
    assert not policy.can_modify(Actor.machine().__class__("x", "x", admin=True), "showcase")
    assert policy.can_modify(Actor.machine(), "showcase")


def test_an_upload_holding_an_oversized_image_is_refused_and_leaves_nothing(make):
    svc = make("demo").for_actor(Actor.visitor("alice-token"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("a/0.png", "b/0.png", "c/0.png"):
            png = io.BytesIO()
            Image.new("L", (8, 8)).save(png, format="PNG")
            zf.writestr(name, png.getvalue())
        big = io.BytesIO()
        Image.new("L", (3000, 3000)).save(big, format="PNG")  # 9 M pixels, over demo's 4 M
        zf.writestr("c/big.png", big.getvalue())
    from metalab.core.data.archives import UnsafeArchiveError

    with pytest.raises(UnsafeArchiveError, match=r"c/big.png: 3000x3000 is 9,000,000 pixels"):
        svc.upload_dataset(buffer.getvalue(), "bomb.zip")
    assert _files(Path(svc.settings.uploads_dir)) == [] and svc.store.upload_records() == []


def test_a_worker_still_exiting_holds_its_slot(make):
    base = make("demo", max_workers=1)
    alice = base.for_actor(Actor.visitor("alice-token"))
    lingering = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        base._workers["a-run-that-recorded-completed"] = lingering  # its run is finished, its process is not
        with pytest.raises(LaunchLimitError, match="METALAB_MAX_WORKERS=1"):
            alice._check_capacity()
    finally:
        lingering.kill()
        lingering.wait()
    alice._check_capacity()


def test_every_actors_view_shares_one_plugin_registry_built_once(tmp_path, monkeypatch):
    """The dashboard makes a view per browser session; each used to build the plugins again (0.75 s before every
    page's first element), since a registry built lazily in a view stayed in that view."""
    monkeypatch.setenv("METALAB_HOME", str(tmp_path))
    shared = Services(settings=load_settings(disable_plugins=""))
    alice, bob = shared.for_actor(Actor.visitor("alice-token")), shared.for_actor(Actor.visitor("bob-token1"))
    assert alice.registry is bob.registry is shared.registry
    assert alice.store is bob.store and alice.actor != bob.actor

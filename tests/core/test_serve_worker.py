"""The warm prediction worker: the one-shot worker's answers from one long-lived process, respawned, ended when idle."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from metalab.core import serve_worker
from metalab.core.engine.predict import PredictionError
from metalab.core.serve_worker import WarmWorker
from metalab.core.services import Services
from tests.support.processes import running

SHAPES = ("circle", "square", "cross", "hline", "vline", "triangle")
RUN = {"dataset": "metalab.imagefolder", "algorithm": "metalab.protonet", "backbone": "metalab.conv4",
       "backbone_params": {"filters": 4, "blocks": 2}, "steps": 3, "val_every": 3, "val_episodes": 2,
       "test_episodes": 2, "log_every": 3, "ways": 2, "shots": 1, "queries": 2}
DATASET = {"image_size": 16, "channels": 1, "invert": True, "train_fraction": 0.34, "val_fraction": 0.33}


def _folder(root: Path, shapes, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for shape in shapes:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.new("L", (24, 24), 255)
            pen = ImageDraw.Draw(image)
            x, y = (int(v) for v in rng.integers(2, 6, 2))
            if shape == "circle":
                pen.ellipse([x, y, x + 14, y + 14], outline=0, width=2)
            elif shape == "square":
                pen.rectangle([x, y, x + 14, y + 14], outline=0, width=2)
            elif shape == "cross":
                pen.line([x, y, x + 14, y + 14], fill=0, width=2)
                pen.line([x + 14, y, x, y + 14], fill=0, width=2)
            elif shape == "hline":
                pen.line([x, y + 7, x + 14, y + 7], fill=0, width=2)
            elif shape == "vline":
                pen.line([x + 7, y, x + 7, y + 14], fill=0, width=2)
            else:
                pen.polygon([(x, y + 14), (x + 14, y + 14), (x + 7, y)], outline=0, width=2)
            image.save(root / shape / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A fresh metalab home with one tiny finished ProtoNet run on drawn shapes, a support set and queries."""
    root = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"METALAB_HOME": root / "home", "METALAB_DATA_DIR": root / "data",
                            "METALAB_CACHE_DIR": root / "cache", "METALAB_OFFLINE": "1",
                            "METALAB_DISABLE_PLUGINS": "", "METALAB_STRICT_PLUGINS": "0"}.items():
            mp.setenv(name, str(value))
        mp.setattr(serve_worker, "_WORKERS", {})
        services = Services()
        folder = _folder(root / "shapes", SHAPES, per_class=4, seed=0)
        run_id = services.create_run(services.resolve({**RUN, "dataset_params": {**DATASET, "path": str(folder)}}))
        assert services.train(run_id) == "completed", services.run(run_id).traceback
        support = _folder(root / "support", SHAPES[:3], per_class=1, seed=5)
        queries = _folder(root / "queries", SHAPES[:3], per_class=2, seed=9)
        yield {"services": services, "run": run_id, "support": support, "queries": queries}
        serve_worker.close_all()


def _same(a: list[dict], b: list[dict]) -> None:
    assert [r["file"] for r in a] == [r["file"] for r in b] and len(a) == 6
    for x, y in zip(a, b):
        assert x["predicted"] == y["predicted"]
        assert list(x["probabilities"]) == list(y["probabilities"]) == sorted(SHAPES[:3])
        np.testing.assert_allclose(list(x["probabilities"].values()), list(y["probabilities"].values()), atol=1e-5)


def test_the_warm_worker_answers_as_the_one_shot_worker_from_one_process_and_survives_a_kill(world):
    svc, run = world["services"], world["run"]
    support, queries = world["support"], world["queries"]
    one_shot = svc.predict(run, support, queries, timeout=240)
    warm = svc.prediction_worker()
    assert warm.pid is None and warm.spawned == 0
    first = svc.predict(run, support, queries, timeout=240, warm=True)
    _same(first, one_shot)
    pid = warm.pid
    assert pid is not None and warm.spawned == 1
    # The second request: the same process (its reply says which) and the model it already built.
    request = svc._request("predict", run=run, support=str(support), query=str(queries), invert=None)
    reply = warm.request(request, 240, PredictionError)
    assert reply["ok"] is True and reply["pid"] == pid and reply["models_built"] == 1, reply
    assert warm.spawned == 1
    _same(reply["result"], one_shot)
    assert sum(svc._probes.values()) == 0  # the worker slot is held only while computing
    # A refusal is an answer: the process serves on.
    with pytest.raises(PredictionError, match="at least 2 class folders"):
        svc.predict(run, support / "circle", queries, timeout=240, warm=True)
    assert warm.pid == pid
    # Killed: the next request starts it again, transparently, and answers the same.
    os.kill(pid, signal.SIGKILL)
    again = svc.predict(run, support, queries, timeout=240, warm=True)
    _same(again, one_shot)
    assert warm.spawned == 2 and warm.pid not in (None, pid)


def test_an_idle_warm_worker_is_ended(tmp_path):
    worker = WarmWorker(dict(os.environ, METALAB_HOME=str(tmp_path / "home")), {"nice": 0, "memory_mb": 0},
                        idle_seconds=1.0)
    pid = worker.start()
    assert running(pid) and worker.start() == pid  # started once
    deadline = time.monotonic() + 30
    while running(pid):
        assert time.monotonic() < deadline, "the idle worker was not ended"
        time.sleep(0.2)
    assert worker.pid is None and worker.spawned == 1


def test_one_warm_worker_per_process_another_environment_ends_the_idle_one(tmp_path, monkeypatch):
    monkeypatch.setattr(serve_worker, "_WORKERS", {})
    limits = {"nice": 0, "memory_mb": 0}
    first = serve_worker.warm_worker(dict(os.environ, METALAB_HOME=str(tmp_path / "a")), limits)
    assert serve_worker.warm_worker(dict(os.environ, METALAB_HOME=str(tmp_path / "a")), limits) is first
    pid = first.start()
    try:
        second = serve_worker.warm_worker(dict(os.environ, METALAB_HOME=str(tmp_path / "b")), limits)
        assert second is not first and list(serve_worker._WORKERS.values()) == [second]
        assert first.pid is None and not running(pid)
    finally:
        serve_worker.close_all()

"""The one worker protocol: a JSON request in, one JSON reply out, and the same process set-up for every job."""

from __future__ import annotations

import io
import json
import sys

import pytest

from metalab.core import worker
from metalab.core.engine.config import resolve_config
from metalab.core.services import Services
from metalab.core.settings import load_settings
from metalab.core.store import RunStore

TINY = {
    "dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 4, "val_every": 4, "val_episodes": 4,
    "test_episodes": 4, "checkpoint_every": 4, "log_every": 2,
    "algorithm_params": {"meta_batch_size": 3, "eval_inner_steps": 1},
}


def _reply(capsys) -> dict:
    reply = worker.read_reply(capsys.readouterr().out)
    assert reply is not None, "the worker printed no reply"
    return reply


def test_a_request_travels_as_one_argument_with_its_job_first():
    request = {"limits": {"nice": 5, "memory_mb": 0}, "job": "devices"}
    command = worker.worker_command(request)
    assert command[:3] == [sys.executable, "-m", "metalab.core.worker"] and len(command) == 4
    assert command[3].startswith('{"job":"devices"') and json.loads(command[3]) == request
    with pytest.raises(worker.RequestError, match=r"job: expected one of train, estimate, devices, predict, adapt\. "
                                                  r"Received: job='fly'"):
        worker.worker_command({"job": "fly"})


def test_the_reply_is_the_last_json_line_with_ok():
    assert worker.read_reply('TensorFlow says hello\n{"ok": true, "job": "devices", "result": [1]}\n\n') == {
        "ok": True, "job": "devices", "result": [1]}
    # A crash or a kill leaves no reply: a traceback, nothing, or JSON that is no reply.
    assert worker.read_reply("Traceback (most recent call last):\n  ...\nMemoryError") is None
    assert worker.read_reply("") is None
    assert worker.read_reply('{"result": 1}') is None and worker.read_reply('[true]') is None


def test_a_malformed_request_is_a_refusal_in_json_without_traceback(capsys):
    assert worker.main(["{not json"]) == 1
    reply = _reply(capsys)
    assert reply["ok"] is False and reply["job"] is None
    assert reply["error"]["type"] == "RequestError" and "must be a JSON object" in reply["error"]["message"]
    assert "traceback" not in reply["error"]

    assert worker.main(['{"job": "estimate"}']) == 1
    error = _reply(capsys)["error"]
    assert error["message"] == "estimate request: config must be dict. Received: config=None"

    assert worker.main(['{"job": "devices", "limits": {"nice": -1}}']) == 1
    assert _reply(capsys)["error"]["message"] == "limits.nice must be a non-negative integer. Received: nice=-1"


def test_the_request_may_come_on_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"job": "sing"}'))
    assert worker.main([]) == 1
    reply = _reply(capsys)
    assert reply["job"] == "sing" and "Received: job='sing'" in reply["error"]["message"]


def test_a_train_job_whose_run_fails_replies_not_ok_and_the_store_says_why(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("METALAB_HOME", str(tmp_path))
    monkeypatch.setenv("METALAB_DISABLE_PLUGINS", "")
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = store.create_run({**TINY, "algorithm": "nobody.nothing"})
    request = {"job": "train", "store": str(store.path), "runs_dir": str(store.runs_dir), "run": run_id}
    assert worker.main([json.dumps(request)]) == 1
    reply = _reply(capsys)
    run = store.get_run(run_id)
    assert run.status == "failed" and "nobody.nothing" in run.error
    assert reply["ok"] is False and reply["job"] == "train"
    assert reply["error"]["type"] == "RunFailedError" and run_id in reply["error"]["message"]
    assert "traceback" not in reply["error"]  # the run's traceback is in the store, not the reply


def test_metalab_train_gets_the_workers_process_set_up(tmp_path, monkeypatch, builtin_registry):
    # `metalab train` and Services.train train in the caller's process, through the worker's own set-up.
    calls = []
    real = worker.prepare_process

    def recording(settings, **kwargs):
        calls.append(kwargs)
        return real(settings, **kwargs)

    monkeypatch.setattr(worker, "prepare_process", recording)
    monkeypatch.setenv("METALAB_HOME", str(tmp_path))
    svc = Services(settings=load_settings(), registry=builtin_registry)
    run_id = svc.create_run(resolve_config(builtin_registry, TINY))
    assert svc.train(run_id) == "completed"
    assert calls == [{"meta_batch_size": 3}]

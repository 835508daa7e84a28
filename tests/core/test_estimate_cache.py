"""Estimates are remembered per resolved config and run in the background, with the probe caps as strict as before."""

from __future__ import annotations

import time
from collections import OrderedDict

import pytest

from metalab.core.services import Actor, Services
from metalab.core.services import estimates
from metalab.core.settings import load_settings

SINUSOID = {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 20,
            "algorithm_params": {"meta_batch_size": 2, "inner_steps": 1, "first_order": True}}
#: A short probe: the compile step and one timed step, capped at a second.
QUICK = {"steps": 2, "max_seconds": 1.0}


@pytest.fixture
def demo(tmp_path, builtin_registry, monkeypatch):
    """A demo-mode facade (one estimate at a time per visitor) on fresh folders, with nothing remembered yet."""
    monkeypatch.setattr(estimates, "_ESTIMATES", OrderedDict())
    monkeypatch.setattr(estimates, "_TICKETS", OrderedDict())
    (tmp_path / "data").mkdir()
    settings = load_settings(home=tmp_path / "home", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache",
                             mode="demo")
    return Services(settings=settings, registry=builtin_registry)


def test_an_estimate_runs_in_the_background_once_and_is_then_answered_without_a_probe(demo):
    alice, bob = demo.for_actor(Actor.visitor("alice-token")), demo.for_actor(Actor.visitor("bob-token1"))
    config = alice.resolve(SINUSOID)
    started = estimates.PROBES_STARTED["count"]
    ticket = alice.start_estimate(config, **QUICK)
    # While the probe runs: asking again starts nothing, and the visitor's one probe slot is taken.
    assert alice.start_estimate(config, **QUICK) == ticket
    assert alice.estimate_result(ticket) is None
    other = alice.resolve({**SINUSOID, "algorithm_params": {"meta_batch_size": 3}})
    refused = alice.estimate_result(alice.start_estimate(other, **QUICK))
    assert refused["ok"] is False and "METALAB_MAX_PROBES_PER_OWNER" in refused["error"], refused
    with pytest.raises(KeyError):
        bob.estimate_result(ticket)  # one visitor's ticket is not another's
    deadline = time.monotonic() + 300
    while (answer := alice.estimate_result(ticket)) is None:
        assert time.monotonic() < deadline, "the background estimate did not answer"
        time.sleep(0.3)
    # The worker process's probe measured this config: the sinusoid MLP's 1,761 weights, first-order MAML.
    assert answer["ok"] is True, answer.get("traceback")
    assert answer["parameters"] == 1761 and answer["seconds_per_step"] > 0 and answer["second_order"] is False
    assert estimates.PROBES_STARTED["count"] == started + 1
    assert sum(demo._probes.values()) == 0  # the slot is free again
    # The same config again, by this visitor or another allowed to run it: the same answer, no probe process.
    assert alice.estimate(config, **QUICK) == answer
    assert bob.estimate(bob.resolve(SINUSOID), **QUICK) == answer
    assert alice.estimate_result(alice.start_estimate(config, **QUICK)) == answer
    assert estimates.PROBES_STARTED["count"] == started + 1
    # Another probe length is another question.
    assert estimates._cached_estimate(estimates._estimate_key(config, 3, 1.0)) is None


def test_a_refused_config_is_answered_at_once_and_remembers_nothing(demo):
    alice = demo.for_actor(Actor.visitor("alice-token"))
    # A server path from a demo visitor: refused by the access check, before any slot or cache.
    raw = {"dataset": "metalab.imagefolder", "algorithm": "metalab.protonet", "steps": 5,
           "dataset_params": {"path": "/etc"}}
    started = estimates.PROBES_STARTED["count"]
    answer = alice.estimate_result(alice.start_estimate(raw, **QUICK))
    assert answer["ok"] is False and answer["error"]
    assert estimates.PROBES_STARTED["count"] == started and not estimates._ESTIMATES
    assert sum(demo._probes.values()) == 0

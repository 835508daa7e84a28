"""Few-shot prediction on texts: a tiny ProtoNet run on the embedded intents classifies pasted and file texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metalab.core.contract.manager import make_plugin_manager
from metalab.core.engine import predict as predict_module
from metalab.core.engine.config import resolve_config
from metalab.core.engine.predict import PredictionError, list_text_support, parse_labelled_lines, predict
from metalab.core.services import Services
from metalab.core.settings import load_settings

SMALL = {"steps": 3, "val_every": 3, "val_episodes": 2, "test_episodes": 2, "log_every": 3, "ways": 2, "shots": 1,
         "queries": 2, "algorithm": "metalab.protonet"}
TEXT_RUN = {**SMALL, "dataset": "metalab.text_intents",
            "dataset_params": {"vocab_size": 2048, "max_tokens": 16, "examples_per_class": 10},
            "backbone": "metalab.text_cnn", "backbone_params": {"vocab_size": 2048, "embedding_dim": 16, "filters": 16}}
IMAGE_RUN = {**SMALL, "dataset": "metalab.digits", "backbone": "metalab.mlp", "backbone_params": {"hidden": [16]}}

SUPPORT = {"flight": ["book a plane ticket to paris tomorrow"], "pizza": ["order a large pizza for dinner tonight"],
           "bill": ["pay my electricity bill online"]}
QUERIES = ["order a large pizza for dinner tonight", "book a plane ticket to paris tomorrow",
           "pay my electricity bill online", "please cancel my gym membership"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Settings, metalab's built-in plugins, a finished tiny text run and a finished tiny image run."""
    root = tmp_path_factory.mktemp("predict_text")
    settings = load_settings(home=root / "home", data_dir=root / "data", cache_dir=root / "cache", offline=True,
                             disable_plugins="")
    registry = make_plugin_manager(distributions={"metalab"}, settings=settings, strict=False)
    services = Services(settings=settings, registry=registry)
    runs = {}
    for name, raw in (("text", TEXT_RUN), ("image", IMAGE_RUN)):
        run_id = services.create_run(resolve_config(registry, raw))
        assert services.train(run_id) == "completed", services.run(run_id).traceback
        runs[name] = run_id
    return {"root": root, "settings": settings, "registry": registry, "services": services, "runs": runs}


def _folders(root: Path) -> tuple[Path, Path]:
    support = root / "support"
    support.mkdir()
    for name, texts in SUPPORT.items():
        (support / f"{name}.txt").write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    query = root / "queries.txt"
    query.write_text("\n".join(QUERIES[:2]) + "\n\n" + "\n".join(QUERIES[2:]) + "\n", encoding="utf-8")
    return support, query


def _predict(w, support, query, run="text"):
    return predict(w["services"].store, w["runs"][run], w["registry"], support, query, settings=w["settings"])


def test_text_run_predicts_file_texts_with_its_own_tokenizer(world, tmp_path):
    support, query = _folders(tmp_path)
    results = _predict(world, support, query)
    assert [r["file"] for r in results] == ["queries.txt:1", "queries.txt:2", "queries.txt:4", "queries.txt:5"]
    assert [r["text"] for r in results] == QUERIES and [r["line"] for r in results] == [1, 2, 4, 5]
    for r in results:
        assert list(r["probabilities"]) == ["bill", "flight", "pizza"]  # classes sorted by name
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["predicted"] == max(r["probabilities"], key=r["probabilities"].get)
    # A query identical to a one-shot support example sits on its prototype (distance 0): the nearest class.
    assert [r["predicted"] for r in results[:3]] == ["pizza", "flight", "bill"]
    # One file of "class: example" lines is the same support set.
    labelled = tmp_path / "labelled.txt"
    labelled.write_text("".join(f"{c}: {t}\n" for c, texts in SUPPORT.items() for t in texts), encoding="utf-8")
    again = _predict(world, labelled, query)
    assert [r["predicted"] for r in again] == [r["predicted"] for r in results]
    for a, b in zip(again, results):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)


def test_services_predict_texts_through_the_worker(world):
    svc = world["services"]
    support = "".join(f"{c}: {t}\n" for c, texts in SUPPORT.items() for t in texts)
    results = svc.predict_texts(world["runs"]["text"], support, "\n".join(QUERIES), timeout=120)
    assert [r["file"] for r in results] == [f"query.txt:{i}" for i in range(1, 5)]
    assert [r["predicted"] for r in results[:3]] == ["pizza", "flight", "bill"]
    # Refused before a worker starts (so at once), and nothing is staged.
    staged = sorted(Path(world["settings"].predictions_dir).iterdir())
    with pytest.raises(PredictionError, match="Received: line 1='no colon here' of support='pasted support'"):
        svc.predict_texts(world["runs"]["text"], "no colon here\nbill: pay it", "x", timeout=1)
    with pytest.raises(PredictionError, match="query texts hold no"):
        svc.predict_texts(world["runs"]["text"], support, "  \n", timeout=1)
    with pytest.raises(PredictionError, match=r"at most 2097152 bytes \(a text prediction\). Received: support_bytes="):
        svc.predict_texts(world["runs"]["text"], "a: b\n" * (1 << 20), "x", timeout=1)
    # A smaller upload cap is the one that holds, and the message names it and its size.
    small = Services(settings=world["settings"].model_copy(update={"max_upload_mb": 1}), registry=world["registry"])
    with pytest.raises(PredictionError, match=r"at most 1048576 bytes \(METALAB_MAX_UPLOAD_MB\). "
                                              r"Received: queries_bytes=1500000"):
        small.predict_texts(world["runs"]["text"], "a: b\nc: d", "x" * 1_500_000, timeout=1)
    assert sorted(Path(world["settings"].predictions_dir).iterdir()) == staged


def test_bad_text_inputs_get_clear_errors(world, tmp_path, monkeypatch):
    support, query = _folders(tmp_path)
    (support / "empty.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(PredictionError, match="these have none: empty"):
        list_text_support(support)
    (support / "empty.txt").unlink()
    (support / "latin.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(PredictionError, match=r"not UTF-8.*latin\.txt"):
        list_text_support(support)
    with pytest.raises(PredictionError, match=r"at least 2 classes.*1 class\(es\) \(bill\)"):
        parse_labelled_lines("bill: pay it\nbill: settle my invoice")
    with pytest.raises(PredictionError, match="'class: example text'.*line 2"):
        parse_labelled_lines("bill: pay it\n: no class")
    monkeypatch.setattr(predict_module, "MAX_TEXT_LINES", 3)
    with pytest.raises(PredictionError, match="at most 3 lines of query texts. Received: query_lines=4"):
        predict_module.read_text_queries(query)
    with pytest.raises(PredictionError, match="Received: support_lines=4"):
        parse_labelled_lines("a: 1\na: 2\nb: 3\nb: 4")


def test_texts_and_images_go_only_to_runs_that_take_them(world, tmp_path):
    support, query = _folders(tmp_path)
    with pytest.raises(PredictionError, match=r"'metalab.digits', whose inputs are not texts.*Received: support="):
        _predict(world, support, query, run="image")
    images = tmp_path / "images"
    for name in ("a", "b"):
        (images / name).mkdir(parents=True)
        (images / name / "1.png").write_bytes(b"")
    with pytest.raises(PredictionError, match=r"text dataset 'metalab.text_intents': give texts, not images"):
        _predict(world, images, images / "a")


def test_cli_predict_takes_text_files(world, tmp_path, monkeypatch):
    from metalab.core import cli

    monkeypatch.setattr(cli, "_services", lambda: world["services"])
    support, query = _folders(tmp_path)
    run = world["runs"]["text"]
    out = CliRunner().invoke(cli.app, ["predict", run, "--support", str(support), "--query", str(query), "--json"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert [p["predicted"] for p in data["predictions"][:3]] == ["pizza", "flight", "bill"]
    table = CliRunner().invoke(cli.app, ["predict", run, "--support", str(support), "--query", str(query)])
    assert table.exit_code == 0 and "queries.txt:1" in table.stdout and "p(pizza)" in table.stdout
    bad = CliRunner().invoke(cli.app, ["predict", run, "--support", str(support), "--query", str(tmp_path / "no")])
    assert bad.exit_code == 2 and "one text a line" in bad.output

"""The Predict page for a text run: pasted texts instead of image uploads, and a table of answers."""

from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from .conftest import make_completed_run

TEXT_CONFIG = {"dataset": "metalab.text_intents", "algorithm": "metalab.protonet", "backbone": "metalab.text_cnn",
               "dataset_params": {"vocab_size": 2048, "max_tokens": 16}, "algorithm_params": {},
               "backbone_params": {"vocab_size": 2048}, "ways": 2, "shots": 1, "queries": 2, "steps": 40, "seed": 3,
               "test_episodes": 20}


def _predict_script() -> None:
    from metalab.dashboard.predict import predict

    predict()


def _text_run(store) -> str:
    """A completed text run in the store; its report data shows sentences, as a text dataset's describe gives."""
    run_id = make_completed_run(store, config=TEXT_CONFIG, classification=True)
    (store.run_dir(run_id) / "report_data.json").write_text(json.dumps(
        {"episode": {"support_texts": ["book a flight", "order a pizza"], "query_labels": [0, 1]}}))
    return run_id


def test_text_run_gets_text_areas_and_a_result_table(store):
    run_id = _text_run(store)
    result = {"run": run_id, "texts": True, "results": [
        {"file": "query.txt:1", "line": 1, "text": "fly me to rome", "predicted": "flight",
         "probabilities": {"flight": 0.9, "pizza": 0.1}},
        {"file": "query.txt:3", "line": 3, "text": "a pizza please", "predicted": "pizza",
         "probabilities": {"flight": 0.25, "pizza": 0.75}},
    ]}
    at = AppTest.from_function(_predict_script, default_timeout=60)
    at.session_state["predict.result"] = result
    at.run()
    assert not at.exception
    assert {a.key for a in at.text_area} == {"predict.support_text", "predict.query_text"}
    assert not at.get("file_uploader") and at.button(key="predict.go").disabled
    table = at.dataframe[0].value
    assert list(table["line"]) == [1, 3] and list(table["predicted"]) == ["flight", "pizza"]
    assert list(table["p(pizza)"]) == [0.1, 0.75] and list(table["text"])[0] == "fly me to rome"


def test_a_malformed_paste_is_refused_before_any_worker(store):
    _text_run(store)
    at = AppTest.from_function(_predict_script, default_timeout=60).run()
    at.text_area(key="predict.support_text").set_value("flight book a flight\npizza: order a pizza")
    at.text_area(key="predict.query_text").set_value("fly me to rome")
    at.run()
    at.button(key="predict.go").click().run()
    assert not at.exception
    assert "Received: line 1='flight book a flight'" in at.error[0].value

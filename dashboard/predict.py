"""The Predict page: a finished run adapts to a few labelled images and classifies new ones.

The support set (a zip of class sub-folders, or a folder on this machine) and the query images (uploaded files,
or a folder) are written to a fresh folder; the prediction runs in a worker process
(:meth:`~metalab.core.services.Services.predict`), so this process never imports TensorFlow. That worker is the
long-lived one (started when the page opens, so it imports TensorFlow while the images are chosen; it keeps the
last few runs' models loaded). The last result is kept for the session and drawn as each query image with its
predicted class and a probability bar chart.

A text run (one whose dataset encodes texts, e.g. the intents) takes pasted texts instead: ``class: example`` lines
for the support set and one query a line (:meth:`~metalab.core.services.Services.predict_texts`, the same worker);
its result is a table of each query with its predicted class and the class probabilities.

An environment run (meta-RL) adapts to one of its fixed test tasks instead, chosen by name
(:meth:`~metalab.core.services.Services.adapt_to_task`, the same worker): the page shows the average return after
each adaptation step and, for a family that can draw them (2D navigation), the agent's paths before and after.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from metalab.core.data.archives import UnsafeArchiveError
from metalab.core.data.images import IMAGE_EXTENSIONS
from metalab.core.engine.predict import PredictionError

from . import routes
from .report import run_label
from .state import mode, services

#: Seconds the prediction worker may take (TensorFlow import, model build, adaptation).
TIMEOUT_S = float(os.environ.get("METALAB_PREDICT_TIMEOUT_S", "300"))

_RUN = "predict.run"
_RESULT = "predict.result"
_SOURCES = ("Upload", "A folder on this machine")
_INVERT = {"as the run's dataset": None, "invert": True, "do not invert": False}


def probability_figure(probabilities: dict[str, float], predicted: str) -> go.Figure:
    """A horizontal bar chart of one query's class probabilities, the predicted class highlighted."""
    names = list(probabilities)
    values = [float(probabilities[n]) for n in names]
    colors = ["#d62728" if n == predicted else "#1f77b4" for n in names]
    fig = go.Figure(go.Bar(x=values, y=names, orientation="h", marker_color=colors,
                           text=[f"{v:.2f}" for v in values], textposition="auto"))
    fig.update_layout(title=f"Predicted: {predicted}", xaxis={"range": [0, 1], "title": "probability"},
                      yaxis={"autorange": "reversed"}, height=90 + 28 * len(names),
                      margin={"l": 10, "r": 10, "t": 40, "b": 30})
    return fig


def _classification_runs(svc: Any) -> list[Any]:
    """Finished runs the page can use: classification runs, and environment runs (adapted to a test task)."""
    runs = svc.runs(status="completed")
    return [r for r in runs if svc.task_kind(r.dataset) in ("classification", "environment", None)]


def show_environment_result(result: dict[str, Any]) -> None:
    """Draws an adaptation to one test task: the return after each step, and the agent's paths."""
    from metalab.core.reports.figures import trajectories_figure

    found = result["result"]
    returns = found["returns"]
    st.subheader(f"Test task {found['index']} of {found['tasks']}: {found['task']}")
    cols = st.columns(2)
    cols[0].metric("Average return before adapting", f"{returns[0]:.2f}")
    cols[1].metric(f"After {len(returns) - 1} adaptation step{'s' if len(returns) != 2 else ''}",
                   f"{returns[-1]:.2f}", delta=f"{returns[-1] - returns[0]:+.2f}")
    st.dataframe([{"adaptation steps": k, "average return": round(v, 3)} for k, v in enumerate(returns)],
                 hide_index=True)
    if found.get("trajectories"):
        st.plotly_chart(trajectories_figure([found["trajectories"]]), key="predict.trajectories")


def _adapt_to_task(svc: Any, run_id: str) -> None:
    """The environment form: a test task chosen by name, adapted to in the prediction worker."""
    try:
        tasks = svc.environment_tasks(run_id)
    except (PredictionError, ValueError) as exc:
        st.error(f"The run's tasks cannot be listed here: {svc.redact(str(exc))}")
        return
    index = st.selectbox("Test task", list(range(len(tasks))), key="predict.task",
                         format_func=lambda i: f"{i}: {tasks[i]}",
                         help="One of the fixed test tasks the run's meta-test scored, in the same order.")
    if st.button("Adapt", key="predict.go", type="primary"):
        try:
            with st.spinner("Adapting the policy to the task in the prediction worker..."):
                found = svc.adapt_to_task(run_id, int(index), timeout=TIMEOUT_S, warm=True)
        except (PredictionError, FileNotFoundError, ValueError, PermissionError) as exc:
            st.error(f"Adaptation failed: {svc.redact(str(exc))}")
        else:
            st.session_state[_RESULT] = {"run": run_id, "result": found, "environment": True}


def _source(label: str, key: str) -> str:
    # A server folder is the machine owner's option: a shared dashboard offers uploads only.
    options = _SOURCES if mode() == "private" else _SOURCES[:1]
    return st.radio(label, options, key=key, horizontal=True)


def _stage(svc: Any, support_kind: str, support_value: Any, query_kind: str, query_value: Any) -> tuple[Path, Path]:
    """The support and query folders for the worker: uploads are written to a fresh folder first."""
    staged = svc.stage_prediction(
        support_zip=support_value if support_kind == _SOURCES[0] else None,
        queries=[(f.name, f.getvalue()) for f in query_value] if query_kind == _SOURCES[0] else None,
    )
    support = staged["support"] if support_kind == _SOURCES[0] else Path(str(support_value)).expanduser()
    query = staged["query"] if query_kind == _SOURCES[0] else Path(str(query_value)).expanduser()
    return support, query


def show_result(result: dict[str, Any]) -> None:
    """Draws a prediction: a table of answers, then each query image with its probability chart."""
    rows = result["results"]
    st.subheader(f"{len(rows)} query images, run {result['run']}")
    if not rows:
        st.info("No query image was classified.")
        return
    st.dataframe([{"file": r["file"], "predicted": r["predicted"],
                   "probability": round(float(r["probabilities"][r["predicted"]]), 3)} for r in rows],
                 hide_index=True)
    for i, row in enumerate(rows):
        left, right = st.columns([1, 3])
        with left:
            path = Path(row.get("path", ""))
            if path.is_file():
                st.image(str(path), caption=row["file"], width=112)
            else:
                st.caption(f"{row['file']} (file no longer on disk)")
        with right:
            st.plotly_chart(probability_figure(row["probabilities"], row["predicted"]), key=f"predict.chart.{i}")


#: Per-class probability columns shown in a text result (more classes: the predicted one's only).
_MAX_PROB_COLUMNS = 8
_TEXT_SUPPORT_HELP = ("One labelled example a line, written `class: example text`; at least two classes, one or "
                      "more examples each. Blank lines are skipped.")


def show_text_result(result: dict[str, Any]) -> None:
    """Draws a text prediction: each query line with its predicted class and the class probabilities."""
    rows = result["results"]
    st.subheader(f"{len(rows)} query texts, run {result['run']}")
    if not rows:
        st.info("No query text was classified.")
        return
    classes = list(rows[0]["probabilities"])
    show = classes if len(classes) <= _MAX_PROB_COLUMNS else []
    st.dataframe([{"line": r.get("line"), "text": r.get("text", ""), "predicted": r["predicted"],
                   "probability": round(float(r["probabilities"][r["predicted"]]), 3),
                   **{f"p({c})": round(float(r["probabilities"][c]), 3) for c in show}} for r in rows],
                 hide_index=True)


def _predict_texts(svc: Any, run_id: str) -> None:
    """The text form: pasted labelled examples and queries, classified in the prediction worker."""
    st.subheader("Support set")
    support = st.text_area("Labelled examples (class: example)", key="predict.support_text", height=180,
                           placeholder="flight: book a plane ticket to paris\npizza: order a pizza for dinner",
                           help=_TEXT_SUPPORT_HELP)
    st.subheader("Query texts")
    queries = st.text_area("Texts to classify, one a line", key="predict.query_text", height=140,
                           placeholder="i need a flight to london tomorrow")
    ready = bool(support.strip()) and bool(queries.strip())
    if st.button("Predict", key="predict.go", type="primary", disabled=not ready):
        try:
            with st.spinner("Adapting the run to the support set in the prediction worker..."):
                results = svc.predict_texts(run_id, support, queries, timeout=TIMEOUT_S, warm=True)
        except (PredictionError, FileNotFoundError, ValueError, PermissionError) as exc:
            st.error(f"Prediction failed: {svc.redact(str(exc))}")
        else:
            st.session_state[_RESULT] = {"run": run_id, "results": results, "texts": True}


def predict() -> None:
    """The Predict page."""
    st.title("Predict")
    st.caption("A finished run adapts to a few labelled images (or texts, for a text run) per class (the support "
               "set) and classifies new ones (the queries); a meta-RL run adapts to one of its test tasks. ProtoNet runs take "
               "any number of classes; MAML-style "
               "runs with an output layer need exactly as many support classes as their training ways.")
    svc = services()
    runs = _classification_runs(svc)
    if not runs:
        st.info("No finished classification run yet: train one first (e.g. ProtoNet on your own images).")
        st.page_link(routes.train_page(), label="Train a model", icon=":material/rocket_launch:")
        return
    ids = [r.id for r in runs]
    by_id = {r.id: r for r in runs}
    if st.session_state.get(_RUN) not in ids:
        linked = st.query_params.get("run")
        st.session_state[_RUN] = linked if linked in ids else ids[0]
    # Warm the prediction worker now (its TensorFlow import takes seconds), not when Predict is pressed.
    svc.prediction_worker().start()
    run_id = st.selectbox("Finished run", ids, key=_RUN, format_func=lambda i: run_label(by_id[i]))
    st.query_params["run"] = run_id
    run = by_id[run_id]
    config = run.config
    params = config.get("dataset_params") or {}
    if svc.task_kind(run.dataset) == "environment":
        st.caption(f"Trained on the environment {run.dataset}: the policy adapts to a test task with "
                   f"{config.get('shots')} episodes per policy-gradient step, as at meta-test time.")
        _adapt_to_task(svc, run_id)
        _show_last(run_id)
        return
    if svc.takes_texts(run_id):
        st.caption(f"Trained on the text dataset {run.dataset} ({config.get('ways')}-way {config.get('shots')}-shot). "
                   "Texts are tokenized by that dataset's own tokenizer, with the run's settings.")
        _predict_texts(svc, run_id)
        _show_last(run_id)
        return
    st.caption(f"Trained on {run.dataset} ({config.get('ways')}-way {config.get('shots')}-shot). Images are "
               "resized and converted as that dataset's training images were"
               + (f" (path: `{svc.redact(str(params['path']))}`)." if params.get("path") else "."))

    st.subheader("Support set")
    support_kind = _source("Support images from", "predict.support_kind")
    max_mb = max(1, int(svc.settings.max_upload_mb))
    if support_kind == _SOURCES[0]:
        support_value = st.file_uploader("Zip with one sub-folder per class (a few labelled images each)",
                                         type=["zip"], key="predict.support_zip", max_upload_size=max_mb)
    else:
        support_value = st.text_input("Folder with one sub-folder per class", key="predict.support_dir",
                                      placeholder="/path/to/support (support/cat/1.jpg, support/dog/1.jpg)")
    st.subheader("Query images")
    query_kind = _source("Query images from", "predict.query_kind")
    if query_kind == _SOURCES[0]:
        query_value = st.file_uploader("Images to classify", accept_multiple_files=True, key="predict.query_files",
                                       type=sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS),
                                       max_upload_size=max_mb)
    else:
        query_value = st.text_input("Folder of images (or one image file)", key="predict.query_dir")
    invert = st.selectbox("Grey-level inversion", list(_INVERT), key="predict.invert",
                          help="Follow the run's dataset (e.g. Omniglot inverts dark strokes on white paper), or "
                               "force it for images drawn the other way round.")
    ready = bool(support_value) and bool(query_value)
    if st.button("Predict", key="predict.go", type="primary", disabled=not ready):
        try:
            support, query = _stage(svc, support_kind, support_value, query_kind, query_value)
            with st.spinner("Adapting the run to the support set in the prediction worker..."):
                results = svc.predict(run_id, support, query, invert=_INVERT[invert], timeout=TIMEOUT_S, warm=True)
        except UnsafeArchiveError as exc:
            st.error(f"The support zip was refused: {exc}")
        except (PredictionError, FileNotFoundError, ValueError, PermissionError) as exc:
            st.error(f"Prediction failed: {svc.redact(str(exc))}")
        else:
            st.session_state[_RESULT] = {"run": run_id, "results": results}
    _show_last(run_id)


def _show_last(run_id: str) -> None:
    """The session's last result, text or images."""
    result = st.session_state.get(_RESULT)
    if result:
        if result["run"] != run_id:
            st.caption(f"The result below is from run {result['run']}; press Predict for this run.")
        if result.get("environment"):
            show_environment_result(result)
        else:
            (show_text_result if result.get("texts") else show_result)(result)

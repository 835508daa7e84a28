"""The Run report page (``?run=<id>``): the live view while a run trains, its full report once it ends.

Everything shown comes from the run store, so a reload loses nothing; the live view is a fragment that polls
the store every :data:`POLL_SECONDS` seconds.
"""

from __future__ import annotations

import json
import os
import time

import pandas as pd
import streamlit as st

from metalab.core.reports import figures as reports
from metalab.core.reports import scores
from metalab.core.services import ACTIVE, RESUMABLE
from metalab.core.services.runs import format_seconds
from metalab.core.store import RunNotFoundError

from .state import services

#: Seconds between two polls of the store by the live view (``METALAB_DASHBOARD_POLL_S``).
POLL_SECONDS = float(os.environ.get("METALAB_DASHBOARD_POLL_S", "1.0"))

# Material icons ship with Streamlit, so they render where no emoji font is installed.
_STATUS_ICONS = {"queued": ":material/hourglass_empty:", "running": ":material/directions_run:",
                 "completed": ":material/check_circle:", "failed": ":material/error:",
                 "cancelled": ":material/stop_circle:", "interrupted": ":material/warning:"}


def run_label(run) -> str:
    """A one-line label of a run for select boxes."""
    name = f" {run.name}" if run.name else ""
    return f"{run.id}{name} · {run.algorithm} on {run.dataset} · {run.status}"


def run_report() -> None:
    """The Run report page."""
    svc = services()
    run_id = st.query_params.get("run")
    if not run_id:
        st.title("Run report")
        runs = svc.runs(limit=200)
        if not runs:
            st.info("No runs yet: launch one from the Train page.")
            return
        choice = st.selectbox("Run", [r.id for r in runs], index=None, placeholder="Choose a run",
                              format_func=lambda i: run_label(next(r for r in runs if r.id == i)))
        if choice:
            st.query_params["run"] = choice
            st.rerun()
        return
    try:
        run = svc.run(run_id)
    except RunNotFoundError as exc:
        st.title("Run report")
        st.error(str(exc))
        return
    st.title(f"{_STATUS_ICONS.get(run.status, '')} Run {run.id}" + (f" — {run.name}" if run.name else ""))
    st.caption(f"{run.algorithm} on {run.dataset} with {run.backbone} · created {run.to_dict()['created']}"
               + (" · tags: " + ", ".join(run.tags) if run.tags else ""))
    if run.notes:
        st.markdown(f"> {_quoted(run.notes)}")
    if svc.can_modify(run):
        with st.expander("Name, tags and notes"):
            from .runs import _annotate

            _annotate(svc, run, list(run.tags), key="report.edit")
    for event in svc.checkpoint_warnings(run.id)[-1:]:
        st.warning(f"On {event.get('action')}, the run went back to {event.get('restored')} (step {event.get('step')}): "
                   + "; ".join(map(str, event.get("warnings") or [])))
    if run.status in ACTIVE:
        st.session_state["report.watching"] = run.id
        _live(run.id)
    else:
        _finished(run)


def _quoted(notes: str) -> str:
    """Notes as a Markdown quote, every line of it, with Markdown's own characters shown as typed."""
    escaped = "".join("\\" + c if c in "\\`*_{}[]()#+-.!|<>~$" else c for c in notes.strip())
    return "  \n> ".join(escaped.splitlines())


@st.fragment(run_every=POLL_SECONDS)
def _live(run_id: str) -> None:
    """The phase a queued or running run is in, with its own progress and ETA, then speed, loss, score and curves;
    reruns the page when the run ends."""
    svc = services()
    svc.active_runs()  # reaps a worker that died before it could record anything
    run = svc.run(run_id)
    if run.status not in ACTIVE:
        st.rerun()
    metrics = svc.metrics(run.id)
    progress = reports.run_progress(run.to_dict(), metrics)
    phases = svc.run_phases(run.id)
    current = phases["current"]
    # Runs recorded before phases were (and a running run between two of its writes) read as training.
    phase = current["name"] if current else ("queued" if run.status == "queued" else "training")
    counted = bool(current and current.get("total"))
    if phase == "training":
        st.progress(progress["fraction"], text=f"Training: step {run.step} of {run.total_steps}")
    elif counted:
        detail = current.get("detail") if current.get("detail") not in (None, "", "test") else ""
        text = (f"{current['label']}" + (f" ({detail})" if detail else "")
                + f": episode {current['done'] or 0} of {current['total']}")
        st.progress(min(1.0, (current["done"] or 0) / max(current["total"], 1)), text=text)
    elif current:
        st.progress(0.0 if phase in ("starting", "loading", "compiling") else 1.0,
                    text=f"{current['label']} · {format_seconds(current['elapsed_s'])} so far")
    if run.status == "queued" and not current:
        st.info("Waiting for the worker to start.")
    latest = progress["latest"]
    cols = st.columns(4)
    if counted:
        cols[0].metric("Episodes/s", f"{current['rate']:.1f}" if current.get("rate") else "–")
        cols[1].metric("ETA", format_seconds(current.get("eta_s")), help=f"Of this phase ({phase}).")
    else:
        cols[0].metric("Steps/s", f"{progress['steps_per_s']:.1f}" if progress["steps_per_s"] else "–")
        cols[1].metric("ETA", format_seconds(progress["eta_s"] if phase == "training" else None),
                       help="Of the training steps left (meta-testing follows).")
    cols[2].metric("Train loss", f"{latest['train/loss']:.4g}" if "train/loss" in latest else "–")
    kind = svc.task_kind(run.dataset)
    if kind is None:  # the dataset's plugin is not loaded: the metric it logged tells
        kind = "classification" if "val/accuracy" in latest else "regression" if "val/mse" in latest \
            else "environment" if "val/return" in latest else None
    if kind is not None:
        score = {"classification": "val/accuracy", "environment": "val/return"}.get(kind, "val/mse")
        if kind == "classification":  # percent, as every other accuracy on the pages
            value = f"{100 * latest[score]:.1f}%" if score in latest else "–"
        else:
            value = f"{latest[score]:.4g}" if score in latest else "–"
        cols[3].metric({"classification": "Validation accuracy", "environment": "Validation return"}.get(
            kind, "Validation MSE"), value)
    if phases["times"]:
        st.caption("Time so far: " + phases["line"])
    if metrics:
        fig = reports.learning_curves_figure(metrics, title="Live learning curves",
                                             regression=None if kind is None else kind == "regression")
        st.plotly_chart(fig, key="live-curves")
    cancelling = run.cancel_requested
    if not cancelling and svc.can_modify(run) and st.button("Cancel run", key="live-cancel"):
        try:
            svc.cancel(run.id)
        except PermissionError as exc:
            st.error(str(exc))
        else:
            cancelling = True
    if cancelling:
        st.warning("Cancel requested: the worker stops at its next step and keeps a checkpoint.")
    st.caption(f"Updated {time.strftime('%H:%M:%S')}; polling the run store every {POLL_SECONDS:g} s.")


def _finished(run) -> None:
    svc = services()
    report = svc.run_report(run.id)
    if run.status == "failed":
        st.error(f"The run failed: {report['run'].get('error')}")
        with st.expander("Traceback", expanded=svc.actor.on_machine or svc.can_modify(run)):
            st.code(report["run"].get("traceback") or "(no traceback recorded)", language="text")
        log = svc.worker_log(run.id)
        if log:
            with st.expander("Worker log"):
                st.code(log, language="text")
    elif run.status in ("cancelled", "interrupted"):
        error = report["run"].get("error")
        st.warning(f"The run was {run.status} at step {run.step} of {run.total_steps}"
                   + (f": {error}" if error else "") + ". Resume continues from its last checkpoint.")
    actions = st.columns(4)
    if (run.status in RESUMABLE and svc.can_modify(run)
            and actions[0].button("Resume", type="primary", key="report-resume")):
        try:
            svc.relaunch(run.id)
        except (PermissionError, ValueError) as exc:
            st.error(str(exc))
        else:
            st.rerun()
    actions[1].download_button(
        "Download report (HTML)", data=lambda: svc.report_html(run.id), file_name=f"metalab-report-{run.id}.html",
        mime="text/html", key="report-download", on_click="ignore",
    )
    if actions[2].button("Open setup in Train", key="report-reproduce"):
        from .train import open_in_train

        open_in_train(run.config)

    evaluation = scores.headline(report["evaluations"], run.config)
    cols = st.columns(4)
    if evaluation:
        name, value, ci = reports.score_of(evaluation)
        cols[0].metric(f"Meta-test {name}", f"{value:.4g} ± {ci:.2g}",
                       help=f"Mean and 95% CI over {evaluation['episodes']} fixed test episodes (seed "
                            f"{evaluation.get('seed')}): the run's canonical protocol. Other evaluations are listed "
                            "under Evaluations.")
    cols[1].metric("Steps", f"{run.step} / {run.total_steps}")
    times = svc.run_phases(run.id)
    if times["times"]:
        cols[2].metric("Training time", format_seconds(times["training_s"]),
                       help="The training steps alone; where the rest of the run's time went is listed below.")
    else:  # a run recorded before phases were: only its wall time is known
        cols[2].metric("Wall time", format_seconds((run.finished or 0) - run.started if run.started and run.finished
                                              else None), help="Loading, training and meta-testing together.")
    cols[3].metric("Device", run.device or "–")
    if times["times"]:
        st.caption("Time: " + times["line"])
    if report.get("batch_norm"):
        st.caption(report["batch_norm"])

    rows = scores.score_rows(report["evaluations"], run.config)
    if len(rows) > 1 or (rows and not rows[0]["headline"]):
        st.subheader("Evaluations")
        st.caption("Every score stored for this run, one row per evaluation; the headline is the canonical "
                   "protocol's (the test split's fixed episodes of the run's test_episodes, seed "
                   f"{scores.CANONICAL_SEED}), never merely the newest.")
        st.dataframe(pd.DataFrame([{"protocol": r["protocol"], r["metric"]: r["value"], "95% CI": r["ci95"],
                                    "when": r["created"], "headline": "yes" if r["headline"] else "",
                                    "note": r["note"]} for r in rows]), hide_index=True)
    published = [row for row in report.get("published") or [] if row.get("benchmark") is None]
    if published:
        st.subheader("Published results (same protocol)")
        st.dataframe(pd.DataFrame(published).drop(columns=["benchmark"]), hide_index=True)
    figures = reports.report_figures(report)
    gallery = [fig for title, fig in figures if title.startswith(reports.GALLERY_TITLE)]
    for i, (title, fig) in enumerate(figures):
        if title.startswith(reports.GALLERY_TITLE):
            if fig is gallery[0]:  # the pages share one heading and a page selector, where the first page stands
                _gallery(run.id, gallery)
            continue
        st.subheader(title)
        st.plotly_chart(fig, key=f"report-fig-{i}")
    # Panels contributed by plugins (the metalab_report_panels hook), drawn from plain data.
    for i, panel in enumerate(report.get("panels") or []):
        st.subheader(panel["title"])
        if panel.get("error"):
            st.warning(f"Plugin {panel.get('plugin')} could not draw its panel: {panel['error']}")
            continue
        fig = reports.panel_figure(panel)
        if fig is not None:
            st.plotly_chart(fig, key=f"report-panel-{i}")
        if panel.get("markdown"):
            st.markdown(panel["markdown"])
    if not report["metrics"]:
        st.info("No metrics were recorded.")
    with st.expander("Config", expanded=run.status == "failed"):
        st.code(json.dumps(run.config, indent=2, sort_keys=True), language="json")
    with st.expander("Versions and host"):
        st.json({"versions": run.versions, "host": run.host, "device": run.device, "pid": run.pid})
    if report["evaluations"]:
        with st.expander("Evaluations"):
            st.dataframe(pd.DataFrame([_evaluation_row(e) for e in report["evaluations"]]), hide_index=True)


def _evaluation_row(evaluation: dict) -> dict:
    """An evaluation's scalar fields for a table, its accuracy and CI in percent like the headline."""
    row = {k: v for k, v in evaluation.items() if not isinstance(v, list)}
    if "accuracy" in row:
        row["accuracy (%)"] = 100.0 * float(row.pop("accuracy"))
        if row.get("ci95") is not None:
            row["ci95 (%)"] = 100.0 * float(row.pop("ci95"))
    return row


def _gallery(run_id: str, pages: list) -> None:
    """The episode gallery: every query it scores, a page at a time for large episodes (pages are whole classes)."""
    st.subheader(reports.GALLERY_TITLE)
    page = 0
    if len(pages) > 1:
        page = st.segmented_control("Gallery page", list(range(len(pages))), default=0,
                                    format_func=lambda i: str(i + 1), key=f"report-gallery-page-{run_id}") or 0
    st.plotly_chart(pages[page], key="report-gallery")

"""The Runs page (filter, sort, open, rename, delete) and the Compare page (overlay curves, final scores)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import streamlit as st

from metalab.core.reports import figures as reports

from . import routes
from .report import run_label
from .state import services


def _test_score(svc, run_id: str) -> dict[str, Any]:
    for evaluation in svc.evaluations(run_id):
        if evaluation.get("split") == "test":
            name, value, ci = reports.score_of(evaluation)
            return {"metric": name, "score": value, "ci95": ci}
    return {"metric": None, "score": None, "ci95": None}


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                flat[f"{key.removesuffix('_params')}.{sub}"] = inner if not isinstance(inner, list) else str(inner)
        else:
            flat[key] = value
    return flat


def runs() -> None:
    """The Runs page."""
    st.title("Runs")
    svc = services()
    all_runs = svc.runs()
    if not all_runs:
        st.info("No runs yet: launch one from the Train page.")
        st.page_link(routes.train_page(), label="Go to Train")
        return
    cols = st.columns(4)
    datasets = cols[0].multiselect("Dataset", sorted({r.dataset for r in all_runs}), key="runs.dataset")
    algorithms = cols[1].multiselect("Algorithm", sorted({r.algorithm for r in all_runs}), key="runs.algorithm")
    statuses = cols[2].multiselect("Status", sorted({r.status for r in all_runs}), key="runs.status")
    first = min(dt.date.fromtimestamp(r.created) for r in all_runs)
    dates = cols[3].date_input("Created between", value=(first, dt.date.today()), key="runs.dates")
    selected = [
        r for r in all_runs
        if (not datasets or r.dataset in datasets) and (not algorithms or r.algorithm in algorithms)
        and (not statuses or r.status in statuses)
        and (not isinstance(dates, (tuple, list)) or len(dates) != 2
             or dates[0] <= dt.date.fromtimestamp(r.created) <= dates[1])
    ]
    rows = []
    for r in selected:
        rows.append({
            "report": f"report?run={r.id}", "id": r.id, "name": r.name, "dataset": r.dataset, "algorithm": r.algorithm,
            "backbone": r.backbone, "status": r.status, "progress": r.step / max(r.total_steps, 1),
            **_test_score(svc, r.id), "created": dt.datetime.fromtimestamp(r.created),
        })
    st.caption(f"{len(selected)} of {len(all_runs)} runs. Click a column header to sort.")
    st.dataframe(
        pd.DataFrame(rows), hide_index=True, key="runs.table",
        column_config={
            "report": st.column_config.LinkColumn("report", display_text="open"),
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
            "score": st.column_config.NumberColumn("test score", format="%.4g"),
            "ci95": st.column_config.NumberColumn("± 95% CI", format="%.2g"),
        },
    )
    if not selected:
        return
    ids = [r.id for r in selected]
    by_id = {r.id: r for r in selected}
    st.subheader("Act on runs")
    chosen = st.multiselect("Runs", ids, format_func=lambda i: run_label(by_id[i]), key="runs.chosen")
    buttons = st.columns(3)
    if buttons[0].button("Compare", disabled=len(chosen) < 1, key="runs.compare"):
        st.switch_page(routes.compare_page(), query_params={"runs": ",".join(chosen)})
    if buttons[1].button("Open report", disabled=len(chosen) != 1, key="runs.open"):
        st.switch_page(routes.report_page(), query_params={"run": chosen[0]})
    if len(chosen) == 1 and svc.can_modify(by_id[chosen[0]]):
        run = by_id[chosen[0]]
        with st.form("runs.rename_form"):
            new_name = st.text_input("New name", value=run.name, key="runs.new_name")
            if st.form_submit_button("Rename"):
                svc.rename_run(run.id, new_name)
                st.success(f"Renamed {run.id} to {new_name!r}.")
                st.rerun()
    not_mine = [i for i in chosen if not svc.can_modify(by_id[i])]
    if not_mine:
        st.caption(f"Only their owners can rename or delete {', '.join(not_mine)}.")
    if chosen and not not_mine:
        pending = st.session_state.get("runs.confirm_delete")
        if pending != chosen:
            if buttons[2].button(f"Delete {len(chosen)} run(s)", key="runs.delete"):
                st.session_state["runs.confirm_delete"] = list(chosen)
                st.rerun()
        else:
            active = [i for i in chosen if by_id[i].status in ("queued", "running")]
            st.warning(f"Delete {len(chosen)} run(s) with their metrics and files? This cannot be undone."
                       + (f" Running runs are cancelled first: {', '.join(active)}." if active else ""))
            confirm, cancel = st.columns(2)
            if confirm.button("Yes, delete", type="primary", key="runs.confirm"):
                try:
                    for run_id in chosen:
                        # A live run is cancelled, and its worker given a few seconds to stop, first.
                        with st.spinner(f"Deleting {run_id}..."):
                            svc.delete_run(run_id, force=True, wait_s=15.0)
                except (PermissionError, ValueError) as exc:
                    st.error(str(exc))
                st.session_state.pop("runs.confirm_delete", None)
                st.session_state.pop("runs.chosen", None)
                st.rerun()
            if cancel.button("Keep them", key="runs.keep"):
                st.session_state.pop("runs.confirm_delete", None)
                st.rerun()


def compare() -> None:
    """The Compare page (``?runs=id1,id2``)."""
    st.title("Compare runs")
    svc = services()
    all_runs = svc.runs()
    by_id = {r.id: r for r in all_runs}
    if "compare.runs" not in st.session_state:
        wanted = [i for i in (st.query_params.get("runs") or "").split(",") if i]
        st.session_state["compare.runs"] = [i for i in wanted if i in by_id]
    chosen = st.multiselect("Runs", list(by_id), format_func=lambda i: run_label(by_id[i]), key="compare.runs")
    st.query_params.from_dict({"runs": ",".join(chosen)} if chosen else {})
    if not chosen:
        st.info("Choose runs to compare (or select them on the Runs page).")
        return
    labels = {i: f"{i[-6:]} {by_id[i].name or by_id[i].algorithm.split('.')[-1]}" for i in chosen}
    series = {i: svc.metrics(i) for i in chosen}
    names = sorted({name for metrics in series.values() for name in metrics})
    default = next((n for n in ("val/accuracy", "val/mse", "train/loss") if n in names), names[0] if names else None)
    if default is None:
        st.info("These runs have no metrics yet.")
        return
    metric = st.selectbox("Metric", names, index=names.index(default), key="compare.metric")
    st.plotly_chart(reports.compare_curves_figure({labels[i]: series[i].get(metric, []) for i in chosen}, metric),
                    key="compare.curves")

    configs = {i: _flatten(by_id[i].config) for i in chosen}
    keys = sorted({k for c in configs.values() for k in c})
    differing = [k for k in keys if len({repr(c.get(k)) for c in configs.values()}) > 1]
    group_by = st.selectbox("Group by", ["(none)"] + (differing or keys), key="compare.group")
    rows = []
    for i in chosen:
        score = _test_score(svc, i)
        group = "" if group_by == "(none)" else f"{group_by}={configs[i].get(group_by)}"
        rows.append({"run": labels[i], "id": i, "status": by_id[i].status, **score, "group": group,
                     **{k: configs[i].get(k) for k in differing}})
    scored = [r for r in rows if r["score"] is not None]
    if scored:
        st.plotly_chart(reports.scores_figure(
            [{"label": r["run"], "value": r["score"], "ci95": r["ci95"], "metric": r["metric"], "group": r["group"]}
             for r in scored], title="Final meta-test score (95% CI)"), key="compare.scores")
    st.subheader("Final metrics and differing settings")
    st.dataframe(pd.DataFrame(rows).astype({"group": str}), hide_index=True)

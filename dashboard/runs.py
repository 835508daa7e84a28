"""The Runs page (the experiment table: search, filter, sort, columns, name/tags/notes, open, compare, delete) and
the Compare page (curves, scores, parameters × metrics, parallel coordinates). Each page keeps its whole state in
its link: a shared link restores it, and a bad value in a link is a warning naming it, never a traceback."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import streamlit as st

from metalab.core.reports import compare as figures
from metalab.core.reports.runs_table import (
    QueryError,
    RunsTable,
    key_params,
    parse_query,
    resolve_field,
    search_rows,
    sort_rows,
)

from . import routes
from .state import services

#: The columns a table starts with, in order: what tells runs apart and how they scored (they fit at 1400 px).
_FIRST = ("report", "short_id", "name", "score", "ci95", "metric", "protocol", "status", "algorithm", "dataset", "tags")
#: The columns it ends with.
_LAST = ("progress", "created", "notes", "id")
#: Quick filters: ``{link parameter: (widget key, row field, label)}``.
_QUICK = {"dataset": ("runs.dataset", "dataset", "Dataset"), "algorithm": ("runs.algorithm", "algorithm", "Algorithm"),
          "status": ("runs.status", "status", "Status"), "tag": ("runs.tags", "tags", "Tags")}
_FILTER_HELP = ("Conditions joined by `and` or commas: `FIELD OP VALUE` with OP one of `= != > >= < <= ~` "
                "(`~` contains). Any field: `score > 80`, `inner_lr = 0.01`, `algorithm.inner_steps >= 5`, "
                "`val/accuracy > 0.9`, `tags = baseline`, `created >= 2026-12-01`, `name ~ sweep`.")


# -- links ----------------------------------------------------------------------------------------------------


def _query() -> dict[str, str]:
    return {key: st.query_params[key] for key in st.query_params}


def _link_opened(page: str, *keys: str) -> bool:
    """Whether the page's widgets must be set from the link: one was opened (its parameters are not those this
    session last wrote) or the widgets have no state yet."""
    return st.session_state.get(f"{page}._link") != _query() or any(k not in st.session_state for k in keys)


def _write_link(page: str, params: dict[str, Any]) -> None:
    """Puts the page's state in its link (empty values left out), so a shared link restores it."""
    clean = {k: str(v) for k, v in params.items() if v not in (None, "", [], ())}
    if _query() != clean:
        st.query_params.from_dict(clean)
    st.session_state[f"{page}._link"] = clean


def _bad_link(param: str, value: str, reason: str) -> None:
    st.warning(f"The link's `{param}={value}` was ignored: {reason}.", icon=":material/link_off:")


def _link_list(link: dict[str, str], param: str, allowed: list[str], what: str) -> list[str]:
    """The comma-separated values of ``param`` found in ``allowed``; the others are named in a warning."""
    values = [v.strip() for v in (link.get(param) or "").split(",") if v.strip()]
    unknown = [v for v in values if v not in allowed]
    if unknown:
        _bad_link(param, ",".join(unknown), f"no run shown here has that {what}")
    return [v for v in values if v in allowed]


# -- the Runs page --------------------------------------------------------------------------------------------


def _label(field: str, shown: list[str]) -> str:
    """A column's header: a parameter's own name (``inner_lr``) unless two shown columns share it."""
    if "." not in field or "/" in field:
        return field
    short = field.split(".", 1)[1]
    return short if sum(1 for f in shown if f.split(".", 1)[-1] == short) == 1 else field


def _column(field: str, label: str, rows: list[dict[str, Any]]) -> Any:
    """A parameter's or metric's column: numbers as numbers (``0.001``, not ``0.001000``), anything else as text."""
    values = [r.get(field) for r in rows if r.get(field) is not None]
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return st.column_config.NumberColumn(label, format="%.4g")
    return st.column_config.Column(label)


def _seed_runs(table: RunsTable, defaults: list[str]) -> None:
    """Sets the Runs page's widgets from its link; bad values are named in a warning and left out."""
    link = _query()
    state = st.session_state
    state["runs.search"] = link.get("q", "")
    state["runs.filter"] = link.get("filter", "")
    for param, (key, field, label) in _QUICK.items():
        options = _options(table, field)
        state[key] = _link_list(link, param, options, label.lower())
    fields = table.fields
    state["runs.sort"], state["runs.desc"] = "created", True
    if link.get("sort"):
        try:
            state["runs.sort"] = resolve_field(link["sort"], fields)
        except QueryError as exc:
            _bad_link("sort", link["sort"], str(exc).split(". Received")[0].lower())
    if "desc" in link:
        if link["desc"].lower() in ("1", "true", "yes", "0", "false", "no"):
            state["runs.desc"] = link["desc"].lower() in ("1", "true", "yes")
        else:
            _bad_link("desc", link["desc"], "expected 1 (descending) or 0 (ascending)")
    columns = defaults
    if "cols" in link:
        columns = []
        for name in (c.strip() for c in link["cols"].split(",") if c.strip()):
            try:
                resolved = resolve_field(name, fields)
            except QueryError as exc:
                _bad_link("cols", name, str(exc).split(". Received")[0].lower())
                continue
            if resolved not in columns and resolved not in _FIRST and resolved not in _LAST:
                columns.append(resolved)
    state["runs.columns"] = columns


def _options(table: RunsTable, field: str) -> list[str]:
    values = set()
    for row in table.rows:
        value = row.get(field)
        values.update(value if isinstance(value, list) else [value])
    return sorted(str(v) for v in values if v not in (None, ""))


def _take_selection(shown: list[str]) -> None:
    """The table's selected rows become the selected runs (runs selected but filtered out stay selected)."""
    picked = (st.session_state.get("runs.table") or {}).get("selection", {}).get("rows", [])
    visible = set(shown)
    kept = [i for i in st.session_state.get("runs.chosen", []) if i not in visible]
    st.session_state["runs.chosen"] = kept + [shown[i] for i in picked if 0 <= i < len(shown)]


def runs() -> None:
    """The Runs page."""
    st.title("Runs")
    svc = services()
    table = svc.runs_table()
    if not table.rows:
        st.info("No runs yet: launch one from the Train page.")
        st.page_link(routes.train_page(), label="Go to Train")
        return
    defaults = key_params(table)
    if _link_opened("runs", "runs.sort", "runs.columns"):
        _seed_runs(table, defaults)
    state = st.session_state

    top = st.columns([2, 3])
    search = top[0].text_input("Search", key="runs.search", placeholder="words found in any field",
                               help="Every word must appear in some field: id, name, tags, notes, parameters.")
    text = top[1].text_input("Filter", key="runs.filter", placeholder="score > 80 and inner_lr = 0.01",
                             help=_FILTER_HELP)
    quick = st.columns(len(_QUICK))
    picked: dict[str, list[str]] = {}
    for column, (param, (key, field, label)) in zip(quick, _QUICK.items()):
        options = _options(table, field)
        state[key] = [v for v in state.get(key, []) if v in options]  # a run deleted meanwhile
        picked[param] = column.multiselect(label, options, key=key)
    sort_fields = table.fields
    if state.get("runs.sort") not in sort_fields:
        state["runs.sort"] = "created"
    optional = [f for f in table.fields if f not in _FIRST and f not in _LAST]
    state["runs.columns"] = [c for c in state.get("runs.columns", []) if c in optional]
    controls = st.columns([2, 1.4, 4.6])
    sort_by = controls[0].selectbox("Sort by", sort_fields, key="runs.sort")
    descending = controls[1].toggle("Descending", key="runs.desc")
    extra = controls[2].multiselect("Columns", optional, key="runs.columns", format_func=lambda f: _label(f, optional),
                                    help="Parameters and metrics shown after the run's fields (a link keeps them).")

    rows = table.rows
    for param, (_, field, _) in _QUICK.items():
        wanted = set(picked[param])
        if wanted:
            rows = [r for r in rows if (wanted & set(r[field]) if isinstance(r[field], list) else r[field] in wanted)]
    rows = search_rows(rows, search)
    try:
        rows = parse_query(text).apply(rows, table.fields)
    except QueryError as exc:
        st.warning(f"The filter (`filter={text}` in the link) was not applied: {exc}",
                   icon=":material/filter_alt_off:")
    rows = sort_rows(rows, sort_by, descending)
    _write_link("runs", {
        "q": search.strip(), "filter": text.strip(), **{p: ",".join(v) for p, v in picked.items()},
        "sort": sort_by if (sort_by, descending) != ("created", True) else None,
        "desc": ("1" if descending else "0") if (sort_by, descending) != ("created", True) else None,
        "cols": ",".join(extra) if extra != defaults else None,
    })

    shown = [*_FIRST, *[c for c in extra if c not in _FIRST], *_LAST]
    records = [{**{c: r.get(c) for c in shown}, "report": f"report?run={r['id']}",
                "created": dt.datetime.fromtimestamp(r["created"])} for r in rows]
    frame = pd.DataFrame.from_records(records, columns=shown)
    config: dict[str, Any] = {c: _column(c, _label(c, extra), rows) for c in extra}
    config.update({
        "report": st.column_config.LinkColumn("report", display_text="open", width=60, pinned=True),
        "short_id": st.column_config.TextColumn("id", width=150, pinned=True,
                                                help="The shortest unique prefix: `metalab runs show` accepts it."),
        "name": st.column_config.TextColumn("name", width=150, pinned=True),
        "score": st.column_config.NumberColumn("score", format="%.4g", width=80,
                                               help="The headline: the run's canonical test protocol."),
        "ci95": st.column_config.NumberColumn("± 95% CI", format="%.2g", width=80),
        "metric": st.column_config.TextColumn("metric", width=95),
        "protocol": st.column_config.TextColumn("protocol", width=190),
        "tags": st.column_config.ListColumn("tags"),
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
        "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
        "notes": st.column_config.TextColumn("notes", width="medium"),
        "id": st.column_config.TextColumn("full id"),
    })
    order = "descending" if descending else "ascending"
    st.caption(f"{len(rows)} of {len(table.rows)} runs, sorted by {sort_by} ({order}). Select rows to compare, open "
               "or annotate them.")
    shown_ids = [r["id"] for r in rows]
    st.dataframe(frame, hide_index=True, key="runs.table", column_config=config, selection_mode="multi-row",
                 on_select=lambda: _take_selection(shown_ids))
    _act(svc, table, rows)


def _act(svc: Any, table: RunsTable, rows: list[dict[str, Any]]) -> None:
    """Compare, open, annotate and delete the selected runs."""
    state = st.session_state
    by_id = {r["id"]: r for r in table.rows}
    state["runs.chosen"] = [i for i in state.get("runs.chosen", []) if i in by_id]
    options = [r["id"] for r in rows] + [i for i in state["runs.chosen"] if i not in {r["id"] for r in rows}]
    if not options:
        return
    st.subheader("Selected runs")
    chosen = st.multiselect("Runs", options, format_func=lambda i: _row_label(by_id[i]), key="runs.chosen",
                            placeholder="select rows in the table, or pick runs here")
    if len(chosen) > figures.MAX_COMPARED:
        st.caption(f"Compare overlays at most {figures.MAX_COMPARED} runs: the first {figures.MAX_COMPARED} of the "
                   f"{len(chosen)} selected.")
    buttons = st.columns(3)
    if buttons[0].button("Compare", disabled=not chosen, key="runs.compare"):
        st.switch_page(routes.compare_page(), query_params={"runs": ",".join(chosen[:figures.MAX_COMPARED])})
    if buttons[1].button("Open report", disabled=len(chosen) != 1, key="runs.open"):
        st.switch_page(routes.report_page(), query_params={"run": chosen[0]})
    records = {i: svc.run(i) for i in chosen}
    if len(chosen) == 1 and svc.can_modify(records[chosen[0]]):
        _annotate(svc, records[chosen[0]], _options(table, "tags"))
    not_mine = [i for i in chosen if not svc.can_modify(records[i])]
    if not_mine:
        st.caption(f"Only their owners can annotate or delete {', '.join(not_mine)}.")
    if chosen and not not_mine:
        _delete(svc, chosen, buttons[2], by_id)


def _row_label(row: dict[str, Any]) -> str:
    name = f" {row['name']}" if row["name"] else ""
    return f"{row['short_id']}{name} · {row['algorithm']} on {row['dataset']} · {row['status']}"


def _annotate(svc: Any, run: Any, known_tags: list[str], key: str = "runs.edit") -> None:
    """The name, tags and notes of one run, saved to the store (``key`` prefixes the widgets' keys: the Runs and
    the Run report pages each have one)."""
    state = st.session_state
    if state.get(f"{key}.for") != (run.id, run.name, run.tags, run.notes):
        state[f"{key}.for"] = (run.id, run.name, run.tags, run.notes)
        state[f"{key}.name"], state[f"{key}.tags"], state[f"{key}.notes"] = run.name, list(run.tags), run.notes
    with st.form(key):
        st.markdown(f"**{run.id}**")
        name = st.text_input("Name", key=f"{key}.name", max_chars=200)
        tags = st.multiselect("Tags", sorted(set(known_tags) | set(run.tags)), key=f"{key}.tags",
                              accept_new_options=True, placeholder="type a tag and press Enter")
        notes = st.text_area("Notes", key=f"{key}.notes", height=90)
        if st.form_submit_button("Save", key=f"{key}.save"):
            try:
                svc.rename_run(run.id, name)
                svc.set_run_tags(run.id, tags)
                svc.set_run_notes(run.id, notes)
            except (PermissionError, ValueError) as exc:
                st.error(str(exc))
            else:
                state.pop(f"{key}.for", None)
                st.toast(f"Saved {run.id}.")
                st.rerun()


def _delete(svc: Any, chosen: list[str], button_column: Any, by_id: dict[str, dict[str, Any]]) -> None:
    pending = st.session_state.get("runs.confirm_delete")
    if pending != chosen:
        if button_column.button(f"Delete {len(chosen)} run(s)", key="runs.delete"):
            st.session_state["runs.confirm_delete"] = list(chosen)
            st.rerun()
        return
    active = [i for i in chosen if by_id[i]["status"] in ("queued", "running")]
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


# -- the Compare page -----------------------------------------------------------------------------------------


def _resolve_ids(wanted: list[str], ids: list[str]) -> tuple[list[str], list[str]]:
    """Run ids (or unique prefixes, as the CLI prints them) found among ``ids``, and those that are not."""
    found, unknown = [], []
    for value in wanted:
        matches = [value] if value in ids else [i for i in ids if i.startswith(value)]
        (found if len(matches) == 1 else unknown).append(matches[0] if len(matches) == 1 else value)
    return list(dict.fromkeys(found)), unknown


def _differing(rows: list[dict[str, Any]], fields: list[str]) -> list[str]:
    return [f for f in fields if len({repr(r.get(f)) for r in rows}) > 1]


def _seed_compare(table: RunsTable, by_id: dict[str, dict[str, Any]]) -> None:
    link, state = _query(), st.session_state
    wanted = [v.strip() for v in (link.get("runs") or "").split(",") if v.strip()]
    chosen, unknown = _resolve_ids(wanted, list(by_id))
    if unknown:
        _bad_link("runs", ",".join(unknown), "no run you can see has that id (or the prefix matches several)")
    if len(chosen) > figures.MAX_COMPARED:
        _bad_link("runs", f"... ({len(chosen)} runs)", f"at most {figures.MAX_COMPARED} runs are compared; the "
                  f"first {figures.MAX_COMPARED} are shown")
        chosen = chosen[:figures.MAX_COMPARED]
    state["compare.runs"] = chosen
    rows = [by_id[i] for i in chosen]
    metrics = sorted({k for r in rows for k in r if k in table.metrics})
    state.pop("compare.metric", None)
    if link.get("metric"):
        if link["metric"] in metrics:
            state["compare.metric"] = link["metric"]
        else:
            _bad_link("metric", link["metric"], "none of these runs logged that metric")
    groups = ["(none)", *_differing(rows, table.params)]
    state["compare.group"] = "(none)"
    if link.get("group"):
        try:
            group = resolve_field(link["group"], table.params)
        except QueryError as exc:
            _bad_link("group", link["group"], str(exc).split(". Received")[0].lower())
        else:
            if group in groups:
                state["compare.group"] = group
            else:
                _bad_link("group", link["group"], "it does not differ between these runs")
    state["compare.all_params"] = link.get("all") == "1"
    if link.get("all") not in (None, "1", "0"):
        _bad_link("all", link["all"], "expected 1 (every parameter) or 0 (those that differ)")
    state.pop("compare.dims", None)
    if link.get("dims"):
        dims = []
        for name in (d.strip() for d in link["dims"].split(",") if d.strip()):
            try:
                dims.append(resolve_field(name, [*table.params, *table.metrics, "score", "ci95"]))
            except QueryError as exc:
                _bad_link("dims", name, str(exc).split(". Received")[0].lower())
        state["compare.dims"] = list(dict.fromkeys(dims))


def compare() -> None:
    """The Compare page (``?runs=id1,id2&metric=val/accuracy&group=inner_lr&dims=inner_lr,score``)."""
    st.title("Compare runs")
    svc = services()
    table = svc.runs_table()
    by_id = {r["id"]: r for r in table.rows}
    if _link_opened("compare", "compare.runs"):
        _seed_compare(table, by_id)
    state = st.session_state
    state["compare.runs"] = [i for i in state.get("compare.runs", []) if i in by_id]
    chosen = st.multiselect("Runs", list(by_id), format_func=lambda i: _row_label(by_id[i]), key="compare.runs",
                            max_selections=figures.MAX_COMPARED,
                            help=f"Up to {figures.MAX_COMPARED} runs; each keeps its colour in every chart.")
    if not chosen:
        _write_link("compare", {})
        st.info("Choose runs to compare (or select them on the Runs page).")
        return
    rows = [by_id[i] for i in chosen]
    colors = figures.run_colors(chosen)
    labels = {i: f"{by_id[i]['short_id']} {by_id[i]['name'] or by_id[i]['algorithm'].split('.')[-1]}" for i in chosen}
    series = {i: svc.metrics(i) for i in chosen}
    names = sorted({name for metrics in series.values() for name in metrics})
    metric = None
    if names:
        if state.get("compare.metric") not in names:
            state["compare.metric"] = next((n for n in ("val/accuracy", "val/mse", "val/return", "train/loss") if n in names),
                                           names[0])
        metric = st.selectbox("Metric", names, key="compare.metric")
        st.plotly_chart(figures.curves_figure({i: series[i].get(metric, []) for i in chosen}, labels, colors, metric),
                        key="compare.curves")
    else:
        st.info("These runs have no metrics yet.")

    differing = _differing(rows, table.params)
    groups = ["(none)", *differing]
    if state.get("compare.group") not in groups:
        state["compare.group"] = "(none)"
    group = st.selectbox("Group scores by", groups, key="compare.group", format_func=lambda f: _label(f, groups))
    group_by = None if group == "(none)" else group
    scored = [{"id": r["id"], "label": labels[r["id"]], "score": r["score"], "ci95": r["ci95"], "metric": r["metric"],
               **({group_by: r.get(group_by)} if group_by else {})} for r in rows]
    if any(r["score"] is not None for r in scored):
        st.plotly_chart(figures.scores_figure(scored, colors, group_by,
                                              group_label=_label(group_by, groups) if group_by else None),
                        key="compare.scores")

    st.subheader("Parameters and metrics")
    show_all = st.toggle("All parameters (not only those that differ)", key="compare.all_params")
    params = table.params if show_all else differing
    metric_fields = [m for m in table.metrics if any(m in r for r in rows)]
    columns = ["run", "score", "ci95", "metric", "protocol", "status", *params, *metric_fields, "id"]
    frame = pd.DataFrame.from_records(
        [{**{c: r.get(c) for c in columns}, "run": labels[r["id"]]} for r in rows], columns=columns)
    ids = list(chosen)
    styled = frame.style.apply(lambda col: [f"color: {colors[i]}; font-weight: 600" for i in ids], subset=["run"])
    st.dataframe(styled, hide_index=True, key="compare.table", column_config={
        "ci95": st.column_config.NumberColumn("± 95% CI", format="%.2g"),
        "score": st.column_config.NumberColumn("score", format="%.4g"),
        **{c: _column(c, _label(c, params), rows) for c in [*params, *metric_fields]}})

    dim_options = [*table.params, "score", "ci95", *table.metrics]
    if "compare.dims" not in state or any(d not in dim_options for d in state["compare.dims"]):
        has_score = any(r["score"] is not None for r in rows)
        state["compare.dims"] = [*differing[:6], *(["score"] if has_score else metric_fields[:1])]
    dims = st.multiselect("Parallel coordinates axes", dim_options, key="compare.dims",
                          format_func=lambda f: _label(f, dim_options))
    if dims:
        st.plotly_chart(figures.parallel_coordinates_figure(rows, dims, colors,
                                                            labels={d: _label(d, dim_options) for d in dims},
                                                            run_labels=labels),
                        key="compare.parallel")
    _write_link("compare", {"runs": ",".join(chosen), "metric": metric, "group": group_by,
                            "all": "1" if show_all else None, "dims": ",".join(dims)})


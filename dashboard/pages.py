"""The Home and Plugins pages, and the page functions of the others (re-exported for the router and tests).

Pages call the core's service facade only and never import TensorFlow.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from metalab.core.services.access import SHOWCASE_OWNER

from . import routes
from .forms import default_text, schema_fields
from .report import run_label, run_report
from .runs import compare, runs
from .state import services
from .sweeps import sweeps
from .train import train

__all__ = ["home", "plugins", "train", "runs", "compare", "sweeps", "run_report"]


def home() -> None:
    """The Home page: what is installed, what is running, where to start; the showcase on a shared dashboard."""
    st.title("metalab")
    st.caption("A workbench for meta-learning: MAML, Reptile, Prototypical Networks and more, as plugins.")
    svc = services()
    rows = svc.plugins()
    kinds = pd.Series([r["kind"] for r in rows if r.get("status") == "loaded"]).value_counts()
    all_runs = svc.runs()
    cols = st.columns(4)
    cols[0].metric("Algorithms", int(kinds.get("algorithm", 0)))
    cols[1].metric("Datasets", int(kinds.get("dataset", 0)))
    cols[2].metric("Backbones", int(kinds.get("backbone", 0)))
    cols[3].metric("Runs", len(all_runs))
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        st.warning(f"{len(failed)} plugin(s) failed to load; see the Plugins page.")
    showcase = [r for r in all_runs if r.owner == SHOWCASE_OWNER]
    if getattr(svc, "showcase_error", None):
        st.warning(f"The showcase could not be loaded: {svc.showcase_error}")
    if showcase:
        st.subheader("Showcase")
        st.caption("Finished runs to explore: open a report, compare them, or try Predict on your own images.")
        for run in showcase:
            st.page_link(routes.report_page(), label=run_label(run), query_params={"run": run.id},
                         icon=":material/star:")
    st.page_link(routes.train_page(), label="Train a model: sinusoid + MAML is ready to launch", icon=":material/rocket_launch:")
    active = [r for r in svc.active_runs() if svc.policy.can_see(svc.actor, r.owner)]
    if active:
        st.subheader("Running now")
        for run in active:
            st.page_link(routes.report_page(), label=f"{run_label(run)} (step {run.step}/{run.total_steps})",
                         query_params={"run": run.id})
    st.subheader("Your recent runs" if svc.settings.mode == "demo" else "Recent runs")
    mine = [r for r in all_runs if r.owner != SHOWCASE_OWNER]
    if not mine:
        st.info("No runs yet.")
    for run in mine[:10]:
        st.page_link(routes.report_page(), label=run_label(run), query_params={"run": run.id})
    if svc.settings.mode == "private":
        others = svc.untracked_workers()
        if others:
            st.caption(f"{len(others)} runs were started by an earlier dashboard or the CLI and are still training: "
                       + ", ".join(r.id for r in others) + ". Their reports can cancel them.")
        st.caption(f"Runs are stored in `{svc.settings.store_path}`. From a terminal: "
                   "`metalab train --dataset DATASET --algorithm ALGORITHM`, with ids as the Plugins page lists them.")
    else:
        caps = svc.settings
        st.caption(f"{svc.settings.mode.capitalize()} mode: you can launch runs of up to {caps.max_steps:,} steps "
                   f"({caps.max_runs_per_owner} at once), upload {caps.max_uploads_per_owner} image folders of up to "
                   f"{caps.max_upload_mb} MB, and cancel, resume or delete only your own runs.")


def _param_table(schema: dict) -> pd.DataFrame:
    rows = []
    for ff in schema_fields(schema or {}):
        bounds = []
        for value, symbol in ((ff.minimum, ">="), (ff.exclusive_minimum, ">"), (ff.maximum, "<="),
                              (ff.exclusive_maximum, "<")):
            if value is not None:
                bounds.append(f"{symbol} {value:g}")
        kind = "choice of " + ", ".join(map(str, ff.options)) if ff.widget == "select" else ff.widget
        rows.append({"name": ff.name, "label": ff.label, "type": kind, "default": default_text(ff),
                     "range": ", ".join(bounds),
                     "help": (schema["properties"][ff.name].get("description") or "")})
    return pd.DataFrame(rows).astype(str)


def _dataset_files(dataset_id: str) -> None:
    """Whether a dataset's files are present (on demand: it loads them), else where they are expected."""
    cols = st.columns([1, 3])
    if cols[0].button("Check files", key=f"files-{dataset_id}"):
        try:
            summary = services().dataset_summary(dataset_id, sample_classes=0)
        except FileNotFoundError as exc:
            # The plugin's message names the files and the places it looked.
            st.error(f"Files missing. {services().redact(str(exc))}")
        except Exception as exc:  # noqa: BLE001 - a broken dataset is reported, never fatal to the page
            st.warning(f"The files could not be used: {type(exc).__name__}: {services().redact(str(exc))}")
        else:
            counts = summary.get("splits") or {}
            sizes = ", ".join(f"{name}: {info.get('classes', '?')} classes, {info.get('images', '?')} images"
                              for name, info in counts.items() if isinstance(info, dict))
            st.success(f"Files present{' — ' + sizes if sizes else ''}.")
    cols[1].page_link(routes.datasets_page(), label="Files, sizes and samples",
                      query_params={"view": "browse", "dataset": dataset_id})


def _spec_details(loaded: list[dict]) -> None:
    """The chosen spec's description, paper, parameters and (a dataset) its files; ``?spec=ID`` chooses it."""
    if not loaded:
        return
    st.subheader("Details")
    ids = [r["id"] for r in loaded]
    by_id = {r["id"]: r for r in loaded}
    if st.session_state.get("plugins.spec") not in ids:
        linked = st.query_params.get("spec")
        if linked is not None and linked not in ids:
            st.warning(f"Link parameter ignored: spec={linked!r} is not a loaded algorithm, dataset or backbone.")
        st.session_state["plugins.spec"] = linked if linked in ids else ids[0]
    chosen = st.selectbox("Algorithm, dataset or backbone", ids, key="plugins.spec",
                          format_func=lambda i: f"{by_id[i]['title']} ({i}, {by_id[i]['kind']})")
    st.query_params["spec"] = chosen
    row = by_id[chosen]
    st.markdown(f"**{row['title']}** — `{row['id']}` ({row.get('package')} {row.get('version') or ''})")
    st.write(row.get("description") or "")
    if row.get("paper"):
        st.caption(row["paper"])
    try:
        table = _param_table(row.get("params") or {})
    except Exception as exc:  # noqa: BLE001 - a strange schema must not take the page down
        st.error(f"Cannot show the parameters: {type(exc).__name__}: {exc}")
        return
    if len(table):
        st.table(table, hide_index=True)
    else:
        st.caption("No parameters.")
    if row["kind"] == "dataset":
        _dataset_files(row["id"])


def plugins() -> None:
    """The Plugins page: every spec with its parameters; failed and disabled plugins with their errors."""
    st.title("Plugins")
    try:
        rows = services().plugins()
    except Exception as exc:  # noqa: BLE001 - the page must explain, not crash
        st.error(f"The plugin registry could not be built: {type(exc).__name__}: {exc}")
        return
    loaded = [r for r in rows if r.get("status") == "loaded"]
    broken = [r for r in rows if r.get("status") != "loaded"]
    slow = services().slow_plugins()
    if slow:
        st.info("Slow to load: " + ", ".join(f"{p['plugin']} ({p['seconds']:.1f} s)" for p in slow)
                + ". METALAB_PLUGIN_IMPORT_TIMEOUT caps each plugin's import.")
    if broken:
        st.warning(f"{sum(r['status'] == 'failed' for r in broken)} failed and "
                   f"{sum(r['status'] == 'disabled' for r in broken)} disabled plugin(s): see the bottom of the page.")
    # One static table per kind and the details of one chosen spec (a link's ?spec= names it): 55 expanders, each
    # with its parameter table, took 2.7 s to draw in a browser on every visit.
    catalog = services().catalog()
    kinds = {**{i: ", ".join(a.get("task_kinds") or []) for i, a in catalog["algorithms"].items()},
             **{i: d.get("kind") or "" for i, d in catalog["datasets"].items()}}
    for kind in ("algorithm", "dataset", "backbone"):
        st.subheader(kind.capitalize() + "s")
        items = [r for r in loaded if r["kind"] == kind]
        if not items:
            st.info(f"No {kind}s loaded.")
            continue
        listing = [{"title": r["title"], "id": r["id"], "package": f"{r.get('package')} {r.get('version') or ''}",
                    **({"task kinds": kinds.get(r["id"], "")} if kind != "backbone" else {})} for r in items]
        st.table(pd.DataFrame(listing).astype(str), hide_index=True)
    _spec_details(loaded)
    if broken:
        st.subheader("Failed or disabled plugins")
        for row in broken:
            label = f"{row.get('plugin')} ({row.get('package') or 'no package'} {row.get('version') or ''}): {row['status']}"
            if row["status"] == "failed":
                st.error(label + f" — {row.get('error')}")
                if row.get("traceback"):
                    with st.expander(f"Traceback of {row.get('plugin')}"):
                        st.code(services().redact(row["traceback"]), language="text")
            else:
                st.warning(label + " — disabled (METALAB_DISABLE_PLUGINS)")

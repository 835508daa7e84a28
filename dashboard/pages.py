"""The dashboard pages. They call the core's service facade only and never import TensorFlow."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from .state import services


def home() -> None:
    st.title("metalab")
    st.caption("A workbench for meta-learning: MAML, Reptile, Prototypical Networks and more, as plugins.")
    svc = services()
    rows = svc.plugins()
    kinds = pd.Series([r["kind"] for r in rows if r.get("status") == "loaded"]).value_counts()
    cols = st.columns(4)
    cols[0].metric("Algorithms", int(kinds.get("algorithm", 0)))
    cols[1].metric("Datasets", int(kinds.get("dataset", 0)))
    cols[2].metric("Backbones", int(kinds.get("backbone", 0)))
    cols[3].metric("Runs", len(svc.runs()))
    st.subheader("Start a run")
    st.code("metalab train --dataset metalab.sinusoid --algorithm metalab.maml --steps 2000", language="bash")
    st.markdown(f"Runs are stored in `{svc.settings.store_path}`.")
    _runs_table(svc.runs(limit=10))


def plugins() -> None:
    st.title("Plugins")
    rows = services().plugins()
    loaded = [r for r in rows if r.get("status") == "loaded"]
    broken = [r for r in rows if r.get("status") != "loaded"]
    for kind in ("algorithm", "dataset", "backbone"):
        st.subheader(kind.capitalize() + "s")
        items = [r for r in loaded if r["kind"] == kind]
        if not items:
            st.info(f"No {kind}s loaded.")
        for row in items:
            with st.expander(f"**{row['title']}** — `{row['id']}` ({row.get('package')} {row.get('version') or ''})"):
                st.write(row.get("description") or "")
                if row.get("paper"):
                    st.caption(row["paper"])
                params = (row.get("params") or {}).get("properties", {})
                if params:
                    st.dataframe(
                        pd.DataFrame(
                            [
                                {"name": n, "type": p.get("type", p.get("anyOf", "")), "default": p.get("default"),
                                 "help": p.get("description", "")}
                                for n, p in params.items()
                            ]
                        ).astype(str),
                        hide_index=True,
                    )
    if broken:
        st.subheader("Failed or disabled plugins")
        for row in broken:
            label = f"{row.get('plugin')} ({row.get('package') or 'no package'} {row.get('version') or ''}): {row['status']}"
            if row["status"] == "failed":
                st.error(label + f" — {row.get('error')}")
                if row.get("traceback"):
                    with st.expander("Traceback"):
                        st.code(row["traceback"])
            else:
                st.warning(label)


def runs() -> None:
    st.title("Runs")
    _runs_table(services().runs())


def _runs_table(runs: list) -> None:
    if not runs:
        st.info("No runs yet.")
        return
    st.dataframe(pd.DataFrame([r.summary() for r in runs]), hide_index=True, use_container_width=True)

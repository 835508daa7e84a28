"""The dashboard's router: one ``st.navigation`` over the pages in this package."""

from __future__ import annotations

import streamlit as st

from . import routes


def main() -> None:
    """Runs the app: ``streamlit run streamlit_app.py`` (or ``metalab dashboard``)."""
    st.set_page_config(page_title="metalab", page_icon="🧪", layout="wide")
    pages = routes.all_pages()
    page = st.navigation(pages)
    # A bare ``?run=<id>`` link (on the default page) opens that run's report.
    if page.url_path == pages[0].url_path and st.query_params.get("run"):
        st.switch_page(routes.report_page(), query_params={"run": st.query_params["run"]})
    page.run()


if __name__ == "__main__":
    main()

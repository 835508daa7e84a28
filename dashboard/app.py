"""The dashboard's router: one ``st.navigation`` over the pages in this package, behind the mode's sign-in."""

from __future__ import annotations

import streamlit as st

from metalab.core.store import StoreError

from . import routes
from .state import _shared, actor, mode, services


def _sign_in() -> None:
    """Team mode: nothing but a sign-in button until the OIDC provider has said who this is."""
    st.title("metalab")
    st.write("This dashboard is shared by a team: sign in to see and launch runs.")
    st.button("Log in", type="primary", on_click=st.login, key="auth.login")


def _identity_bar() -> None:
    who = actor()
    if mode() == "team":
        with st.sidebar:
            st.caption(f"Signed in as {who.name}" + (" (admin)" if who.admin else ""))
            st.button("Log out", on_click=st.logout, key="auth.logout")
    elif mode() == "demo":
        with st.sidebar:
            st.caption("Demo: your runs and uploads belong to this browser session; others cannot change them. "
                       "Runs are small and capped (see Home).")


def main() -> None:
    """Runs the app: ``streamlit run streamlit_app.py`` (or ``metalab dashboard``)."""
    st.set_page_config(page_title="metalab", page_icon="🧪", layout="wide")
    try:
        services()  # opens the run store once per process
    except StoreError as exc:  # not a metalab store (or a newer one): say which file and what to do, no traceback
        st.title("metalab")
        st.error(_shared().policy.redact(actor(), str(exc)))
        return
    if mode() == "team" and not st.user.is_logged_in:
        _sign_in()
        return
    pages = routes.all_pages()
    page = st.navigation(pages)
    _identity_bar()
    # A bare ``?run=<id>`` link (on the default page) opens that run's report.
    if page.url_path == pages[0].url_path and st.query_params.get("run"):
        st.switch_page(routes.report_page(), query_params={"run": st.query_params["run"]})
    page.run()


if __name__ == "__main__":
    main()

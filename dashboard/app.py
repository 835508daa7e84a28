"""The dashboard's router: one ``st.navigation`` over the pages in this package."""

from __future__ import annotations

import streamlit as st

from . import pages


def main() -> None:
    st.set_page_config(page_title="metalab", page_icon="🧪", layout="wide")
    navigation = st.navigation(
        [
            st.Page(pages.home, title="Home", icon="🏠", url_path="home", default=True),
            st.Page(pages.plugins, title="Plugins", icon="🧩", url_path="plugins"),
            st.Page(pages.runs, title="Runs", icon="📈", url_path="runs"),
        ]
    )
    navigation.run()


if __name__ == "__main__":
    main()

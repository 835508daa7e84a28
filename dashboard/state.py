"""The one shared services object of the dashboard process (cached across sessions and reruns)."""

from __future__ import annotations

import streamlit as st

from metalab.core.services import Services


@st.cache_resource
def services() -> Services:
    """The service facade: plugin registry and run store. Pages reach the core only through it."""
    return Services()

"""Fragments that watch work running in the background (a probe process) and rerun the page when it has answered.

Worker threads never call ``st``: they leave their answer in the service facade, and these fragments poll it.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

#: Seconds between checks for a background estimate's answer.
ESTIMATE_POLL_SECONDS = 1.0


@st.fragment(run_every=ESTIMATE_POLL_SECONDS)
def await_estimate(svc: Any, ticket: str) -> None:
    """While an estimate runs: a note, and a whole-page rerun once its probe has answered (or was forgotten)."""
    try:
        ready = svc.estimate_result(ticket) is not None
    except KeyError:
        ready = True
    if ready:
        st.rerun()
    st.info("Estimating… a worker process builds the model and times a few train steps (seconds to a minute); "
            "the page stays usable and shows the answer here when it arrives.", icon=":material/hourglass_top:")

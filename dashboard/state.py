"""The dashboard's services: one shared object per process, seen by each browser session as its own actor."""

from __future__ import annotations

import hashlib
import secrets

import streamlit as st

from metalab.core.services.access import Actor
from metalab.core.services import Services

_TOKEN = "metalab.session_token"


@st.cache_resource
def _shared() -> Services:
    """The one services object of this process: plugin registry, run store, worker and probe tracking."""
    return Services()


def mode() -> str:
    """``private``, ``demo`` or ``team`` (``METALAB_MODE``)."""
    return _shared().settings.mode


def actor() -> Actor:
    """Who this browser session is: the one trusted user (private), its own visitor identity (demo, kept for
    the session), or the signed-in user (team; ``Actor.anonymous()`` until signed in)."""
    svc = _shared()
    if svc.settings.mode == "private":
        return Actor.private_user()
    if svc.settings.mode == "demo":
        if _TOKEN not in st.session_state:
            st.session_state[_TOKEN] = _browser_token() or secrets.token_urlsafe(16)
        return Actor.visitor(st.session_state[_TOKEN])
    user = st.user
    if not user.is_logged_in:
        return Actor.anonymous()
    return Actor.user(str(user.get("email") or user.get("sub") or ""), svc.settings.admin_ids)


def _browser_token() -> str | None:
    """A stable, private id of this browser: a hash of the XSRF cookie the server set for it (a demo dashboard
    runs with XSRF protection on). It outlives reloads and new tabs, unlike the session state; other visitors
    cannot know it. ``None`` when there is no such cookie (e.g. in AppTest)."""
    try:
        cookie = st.context.cookies.get("_streamlit_xsrf")
    except Exception:  # noqa: BLE001 - no request context (tests): a per-session token instead
        return None
    if not isinstance(cookie, str) or not cookie:
        return None
    # Tornado's v2 token is "2|mask|masked|time": the unmasked token is the stable secret.
    parts = cookie.split("|")
    secret = cookie
    if len(parts) == 4 and parts[0] == "2":
        try:
            mask, masked = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
            secret = bytes(a ^ b for a, b in zip(masked, mask * (len(masked) // max(len(mask), 1) + 1))).hex()
        except ValueError:
            secret = cookie
    return hashlib.sha256(("metalab-visitor:" + secret).encode()).hexdigest()[:32]


def services() -> Services:
    """The service facade as this session's actor. Pages reach the core only through it."""
    return _shared().for_actor(actor())


def reset_services() -> None:
    """Forgets the shared services object (tests point METALAB_HOME elsewhere between tests)."""
    _shared.clear()

"""Who may do what: identities, ownership, the checks on parameters that touch the machine, and the caps.

Every check lives here and is called where a request enters core (:class:`metalab.core.services.Services`), never
in a page: a crafted link, a form or a script meet the same rules. Refusals are :class:`AccessError` (or
:class:`CapError`) whose messages are safe to show to anyone: they name the field, the value and the cap, and
never a server path outside the data and upload folders nor the hash of a file the caller did not supply.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from metalab.core.contract.specs import machine_params

__all__ = ["Actor", "AccessError", "CapError", "Policy", "SHOWCASE_OWNER", "LOCAL_OWNER"]

#: The owner of runs made on this machine (the CLI, a private dashboard) and of runs made before owners existed.
LOCAL_OWNER = "local"
#: The owner of runs served from a showcase bundle: read-only to every dashboard visitor, admins included.
SHOWCASE_OWNER = "showcase"


class AccessError(PermissionError):
    """A request was refused: not the caller's run or upload, or a parameter that may not be given.

    The message is safe to show to the caller (it is the whole explanation; there is no traceback to show).
    """


class CapError(AccessError):
    """A request would go over a cap; the message names the cap, its value and the value asked for."""


@dataclass(frozen=True)
class Actor:
    """Who is asking.

    Attributes:
        id: The owner id stored with the runs and uploads this actor makes: ``"local"`` on this machine,
            ``"session:<token>"`` for a demo visitor's browser session, ``"user:<e-mail>"`` for a signed-in user.
        name: A human name for messages and pages.
        admin: May cancel, delete and resume any run except showcase runs.
        on_machine: Has a shell on this machine (the CLI): server paths are not confined to the data folders.
    """

    id: str
    name: str
    admin: bool = False
    on_machine: bool = False

    @classmethod
    def machine(cls) -> "Actor":
        """The CLI's actor: the machine's owner, with a shell (paths anywhere, every run)."""
        return cls(LOCAL_OWNER, "this machine's user", admin=True, on_machine=True)

    @classmethod
    def private_user(cls) -> "Actor":
        """A private dashboard's one trusted user: every run, but paths confined like everyone's."""
        return cls(LOCAL_OWNER, "you", admin=True)

    @classmethod
    def visitor(cls, token: str) -> "Actor":
        """A demo visitor, owning what its browser session makes."""
        if not re.fullmatch(r"[A-Za-z0-9_-]{8,64}", token or ""):
            raise ValueError(f"A session token is 8-64 letters, digits, - or _. Received: token of length {len(token or '')}")
        return cls(f"session:{token}", f"visitor {token[:6]}")

    @classmethod
    def user(cls, email: str, admins: Iterable[str] = ()) -> "Actor":
        """A signed-in team member (``st.user.email``); an admin when the address is in ``METALAB_ADMINS``."""
        email = (email or "").strip().lower()
        if not email:
            raise ValueError("A signed-in user needs an e-mail address (the OIDC provider's email claim). Received: email=''")
        return cls(f"user:{email}", email, admin=email in {a.strip().lower() for a in admins})

    @classmethod
    def anonymous(cls) -> "Actor":
        """Nobody in particular (not signed in): may read what is public, owns nothing, changes nothing."""
        return cls("anonymous", "a visitor who is not signed in")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


class Policy:
    """The rules of one dashboard or CLI process, from its :class:`~metalab.core.settings.Settings`.

    Args:
        settings: Mode, admins, folders and caps.
        upload_owners: ``upload_owners(name) -> owner id or None``: who owns an uploaded folder (the run store
            records it).
    """

    def __init__(self, settings: Any, upload_owners: Any = None):
        self.settings = settings
        self.mode = settings.mode
        self._upload_owner = upload_owners or (lambda name: None)

    # -- ownership ------------------------------------------------------------------------------------------

    def can_modify(self, actor: Actor, owner: str | None) -> bool:
        """Whether ``actor`` may cancel, delete, resume or rename something owned by ``owner``."""
        owner = owner or LOCAL_OWNER
        if owner == SHOWCASE_OWNER:
            return actor.on_machine
        return actor.admin or actor.id == owner

    def can_see(self, actor: Actor, owner: str | None) -> bool:
        """Whether ``actor`` sees a run or upload at all: in ``demo`` a visitor sees its own and the showcase."""
        owner = owner or LOCAL_OWNER
        if self.mode != "demo" or actor.admin or owner == SHOWCASE_OWNER:
            return True
        return actor.id == owner

    def require_modify(self, actor: Actor, owner: str | None, what: str) -> None:
        """Raises :class:`AccessError` unless ``actor`` may change ``what`` (e.g. ``"run 2026...: delete"``)."""
        if not self.can_modify(actor, owner):
            if (owner or LOCAL_OWNER) == SHOWCASE_OWNER:
                raise AccessError(f"{what}: showcase runs are read-only. Received: owner='showcase'")
            raise AccessError(f"{what}: only its owner or an admin may do this, and you ({actor.name}) are neither.")

    def require_actor(self, actor: Actor, what: str) -> None:
        """Raises :class:`AccessError` when ``actor`` cannot own anything (not signed in)."""
        if actor.id == "anonymous":
            raise AccessError(f"{what}: sign in first (this dashboard is in {self.mode} mode).")

    # -- parameters that touch the machine -----------------------------------------------------------------

    def check_params(self, actor: Actor, section: str, spec: Any, values: dict[str, Any],
                     run_owner: Any = None) -> None:
        """Checks a plugin's parameters that name a path, a URL, a checksum or another run.

        Args:
            actor: Who gives them.
            section: ``"dataset"``, ``"algorithm"``, ``"backbone"`` or ``"test_dataset"`` (for messages).
            spec: The plugin's spec (its ``params`` model; a dataset's ``downloads``).
            values: The parameter values (validated or not).
            run_owner: ``run_owner(run id) -> owner id`` for :data:`~metalab.core.contract.specs.RunRef` values.

        Raises:
            AccessError: A path outside the data folder and the caller's uploads, a URL that may not be
                fetched, a checksum or run that may not be named in this mode.
        """
        model = spec.params
        for name, kind in machine_params(model).items():
            if name not in values:
                continue
            value = values[name]
            default = model.model_fields[name].get_default(call_default_factory=True)
            field = f"{section}.{name}"
            if value in (None, "") or value == default:
                continue
            if not isinstance(value, str):
                raise AccessError(f"{field}: expected text. Received: {field} of type {type(value).__name__}")
            if kind == "data_path":
                if not actor.on_machine:
                    self.resolve_data_path(actor, value, field)
            elif kind == "download_url":
                self.check_url(actor, value, field, getattr(spec, "downloads", {}) or {})
            elif kind == "checksum":
                if self.mode != "private" and not actor.on_machine:
                    raise AccessError(f"{field}: a checksum of your own can be given only in private mode; the "
                                      "plugin's pinned checksums are used. Received: a checksum")
            elif kind == "run_ref":
                owner = run_owner(value) if run_owner is not None else None
                if owner is None:
                    raise AccessError(f"{field}: no such run. Received: {field}={value!r}")
                if not (owner == SHOWCASE_OWNER or self.can_modify(actor, owner)):
                    raise AccessError(f"{field}: you may name only your own runs and showcase runs. "
                                      f"Received: {field}={value!r}")

    def resolve_data_path(self, actor: Actor, value: str, field: str) -> Path:
        """The real path a :data:`~metalab.core.contract.specs.DataPath` value names, if ``actor`` may read it.

        A relative value is taken under ``METALAB_DATA_DIR``. The path is resolved with every symlink followed
        and must then lie inside ``METALAB_DATA_DIR`` (outside its ``uploads/`` folder) or inside one of the
        actor's own uploaded folders (every upload for admins).

        Raises:
            AccessError: It lies anywhere else (the message does not echo where it resolved to).
        """
        data_dir = Path(self.settings.data_dir).expanduser().resolve()
        uploads = Path(self.settings.uploads_dir).expanduser().resolve()
        raw = Path(os.path.expanduser(value)) if value.startswith("~") and actor.on_machine else Path(value)
        candidate = (raw if raw.is_absolute() else data_dir / raw).resolve()
        if _inside(candidate, uploads):
            parts = candidate.relative_to(uploads).parts
            owner = self._upload_owner(parts[0]) if parts else None
            if parts and (actor.admin or (owner is not None and owner == actor.id)):
                return candidate
        elif _inside(candidate, data_dir):
            return candidate
        raise AccessError(
            f"{field}: a path must lie inside the data folder (METALAB_DATA_DIR) or one of your uploaded folders, "
            f"symlinks included. Received: {field}={_public(value)!r}"
        )

    def check_url(self, actor: Actor, value: str, field: str, declared: dict[str, str]) -> None:
        """Refuses a :data:`~metalab.core.contract.specs.DownloadURL` that may not be fetched.

        Only ``https``/``http`` URLs with a host; outside ``private`` mode only the plugin's declared downloads.
        """
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise AccessError(f"{field}: only https and http URLs are downloaded. Received: scheme={parts.scheme!r}")
        if self.mode != "private" and not actor.on_machine and value not in declared:
            raise AccessError(f"{field}: in {self.mode} mode only the plugin's own download URLs are fetched "
                              f"({len(declared)} declared). Received: {field}={value!r}")

    # -- messages ------------------------------------------------------------------------------------------

    def redact(self, actor: Actor, message: str) -> str:
        """``message`` with server paths hidden from an actor off the machine on a shared (demo, team) dashboard.

        Paths under the data folder read ``METALAB_DATA_DIR/...``, under the home ``METALAB_HOME/...``; any other
        absolute path (site-packages, the code, the system) becomes ``<server path>``. A private dashboard's one
        user is this machine's owner and sees messages whole.
        """
        if actor.on_machine or self.mode == "private" or not message:
            return message
        out = str(message)
        for root, label in ((self.settings.uploads_dir, "uploads"), (self.settings.data_dir, "METALAB_DATA_DIR"),
                            (self.settings.cache_dir, "METALAB_CACHE_DIR"), (self.settings.home, "METALAB_HOME")):
            for form in {str(Path(root)), str(Path(root).expanduser().resolve())}:
                out = out.replace(form, label)
        return re.sub(r"(?<![\w.:/-])/(?:[\w.@+-]+/)*[\w.@+-]*", "<server path>", out)


def _public(value: str) -> str:
    """A path value as a refusal may echo it: the caller's own text, shortened (never what it resolved to)."""
    return value if len(value) <= 120 else value[:117] + "..."

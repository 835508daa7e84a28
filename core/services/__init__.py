"""The service facade: the one door through which the CLI and the dashboard reach metalab's core.

:class:`Services` is composed of one section per job (:mod:`.catalog`, :mod:`.runs`, :mod:`.launch`,
:mod:`.estimates`, :mod:`.reports`, :mod:`.datasets`, :mod:`.predictions`, :mod:`.sweeps`); this module holds what
they share.
Importing it does not import TensorFlow; only training and evaluation (``train``, ``evaluate``) do, and the
dashboard runs those in worker processes through :meth:`Services.launch`.
"""

from __future__ import annotations

import copy
import subprocess
import threading
from functools import cached_property
from typing import Any

from metalab.core.services.access import AccessError, Actor, CapError, Policy
from metalab.core.services.catalog import CatalogMixin
from metalab.core.services.datasets import DEFAULT_MAX_UPLOAD_BYTES, DatasetsMixin, upload_limits
from metalab.core.services.estimates import EstimatesMixin, ProbeError
from metalab.core.services.launch import ACTIVE, RESUMABLE, LaunchLimitError, LaunchMixin
from metalab.core.services.predictions import PredictionsMixin
from metalab.core.services.reports import ReportsMixin
from metalab.core.services.runs import RunsMixin
from metalab.core.services.sweeps import SweepsMixin
from metalab.core.settings import Settings, load_settings
from metalab.core.store import RunStore

__all__ = [
    "Services",
    "ACTIVE",
    "RESUMABLE",
    "AccessError",
    "CapError",
    "LaunchLimitError",
    "ProbeError",
    "Actor",
    "Policy",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "upload_limits",
]


class Services(CatalogMixin, RunsMixin, LaunchMixin, EstimatesMixin, ReportsMixin, DatasetsMixin,
               PredictionsMixin, SweepsMixin):
    """metalab's operations over one plugin registry and one run store.

    Every request is made as :attr:`actor` and checked by :attr:`policy` here, where it enters core: ownership
    of runs and uploads, parameters that touch the machine, and the caps. The dashboard shares one object and
    calls it through :meth:`for_actor` with each browser session's identity.

    Args:
        settings: Paths, plugin switches, mode and caps; read from the environment when omitted.
        registry: A :class:`~metalab.core.contract.manager.PluginRegistry`; made (entry points on) when omitted.
        actor: Who asks; by default :meth:`Actor.machine` (the CLI: this machine's owner).
    """

    def __init__(self, settings: Settings | None = None, registry: Any | None = None, actor: Actor | None = None):
        self.settings = settings or load_settings()
        self._registry = registry
        self.actor = actor or Actor.machine()
        # Worker processes this object started: polled to reap them and to spot a worker that died early.
        self._workers: dict[str, subprocess.Popen] = {}
        # Sweep driver processes this object started (see SweepsMixin.launch_sweep).
        self._sweep_procs: dict[str, subprocess.Popen] = {}
        # Estimate probes running now, per owner (they count against max_workers).
        self._probes: dict[str, int] = {}
        self._lock = threading.Lock()
        # The runs table's rows by run, and whole tables by (filters, who asks): see RunsMixin.runs_table.
        self._tables: dict[str, dict] = {"rows": {}, "tables": {}}
        self._tables_lock = threading.Lock()
        from metalab.core.data.images import configure_pixel_cap

        configure_pixel_cap(self.settings.max_image_pixels)

    def for_actor(self, actor: Actor) -> "Services":
        """A view of this object that acts as ``actor``, sharing its registry, store, workers and probes."""
        # Made once here, so every view shares them: a registry built lazily in a view stayed in that view, and
        # every dashboard session rebuilt the plugins (0.75 s before each page's first element).
        self.store, self.policy, self.registry  # noqa: B018
        view = copy.copy(self)
        view.actor = actor
        return view

    @cached_property
    def policy(self) -> Policy:
        """The access rules of this process (see :class:`~metalab.core.services.access.Policy`)."""
        return Policy(self.settings, upload_owners=lambda name: (self.store.upload_record(name) or {}).get("owner"))

    def redact(self, message: str) -> str:
        """``message`` as :attr:`actor` may see it (server paths hidden off the machine)."""
        return self.policy.redact(self.actor, message)

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from metalab.core.contract.manager import make_plugin_manager

            self._registry = make_plugin_manager(settings=self.settings)
        return self._registry

    @cached_property
    def store(self) -> RunStore:
        store = RunStore(self.settings.store_path, self.settings.runs_dir)
        self.showcase_error: str | None = None
        if self.settings.showcase_dir:
            from metalab.core.services.showcase import install

            try:
                install(self.settings.showcase_dir, store)
            except (ValueError, RuntimeError) as exc:  # a broken bundle (or its store) leaves the dashboard up
                self.showcase_error = str(exc).replace(str(self.settings.showcase_dir), "METALAB_SHOWCASE_DIR")
            except OSError as exc:
                self.showcase_error = f"The showcase folder could not be read ({type(exc).__name__})."
        return store

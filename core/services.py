"""The service facade: the one door through which the CLI and the dashboard reach metalab's core.

Importing this module does not import TensorFlow; only training and evaluation (``train``, ``evaluate``) do,
and the dashboard runs those in worker processes through :meth:`Services.launch`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cached_property
from pathlib import Path
from typing import Any

from .config import RunConfig, resolve_config
from .settings import Settings, load_settings
from .store import RunRecord, RunStore


class Services:
    """metalab's operations over one plugin registry and one run store.

    Args:
        settings: Paths and plugin switches; read from the environment when omitted.
        registry: A :class:`~metalab.core.plugin_manager.PluginRegistry`; made (entry points on) when omitted.
    """

    def __init__(self, settings: Settings | None = None, registry: Any | None = None):
        self.settings = settings or load_settings()
        self._registry = registry

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from .plugin_manager import make_plugin_manager

            self._registry = make_plugin_manager(settings=self.settings)
        return self._registry

    @cached_property
    def store(self) -> RunStore:
        return RunStore(self.settings.store_path, self.settings.runs_dir)

    # -- plugins ----------------------------------------------------------------------------------------

    def plugins(self) -> list[dict[str, Any]]:
        """Every algorithm, dataset and backbone, and every failed or disabled plugin (see ``describe``)."""
        return self.registry.describe()

    # -- runs -------------------------------------------------------------------------------------------

    def resolve(self, raw: dict[str, Any], assignments: dict[str, Any] | None = None) -> RunConfig:
        """Validates a run config against the chosen plugins (raises ``ConfigError`` naming field and value)."""
        return resolve_config(self.registry, raw, assignments)

    def create_run(self, config: RunConfig, name: str = "") -> str:
        """Records a new queued run and returns its id."""
        return self.store.create_run(config.model_dump(), name=name)

    def train(self, run_id: str, progress: Any = None) -> str:
        """Trains (or resumes) a run in this process; returns its final status."""
        from .runner import train_run

        return train_run(self.store, run_id, self.registry, settings=self.settings, progress=progress)

    def launch(self, run_id: str) -> subprocess.Popen:
        """Starts a worker process that trains (or resumes) the run and reports to the store."""
        log_dir = self.store.run_dir(run_id)
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / "worker.log", "ab")  # noqa: SIM115 - handed to the child process
        env = dict(os.environ, METALAB_HOME=str(self.settings.home), METALAB_DATA_DIR=str(self.settings.data_dir))
        return subprocess.Popen(
            [sys.executable, "-m", "metalab.core.runner", str(self.store.path), run_id],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )

    def resume(self, run_id: str, progress: Any = None) -> str:
        """Continues an interrupted, cancelled or failed run from its last checkpoint."""
        run = self.store.get_run(run_id)
        if run.status in ("running", "queued"):
            raise ValueError(f"Run {run.id} is {run.status}; only a finished run can be resumed. Received: run={run_id!r}")
        return self.train(run.id, progress=progress)

    def cancel(self, run_id: str) -> None:
        self.store.request_cancel(run_id)

    def runs(self, **filters: Any) -> list[RunRecord]:
        return self.store.list_runs(**filters)

    def run(self, run_id: str) -> RunRecord:
        return self.store.get_run(run_id)

    def metrics(self, run_id: str) -> dict[str, list[tuple[int, float]]]:
        return self.store.metrics(run_id)

    def evaluations(self, run_id: str) -> list[dict[str, Any]]:
        return self.store.evaluations(run_id)

    def evaluate(self, run_id: str, episodes: int | None = None, split: str = "test") -> dict[str, Any]:
        """Meta-test score of a run: mean with 95% CI over fixed episodes, plus the adaptation curve."""
        from .runner import evaluate_run

        return evaluate_run(self.store, run_id, self.registry, episodes=episodes, split=split, settings=self.settings)

    def delete_run(self, run_id: str) -> None:
        self.store.delete_run(run_id)

    def rename_run(self, run_id: str, name: str) -> None:
        self.store.rename_run(run_id, name)

    def run_dir(self, run_id: str) -> Path:
        return self.store.run_dir(run_id)

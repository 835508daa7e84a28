"""The Services section over stored runs: validating configs, creating, reading, renaming, deleting and scoring runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metalab.core.engine.config import RunConfig, resolve_config
from metalab.core.services.access import CapError
from metalab.core.store import RunNotFoundError, RunRecord


class RunsMixin:
    """The run methods of :class:`~metalab.core.services.Services`, each checked against the caller's rights."""

    def resolve(self, raw: dict[str, Any], assignments: dict[str, Any] | None = None) -> RunConfig:
        """Validates a run config against the chosen plugins and the caller's rights.

        Raises:
            ConfigError: A field is invalid (the message names field and value).
            AccessError: A parameter names a path, URL, checksum or run the caller may not use.
            CapError: More steps than ``max_steps``.
        """
        config = resolve_config(self.registry, raw, assignments)
        self.check_config(config)
        return config

    def check_config(self, config: RunConfig) -> None:
        """Checks a validated config against the caller's rights and the caps (see :meth:`resolve`)."""
        reg, policy = self.registry, self.policy
        owner_of = self._run_owner
        for section, spec, values in (
            ("dataset", reg.datasets.get(config.dataset), config.dataset_params),
            ("algorithm", reg.algorithms.get(config.algorithm), config.algorithm_params),
            ("backbone", reg.backbones.get(config.backbone or ""), config.backbone_params),
            ("test_dataset", reg.datasets.get(config.test_dataset or ""), config.test_dataset_params),
        ):
            if spec is not None:
                policy.check_params(self.actor, section, spec, values, run_owner=owner_of)
        cap = self.settings.max_steps
        if config.steps > cap and not self.actor.on_machine:
            raise CapError(f"steps: at most {cap:,} steps per run here (METALAB_MAX_STEPS). Received: steps={config.steps}")

    def _run_owner(self, run_id: str) -> str | None:
        try:
            return self.store.get_run(run_id).owner
        except RunNotFoundError:
            return None

    def create_run(self, config: RunConfig, name: str = "") -> str:
        """Records a new queued run owned by :attr:`actor` and returns its id."""
        self.policy.require_actor(self.actor, "create a run")
        self.check_config(config)
        return self.store.create_run(config.model_dump(), name=name, owner=self.actor.id)

    def cancel(self, run_id: str) -> None:
        """Asks the run's worker to stop (its owner or an admin only)."""
        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: cancel")
        self.store.request_cancel(run.id)

    def runs(self, **filters: Any) -> list[RunRecord]:
        """Runs the caller may see, newest first (``store.list_runs`` filters)."""
        return [r for r in self.store.list_runs(**filters) if self.policy.can_see(self.actor, r.owner)]

    def run(self, run_id: str) -> RunRecord:
        """One run the caller may see; :class:`RunNotFoundError` otherwise (another visitor's run is not there)."""
        from metalab.core.store import AmbiguousRunError

        try:
            run = self.store.get_run(run_id)
        except AmbiguousRunError:
            if self.settings.mode != "demo" or self.actor.admin:
                raise
            # Listing the matches would name other visitors' runs.
            raise RunNotFoundError(f"Run id prefix {run_id!r} is ambiguous; give more of the id. "
                                   f"Received: run={run_id!r}") from None
        if not self.policy.can_see(self.actor, run.owner):
            raise RunNotFoundError(f"No run with id {run_id!r}. Received: run={run_id!r}")
        return run

    def can_modify(self, run: RunRecord) -> bool:
        """Whether the caller may cancel, delete, resume or rename ``run`` (pages hide the buttons otherwise)."""
        return self.policy.can_modify(self.actor, run.owner)

    def metrics(self, run_id: str) -> dict[str, list[tuple[int, float]]]:
        return self.store.metrics(self.run(run_id).id)

    def evaluations(self, run_id: str) -> list[dict[str, Any]]:
        return self.store.evaluations(self.run(run_id).id)

    def evaluate(self, run_id: str, episodes: int | None = None, split: str = "test") -> dict[str, Any]:
        """Meta-test score of a run: mean with 95% CI over fixed episodes, plus the adaptation curve."""
        from metalab.core.engine.evaluation import evaluate_run

        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: evaluate")
        return evaluate_run(self.store, run.id, self.registry, episodes=episodes, split=split, settings=self.settings)

    def delete_run(self, run_id: str, *, force: bool = False, wait_s: float = 30.0) -> RunRecord:
        """Deletes a run and its folder (its owner or an admin only).

        A running run (or a queued one whose worker was started) is refused with
        :class:`~metalab.core.store.RunActiveError` unless ``force``: then it is cancelled and its worker given
        up to ``wait_s`` seconds to stop first. Returns the run as it was when deleted.
        """
        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: delete")
        return self.store.delete_run(run.id, force=force, wait_s=wait_s)

    def rename_run(self, run_id: str, name: str) -> None:
        run = self.run(run_id)
        self.policy.require_modify(self.actor, run.owner, f"run {run.id}: rename")
        self.store.rename_run(run.id, name)

    def run_dir(self, run_id: str) -> Path:
        return self.store.run_dir(run_id)

"""The Services section that lists plugins and their specs, with what a form needs to offer them (no TensorFlow)."""

from __future__ import annotations

import copy
from typing import Any


class CatalogMixin:
    """The plugin and catalog methods of :class:`~metalab.core.services.Services`."""

    def plugins(self) -> list[dict[str, Any]]:
        """Every algorithm, dataset and backbone, and every failed or disabled plugin (see ``describe``)."""
        return self.registry.describe()

    def slow_plugins(self) -> list[dict[str, Any]]:
        """Plugins that took a second or more to import and register: ``{"plugin", "package", "version",
        "status", "seconds"}`` each, slowest first."""
        return [{"plugin": r.name, "package": r.package, "version": r.version, "status": r.status,
                 "seconds": r.seconds} for r in self.registry.slow_plugins()]

    def catalog(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The loaded specs with what a form needs to offer them (no TensorFlow import).

        Returns:
            ``{"datasets": {id: row}, "algorithms": {id: row}, "backbones": {id: row}}``; every row has ``id``,
            ``title``, ``description``, ``paper``, ``params`` (the JSON schema) and ``defaults`` (every parameter's
            default, those made by a default factory included); datasets add ``kind``,
            ``default_backbone``, ``episode_defaults`` and ``presets`` (the recommended quick-start values per
            algorithm id, ``"*"`` for all; a form takes its starting values from ``recommended_values``); algorithms ``task_kinds``; backbones ``input_kinds``.
            ``machine`` maps the parameters that touch the machine (paths, URLs, checksums, runs) to their kind:
            pages never fill them from a link, and hide them in ``demo`` mode.
        """
        reg = self.registry

        from metalab.core.contract.specs import machine_params

        def row(spec: Any, **extra: Any) -> dict[str, Any]:
            return {"id": spec.id, "title": spec.title, "description": spec.description, "paper": spec.paper,
                    "params": spec.params.model_json_schema(), "defaults": spec.params().model_dump(mode="json"),
                    "machine": machine_params(spec.params), **extra}

        return {
            "datasets": {i: row(s, kind=s.kind, default_backbone=s.default_backbone,
                                episode_defaults=dict(s.episode_defaults), presets=copy.deepcopy(dict(s.presets)))
                         for i, s in reg.datasets.items()},
            "algorithms": {i: row(s, task_kinds=list(s.task_kinds)) for i, s in reg.algorithms.items()},
            "backbones": {i: row(s, input_kinds=list(s.input_kinds)) for i, s in reg.backbones.items()},
        }

    def task_kind(self, dataset_id: str) -> str | None:
        """``"classification"`` or ``"regression"`` for a loaded dataset id; ``None`` when it is not loaded."""
        spec = self.registry.datasets.get(dataset_id)
        return spec.kind if spec is not None else None

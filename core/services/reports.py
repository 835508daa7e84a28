"""The Services section that gathers a run's report as plain data: figure data, published scores, plugin panels."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from metalab.core.services.runs import phase_summary


class ReportsMixin:
    """The report methods of :class:`~metalab.core.services.Services`; a plugin's panel never breaks a report."""

    def report_data(self, run_id: str) -> dict[str, Any] | None:
        """The figure data the worker stored at the end of training (``report_data.json``), if any."""
        for artifact in self.store.artifacts(self.run(run_id).id):
            if artifact["name"] == "report_data":
                try:
                    return json.loads(Path(artifact["path"]).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    return None
        return None

    def checkpoint_warnings(self, run_id: str) -> list[dict[str, Any]]:
        """Each time the run went back to an older checkpoint because the newest was unusable, oldest first:
        ``{"time", "action" ("resume" or "evaluate"), "restored" (file name), "step", "warnings": [text]}``."""
        for artifact in self.store.artifacts(self.run(run_id).id):
            if artifact["name"] == "checkpoint_warning":
                try:
                    events = json.loads(Path(artifact["path"]).read_text(encoding="utf-8")).get("events", [])
                except (OSError, ValueError, AttributeError):
                    return []
                return [e for e in events if isinstance(e, dict)]
        return []

    def run_report(self, run_id: str) -> dict[str, Any]:
        """Everything a report shows, as plain data: ``{"run", "metrics", "evaluations", "report_data", "panels",
        "published", "batch_norm", "phases"}`` (``published`` and ``batch_norm`` from :meth:`published_results` and
        :meth:`batch_norm_summary`; ``phases``: where the run's time went, :func:`~.runs.phase_summary`)."""
        run = self.run(run_id)
        data = self.report_data(run.id)
        record = run.to_dict()
        if not self.actor.on_machine:
            record["error"] = self.redact(record.get("error") or "") or None
            record["traceback"] = self.redact(record.get("traceback") or "") or None
        metrics = self.store.metrics(run.id)
        evaluations = self.store.evaluations(run.id)
        return {
            "run": record,
            "metrics": metrics,
            "evaluations": evaluations,
            "comparisons": self.adaptation_comparisons(run, evaluations),
            "report_data": data,
            "panels": self._panels(run.to_dict(), data, metrics),
            "published": self.published_results(run.config),
            "batch_norm": self.batch_norm_summary(run.config),
            "phases": phase_summary(self.store.phases(run.id), run),
        }

    def adaptation_comparisons(self, run: Any, evaluations: list[dict[str, Any]] | None = None,
                               limit: int = 6) -> list[dict[str, Any]]:
        """Other completed runs the caller may see whose headline adaptation curve was scored on the same tasks.

        For an environment run (its headline has a ``return``): the runs on the same dataset with the same dataset
        parameters, episodes per step and test tasks, newest first, at most ``limit``, e.g. a pretrained-policy
        baseline beside MAML. Returns ``[{"id", "label", "curve", "curve_ci95"}]``; empty for other runs.
        """
        from metalab.core.reports.scores import headline

        own = headline(evaluations if evaluations is not None else self.store.evaluations(run.id), run.config)
        if not own or "return" not in own or not own.get("curve"):
            return []
        keys = ("dataset", "dataset_params", "shots", "queries", "test_episodes")
        mine = {k: run.config.get(k) for k in keys}
        others = [r for r in self.runs(dataset=run.config.get("dataset"), status="completed")
                  if r.id != run.id and {k: r.config.get(k) for k in keys} == mine]
        scored = self.store.evaluations_by_run([r.id for r in others], split="test")  # one query for them all
        found = []
        for other in others:
            top = headline(scored.get(other.id, []), other.config)
            if not top or "return" not in top or len(top.get("curve") or []) != len(own["curve"]):
                continue
            spec = self.registry.algorithms.get(other.config.get("algorithm") or "")
            title = spec.title if spec is not None else other.config.get("algorithm")
            found.append({"id": other.id, "label": f"{title} ({other.name or other.id[-6:]})",
                          "curve": top["curve"], "curve_ci95": top.get("curve_ci95") or []})
            if len(found) >= limit:
                break
        return found

    def _filled(self, config: dict[str, Any]) -> dict[str, Any]:
        """A run config whose plugin parameters have every default filled in (from the loaded specs), so that a
        run stored before a parameter existed compares as the plugin's default."""
        filled = dict(config)
        for section, table in (("dataset", self.registry.datasets), ("algorithm", self.registry.algorithms)):
            spec = table.get(config.get(section) or "")
            if spec is None:
                continue
            try:
                defaults = spec.params().model_dump(mode="json")
            except Exception:  # noqa: BLE001 - a plugin's model must never break the report
                defaults = {}
            filled[f"{section}_params"] = {**defaults, **(config.get(f"{section}_params") or {})}
        return filled

    def published_results(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        """The published scores whose protocol matches a run config's, from every loaded dataset's and algorithm's
        ``published_results`` (see :func:`metalab.core.reports.figures.published_results` for the rows)."""
        from metalab.core.reports.figures import published_results

        records = [dataclasses.replace(r, dataset=r.dataset or spec.id)
                   for spec in self.registry.datasets.values() for r in spec.published_results]
        records += [r for spec in self.registry.algorithms.values() for r in spec.published_results]
        return published_results(self._filled(config), records)

    def batch_norm_summary(self, config: dict[str, Any]) -> str | None:
        """How a run config's batch norm works at meta-test time, from its algorithm's ``batch_norm_mode`` and its
        backbone's ``has_batch_norm`` (``None`` when neither says; see
        :func:`metalab.core.reports.figures.batch_norm_summary`)."""
        from metalab.core.reports.figures import batch_norm_summary

        reg = self.registry
        dataset = reg.datasets.get(config.get("dataset") or "")
        backbone_id = config.get("backbone") or (dataset.default_backbone if dataset is not None else None)
        return batch_norm_summary(config, reg.algorithms.get(config.get("algorithm") or ""),
                                  reg.backbones.get(backbone_id or ""))

    def report_panels(self, run_id: str) -> list[dict[str, Any]]:
        """The panels plugins add to a run's report (the ``metalab_report_panels`` hook), in plugin load order.

        Each plugin's hook is called on its own: one that raises or returns something other than a list of
        ``ReportPanel`` gives a panel with ``error`` set in its place, and the others are unaffected.

        Returns:
            Dicts ``{"title", "figure" (Plotly JSON or None), "markdown" (str or None), "plugin", "error"}``.
        """
        run = self.run(run_id)
        return self._panels(run.to_dict(), self.report_data(run.id))

    def _panel_plugins(self, run: dict[str, Any]) -> set[str]:
        """The plugins whose report hook ``run`` skips. A plugin targeting plugin API 1.4 or later that registered
        algorithms, datasets or backbones is called only for runs using one of them; one that registered none, or
        targets an earlier API, for every run."""
        reg = self.registry
        owned: dict[str, set[str]] = {}
        for kind, table in (("algorithm", reg.algorithms), ("dataset", reg.datasets), ("backbone", reg.backbones)):
            for spec_id in table:
                owned.setdefault(reg.plugin_of(spec_id, kind).name, set()).add(spec_id)
        used = {run.get(name) for name in ("algorithm", "dataset", "backbone")}
        versions = {record.name: record.api_version for record in reg.plugins if record.status == "loaded"}
        return {name for name, ids in owned.items() if _api_at_least(versions.get(name), (1, 4)) and not ids & used}

    def _panels(self, run: dict[str, Any], data: dict[str, Any] | None,
                metrics: dict[str, list[tuple[int, float]]] | None = None) -> list[dict[str, Any]]:
        from metalab.core.contract.specs import ReportPanel

        arguments = {"run": run, "report_data": data or {}, "artifacts_dir": str(self.store.run_dir(run["id"])),
                     "metrics": metrics if metrics is not None else self.store.metrics(run["id"])}
        skipped = self._panel_plugins(run)
        panels: list[dict[str, Any]] = []
        for impl in self.registry.pm.hook.metalab_report_panels.get_hookimpls():
            if impl.plugin_name in skipped:
                continue
            try:
                result = impl.function(*[arguments[name] for name in impl.argnames])
                if not isinstance(result, (list, tuple)):
                    raise TypeError(f"expected a list of ReportPanel. Received: {type(result).__name__}")
                found = []
                for panel in result:
                    if not isinstance(panel, ReportPanel):
                        raise TypeError(f"expected ReportPanel objects. Received: {type(panel).__name__}")
                    panel.validate()
                    found.append({"title": panel.title, "figure": panel.figure, "markdown": panel.markdown,
                                  "plugin": impl.plugin_name, "error": None})
            except Exception as exc:  # noqa: BLE001 - a plugin's panel must never break the report
                found = [{"title": f"Panels of plugin {impl.plugin_name}", "figure": None, "markdown": None,
                          "plugin": impl.plugin_name, "error": f"{type(exc).__name__}: {exc}"}]
            panels.extend(found)
        return panels

    def report_html(self, run_id: str) -> str:
        """The run's self-contained HTML report (figures, config, metrics, versions, seed)."""
        from metalab.core.reports.figures import report_html

        return report_html(self.run_report(run_id))


def _api_at_least(version: str | None, wanted: tuple[int, int]) -> bool:
    """Whether a plugin's ``METALAB_PLUGIN_API`` (``"MAJOR.MINOR"``) is ``wanted`` or later."""
    major, _, minor = (version or "").partition(".")
    return major.isdigit() and minor.isdigit() and (int(major), int(minor)) >= wanted

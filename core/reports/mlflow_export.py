"""Copies runs into an MLflow tracking store, so results join a team's existing tracking server.

Each metalab run becomes one MLflow run in one experiment: its settings as parameters (``run.steps``,
``algorithm.inner_lr``, ...), every logged metric point with its step, each stored evaluation as ``score/...``
metrics, its name, tags and notes, and its ``config.json`` as an artifact. A run exported before (found by its
``metalab.run_id`` tag) is skipped, so exporting a sweep again adds only its new trials.

MLflow is an optional dependency (``pip install "metalab[mlflow]"``); nothing here imports it until an export
starts. Only runs the caller may see are exported (the services check each one).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from metalab.core.reports.scores import protocol_label, score_of, is_canonical

#: MLflow limits: a parameter value's length, and the entries of one ``log_batch`` call.
MAX_PARAM_CHARS = 6000
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS = 100
#: metalab statuses as MLflow's run states (an active run is exported as running, its points so far).
_STATES = {"completed": "FINISHED", "failed": "FAILED", "cancelled": "KILLED", "stopped": "KILLED",
           "queued": "RUNNING", "running": "RUNNING"}


class ExportError(RuntimeError):
    """The export cannot start or failed; the message says why (never a server path)."""


def _client(uri: str) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ExportError('MLflow is not installed. Install it with: pip install "metalab[mlflow]"') from None
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 keeps its file store for existing users only; an export to a local folder is one of them.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


def run_params(config: dict[str, Any]) -> dict[str, str]:
    """A run's settings as MLflow parameters: run fields as ``run.NAME``, plugin parameters as ``SECTION.NAME``.

    Values are JSON text (strings as they are), cut to :data:`MAX_PARAM_CHARS`.
    """
    out: dict[str, str] = {}
    for key, value in sorted(config.items()):
        if key.endswith("_params") and isinstance(value, dict):
            section = key[: -len("_params")]
            for name, inner in sorted(value.items()):
                out[f"{section}.{name}"] = _text(inner)
        else:
            out[f"run.{key}"] = _text(value)
    return out


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_PARAM_CHARS]


def _metric_key(name: str) -> str:
    # MLflow keys allow letters, digits, _ - . / and spaces; metalab's names ("train/loss") already fit.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def score_metrics(evaluations: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, float]:
    """Each evaluation's score and 95% interval, keyed by its protocol; the canonical one also as ``score/test``."""
    out: dict[str, float] = {}
    for evaluation in reversed(evaluations):  # oldest first: a newer evaluation of the same protocol wins
        metric, value, ci = score_of(evaluation)
        unit = "accuracy" if metric.startswith("accuracy") else "return" if metric == "average return" else "mse"
        label = protocol_label(evaluation).replace(" · ", "/").replace(" ", "_")
        out[_metric_key(f"score/{label}/{unit}")] = value
        out[_metric_key(f"score/{label}/{unit}_ci95")] = ci
        if is_canonical(evaluation, config):
            out[f"score/test/{unit}"] = value
            out[f"score/test/{unit}_ci95"] = ci
    return out


def export_runs(services: Any, run_ids: Iterable[str], uri: str, experiment: str = "metalab") -> list[dict[str, Any]]:
    """Exports runs to the MLflow tracking store at ``uri`` (``file:``, ``sqlite:``, ``http(s):``, ...).

    Args:
        services: A :class:`~metalab.core.services.Services`; each run is read through it (access checked).
        run_ids: Run ids or unique prefixes.
        uri: The MLflow tracking URI.
        experiment: The MLflow experiment's name (created when missing).

    Returns:
        One dict per run: ``{"run", "mlflow_run", "status": "exported" | "already exported", "metrics", "params"}``.

    Raises:
        ExportError: MLflow is missing or the store cannot be reached.
        RunNotFoundError: A run id is unknown (nothing is exported then).
    """
    runs = [services.run(run_id) for run_id in run_ids]  # every id checked before anything is written
    client = _client(uri)
    from mlflow.entities import Metric, Param, RunTag

    try:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for an unreachable or bad store
        raise ExportError(f"The MLflow store cannot be used: {type(exc).__name__}: {services.redact(str(exc))[:300]}. "
                          f"Received: --mlflow {services.redact(uri)!r}") from None
    results = []
    for run in runs:
        existing = client.search_runs([experiment_id], filter_string=f"tags.`metalab.run_id` = '{run.id}'",
                                      max_results=1)
        if existing:
            results.append({"run": run.id, "mlflow_run": existing[0].info.run_id, "status": "already exported",
                            "metrics": 0, "params": 0})
            continue
        start_ms = int(1000 * (run.started or run.created))
        end_ms = int(1000 * (run.finished or run.updated or run.started or run.created))
        tags = {"metalab.run_id": run.id, "metalab.dataset": run.dataset, "metalab.algorithm": run.algorithm,
                "metalab.backbone": str(run.backbone or ""), "metalab.status": run.status,
                "metalab.owner": run.owner, "metalab.tags": ",".join(run.tags)}
        for tag in run.tags:
            tags[_metric_key(f"metalab.tag.{tag}")] = "1"
        if run.notes:
            tags["mlflow.note.content"] = run.notes
        created = client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=run.name or run.id)
        mlflow_id = created.info.run_id
        params = run_params(run.config)
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_BATCH_PARAMS):
            client.log_batch(mlflow_id, params=items[i:i + MAX_BATCH_PARAMS])
        # Points carry the run's end time: the store keeps steps, not each point's wall-clock time.
        points = [Metric(_metric_key(name), float(value), end_ms, int(step))
                  for name, series in services.metrics(run.id).items() for step, value in series]
        scores = score_metrics(services.evaluations(run.id), run.config)
        points += [Metric(name, float(value), end_ms, int(run.step)) for name, value in scores.items()]
        for i in range(0, len(points), MAX_BATCH_METRICS):
            client.log_batch(mlflow_id, metrics=points[i:i + MAX_BATCH_METRICS])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.json"
            path.write_text(json.dumps(run.config, indent=2, sort_keys=True, default=str))
            client.log_artifact(mlflow_id, str(path))
        client.set_terminated(mlflow_id, status=_STATES.get(run.status, "FINISHED"), end_time=end_ms)
        client.set_tag(mlflow_id, "metalab.exported", "1")
        results.append({"run": run.id, "mlflow_run": mlflow_id, "status": "exported", "metrics": len(points),
                        "params": len(params)})
    return results
